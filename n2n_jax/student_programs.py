"""A student's compiled programs: built, compiled (or loaded from the program
store), kept in memory, and compiled ahead on background threads.

A student's programs are its train step (or scanned epoch), its validation
forward pass and its initial optimiser state, for one device and one data
shape; `stacking` ((lowering, K), stacked.py) makes them train and score K
students of the same architecture in one call. Compiling them is seconds
per new architecture (most of a search on a GPU, docs/performance.md), so
they are compiled once, separately from training (compile time is reported
apart and can overlap other students' training), kept in a ProgramCache
(program_cache.py) and, where a program store is given, on disk for later
processes.
"""

from __future__ import annotations

import dataclasses
import threading
import time

import jax

from n2n_jax import models
from n2n_jax import program_cache as program_cache_lib
from n2n_jax import program_store as program_store_lib
from n2n_jax import spec as spec_lib
from n2n_jax import stacked as stacked_lib
from n2n_jax import train as train_lib


@dataclasses.dataclass
class Program:
  model: models.SpecNet
  tx: object
  runner: object  # train.EpochRunner, or stacked.StackedRunner for stacked students
  predict: object  # compiled (variables, images chunk) -> logits; None: compile on use
  shapes: dict  # one student's variable tree as ShapeDtypeStructs (models.variable_shapes)
  # compiled variables -> TrainState.create(variables, tx); None for
  # data-parallel programs, whose state is created eagerly
  init_state: object = None
  store_key: str | None = None  # the program store entry it was loaded from


