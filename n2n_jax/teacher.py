"""Teacher training: train once with the paper's schedule, save in the workdir
(orbax params + a JSON record), and reuse on every later run."""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import orbax.checkpoint as ocp
import tqdm

from n2n_jax import config as config_lib
from n2n_jax import models
from n2n_jax import spec as spec_lib
from n2n_jax import train as train_lib

RECORD_FILE = 'teacher.json'
CHECKPOINT_DIR = 'teacher_checkpoint'
TRAINING_FIELDS = ('epochs', 'batch_size', 'optimizer', 'learning_rate', 'decay_epochs',
                   'decay_factor', 'momentum', 'weight_decay')


class WorkdirMismatch(ValueError):
  """The workdir holds a teacher made from a different config."""


class TrainingError(RuntimeError):
  """Teacher training diverged; the message says what to change."""


# Data settings that say where data comes from, not what it is: changing
# them (e.g. downloading once, then reading offline) must not make a stored
# teacher or search stale.
WHERE_NOT_WHAT = ('download', 'data_dir')


def data_origin(data_config) -> dict:
  return {k: v for k, v in data_config.to_dict().items() if k not in WHERE_NOT_WHAT}


@dataclasses.dataclass
class Teacher:
  spec: spec_lib.NetSpec
  model: models.SpecNet
  variables: dict
  record: dict  # what teacher.json holds


def _origin(config, spec) -> dict:
  """What decides the teacher: if any of it changes, a stored teacher is stale."""
  return {'spec': spec_lib.to_dict(spec), 'seed': config.seed,
          'data': data_origin(config.data),
          'training': {k: config.teacher[k] for k in TRAINING_FIELDS}}


def load(workdir: str, expected_origin: dict | None = None) -> Teacher | None:
  """The teacher stored in workdir, or None if there is none. With
  expected_origin, a teacher made from another config is refused."""
  path = os.path.join(workdir, RECORD_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    record = json.load(f)
  if expected_origin is not None:
    diff = config_lib.differences(record['origin'], config_lib.as_json(expected_origin))
    if diff:
      raise WorkdirMismatch(
          f'{path} was trained with a different config:\n  ' + '\n  '.join(diff)
          + '\nUse another --workdir, or delete the teacher files to retrain.')
  spec = spec_lib.from_dict(record['origin']['spec'])
  model = models.build(spec)
  target = models.variable_shapes(model, spec.input_shape)
  checkpointer = ocp.StandardCheckpointer()
  variables = checkpointer.restore(os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
                                   target)
  return Teacher(spec, model, dict(variables), record)


def save(workdir: str, teacher: Teacher) -> None:
  os.makedirs(workdir, exist_ok=True)
  ckpt = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(ckpt, teacher.variables, force=True)
  checkpointer.wait_until_finished()
  # The record goes last and atomically: its presence means the params are complete.
  tmp = os.path.join(workdir, RECORD_FILE + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(teacher.record, f, indent=2)
  os.replace(tmp, os.path.join(workdir, RECORD_FILE))


def train_teacher(config, dataset, spec: spec_lib.NetSpec, *, progress: bool = True) -> Teacher:
  """Train `spec` on `dataset` with config.teacher's schedule; returns the
  teacher with its validation and test accuracy in `record`."""
  t = config.teacher
  start = time.time()
  model = models.build(spec)
  key = jax.random.key(config.seed)
  init_seed, key = jax.random.randint(key, (), 0, 2**31 - 1), jax.random.fold_in(key, 1)
  variables = models.init_variables(model, int(init_seed), spec.input_shape)
  steps_per_epoch = max(1, dataset.train_images.shape[0] // t.batch_size)
  tx = train_lib.make_optimizer(
      t.optimizer, t.learning_rate, steps_per_epoch=steps_per_epoch,
      decay_epochs=t.decay_epochs, decay_factor=t.decay_factor, momentum=t.momentum,
      weight_decay=t.weight_decay)
  augment = None
  if config.data.augment:
    from n2n_jax.data import augment_batch  # pylint: disable=g-import-not-at-top
    augment = augment_batch
  runner = train_lib.EpochRunner(
      train_lib.make_step(model, tx, train_lib.cross_entropy, augment),
      config.runtime.epoch_mode)
  state = train_lib.TrainState.create(variables, tx)
  data = train_lib.Data(dataset.train_images, dataset.train_labels)

  bar = tqdm.trange(t.epochs, desc=f'teacher {spec.name}', unit='epoch',
                    disable=not progress, dynamic_ncols=True)
  history = []
  for epoch in bar:
    state, metrics = runner.run(state, data, jax.random.fold_in(key, epoch), t.batch_size)
    val = train_lib.accuracy(model, state.variables, dataset.val_images, dataset.val_labels)
    history.append({'epoch': epoch + 1, **metrics, 'val_accuracy': val})
    bar.set_postfix(loss=f'{metrics["loss"]:.4f}', train=f'{metrics["accuracy"]:.3f}',
                    val=f'{val:.3f}')
    if not train_lib.is_finite(metrics['loss']):
      raise TrainingError(f'teacher loss became {metrics["loss"]} at epoch {epoch + 1}; '
                               'lower teacher.learning_rate')
  bar.close()

  variables = jax.device_get(state.variables)
  record = {
      'name': spec.name,
      'params': spec_lib.param_count(spec),
      'flops': spec_lib.flops(spec),
      'train_accuracy': history[-1]['accuracy'],
      'val_accuracy': history[-1]['val_accuracy'],
      'test_accuracy': train_lib.accuracy(model, variables, dataset.test_images,
                                          dataset.test_labels),
      'train_examples': int(dataset.train_images.shape[0]),
      'val_examples': int(dataset.val_images.shape[0]),
      'test_examples': int(dataset.test_images.shape[0]),
      'normalisation': {'mean': dataset.mean, 'std': dataset.std},
      'seconds': round(time.time() - start, 2),
      'device': jax.devices()[0].device_kind,
      'history': history,
      'origin': config_lib.as_json(_origin(config, spec)),
  }
  return Teacher(spec, model, variables, record)


def train_or_load(config, spec, workdir: str, get_dataset, *, progress: bool = True) -> Teacher:
  """Reuse the teacher stored in workdir (refusing one from another config),
  else train it on get_dataset() and store it."""
  existing = load(workdir, _origin(config, spec))
  if existing is not None:
    return existing
  teacher = train_teacher(config, get_dataset(), spec, progress=progress)
  save(workdir, teacher)
  return teacher
