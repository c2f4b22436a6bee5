"""One call for JAX code: `n2n_jax.compress(teacher, data)` runs the whole
pipeline the command line runs (teacher, both search stages, final training,
export) and returns the student ready to use. See docs/library.md.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import tempfile

import ml_collections

from n2n_jax import config as config_lib
from n2n_jax import data as data_lib
from n2n_jax import export as export_lib
from n2n_jax import report
from n2n_jax import runtime
from n2n_jax import search as search_lib
from n2n_jax import spec as spec_lib
from n2n_jax import teacher as teacher_lib
from n2n_jax import workdir_lock
from n2n_jax import zoo


@dataclasses.dataclass
class Compressed:
  """What `compress` returns: the student (its spec, Flax module and
  variables: `model.apply(variables, images, train=False)`), its accuracies
  after final training, its size against the teacher's, the search's
  per-iteration records (metrics.jsonl) and the whole summary
  (summary.json). `workdir` is None when compress ran in a temporary folder."""

  spec: spec_lib.NetSpec
  model: object
  variables: dict
  val_accuracy: float
  test_accuracy: float
  params: int
  compression: float
  teacher: dict
  records: list
  summary: dict
  workdir: str | None

  def __repr__(self) -> str:
    t = self.teacher
    rows = [
      ('teacher ' + t['name'], t['params'], t['val_accuracy'], t['test_accuracy']),
      ('student', self.params, self.val_accuracy, self.test_accuracy),
    ]
    lines = [f'{"":<24} {"params":>12} {"val acc":>8} {"test acc":>8}']
    lines += [
      f'{name:<24.24} {params:>12,} {val:>8.2%} {test:>8.2%}' for name, params, val, test in rows
    ]
    lines.append(f'{self.compression:.1f}x smaller; workdir: {self.workdir or "(temporary)"}')
    return '\n'.join(lines)


def compress(
  teacher,
  data,
  *,
  workdir: str | None = None,
  config=None,
  overrides=None,
  scorer=None,
  progress: bool | None = None,
) -> Compressed:
  """Compress `teacher` into a smaller student by the N2N search.

  teacher: a zoo name ('vgg13', see zoo.NAMES; trained here), a spec.NetSpec
    (trained here with config.teacher's schedule), a (NetSpec, variables)
    pair trained elsewhere (variables in models.SpecNet's layout;
    models.from_linen converts a Linen module's; its accuracy is measured,
    not trained), or the folder of a student exported by an earlier run
    (compressions chain).
  data: a data config section (data.default_data_config() with fields set),
    a source name ('digits', or a TFDS name such as 'mnist'), a
    data.Dataset, e.g. from data.from_arrays(train=(x, y), test=(x, y)), or
    a dict of from_arrays' arguments.
  workdir: where teacher, checkpoints, metrics, report and the exported
    student go; rerunning with the same one resumes exactly like the
    command line. None: a temporary folder, removed before returning.
  config: an experiment config (config.base_config() or a configs/ file's
    get_config()); default base_config(). Not modified.
  overrides: {'section.field': value}, applied to the config and checked
    like --config.section.field=value on the command line.
  scorer: what scores the search's students (see scoring.py); default:
    distillation from the teacher.
  progress: progress bars (default: config.runtime.progress).

  Raises the same errors the command line reports in one line
  (experiment.USER_ERRORS), e.g. config.ConfigError, data.DataError.
  """
  config = copy.deepcopy(config) if config is not None else config_lib.base_config()
  config_lib.apply_overrides(config, overrides)
  config.mode = 'compress'
  dataset = _dataset(data, config)
  config_lib.validate(config)
  progress = config.runtime.progress if progress is None else progress
  with _folder(workdir) as folder, workdir_lock.job_lock(folder):
    runtime.enable_compilation_cache(
      config.runtime.compilation_cache_dir, trust_shared=config.runtime.trust_shared_cache
    )
    the_teacher = _teacher(teacher, config, dataset, folder, progress)
    summary = search_lib.run(config, folder, the_teacher, dataset, progress=progress, scorer=scorer)
    model, variables = export_lib.load_student(os.path.join(folder, search_lib.STUDENT_DIR))
    records = report.read_metrics(folder)
  student = summary['student']
  return Compressed(
    model.spec,
    model,
    variables,
    student['val_accuracy'],
    student['test_accuracy'],
    student['params'],
    summary['compression'],
    summary['teacher'],
    records,
    summary,
    workdir,
  )


@contextlib.contextmanager
def _folder(workdir):
  if workdir is not None:
    os.makedirs(workdir, exist_ok=True)
    yield workdir
    return
  with tempfile.TemporaryDirectory(prefix='n2n_jax_') as folder:
    yield folder


def _dataset(data, config) -> data_lib.Dataset:
  """The Dataset `data` stands for; config.data is made to describe it (for
  arrays: source 'arrays' with their fingerprint as the name, so a stored
  teacher or search knows them again)."""
  if isinstance(data, dict) and not isinstance(data, ml_collections.ConfigDict):
    data = data_lib.from_arrays(**data)
  if isinstance(data, data_lib.Dataset):
    config.data = data_lib.default_data_config()
    config.data.source = 'arrays'
    config.data.name = f'{data.name}:{data_lib.fingerprint(data)}'
    return data
  if isinstance(data, str):
    section = data_lib.default_data_config()
    if data == 'digits':
      section.source = 'digits'
    elif data in data_lib.TFDS_DATASETS:
      section.update(source='tfds', name=data)
    else:
      raise data_lib.DataError(
        f'unknown data {data!r}: give a data config section, a '
        'data.Dataset (data.from_arrays) or one of digits, '
        f'{", ".join(data_lib.TFDS_DATASETS)}'
      )
    data = section
  if isinstance(data, ml_collections.ConfigDict):
    config.data = data_lib.default_data_config()
    config.data.update(data.to_dict())
    return data_lib.load(config.data)  # validates it first
  raise data_lib.DataError(
    f'data must be a data config section, a source name, a '
    f'data.Dataset or a dict of from_arrays arguments, got '
    f'{type(data).__name__}'
  )


def _teacher(teacher, config, dataset, folder, progress) -> teacher_lib.Teacher:
  shape, classes = dataset.input_shape, dataset.num_classes
  if isinstance(teacher, str) and os.path.isdir(teacher):
    model, variables = export_lib.load_student(teacher)  # a student of an earlier run
    teacher = (model.spec, variables)
  if isinstance(teacher, str):
    if teacher not in zoo.NAMES:
      raise config_lib.ConfigError(
        f"unknown teacher {teacher!r}: not an exported student's "
        f'folder, nor a zoo name ({", ".join(zoo.NAMES)})'
      )
    config.teacher.name, config.teacher.spec_file = teacher, ''
    teacher = config_lib.teacher_spec(config, shape, classes)
  if isinstance(teacher, tuple) and len(teacher) == 2:
    spec, variables = teacher
    _fits(spec, shape, classes)
    return teacher_lib.adopt(config, spec, variables, dataset, folder)
  if isinstance(teacher, spec_lib.NetSpec):
    _fits(teacher, shape, classes)
    return teacher_lib.train_or_load(config, teacher, folder, lambda: dataset, progress=progress)
  raise config_lib.ConfigError(
    "teacher must be a zoo name, an exported student's folder, a spec.NetSpec or a "
    f'(NetSpec, variables) pair, got {type(teacher).__name__}'
  )


def _fits(spec, shape, classes) -> None:
  if tuple(spec.input_shape) != tuple(shape):
    raise spec_lib.SpecError(
      f'the teacher {spec.name!r} takes {tuple(spec.input_shape)} '
      f'images, the data has {tuple(shape)}'
    )
  spec_lib.validate(spec)
  if spec_lib.num_classes(spec) != classes:
    raise spec_lib.SpecError(
      f'the teacher {spec.name!r} has {spec_lib.num_classes(spec)} '
      f'outputs, the data {classes} classes'
    )