class StudentPrograms:
  """Programs for students distilled with `settings` (evaluator.DistillSettings)
  in `epoch_mode` on the arrays `resident(device)` returns ((train.Data,
  validation images, labels) on that device), over `num_train` training
  examples. `mesh`: data-parallel programs (compiled on first use, not
  stored). `cache` defaults to the process-wide program_cache.SHARED."""

  def __init__(
    self,
    settings,
    epoch_mode: str,
    resident,
    num_train: int,
    *,
    mesh=None,
    store: program_store_lib.ProgramStore | None = None,
    cache: program_cache_lib.ProgramCache | None = None,
    compile_threads: int = 1,
  ):
    if not isinstance(compile_threads, int) or compile_threads < 1:
      raise ValueError(f'compile_threads must be an integer >= 1, got {compile_threads!r}')
    self.settings, self.epoch_mode, self.mesh = settings, epoch_mode, mesh
    self.resident, self.num_train = resident, num_train
    self.store = store
    self.cache = cache if cache is not None else program_cache_lib.SHARED
    self.compile_threads = compile_threads
    # Seconds callers waited for programs to compile (compiling that
    # overlapped training is not in it).
    self.compile_seconds = 0.0
    self._lock = threading.Lock()

  def key(self, spec: spec_lib.NetSpec, device, stacking=None) -> tuple:
    # The validation images too: the forward pass is compiled for their shape.
    data, val_images, _ = self.resident(device)
    data_shapes = tuple((x.shape, x.dtype) for x in jax.tree_util.tree_leaves((data, val_images)))
    return (spec, self.settings, self.epoch_mode, data_shapes, device, self.mesh, stacking)

  def get(self, spec: spec_lib.NetSpec, device, stacking=None) -> tuple:
    """(`spec`'s programs on `device`, the seconds this call waited for them:
    compiling here, or for a compile `compile_ahead` started). A compiled
    program serves only the device it was built for."""
    key = self.key(spec, device, stacking)
    start = time.perf_counter()
    program, pending = self.cache.take(key)
    if pending is not None:
      program = pending.result()  # raises whatever compiling raised
    elif program is None:
      program = self._build(spec, device, key)
    else:
      return program, 0.0
    waited = time.perf_counter() - start
    with self._lock:
      self.compile_seconds += waited
    return program, waited

  def forget(self, spec: spec_lib.NetSpec, device, program: Program, stacking=None) -> None:
    """Drop `program` (loaded from the program store and found bad) from
    memory and disk."""
    self.store.discard(program.store_key)
    self.cache.discard(self.key(spec, device, stacking), program)

  def compile_ahead(self, jobs) -> None:
    """Start compiling the programs of [(spec, device, stacking), ...] in
    order on `compile_threads` background threads, so that students compile
    while the ones before them train. A later `get` of the same program waits
    for it (and gets its error, if compiling failed) instead of compiling
    again; programs already compiled or on their way are skipped."""
    keyed = {}
    for spec, device, stacking in jobs:
      keyed.setdefault(self.key(spec, device, stacking), (spec, device))
    todo = [(*keyed[key], key, future) for key, future in self.cache.reserve(keyed)]
    if not todo:
      return
    queue = iter(todo)  # shared by the threads: each takes the next program in order
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
          future.set_result(self._build(spec, device, key))
        except BaseException as e:  # pylint: disable=broad-except  # handed to the waiter
          future.set_exception(e)

    # Daemons: a SIGTERM ends the process without waiting for them.
    for _ in range(min(self.compile_threads, len(todo))):
      threading.Thread(target=work, name='n2n-compile-ahead', daemon=True).start()

  def _build(self, spec: spec_lib.NetSpec, device, key) -> Program:
    """Build `spec`'s model, optimiser and runner, compile its programs (or
    load them from the store) and cache them under `key`, whose last element
    is the stacking."""
    s, stacking, started = self.settings, key[-1], time.perf_counter()
    model = models.build(spec)
    steps = max(1, self.num_train // s.batch_size)
    tx = train_lib.make_optimizer(
      'adam', s.learning_rate, steps_per_epoch=steps, weight_decay=s.weight_decay
    )
    step = train_lib.make_step(
      model, tx, train_lib.make_loss(s.loss, s.soft_weight), mesh=self.mesh
    )
    if stacking is not None:
      runner = stacked_lib.StackedRunner(step, self.epoch_mode, *stacking)
    else:
      runner = train_lib.EpochRunner(step, self.epoch_mode, self.mesh)
    if self.mesh is None:
      program = self._compile(spec, model, tx, runner, device, stacking)
    else:
      # Data-parallel programs compile on first use (shardings come with
      # the real arrays).
      program = Program(model, tx, runner, None, models.variable_shapes(model, spec.input_shape))
    self.cache.add(
      key,
      program,
      program_cache_lib.Built(
        spec,
        stacking,
        program.store_key is not None,
        threading.current_thread().name,
        started,
        time.perf_counter(),
      ),
    )
    return program

  def _compile(self, spec, model, tx, runner, device, stacking) -> Program:
    """`spec`'s programs, compiled here or loaded from the program store.
    The initial optimiser state is one small program too (created eagerly,
    it would cost one compile per new variable shape in a fresh process;
    docs/performance.md, "Compiling")."""
    data, val_images, _ = self.resident(device)
    store, store_key, spec_json = self.store, None, spec_lib.to_json(spec)
    if store is not None:
      data_shapes = tuple(
        (x.shape, str(x.dtype)) for x in jax.tree_util.tree_leaves((data, val_images))
      )
      # Switches (padding.with_switches) are not part of a spec's JSON.
      switched = (('switched', spec.switched),) if spec.switched else ()
      together = (('stacked',) + tuple(stacking),) if stacking else ()
      store_key = store.key(
        device, spec_json, self.settings, self.epoch_mode, data_shapes, *switched, *together
      )
      loaded = store.load(store_key, spec=spec_json)
      if loaded is not None:
        programs, extras = loaded
        runner.install(programs['train'])
        return Program(
          model,
          tx,
          runner,
          programs['predict'],
          extras['shapes'],
          programs['init_state'],
          store_key,
        )
    shapes = models.variable_shapes(model, spec.input_shape)
    create = lambda v: train_lib.TrainState.create(v, tx)  # pylint: disable=unnecessary-lambda-assignment
    with jax.default_device(device):
      if stacking is None:
        inputs = shapes
        predict = train_lib.lower_predict(model, shapes, val_images)
      else:
        lowering, count = stacking
        inputs = jax.tree_util.tree_map(
          lambda x: jax.ShapeDtypeStruct((count,) + x.shape, x.dtype), shapes
        )
        create = jax.vmap(create)
        predict = stacked_lib.lower_predict(model, lowering, inputs, val_images)
      lowered = {
        'init_state': jax.jit(create).lower(inputs),
        'predict': predict,
        'train': runner.lower(jax.eval_shape(create, inputs), data, self.settings.batch_size),
      }
      with program_store_lib.persistent_cache_hits() as hits:
        programs = {name: program.compile() for name, program in lowered.items()}
    runner.install(programs['train'])
    # Programs from JAX's persistent cache (compiled before the store had
    # them) cannot be stored; they keep coming from that cache.
    if store is not None and not hits():
      store.save(store_key, programs, {'shapes': shapes, 'spec': spec_json})
    return Program(model, tx, runner, programs['predict'], shapes, programs['init_state'])
