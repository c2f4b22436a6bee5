"""Turns sampled student specs into validation accuracies: build, initialise,
distil from the teacher's cached logits (paper section 3.5), evaluate.

One `Evaluator` serves a whole search. It keeps the data and the teacher's
training-set logits on the device, and caches each architecture's compiled
programs in memory, so a student the policy samples again costs only its
training.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import warnings
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from n2n_jax import fanout
from n2n_jax import models
from n2n_jax import padding
from n2n_jax import program_cache as program_cache_lib
from n2n_jax import program_store as program_store_lib
from n2n_jax import scoring
from n2n_jax import spec as spec_lib
from n2n_jax import stacked as stacked_lib
from n2n_jax import student_programs
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

  @classmethod
  def from_config(cls, section, **fixed) -> DistillSettings:
    """The settings a config section (config.distill, config.final) names,
    field by field, plus `fixed` ones the section does not hold (the loss)."""
    names = [f.name for f in dataclasses.fields(cls) if f.name in section and f.name not in fixed]
    return cls(**{name: section[name] for name in names}, **fixed)


INITS = ('scratch', 'teacher')


def student_seed(spec: spec_lib.NetSpec, seed: int) -> int:
  """A per-architecture init seed: the same student under the same search seed
  starts from the same weights, whenever it is sampled."""
  return zlib.crc32(spec_lib.to_json(spec).encode(), seed) & 0x7FFFFFFF


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

  Students' compiled programs come from `programs`
  (student_programs.StudentPrograms), which keeps them in `program_cache`
  (program_cache.ProgramCache, default the process-wide one) and, with
  `program_store` (program_store.ProgramStore), on disk for other processes:
  an architecture compiled by an earlier run comes up without tracing or
  compiling (data-parallel programs are not stored).

  `inside` (a wider architecture with the same layers, e.g. the source of
  stage 2's students) runs each student as that architecture with the
  channels it lacks held at zero (padding.py): students that differ only in
  width then share one compiled program, at the wide network's arithmetic;
  results are the same up to floating-point rounding. Students that are
  `inside` with layers removed (stage 1's, inside the teacher) run as
  `inside` with those layers switched off; they share one program per set of
  pooling layers kept.

  `together` ('vmap' or 'map', stacked.py; None: one student per call):
  students of one `train_many` call that share a program train in one
  compiled call, `students_per_call` at a time (a shorter group is padded
  with inert copies, so the count never compiles a new program). A group
  whose `students_per_call` wide networks would not fit the memory limit, or
  whose stacked call fails (out of memory, say), trains one by one."""

  def __init__(
    self,
    dataset,
    teacher_logits,
    settings: DistillSettings,
    epoch_mode: str = 'auto',
    teacher_variables: dict | None = None,
    memory_limit_bytes: int | None = None,
    devices=None,
    compile_ahead: bool = True,
    mesh=None,
    program_store: program_store_lib.ProgramStore | None = None,
    compile_threads: int = 1,
    *,
    program_cache: program_cache_lib.ProgramCache | None = None,
    together: str | None = None,
    students_per_call: int = 1,
  ):
    if settings.init not in INITS:
      raise ValueError(f'unknown init {settings.init!r}; valid: {", ".join(INITS)}')
    if settings.init == 'teacher' and teacher_variables is None:
      raise ValueError("init='teacher' needs the teacher's variables")
    if teacher_logits.shape[0] != dataset.train_images.shape[0]:
      raise ValueError(
        f'teacher_logits has {teacher_logits.shape[0]} rows for '
        f'{dataset.train_images.shape[0]} training images'
      )
    if together is not None and together not in stacked_lib.LOWERINGS:
      raise ValueError(
        f'unknown together={together!r}; valid: None, {", ".join(stacked_lib.LOWERINGS)}'
      )
    if not isinstance(students_per_call, int) or students_per_call < 1:
      raise ValueError(f'students_per_call must be an integer >= 1, got {students_per_call!r}')
    self.dataset = dataset
    self.settings = settings
    self.epoch_mode = train_lib.resolve_epoch_mode(epoch_mode)
    self.teacher_variables = teacher_variables
    self.memory_limit_bytes = memory_limit_bytes or device_memory_limit()
    total = dataset.train_images.shape[0]
    if settings.max_train_examples and settings.max_train_examples < total:
      # A fixed random subset: splits keep their source's order, which may be sorted by class.
      keep = np.sort(np.random.default_rng(0).permutation(total)[: settings.max_train_examples])
      images, labels, teacher_logits = (
        dataset.train_images[keep],
        dataset.train_labels[keep],
        teacher_logits[keep],
      )
    else:
      images, labels = dataset.train_images, dataset.train_labels
    self.data = train_lib.Data(images, labels, teacher_logits)
    self.devices = list(devices) if devices else jax.local_devices()[:1]
    # Data parallel (train.data_parallel_mesh): every student's batches are
    # split over the mesh's devices, data and state replicated on them.
    self.mesh = mesh
    if mesh is not None and len(self.devices) > 1:
      raise ValueError(
        'an Evaluator trains students either on several devices or data '
        'parallel over a mesh, not both'
      )
    # Stacked students are not split over a mesh.
    self.together = None if mesh is not None else together
    self.students_per_call = students_per_call
    self._copies = {}  # device -> (Data, val images, val labels) resident there
    self._lock = threading.Lock()
    self.compile_ahead = compile_ahead
    self.programs = student_programs.StudentPrograms(
      settings,
      self.epoch_mode,
      self._resident,
      images.shape[0],
      mesh=mesh,
      store=program_store,
      cache=program_cache,
      compile_threads=compile_threads,
    )
    self._warned_fallback = False

  @property
  def compile_seconds(self) -> float:
    """Seconds students waited for their programs to compile, for the run's
    time split; compiling that overlapped training is not in it."""
    return self.programs.compile_seconds

  def _resident(self, device) -> tuple:
    """(training Data, validation images, labels) on `device`, copied once."""
    with self._lock:
      if device not in self._copies:
        arrays = (self.data, self.dataset.val_images, self.dataset.val_labels)
        self._copies[device] = (
          train_lib.replicate(arrays, self.mesh) if self.mesh else jax.device_put(arrays, device)
        )
      return self._copies[device]

  def _stacking_for(self, wide: spec_lib.NetSpec) -> tuple | None:
    """(lowering, students per call) of the stacked program for students
    running as `wide`, or None where they train one per call: not `together`,
    or students_per_call wide networks would not fit the memory limit."""
    if self.together is None or self._too_large(wide, self.students_per_call):
      return None
    return (self.together, self.students_per_call)

  def _wide(self, spec: spec_lib.NetSpec, inside: spec_lib.NetSpec | None) -> tuple:
    """(the spec to compile, the student's padding.embedding in it or None,
    the switches that make it the student or None). A student with the same
    layers as `inside` runs as `inside` (padding.widen), one with layers
    removed as `inside` with switches (padding.with_switches); one that fits
    neither, or whose wide network would not fit the device's memory, runs as
    itself (a broken one then fails with its own SpecError when it trains)."""
    if inside is not None:
      for fit in (
        lambda: (padding.widen(spec, inside), None),
        lambda: padding.with_switches(spec, inside),
      ):
        try:
          wide, on = fit()
          if not self._too_large(wide):
            return wide, padding.embedding(spec, wide, on), on
        except (padding.NotEmbeddable, spec_lib.SpecError):
          pass
    return spec, None, None

  def _may_compile(self, spec: spec_lib.NetSpec) -> bool:
    """Whether compiling `spec` ahead is worth starting: not for a student
    too large for the device, nor for a broken one (it fails with its own
    SpecError when it trains, not here for the whole batch)."""
    try:
      return not self._too_large(spec)
    except spec_lib.SpecError:
      return False

  def _too_large(self, spec: spec_lib.NetSpec, count: int = 1) -> str | None:
    """Why `count` students of `spec` cannot train at once on a device of
    memory_limit_bytes, or None."""
    if not self.memory_limit_bytes:
      return None
    need = count * training_memory_bytes(spec, self.settings.batch_size)
    if need <= self.memory_limit_bytes:
      return None
    return (
      f'too large for device memory: training needs about {need / 2**20:.0f} MB, the '
      f'limit is {self.memory_limit_bytes / 2**20:.0f} MB'
    )

  def _plan(self, jobs, inside) -> list:
    """The calls that train [(spec, key), ...]: (job indices, wide spec to
    stack them in or None). With `together`, students that run as the same
    wide network (inside `inside`) go in groups of students_per_call, first
    come first; every other student is a call of its own."""
    if self.together is None or inside is None:
      return [([i], None) for i in range(len(jobs))]
    groups, units = {}, []
    for i, (spec, _) in enumerate(jobs):
      try:
        wide, places, _ = self._wide(spec, inside)
      except spec_lib.SpecError:
        places = None
      if places is None or self._stacking_for(wide) is None:
        units.append(([i], None))
        continue
      group = groups.get(wide)
      if group is None or len(group) == self.students_per_call:
        group = groups[wide] = []
        units.append((group, wide))
      group.append(i)
    return units

  def train_many(self, jobs, seed: int, *, inside: spec_lib.NetSpec | None = None) -> list:
    """StudentResults for [(spec, key), ...], in order. The calls that train
    them (one student each, or a stacked group, see `together`) are spread
    over the devices, call i on devices[i % len(devices)], the devices
    concurrently. `inside`: see the class docstring."""
    units = self._plan(jobs, inside)
    if self.compile_ahead:
      # Each device's first call compiles in its own thread; the others are
      # compiled in the background while those train.
      ahead = []
      for (indices, wide), device in zip(units, fanout.placement(len(units), self.devices)):
        spec = wide if wide is not None else self._wide(jobs[indices[0]][0], inside)[0]
        if self._may_compile(spec):
          ahead.append((spec, device, self._stacking_for(wide) if wide is not None else None))
      self.programs.compile_ahead(ahead[len(self.devices) :])
    results = [None] * len(jobs)

    def run(unit, device):
      indices, wide = unit
      if wide is None:
        results[indices[0]] = self.train(*jobs[indices[0]], seed, device=device, inside=inside)
      else:
        for i, r in zip(
          indices, self._train_stacked([jobs[i] for i in indices], seed, wide, inside, device)
        ):
          results[i] = r

    fanout.over_devices(units, self.devices, run)
    return results

  def __call__(self, students, keys, seed: int, *, inside: spec_lib.NetSpec | None = None) -> list:
    """The search's scorer (scoring.Scorer): each student distilled and
    scored on the validation split, as `train_many` does."""
    return self.train_many(list(zip(students, keys)), seed, inside=inside)

  def prepare(self, source: spec_lib.NetSpec, *, removals: bool) -> None:
    """Start compiling, in the background, the program that students inside
    `source` share (stage 1's with all pools kept when `removals`, stage 2's
    otherwise), one per device, so it compiles while the search's policy
    compiles its sampler; the first iteration's students then find it built
    (scoring.py's `prepare`). Nothing to do without compiling ahead."""
    if not self.compile_ahead:
      return
    try:
      wide = padding.with_switches(source, source)[0] if removals else source
    except (padding.NotEmbeddable, spec_lib.SpecError):
      return
    if self._may_compile(wide):
      self.programs.compile_ahead(
        [(wide, device, self._stacking_for(wide)) for device in self.devices]
      )

  def _initial_variables(
    self, program: student_programs.Program, spec, seed: int, places, on
  ) -> dict:
    """The student's own initial values (also when it runs padded), from the
    teacher where settings.init says so, placed in the wide network."""
    shapes = program.shapes if places is None else padding.student_shapes(places)
    variables = models.init_variables(
      program.model, student_seed(spec, seed), spec.input_shape, shapes
    )
    if self.settings.init == 'teacher':
      variables, _ = models.inherit_variables(variables, self.teacher_variables)
    return variables if places is None else padding.pad(variables, places, program.shapes, on)

  def _train_stacked(self, jobs, seed: int, wide: spec_lib.NetSpec, inside, device) -> list:
    """StudentResults of [(spec, key), ...], every one running as `wide`,
    trained together in one stacked program (see `together`); one by one
    when that fails as a whole."""
    start, program = time.perf_counter(), None
    try:
      with jax.default_device(device):
        program, compile_s = self.programs.get(wide, device, self._stacking_for(wide))
        data, val_images, val_labels = self._resident(device)
        variables, keys = [], []
        for spec, key in jobs:
          _, places, on = self._wide(spec, inside)
          variables.append(self._initial_variables(program, spec, seed, places, on))
          keys.append(key)
        # Inert copies of the first student fill the call; their results are dropped.
        inert = self.students_per_call - len(jobs)
        states = program.init_state(
          jax.device_put(stacked_lib.stack(variables + variables[:1] * inert), device)
        )
        keys = jnp.stack(keys + keys[:1] * inert)
        errors = [None] * len(jobs)
        for epoch in range(self.settings.epochs):
          states, metrics = program.runner.run(
            states,
            data,
            jax.vmap(jax.random.fold_in, (0, None))(keys, epoch),
            self.settings.batch_size,
          )
          for i, loss in enumerate(metrics['loss'][: len(jobs)]):
            if errors[i] is None and not np.isfinite(loss):
              errors[i] = f'training loss is {loss} at epoch {epoch + 1}'
        logits = train_lib.predict(
          program.model, states.variables, val_images, compiled=program.predict
        )
        finite = stacked_lib.finite(logits)
        accuracy = stacked_lib.accuracies(logits, val_labels)
    except Exception as e:  # pylint: disable=broad-except
      if program is not None and program.store_key is not None:
        # A bad program store entry (see program_store): compile afresh.
        self.programs.forget(wide, device, program, self._stacking_for(wide))
        return self._train_stacked(jobs, seed, wide, inside, device)
      if not self._warned_fallback:
        self._warned_fallback = True
        warnings.warn(
          f'{len(jobs)} students trained together failed '
          f'({str(e).splitlines()[0][:200]}); training them one by one',
          stacklevel=2,
        )
      return [self.train(spec, key, seed, device=device, inside=inside) for spec, key in jobs]
    each = (time.perf_counter() - start - compile_s) / len(jobs)
    results = []
    for i in range(len(jobs)):
      if errors[i] is None and not finite[i]:
        errors[i] = 'validation logits are not finite (NaN or Inf)'
      results.append(
        StudentResult(
          float('nan') if errors[i] else float(accuracy[i]),
          errors[i],
          each,
          compile_s if i == 0 else 0.0,
        )
      )
    return results

  def train(
    self,
    spec: spec_lib.NetSpec,
    key,
    seed: int,
    *,
    keep_variables: bool = False,
    progress=None,
    device=None,
    initial_variables: dict | None = None,
    inside: spec_lib.NetSpec | None = None,
  ) -> StudentResult:
    """Train one student for settings.epochs on `device` (default: the first
    of `devices`) and measure validation accuracy. Failures (a spec that
    cannot be built, a non-finite loss, an error while compiling or running)
    come back as StudentResult.error, never as exceptions. `initial_variables`
    (e.g. a pruned network's weights) replaces the fresh initialisation.
    `inside`: see the class docstring; kept variables are the student's own."""
    device = device or self.devices[0]
    with jax.default_device(device):
      return self._train(
        spec, key, seed, keep_variables, progress, device, initial_variables, inside
      )

  def _train(
    self, spec, key, seed, keep_variables, progress, device, initial_variables=None, inside=None
  ) -> StudentResult:
    start = time.perf_counter()
    compile_s, program = 0.0, None
    try:
      run_spec, places, on = self._wide(spec, inside)
      too_large = self._too_large(run_spec)
      if too_large:
        return StudentResult(float('nan'), too_large)
      program, compile_s = self.programs.get(run_spec, device)
      data, val_images, val_labels = self._resident(device)
      if initial_variables is not None:
        variables = initial_variables
        if places is not None:
          variables = padding.pad(variables, places, program.shapes, on)
      else:
        variables = self._initial_variables(program, spec, seed, places, on)
      # Teacher weights live on the first device; the program runs on `device`
      # (or on every device of the mesh).
      if self.mesh is None:
        state = program.init_state(jax.device_put(variables, device))
      else:
        state = train_lib.replicate(train_lib.TrainState.create(variables, program.tx), self.mesh)
      for epoch in range(self.settings.epochs):
        state, metrics = program.runner.run(
          state, data, jax.random.fold_in(key, epoch), self.settings.batch_size
        )
        if not np.isfinite(metrics['loss']):
          return StudentResult(
            float('nan'),
            f'training loss is {metrics["loss"]} at epoch {epoch + 1}',
            time.perf_counter() - start - compile_s,
            compile_s,
          )
        if progress is not None:
          progress(epoch + 1, metrics)
      logits = train_lib.predict(
        program.model, state.variables, val_images, compiled=program.predict
      )
      if not train_lib.is_finite(logits):
        return StudentResult(
          float('nan'),
          'validation logits are not finite (NaN or Inf)',
          time.perf_counter() - start - compile_s,
          compile_s,
        )
      accuracy = train_lib.accuracy_of(logits, val_labels)
    except Exception as e:  # pylint: disable=broad-except
      if program is not None and program.store_key is not None:
        # A stored program that fails is a bad entry (see program_store):
        # drop it and train this student again on freshly compiled programs.
        self.programs.forget(run_spec, device, program)
        return self._train(
          spec, key, seed, keep_variables, progress, device, initial_variables, inside
        )
      # One broken student must not end a search of hundreds: record why.
      reason = f'{type(e).__name__}: {e}'.splitlines()[0][:300]
      if 'RESOURCE_EXHAUSTED' in reason or 'Out of memory' in reason:
        reason = 'out of device memory: ' + reason
      return StudentResult(float('nan'), reason, time.perf_counter() - start - compile_s, compile_s)
    kept = None
    if keep_variables:
      kept = jax.device_get(state.variables)
      kept = kept if places is None else padding.unpad(kept, places)
    return StudentResult(accuracy, None, time.perf_counter() - start - compile_s, compile_s, kept)
