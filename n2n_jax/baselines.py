"""What the N2N student and the paper's baselines share: training a chosen
network to convergence with hard + soft labels (paper section 3.5), and the
layout of the baselines' results in a workdir.

Baselines (paper section 4.4) use the same trained teacher as the search, so
they run in the same workdir and write `WORKDIR/baselines/NAME/summary.json`:
`taylor_pruning` (mode=prune, `n2n_jax/pruning.py`) and one folder per
hand-designed student (mode=handdesigned, below). `python -m n2n_jax.compare`
reads them beside the search's own `summary.json`.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
from tqdm import auto as tqdm  # a text bar in a terminal, a widget in Jupyter

from n2n_jax import distributed
from n2n_jax import evaluator as evaluator_lib
from n2n_jax import export as export_lib
from n2n_jax import program_store
from n2n_jax import report
from n2n_jax import spec as spec_lib
from n2n_jax import train as train_lib
from n2n_jax import zoo

BASELINES_DIR = 'baselines'


class BaselineError(RuntimeError):
  """A baseline cannot run (e.g. its network does not fit the data)."""


@dataclasses.dataclass
class Trained:
  spec: spec_lib.NetSpec
  model: object
  variables: dict
  val_accuracy: float
  test_accuracy: float
  seconds: float
  compile_seconds: float


def train_final(
  config,
  dataset,
  teacher_logits,
  spec: spec_lib.NetSpec,
  *,
  progress: bool = True,
  initial_variables: dict | None = None,
  desc: str = 'final training',
) -> Trained:
  """Train `spec` for config.final.epochs with cross-entropy + final.soft_weight
  * L2 on the teacher's logits, from fresh weights or `initial_variables`, each
  batch split over the first runtime.final_devices local devices (as many as
  divide the batch size; 0 = all). Raises BaselineError when training fails."""
  f = config.final
  start = time.perf_counter()
  devices = jax.local_devices()[: config.runtime.final_devices or None]
  trainer = evaluator_lib.Evaluator(
    dataset,
    teacher_logits,
    evaluator_lib.DistillSettings.from_config(f, loss='hard_soft'),
    config.runtime.epoch_mode,
    devices=devices[:1],
    mesh=train_lib.data_parallel_mesh(devices, f.batch_size),
    program_store=program_store.for_runtime(config.runtime),
  )
  bar = tqdm.tqdm(total=f.epochs, desc=desc, unit='epoch', disable=not progress, dynamic_ncols=True)
  try:
    result = trainer.train(
      spec,
      jax.random.fold_in(jax.random.key(config.seed), 3),
      config.seed,
      keep_variables=True,
      progress=lambda e, m: bar.update(1),
      initial_variables=initial_variables,
    )
  finally:
    bar.close()
  if result.error is not None:
    raise BaselineError(f'{desc} of {spec.name!r} failed: {result.error}')
  model = trainer.programs.get(spec, trainer.devices[0])[0].model
  test_accuracy = train_lib.accuracy(
    model, result.variables, dataset.test_images, dataset.test_labels
  )
  return Trained(
    spec,
    model,
    result.variables,
    result.accuracy,
    test_accuracy,
    time.perf_counter() - start,
    trainer.compile_seconds,
  )


def teacher_summary(teacher) -> dict:
  r = teacher.record
  return {
    'name': teacher.spec.name,
    'params': spec_lib.param_count(teacher.spec),
    'val_accuracy': r['val_accuracy'],
    'test_accuracy': r['test_accuracy'],
  }


def student_summary(trained: Trained) -> dict:
  return {
    'name': trained.spec.name,
    'params': spec_lib.param_count(trained.spec),
    'flops': spec_lib.flops(trained.spec),
    'val_accuracy': trained.val_accuracy,
    'test_accuracy': trained.test_accuracy,
    'spec': spec_lib.to_dict(trained.spec),
  }


def save(workdir: str, name: str, summary: dict, trained: Trained, teacher) -> dict:
  """Writes WORKDIR/baselines/NAME/summary.json and the network to .../student/
  (loadable with export.load_student). Returns the summary."""
  folder = os.path.join(workdir, BASELINES_DIR, name)
  export_lib.save_student(
    os.path.join(folder, 'student'),
    trained.spec,
    trained.variables,
    {
      'val_accuracy': trained.val_accuracy,
      'test_accuracy': trained.test_accuracy,
      'normalisation': teacher.record.get('normalisation'),
    },
  )
  if distributed.is_primary():
    report.write_summary(summary, folder)
  return summary


def read_all(workdir: str) -> dict:
  """{name: summary} for every baseline saved in `workdir`."""
  folder = os.path.join(workdir, BASELINES_DIR)
  found = {}
  if os.path.isdir(folder):
    for name in sorted(os.listdir(folder)):
      if os.path.exists(os.path.join(folder, name, report.SUMMARY_FILE)):
        found[name] = report.read_summary(os.path.join(folder, name))
  return found


def run_handdesigned(config, workdir: str, teacher, dataset, *, progress: bool = True) -> dict:
  """Paper Table 3: the zoo network `config.handdesigned.name`, built for this
  data and trained with the N2N student's final distillation."""
  name = config.handdesigned.name
  spec = zoo.get(name, teacher.spec.input_shape, spec_lib.num_classes(teacher.spec))
  try:
    spec_lib.validate(spec)
  except spec_lib.SpecError as e:
    raise BaselineError(
      f'hand-designed student {name!r} cannot take input {spec.input_shape}: {e}'
    ) from None
  teacher_logits = train_lib.predict(teacher.model, teacher.variables, dataset.train_images)
  trained = train_final(
    config, dataset, teacher_logits, spec, progress=progress, desc=f'training {name}'
  )
  teacher_params = spec_lib.param_count(teacher.spec)
  summary = {
    'method': 'handdesigned',
    'name': name,
    'teacher': teacher_summary(teacher),
    'student': student_summary(trained),
    'compression': teacher_params / spec_lib.param_count(spec),
    'wall_seconds': round(trained.seconds, 2),
    'time': {'train': round(trained.seconds, 2), 'compile': round(trained.compile_seconds, 2)},
  }
  return save(workdir, name, summary, trained, teacher)
