"""Turns sampled student specs into validation accuracies: build, initialise,
distil from the teacher's cached logits (paper section 3.5), evaluate.

One `Evaluator` serves a whole search. It keeps the data and the teacher's
training-set logits on the device, and caches each architecture's compiled
programs in memory, so a student the policy samples again costs only its
training.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
import time
import zlib

import jax
import numpy as np

from n2n_jax import models
from n2n_jax import padding
from n2n_jax import program_store as program_store_lib
from n2n_jax import scoring
from n2n_jax import spec as spec_lib
from n2n_jax import train as train_lib

StudentResult = scoring.StudentResult  # where the evaluator's callers have found it


@dataclasses.dataclass(frozen=True)
class DistillSettings:
  epochs: int = 5
  batch_size: int = 64
  learning_rate: float = 5e-4
  weight_decay: float = 5e-4
  loss: str = 'l2'  # 'l2' on logits during search; 'hard_soft' for final training
  soft_weight: float = 1.0
  init: str = 'scratch'  # or 'teacher': start from the teacher's weights where shapes match
  max_train_examples: int = 0  # train on the first N training examples (0 = all)


INITS = ('scratch', 'teacher')


@dataclasses.dataclass
class _Program:
  model: models.SpecNet
  tx: object
  runner: train_lib.EpochRunner
  predict: object  # compiled (variables, images chunk) -> logits; None: compile on use
  shapes: dict  # the variable tree as ShapeDtypeStructs (models.variable_shapes)
  # compiled variables -> TrainState.create(variables, tx); None for
  # data-parallel programs, whose state is created eagerly
  init_state: object = None
  store_key: str | None = None  # the program store entry it was loaded from


def student_seed(spec: spec_lib.NetSpec, seed: int) -> int:
  """A per-architecture init seed: the same student under the same search seed
  starts from the same weights, whenever it is sampled."""
  return zlib.crc32(spec_lib.to_json(spec).encode(), seed) & 0x7FFFFFFF


# Compiled programs by (spec, settings, epoch mode, data shapes): shared by
# every Evaluator in the process, so a resumed search, the final training of a
# student seen during the search, or a second search reuses them.
_PROGRAMS: collections.OrderedDict = collections.OrderedDict()
_MAX_PROGRAMS = 512
_PROGRAMS_LOCK = threading.Lock()  # students on several devices compile in threads


def training_memory_bytes(spec: spec_lib.NetSpec, batch_size: int) -> int:
  """A rough upper estimate of the device memory one training step of `spec`
  needs in float32: parameters, gradients and two Adam moments, plus each
  layer's activations kept for the backward pass and their gradients (x3 for
  what XLA holds alongside, e.g. inside residual blocks)."""
  stats = spec_lib.layer_stats(spec)
  activations = sum(int(np.prod(s.out_shape)) for s in stats) + int(np.prod(spec.input_shape))
  return 4 * (4 * spec_lib.param_count(spec) + 3 * batch_size * activations)


def device_memory_limit() -> int | None:
  """Bytes the default device may allocate, where JAX reports it (GPU, TPU);
  None on CPUs."""
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except  # not every backend implements it
    return None
  return int(stats['bytes_limit']) if stats and 'bytes_limit' in stats else None


class Evaluator:
  """Distils students from `teacher_logits` (the teacher's logits on
  dataset.train_images, computed once by the caller). A student whose
  estimated training memory exceeds `memory_limit_bytes` (default: the
  device's own limit, if known) fails without being compiled.

  `train_many` spreads students over `devices` (default: the first device
  only), one thread per device, each device holding its own copy of the data:
  the students of an iteration train concurrently, and each result is the
  same as on one device, because a student's result depends only on its spec,
  its key and the seed.

  `program_store` (program_store.ProgramStore) keeps compiled programs on disk
  for other processes: an architecture compiled by an earlier run comes up
  without tracing or compiling (data-parallel programs are not stored).

  `inside` (a wider architecture with the same layers, e.g. the source of
  stage 2's students) runs each student as that architecture with the
  channels it lacks held at zero (padding.py): students that differ only in
  width then share one compiled program, at the wide network's arithmetic;
  results are the same up to floating-point rounding. Students that are
  `inside` with layers removed (stage 1's, inside the teacher) run as
  `inside` with those layers switched off; they share one program per set of
  pooling layers kept."""

  def __init__(self, dataset, teacher_logits, settings: DistillSettings,
               epoch_mode: str = 'auto', teacher_variables: dict | None = None,
               memory_limit_bytes: int | None = None, devices=None,
               compile_ahead: bool = True, mesh=None,
               program_store: program_store_lib.ProgramStore | None = None,
               compile_threads: int = 1):
    if settings.init not in INITS:
      raise ValueError(f'unknown init {settings.init!r}; valid: {", ".join(INITS)}')
    if settings.init == 'teacher' and teacher_variables is None:
      raise ValueError("init='teacher' needs the teacher's variables")
    if teacher_logits.shape[0] != dataset.train_images.shape[0]:
      raise ValueError(f'teacher_logits has {teacher_logits.shape[0]} rows for '
                       f'{dataset.train_images.shape[0]} training images')
    self.dataset = dataset
    self.settings = settings
    self.epoch_mode = train_lib.resolve_epoch_mode(epoch_mode)
    self.teacher_variables = teacher_variables
    self.memory_limit_bytes = memory_limit_bytes or device_memory_limit()
    total = dataset.train_images.shape[0]
    if settings.max_train_examples and settings.max_train_examples < total:
      # A fixed random subset: splits keep their source's order, which may be sorted by class.
      keep = np.sort(np.random.default_rng(0).permutation(total)[:settings.max_train_examples])
      images, labels, teacher_logits = (dataset.train_images[keep], dataset.train_labels[keep],
                                        teacher_logits[keep])
    else:
      images, labels = dataset.train_images, dataset.train_labels
    self.data = train_lib.Data(images, labels, teacher_logits)
    self.devices = list(devices) if devices else jax.local_devices()[:1]
    # Data parallel (train.data_parallel_mesh): every student's batches are
    # split over the mesh's devices, data and state replicated on them.
    self.mesh = mesh
    if mesh is not None and len(self.devices) > 1:
      raise ValueError('an Evaluator trains students either on several devices or data '
                       'parallel over a mesh, not both')
    self._copies = {}  # device -> (Data, val images, val labels) resident there
    self._lock = threading.Lock()
    # Seconds students waited for their programs to compile, for the run's
    # time split; compiling that overlapped training is not in it.
    self.compile_seconds = 0.0
    self.compile_ahead = compile_ahead
    if not isinstance(compile_threads, int) or compile_threads < 1:
      raise ValueError(f'compile_threads must be an integer >= 1, got {compile_threads!r}')
    self.compile_threads = compile_threads
    self._pending = {}  # program key -> Future of a compile started by start_compiling
    self.program_store = program_store

  def _resident(self, device) -> tuple:
    """(training Data, validation images, labels) on `device`, copied once."""
    with self._lock:
      if device not in self._copies:
        arrays = (self.data, self.dataset.val_images, self.dataset.val_labels)
        self._copies[device] = (train_lib.replicate(arrays, self.mesh) if self.mesh
                                else jax.device_put(arrays, device))
      return self._copies[device]

  def _program_key(self, spec: spec_lib.NetSpec, device) -> tuple:
    # The validation images too: the forward pass is compiled for their shape.
    data, val_images, _ = self._resident(device)
    data_shapes = tuple((x.shape, x.dtype) for x in jax.tree_util.tree_leaves((data, val_images)))
    return (spec, self.settings, self.epoch_mode, data_shapes, device, self.mesh)

  def _program(self, spec: spec_lib.NetSpec, device=None) -> tuple:
    """The compiled programs for `spec` on `device` (cached), and the seconds
    this call waited for them: compiling here, or for a compile that
    `start_compiling` started. A compiled program serves only the device it was
    built for."""
    device = device or self.devices[0]
    key = self._program_key(spec, device)
    start = time.perf_counter()
    with _PROGRAMS_LOCK:
      pending = self._pending.pop(key, None)
      program = _PROGRAMS.get(key)
      if program is not None:
        _PROGRAMS.move_to_end(key)
    if pending is not None:
      program = pending.result()  # raises whatever compiling raised
    elif program is None:
      program = self._compile(spec, device, key)
    else:
      return program, 0.0
    waited = time.perf_counter() - start
    with self._lock:
      self.compile_seconds += waited
    return program, waited

  def _compile(self, spec: spec_lib.NetSpec, device, key) -> _Program:
    """Build and compile `spec`'s train step and validation forward pass (or
    load them from the program store) and cache them under `key`."""
    s = self.settings
    model = models.build(spec)
    steps = max(1, self.data.images.shape[0] // s.batch_size)
    tx = train_lib.make_optimizer('adam', s.learning_rate, steps_per_epoch=steps,
                                  weight_decay=s.weight_decay)
    step = train_lib.make_step(model, tx, train_lib.make_loss(s.loss, s.soft_weight),
                               mesh=self.mesh)
    runner = train_lib.EpochRunner(step, self.epoch_mode, self.mesh)
    if self.mesh is None:
      program = self._compile_programs(spec, model, tx, runner, device)
    else:
      # Data-parallel programs compile on first use (shardings come with
      # the real arrays).
      program = _Program(model, tx, runner, None, models.variable_shapes(model, spec.input_shape))
    with _PROGRAMS_LOCK:
      _PROGRAMS[key] = program
      if len(_PROGRAMS) > _MAX_PROGRAMS:
        _PROGRAMS.popitem(last=False)
    return program

  def _compile_programs(self, spec, model, tx, runner, device) -> _Program:
    """`spec`'s programs: compiled here, so that compile time is told apart
    from training time and can overlap other students' training, or loaded
    from the program store. The initial optimiser state is one small program
    too (created eagerly, it cost one compile per new variable shape, 0.2 s
    for a VGG-13 student in a fresh process)."""
    data, val_images, _ = self._resident(device)
    store, store_key, spec_json = self.program_store, None, spec_lib.to_json(spec)
    if store is not None:
      data_shapes = tuple((x.shape, str(x.dtype)) for x in
                          jax.tree_util.tree_leaves((data, val_images)))
      # Switches (padding.with_switches) are not part of a spec's JSON.
      switched = (('switched', spec.switched),) if spec.switched else ()
      store_key = store.key(device, spec_json, self.settings, self.epoch_mode, data_shapes,
                            *switched)
      loaded = store.load(store_key, spec=spec_json)
      if loaded is not None:
        programs, extras = loaded
        runner.install(programs['train'])
        return _Program(model, tx, runner, programs['predict'], extras['shapes'],
                        programs['init_state'], store_key)
    shapes = models.variable_shapes(model, spec.input_shape)
    create = lambda v: train_lib.TrainState.create(v, tx)  # pylint: disable=unnecessary-lambda-assignment
    with jax.default_device(device):
      lowered = {'init_state': jax.jit(create).lower(shapes),
                 'train': runner.lower(jax.eval_shape(create, shapes), data,
                                       self.settings.batch_size),
                 'predict': train_lib.lower_predict(model, shapes, val_images)}
      with program_store_lib.persistent_cache_hits() as hits:
        programs = {name: program.compile() for name, program in lowered.items()}
    runner.install(programs['train'])
    # Programs from JAX's persistent cache (compiled before the store had
    # them) cannot be stored; they keep coming from that cache.
    if store is not None and not hits():
      store.save(store_key, programs, {'shapes': shapes, 'spec': spec_json})
    return _Program(model, tx, runner, programs['predict'], shapes, programs['init_state'])

  def _forget(self, spec: spec_lib.NetSpec, device, program: _Program) -> None:
    """Drop `program` (loaded from the program store) from memory and disk."""
    self.program_store.discard(program.store_key)
    key = self._program_key(spec, device)
    with _PROGRAMS_LOCK:
      if _PROGRAMS.get(key) is program:
        del _PROGRAMS[key]

  def _wide(self, spec: spec_lib.NetSpec, inside: spec_lib.NetSpec | None) -> tuple:
    """(the spec to compile, the student's padding.embedding in it or None,
    the switches that make it the student or None). A student with the same
    layers as `inside` runs as `inside` (padding.widen), one with layers
    removed as `inside` with switches (padding.with_switches); one that fits
    neither, or whose wide network would not fit the device's memory, runs as
    itself (a broken one then fails with its own SpecError when it trains)."""
    if inside is not None:
      for fit in (lambda: (padding.widen(spec, inside), None),
                  lambda: padding.with_switches(spec, inside)):
        try:
          wide, on = fit()
          if not self._too_large(wide):
            return wide, padding.embedding(spec, wide, on), on
        except (padding.NotEmbeddable, spec_lib.SpecError):
          pass
    return spec, None, None

  def start_compiling(self, jobs) -> None:
    """Start compiling the programs of [(spec, device), ...] in order on
    `compile_threads` background threads, so that students compile while the
    ones before them train. A later `_program` call for the same spec waits
    for it (and gets its error, if compiling failed) instead of compiling
    again. Students too large for the device, and programs already compiled
    or on their way, are skipped."""
    todo = []
    keyed = [(spec, device, self._program_key(spec, device)) for spec, device in jobs
             if self._may_compile(spec)]
    with _PROGRAMS_LOCK:
      for spec, device, key in keyed:
        if key in _PROGRAMS or key in self._pending:
          continue
        self._pending[key] = concurrent.futures.Future()
        todo.append((spec, device, key, self._pending[key]))
    if not todo:
      return

    queue = iter(todo)  # shared by the threads: each takes the next student in order
    queue_lock = threading.Lock()

    def work():
      while True:
        with queue_lock:
          job = next(queue, None)
        if job is None:
          return
        spec, device, key, future = job
        if not future.set_running_or_notify_cancel():
          continue
        try:
          future.set_result(self._compile(spec, device, key))
        except BaseException as e:  # pylint: disable=broad-except  # handed to the waiter
          future.set_exception(e)

    # Daemons: a SIGTERM ends the process without waiting for them.
    for _ in range(min(self.compile_threads, len(todo))):
      threading.Thread(target=work, name='n2n-compile-ahead', daemon=True).start()

  def _may_compile(self, spec: spec_lib.NetSpec) -> bool:
    """Whether compiling `spec` ahead is worth starting: not for a student
    too large for the device, nor for a broken one (it fails with its own
    SpecError when it trains, not here for the whole batch)."""
    try:
      return not self._too_large(spec)
    except spec_lib.SpecError:
      return False

  def _too_large(self, spec: spec_lib.NetSpec) -> str | None:
    """Why `spec` cannot train on a device of memory_limit_bytes, or None."""
    if not self.memory_limit_bytes:
      return None
    need = training_memory_bytes(spec, self.settings.batch_size)
    if need <= self.memory_limit_bytes:
      return None
    return (f'too large for device memory: training needs about {need / 2**20:.0f} MB, the '
            f'limit is {self.memory_limit_bytes / 2**20:.0f} MB')

  def train_many(self, jobs, seed: int, *, inside: spec_lib.NetSpec | None = None) -> list:
    """StudentResults for [(spec, key), ...], in order: job i runs on
    devices[i % len(devices)], the devices concurrently. `inside`: see the
    class docstring."""
    placed = [self.devices[i % len(self.devices)] for i in range(len(jobs))]
    if self.compile_ahead:
      # Each device's first student compiles in its own thread; the others
      # are compiled in the background while those train.
      self.start_compiling([(self._wide(spec, inside)[0], d)
                            for (spec, _), d in zip(jobs, placed)][len(self.devices):])
    if len(self.devices) == 1 or len(jobs) <= 1:
      return [self.train(spec, key, seed, inside=inside) for spec, key in jobs]
    results = [None] * len(jobs)

    def work(d):
      for i in range(d, len(jobs), len(self.devices)):
        results[i] = self.train(*jobs[i], seed, device=self.devices[d], inside=inside)

    # Daemon threads: a SIGTERM in the main thread ends the process without
    # waiting for students still training (their work is redone on resume).
    threads = [threading.Thread(target=work, args=(d,), daemon=True)
               for d in range(min(len(self.devices), len(jobs)))]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    return results

  def __call__(self, students, keys, seed: int, *,
               inside: spec_lib.NetSpec | None = None) -> list:
    """The search's scorer (scoring.Scorer): each student distilled and
    scored on the validation split, as `train_many` does."""
    return self.train_many(list(zip(students, keys)), seed, inside=inside)

  def train(self, spec: spec_lib.NetSpec, key, seed: int, *, keep_variables: bool = False,
            progress=None, device=None, initial_variables: dict | None = None,
            inside: spec_lib.NetSpec | None = None) -> StudentResult:
    """Train one student for settings.epochs on `device` (default: the first
    of `devices`) and measure validation accuracy. Failures (a spec that
    cannot be built, a non-finite loss, an error while compiling or running)
    come back as StudentResult.error, never as exceptions. `initial_variables`
    (e.g. a pruned network's weights) replaces the fresh initialisation.
    `inside`: see the class docstring; kept variables are the student's own."""
    device = device or self.devices[0]
    with jax.default_device(device):
      return self._train(spec, key, seed, keep_variables, progress, device, initial_variables,
                         inside)

  def _train(self, spec, key, seed, keep_variables, progress, device,
             initial_variables=None, inside=None) -> StudentResult:
    start = time.perf_counter()
    compile_s, program = 0.0, None
    try:
      run_spec, places, on = self._wide(spec, inside)
      too_large = self._too_large(run_spec)
      if too_large:
        return StudentResult(float('nan'), too_large)
      program, compile_s = self._program(run_spec, device)
      data, val_images, val_labels = self._resident(device)
      if initial_variables is not None:
        variables = initial_variables
      else:
        # The student's own initial values, also when it runs padded.
        shapes = program.shapes if places is None else padding.student_shapes(places)
        variables = models.init_variables(program.model, student_seed(spec, seed),
                                          spec.input_shape, shapes)
      if initial_variables is None and self.settings.init == 'teacher':
        variables, _ = models.inherit_variables(variables, self.teacher_variables)
      if places is not None:
        variables = padding.pad(variables, places, program.shapes, on)
      # Teacher weights live on the first device; the program runs on `device`
      # (or on every device of the mesh).
      if self.mesh is None:
        state = program.init_state(jax.device_put(variables, device))
      else:
        state = train_lib.replicate(train_lib.TrainState.create(variables, program.tx),
                                    self.mesh)
      for epoch in range(self.settings.epochs):
        state, metrics = program.runner.run(state, data, jax.random.fold_in(key, epoch),
                                            self.settings.batch_size)
        if not np.isfinite(metrics['loss']):
          return StudentResult(float('nan'), f'training loss is {metrics["loss"]} at epoch '
                               f'{epoch + 1}', time.perf_counter() - start - compile_s, compile_s)
        if progress is not None:
          progress(epoch + 1, metrics)
      logits = train_lib.predict(program.model, state.variables, val_images,
                                 compiled=program.predict)
      if not train_lib.is_finite(logits):
        return StudentResult(float('nan'), 'validation logits are not finite (NaN or Inf)',
                             time.perf_counter() - start - compile_s, compile_s)
      accuracy = train_lib.accuracy_of(logits, val_labels)
    except Exception as e:  # pylint: disable=broad-except
      if program is not None and program.store_key is not None:
        # A stored program that fails is a bad entry (see program_store):
        # drop it and train this student again on freshly compiled programs.
        self._forget(run_spec, device, program)
        return self._train(spec, key, seed, keep_variables, progress, device, initial_variables,
                           inside)
      # One broken student must not end a search of hundreds: record why.
      reason = f'{type(e).__name__}: {e}'.splitlines()[0][:300]
      if 'RESOURCE_EXHAUSTED' in reason or 'Out of memory' in reason:
        reason = 'out of device memory: ' + reason
      return StudentResult(float('nan'), reason, time.perf_counter() - start - compile_s,
                           compile_s)
    kept = None
    if keep_variables:
      kept = jax.device_get(state.variables)
      kept = kept if places is None else padding.unpad(kept, places)
    return StudentResult(accuracy, None, time.perf_counter() - start - compile_s, compile_s, kept)

