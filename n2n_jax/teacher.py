"""Teacher training: train once with the paper's schedule, save in the workdir
(orbax params + a JSON record), and reuse on every later run."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
from tqdm import auto as tqdm  # a text bar in a terminal, a widget in Jupyter

from n2n_jax import atomic
from n2n_jax import checkpoint as checkpoint_lib
from n2n_jax import config as config_lib
from n2n_jax import distributed
from n2n_jax import models
from n2n_jax import preemption
from n2n_jax import spec as spec_lib
from n2n_jax import train as train_lib

RECORD_FILE = 'teacher.json'
CHECKPOINT_DIR = 'teacher_checkpoint'
PROGRESS_DIR = 'teacher_progress'  # training in progress, removed once the teacher is saved
TRAINING_FIELDS = (
  'epochs',
  'batch_size',
  'optimizer',
  'learning_rate',
  'decay_epochs',
  'decay_factor',
  'momentum',
  'weight_decay',
)


class WorkdirMismatch(ValueError):
  """The workdir holds a teacher made from a different config."""


class TrainingError(RuntimeError):
  """Teacher training diverged; the message says what to change."""


class TeacherDamaged(RuntimeError):
  """teacher.json exists but the teacher it describes cannot be read back intact."""


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
  return {
    'spec': spec_lib.to_dict(spec),
    'seed': config.seed,
    'data': data_origin(config.data),
    'training': {k: config.teacher[k] for k in TRAINING_FIELDS},
  }


def load(workdir: str, expected_origin: dict | None = None) -> Teacher | None:
  """The teacher stored in workdir, or None if there is none. With
  expected_origin, a teacher made from another config is refused."""
  path = os.path.join(workdir, RECORD_FILE)
  if not os.path.exists(path):
    return None
  fix = (
    f'Delete {path} and {os.path.join(workdir, CHECKPOINT_DIR)} to train the teacher '
    'again (training is deterministic on the same machine and software, so a stored '
    'search can continue with it).'
  )
  try:
    with open(path, encoding='utf-8') as f:
      record = json.load(f)
    record['origin']['spec']  # pylint: disable=pointless-statement
  except (ValueError, KeyError, TypeError) as e:
    raise TeacherDamaged(f'{path} is damaged ({type(e).__name__}: {e}). {fix}') from None
  if expected_origin is not None:
    diff = config_lib.differences(record['origin'], config_lib.as_json(expected_origin))
    if diff:
      raise WorkdirMismatch(
        f'{path} was trained with a different config:\n  '
        + '\n  '.join(diff)
        + '\nUse another --workdir, or delete the teacher files to retrain.'
      )
  spec = spec_lib.from_dict(record['origin']['spec'])
  model = models.build(spec)
  target = models.variable_shapes(model, spec.input_shape)
  checkpoint = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
  try:
    variables = dict(ocp.StandardCheckpointer().restore(checkpoint, target))
  except Exception as e:  # pylint: disable=broad-except
    # Orbax raises many types for a missing or truncated checkpoint.
    raise TeacherDamaged(f'{checkpoint} cannot be read ({checkpoint_lib.why(e)}). {fix}') from None
  stored = record.get('variables_sha256')
  if stored is not None and stored != checkpoint_lib.checksum(variables, {}):
    raise TeacherDamaged(
      f'{checkpoint} does not hold the weights {path} describes (checksum '
      f'mismatch: changed after it was written). {fix}'
    )
  return Teacher(spec, model, variables, record)


def save(workdir: str, teacher: Teacher) -> None:
  os.makedirs(workdir, exist_ok=True)
  ckpt = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
  record = dict(teacher.record, variables_sha256=checkpoint_lib.checksum(teacher.variables, {}))
  with preemption.deferred():
    checkpoint_lib.save_tree(ckpt, teacher.variables)
    if distributed.is_primary():  # all processes save the weights (collective), one the record
      # The record goes last and atomically: its presence means the params are complete.
      atomic.write_text(os.path.join(workdir, RECORD_FILE), json.dumps(record, indent=2))
  teacher.record = record


def adopt(
  config, spec: spec_lib.NetSpec, variables, dataset, workdir: str | None = None
) -> Teacher:
  """A teacher trained elsewhere: `variables` in models.SpecNet's layout
  (models.check_variables; models.from_linen converts a Linen module's),
  scored on `dataset` instead of trained. With `workdir` it is stored like a
  trained teacher, so a rerun finds it and a search there resumes; a workdir
  holding another teacher (other weights included) is refused."""
  try:
    variables = models.check_variables(spec, variables)
  except ValueError as e:
    raise TrainingError(str(e)) from None
  variables = jax.device_put(jax.tree_util.tree_map(np.asarray, variables))
  origin = {
    'spec': spec_lib.to_dict(spec),
    'data': data_origin(config.data),
    'variables_sha256': checkpoint_lib.checksum(variables, {}),
  }
  if workdir is not None:
    stored = load(workdir, origin)
    if stored is not None:
      return stored
  model = models.build(spec)
  accuracy = lambda x, y: train_lib.accuracy(model, variables, x, y)
  record = {
    'name': spec.name,
    'params': spec_lib.param_count(spec),
    'flops': spec_lib.flops(spec),
    'train_accuracy': accuracy(dataset.train_images, dataset.train_labels),
    'val_accuracy': accuracy(dataset.val_images, dataset.val_labels),
    'test_accuracy': accuracy(dataset.test_images, dataset.test_labels),
    'train_examples': int(dataset.train_images.shape[0]),
    'val_examples': int(dataset.val_images.shape[0]),
    'test_examples': int(dataset.test_images.shape[0]),
    'normalisation': {'mean': dataset.mean, 'std': dataset.std},
    'seconds': 0.0,
    'device': jax.devices()[0].device_kind,
    'devices': 1,
    'history': [],
    'trained_elsewhere': True,
    'origin': config_lib.as_json(origin),
  }
  teacher = Teacher(spec, model, variables, record)
  if workdir is not None:
    save(workdir, teacher)
  return teacher


def train_teacher(
  config, dataset, spec: spec_lib.NetSpec, *, progress: bool = True, workdir: str | None = None
) -> Teacher:
  """Train `spec` on `dataset` with config.teacher's schedule; returns the
  teacher with its validation and test accuracy in `record`. With `workdir`,
  progress is saved to WORKDIR/teacher_progress (see runtime.teacher_checkpoint_seconds)
  and a stopped training resumes from it with the same result."""
  t = config.teacher
  start = time.time()
  model = models.build(spec)
  key = jax.random.key(config.seed)
  init_seed, key = jax.random.randint(key, (), 0, 2**31 - 1), jax.random.fold_in(key, 1)
  variables = models.init_variables(model, int(init_seed), spec.input_shape)
  steps_per_epoch = max(1, dataset.train_images.shape[0] // t.batch_size)
  tx = train_lib.make_optimizer(
    t.optimizer,
    t.learning_rate,
    steps_per_epoch=steps_per_epoch,
    decay_epochs=t.decay_epochs,
    decay_factor=t.decay_factor,
    momentum=t.momentum,
    weight_decay=t.weight_decay,
  )
  augment = None
  if config.data.augment:
    from n2n_jax.data import augment_batch  # pylint: disable=g-import-not-at-top

    augment = augment_batch
  # Data parallel over the local devices (as many as divide the batch size).
  devices = jax.local_devices()[: config.runtime.teacher_devices or None]
  mesh = train_lib.data_parallel_mesh(devices, t.batch_size)
  runner = train_lib.EpochRunner(
    train_lib.make_step(model, tx, train_lib.cross_entropy, augment, mesh),
    config.runtime.epoch_mode,
    mesh,
  )
  state = train_lib.TrainState.create(variables, tx)
  data = train_lib.replicate(train_lib.Data(dataset.train_images, dataset.train_labels), mesh)

  origin = config_lib.as_json(_origin(config, spec))
  saver = _ProgressSaver(workdir, origin, config.runtime.teacher_checkpoint_seconds)
  state, history, seconds_before = saver.resume(state)
  state = train_lib.replicate(state, mesh)
  bar = tqdm.trange(
    t.epochs,
    desc=f'teacher {spec.name}',
    unit='epoch',
    initial=len(history),
    disable=not progress,
    dynamic_ncols=True,
  )
  try:
    for epoch in range(len(history), t.epochs):
      # SIGTERM waits for the epoch to end: then weights and history agree
      # and the handler below saves them.
      with preemption.deferred():
        state, metrics = runner.run(state, data, jax.random.fold_in(key, epoch), t.batch_size)
        val = train_lib.accuracy(model, state.variables, dataset.val_images, dataset.val_labels)
        history.append({'epoch': epoch + 1, **metrics, 'val_accuracy': val})
      bar.update(1)
      bar.set_postfix(
        loss=f'{metrics["loss"]:.4f}', train=f'{metrics["accuracy"]:.3f}', val=f'{val:.3f}'
      )
      if not train_lib.is_finite(metrics['loss']):
        raise TrainingError(
          f'teacher loss became {metrics["loss"]} at epoch {epoch + 1}; lower teacher.learning_rate'
        )
      if epoch + 1 < t.epochs:
        saver.maybe_save(state, history, seconds_before + time.time() - start)
  except (preemption.Preempted, KeyboardInterrupt):
    # The save is collective, and the processes of a multi-process run stop
    # at different epochs: they keep their last periodic save instead.
    if distributed.process_count() == 1:
      saver.save(state, history, seconds_before + time.time() - start)
    raise
  finally:
    bar.close()

  variables = jax.device_get(state.variables)
  record = {
    'name': spec.name,
    'params': spec_lib.param_count(spec),
    'flops': spec_lib.flops(spec),
    'train_accuracy': history[-1]['accuracy'],
    'val_accuracy': history[-1]['val_accuracy'],
    'test_accuracy': train_lib.accuracy(model, variables, dataset.test_images, dataset.test_labels),
    'train_examples': int(dataset.train_images.shape[0]),
    'val_examples': int(dataset.val_images.shape[0]),
    'test_examples': int(dataset.test_images.shape[0]),
    'normalisation': {'mean': dataset.mean, 'std': dataset.std},
    'seconds': round(seconds_before + time.time() - start, 2),
    'device': jax.devices()[0].device_kind,
    'devices': 1 if mesh is None else mesh.size,  # data parallel over this many
    'history': history,
    'origin': origin,
  }
  return Teacher(spec, model, variables, record)


def train_or_load(config, spec, workdir: str, get_dataset, *, progress: bool = True) -> Teacher:
  """Reuse the teacher stored in workdir (refusing one from another config),
  else train it on get_dataset() and store it."""
  existing = load(workdir, _origin(config, spec))
  if existing is not None:
    return existing
  teacher = train_teacher(config, get_dataset(), spec, progress=progress, workdir=workdir)
  save(workdir, teacher)
  _ProgressSaver.discard(workdir)
  return teacher


class _ProgressSaver:
  """Teacher training's resumable state: TrainState + history, saved with
  orbax in WORKDIR/teacher_progress at epoch ends (at most every
  `every_seconds`, and on SIGTERM / Ctrl-C)."""

  def __init__(self, workdir: str | None, origin: dict, every_seconds: float):
    self.origin = origin
    self.every_seconds = every_seconds
    self.ckpts = (
      None if workdir is None else checkpoint_lib.Checkpoints(workdir, subdir=PROGRESS_DIR)
    )
    self.saved_epochs = 0
    self.last_save = time.monotonic()

  def resume(self, state) -> tuple:
    """(state, history, seconds trained so far) from saved progress, or the
    fresh `state` with no history."""
    if self.ckpts is None or self.ckpts.latest_step() is None:
      return state, [], 0.0

    def same_teacher(meta):
      diff = config_lib.differences(meta['origin'], self.origin)
      if diff:
        raise _Stale('it was made with a different config: ' + '; '.join(diff))

    try:
      restored, meta = self.ckpts.restore_latest_good(state, same_teacher)
    except (_Stale, checkpoint_lib.CheckpointDamaged) as e:
      warnings.warn(
        f'teacher training starts over: the progress saved in '
        f'{self.ckpts.directory} is not usable ({e})',
        stacklevel=3,
      )
      self.ckpts.delete_all()
      self.ckpts = checkpoint_lib.Checkpoints(self.ckpts.workdir, subdir=PROGRESS_DIR)
      return state, [], 0.0
    self.saved_epochs = len(meta['history'])
    if distributed.is_primary():
      tqdm.tqdm.write(
        f'teacher training resumes after epoch {self.saved_epochs} '
        f'(saved in {self.ckpts.directory})',
        file=sys.stderr,
      )
    return restored, meta['history'], meta['seconds']

  def maybe_save(self, state, history, seconds) -> None:
    # Process 0's clock decides for all: the save is collective.
    if distributed.from_primary(time.monotonic() - self.last_save >= self.every_seconds):
      self.save(state, history, seconds)

  def save(self, state, history, seconds) -> None:
    if self.ckpts is None or len(history) <= self.saved_epochs:
      return
    if any(getattr(x, 'is_deleted', lambda: False)() for x in jax.tree_util.tree_leaves(state)):
      return  # Ctrl-C inside an epoch: its input state was donated to the step
    try:
      self.ckpts.save(
        len(history), state, {'origin': self.origin, 'history': history, 'seconds': seconds}
      )
    finally:
      # A SIGTERM during the write raises once it is complete: the epochs are
      # saved then too, and the save on the way out must not write them again.
      if self.ckpts.latest_step() == len(history):
        self.saved_epochs = len(history)
        self.last_save = time.monotonic()

  @staticmethod
  def discard(workdir: str) -> None:
    checkpoint_lib.Checkpoints(workdir, subdir=PROGRESS_DIR).delete_all()


class _Stale(Exception):
  """Saved teacher progress from another config."""
