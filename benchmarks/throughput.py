"""Accelerator throughput: what one N2N policy iteration costs, how fast
students train once compiled, how long a new architecture takes to come up,
and how much of a real search goes to compiling.

  python benchmarks/throughput.py [--quick] [--torch [--torch-threads=N]] [--json-only]
                                  [--data=synthetic|fashion_mnist] [--compile-threads=N]
                                  [--share-stage2=auto|on|off] [--share-stage1=auto|on|off]
                                  [--search [--search-teacher=vgg13|digits_cnn]
                                   [--together=auto|off|vmap|map] [--students-per-call=K]]

Figures (each printed with what it measures, then all of them as ONE JSON line,
always the last line of stdout):

* iteration_seconds: one stage-1 policy iteration, cold (empty program cache,
  persistent compilation cache off): an untrained removal policy (the fresh
  parameters a search with seed 0 starts from) samples 5 students from the
  MNIST VGG-13 teacher; each non-degenerate one is built, initialised,
  compiled, distilled for 100 steps at batch 64 on the untrained teacher's
  logits and scored on 1,000 validation images; then one policy update.
  Degenerate students cost nothing, as in the search.
* student_steps_per_second: steady-state train steps per second at batch 64
  (after compile, epochs run the way the search runs them: a Python loop of
  jitted steps on CPUs, one lax.scan on accelerators) for students with every
  width at 0.25 (small) and 0.5 (medium) of the teacher's, and the teacher.
* new_architecture_seconds_cold / _warm: build + host init + compile of one new
  student's programs (the medium one: train step, validation forward pass,
  initial optimiser state) up to its initial TrainState: first with nothing
  compiled in memory and empty compilation caches (JAX's persistent cache and
  the program store, which this compile fills, as a first run of the command
  line does), then again with the in-memory caches cleared, as in a new
  process, and those caches warm (the programs load from the program store).
* compile_fraction: summary['time']['compile'] / (search + final seconds) of a
  short real compress run on the bundled digits (configs/digits.py), caches
  empty at its start: the time students waited for their train-step and
  validation programs to compile (compiling that overlapped another student's
  training is not counted). compile_fraction_rerun: the same for the same
  search run again in a new workdir with the caches the first one filled, as
  a re-run of a command or a resumed search has them.
* train_gflops / matmul_peak_gflops / train_vs_matmul_peak: achieved training
  FLOP/s of the teacher-sized student (convention: 3 x forward FLOPs per image
  from spec.flops x batch x steps/s) against a large float32 jnp.dot timed in
  the same run.
* With --torch and PyTorch importable: the same three students as plain
  PyTorch nn.Sequential models (Adam, squared L2 on logits, batch 64):
  torch_steps_per_second and torch_train_gflops; null otherwise.

Data is synthetic (random normal images, random labels, the untrained
teacher's logits) unless --data=fashion_mnist reads Debian's Fashion-MNIST IDX
files (`apt-get install dataset-fashion-mnist`). --quick shrinks everything
(the digits_cnn teacher on 8x8 inputs, or Conv4 with Fashion-MNIST; 3
rollouts, 10 steps, 200 validation images, a one-iteration search of one
student); its time then goes mostly to its ten or so compiles of train steps
and policy updates. tests/test_benchmarks.py runs it. XLA CPU flags are set as
the command line sets them (runtime.set_cpu_flags). --compile-threads=N sets the
threads that compile students ahead in the iteration and the short search
(runtime.compile_threads; default, as on the command line: one per 4 cores).
--share-stage2=auto|on|off sets the short search's
runtime.share_stage2_program, --share-stage1=auto|on|off its
runtime.share_stage1_programs (default auto, as on the command line:
runtime.sharing_pays decides); the JSON line says what each resolved to.

--search replaces all of the above with a whole search (issue 17's figures):
a 10 + 5 iteration search (both stages, 5 rollouts, each student distilled
100 steps at batch 64 and scored on 1,000 images, the policies learning as
they go, compilation caches off and nothing compiled in memory) on the
untrained VGG-13 teacher at 28x28 (--search-teacher=digits_cnn: the digits
CNN at 8x8, for a quick CPU run), printing
* search_seconds (summary time.search), search_compile_seconds,
* iteration_seconds_steady: the median of stage-1 iterations 2-10,
* programs_compiled: student programs XLA compiled during the search (with
  both stages shared, at most kept_pool_sets + 2),
* kept_pool_sets: distinct sets of pooling layers kept by stage 1's students,
* search_tflop: the students' own training and scoring arithmetic (3 x
  forward FLOPs per training image, 1 x per validation image; not the
  padding's),
* with --torch, torch_iteration_seconds: the distinct students of stage-1
  iteration 2, each trained 100 steps in plain PyTorch (at its measured
  steps/s), and torch_iteration_ratio (PyTorch / ours).
--share-stage1/--share-stage2 apply to it, --together=auto|off|vmap|map sets
runtime.train_together, --students-per-call runtime.students_per_call and
--search-iterations=N1,N2 the iterations of each stage.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import json
import math
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the package from this checkout, installed or not

from n2n_jax import runtime  # pylint: disable=g-import-not-at-top,wrong-import-position

runtime.set_cpu_flags()  # before the first JAX computation, as the command line does

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging as absl_logging
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from n2n_jax import config as config_lib
from n2n_jax import data as data_lib
from n2n_jax import evaluator as evaluator_lib
from n2n_jax import experiment
from n2n_jax import models
from n2n_jax import policies
from n2n_jax import program_cache
from n2n_jax import program_store
from n2n_jax import reinforce
from n2n_jax import report
from n2n_jax import reward as reward_lib
from n2n_jax import search as search_lib
from n2n_jax import spec as spec_lib
from n2n_jax import teacher as teacher_lib
from n2n_jax import train as train_lib
from n2n_jax import zoo

# pylint: enable=g-import-not-at-top,wrong-import-position

FASHION_MNIST_PATH = '/usr/share/datasets/fashion-mnist'
SIZES = (('small', 0.25), ('medium', 0.5), ('teacher', 1.0))
# The new-architecture figures use the medium student: nothing compiled before
# them has its shapes, and where steps/s trains it on data of the same shape
# (--quick) it reuses the program instead of compiling it again.
NEW_ARCH_FACTOR = 0.5
# What JAX reports for each XLA compile (jax._src.dispatch.BACKEND_COMPILE_EVENT).
# Its tracing and lowering events nest (a jit inside a jit), so they would
# count some seconds twice.
BACKEND_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'
TRACE_EVENT = '/jax/core/compile/jaxpr_trace_duration'


@dataclasses.dataclass(frozen=True)
class Profile:
  """How big each measurement is."""

  teacher: str
  input_shape: tuple
  steps: int  # distillation steps per student in the iteration
  eval_images: int
  rollouts: int
  epoch_steps: int  # steps per timed epoch for steps/s
  min_seconds: float  # time each steps/s figure for at least this long
  matmul_size: int  # on CPUs; accelerators use ACCEL_MATMUL_SIZE
  search: dict  # config overrides of the short digits search


FULL = Profile(
  'vgg13',
  (28, 28, 1),
  steps=100,
  eval_images=1000,
  rollouts=5,
  epoch_steps=10,
  min_seconds=3.0,
  matmul_size=2048,
  search={
    'search.stage1_iterations': 2,
    'search.stage2_iterations': 1,
    'search.rollouts': 3,
    'distill.epochs': 1,
    'teacher.epochs': 3,
    'final.epochs': 1,
  },
)
# Compiling one train step takes seconds on a CPU, so --quick keeps their
# number down (about 10) as well as the sizes: 3 rollouts (seed 0 samples two
# students and one degenerate) and a search of one student.
QUICK = Profile(
  'digits_cnn',
  (8, 8, 1),
  steps=10,
  eval_images=200,
  rollouts=3,
  epoch_steps=10,
  min_seconds=0.3,
  matmul_size=1024,
  search={
    'search.stage1_iterations': 1,
    'search.stage2_iterations': 0,
    'search.rollouts': 1,
    'distill.epochs': 1,
    'teacher.epochs': 1,
    'final.epochs': 1,
    'data.max_train_examples': 256,
  },
)
ACCEL_MATMUL_SIZE = 4096
BATCH = 64
NUM_CLASSES = 10


class Printer:
  """Human-readable lines on stdout, unless --json-only."""

  def __init__(self, quiet: bool):
    self.quiet = quiet

  def __call__(self, text: str = '') -> None:
    if not self.quiet:
      print(text, flush=True)


def cold_caches() -> None:
  """Forget every compiled program this process holds: the evaluator's
  process-wide cache and JAX's in-memory (tracing and executable) caches."""
  program_cache.SHARED.clear()
  jax.clear_caches()


def persistent_cache(cache_dir: str | None) -> None:
  """Turn JAX's persistent compilation cache on (in cache_dir) or off. JAX
  decides whether to use it once, at the first compile of the process, so the
  decision is reset here; runtime.enable_compilation_cache alone does not do
  that."""
  if cache_dir:
    jax.config.update('jax_enable_compilation_cache', True)
    runtime.enable_compilation_cache(cache_dir)
  else:
    jax.config.update('jax_enable_compilation_cache', False)
    jax.config.update('jax_compilation_cache_dir', None)
  jax_cache.reset_cache()


# ---- data and teacher


def synthetic_dataset(input_shape, num_train: int, num_val: int, seed: int) -> data_lib.Dataset:
  """Random normal images and random labels; the validation images double as
  test images (nothing here reads them)."""
  rng = np.random.default_rng(seed)

  def split(n):
    images = rng.standard_normal((n,) + tuple(input_shape), np.float32)
    return jax.device_put(images), jax.device_put(rng.integers(0, NUM_CLASSES, n, np.int32))

  (train_x, train_y), (val_x, val_y) = split(num_train), split(num_val)
  channels = input_shape[-1]
  return data_lib.Dataset(
    'synthetic',
    train_x,
    train_y,
    val_x,
    val_y,
    val_x,
    val_y,
    NUM_CLASSES,
    (0.0,) * channels,
    (1.0,) * channels,
  )


def fashion_mnist_dataset(num_train: int, num_val: int) -> data_lib.Dataset:
  config = data_lib.default_data_config()
  config.source, config.path, config.name = 'idx', FASHION_MNIST_PATH, 'fashion_mnist'
  config.max_train_examples = num_train
  dataset = data_lib.load(config)
  return dataclasses.replace(
    dataset, val_images=dataset.val_images[:num_val], val_labels=dataset.val_labels[:num_val]
  )


def distill_settings(steps: int) -> evaluator_lib.DistillSettings:
  """One epoch of `steps` steps at batch 64 (the search's own distillation
  settings otherwise)."""
  return evaluator_lib.DistillSettings(epochs=1, batch_size=BATCH, max_train_examples=steps * BATCH)


def shrunk(teacher: spec_lib.NetSpec, factor: float) -> spec_lib.NetSpec:
  if factor == 1.0:
    return teacher
  student = spec_lib.shrink(teacher, [factor] * len(spec_lib.shrink_vars(teacher)))
  if spec_lib.is_degenerate(student):
    raise RuntimeError(f'{teacher.name} at width factor {factor} is degenerate: {student.reason}')
  return student


# ---- the figures


def stage1_iteration(config, teacher, dataset, teacher_logits, steps, rollouts, say) -> dict:
  """One cold stage-1 iteration, as search._iteration runs it (same keys,
  same Evaluator.train_many call), timed from sampling to the policy update."""
  seed = config.seed
  teacher_params = spec_lib.param_count(teacher)
  cold_caches()
  # Set up once per search, not per iteration: left out of the figure.
  evaluator = evaluator_lib.Evaluator(
    dataset,
    teacher_logits,
    distill_settings(steps),
    config.runtime.epoch_mode,
    compile_ahead=config.runtime.compile_ahead,
    compile_threads=runtime.compile_threads(config.runtime.compile_threads),
  )
  start = time.perf_counter()
  stage = search_lib.removal_stage(config, teacher)
  policy_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 0), 0)
  params = policies.init_policy(stage.policy, policy_key, stage.features.shape[1])
  optimizer = reinforce.make_optimizer(stage.learning_rate)
  update = reinforce.make_update(
    stage.policy,
    optimizer,
    'removal',
    config.policy.method,
    config.policy.baseline,
    config.policy.baseline_decay,
  )
  state = reinforce.PolicyState.create(params, optimizer)
  # As the search does at the start of a stage: the update compiles in the
  # background while the students train.
  search_lib._compile_in_background(update, state, stage, rollouts)  # pylint: disable=protected-access
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stage.number), 1)
  sample_key, train_key = jax.random.split(key)
  actions = np.asarray(
    reinforce.sample_removal(
      stage.policy,
      params,
      jnp.asarray(stage.features),
      jnp.asarray(stage.mask),
      sample_key,
      rollouts,
    )
  )
  sample_seconds = time.perf_counter() - start
  students = [stage.to_student(a, config, teacher_params) for a in actions]
  trainable = [i for i, s in enumerate(students) if not spec_lib.is_degenerate(s)]
  # As the search does: the students after the first compile in the
  # background while the ones before them train (runtime.compile_ahead).
  results = dict(
    zip(
      trainable,
      evaluator.train_many(
        [(students[i], jax.random.fold_in(train_key, i)) for i in trainable], seed
      ),
    )
  )
  rows, rewards, tflop = [], [], 0.0
  for i, student in enumerate(students):
    row = {'rollout': i + 1}
    if i not in results:
      row['degenerate'] = student.kind
      rewards.append(reward_lib.DEGENERATE_REWARD)
      say(f'  rollout {i + 1}: degenerate ({student.kind}), not trained')
    else:
      result = results[i]
      row.update(
        params=spec_lib.param_count(student),
        seconds=result.train_seconds + result.compile_seconds,
        compile_seconds=result.compile_seconds,
        error=result.error,
      )
      if result.error is None:  # training and scoring arithmetic
        tflop += spec_lib.flops(student) * (3 * steps * BATCH + dataset.val_images.shape[0]) / 1e12
      # The update's cost does not depend on the reward's value: A_teacher = 1.
      rewards.append(
        reward_lib.score(result.accuracy, row['params'], teacher_params, 1.0).reward
        if result.error is None
        else reward_lib.DEGENERATE_REWARD
      )
      say(
        f'  rollout {i + 1}: {row["params"]:,} params, '
        f'{spec_lib.flops(student) / 1e9:.3f} GFLOPs/image: {row["seconds"]:.1f} s in all '
        f'(build + init + compile + {steps} steps + evaluation), of it '
        f'{result.compile_seconds:.1f} s waiting for its programs to compile'
        + (f'; FAILED: {result.error}' if result.error else '')
      )
    rows.append(row)
  update_start = time.perf_counter()
  state, metrics = update(
    state,
    jnp.asarray(stage.features),
    jnp.asarray(stage.mask),
    jnp.asarray(actions),
    jnp.asarray(rewards, jnp.float32),
  )
  jax.block_until_ready((state, metrics))
  end = time.perf_counter()
  return {
    'seconds': end - start,
    'sample_seconds': sample_seconds,
    'update_seconds': end - update_start,
    'students': rows,
    'trained': len(trainable),
    'tflop': tflop,
  }


def bring_up(dataset, teacher_logits, steps: int, student, seed: int, cache_dir: str) -> tuple:
  """(seconds, compile seconds) to build, compile (or load from the program
  store in cache_dir, as the command line does) and initialise `student`'s
  programs the way Evaluator.train does before its first step; and how many
  programs JAX traced or compiled meanwhile."""
  evaluator = evaluator_lib.Evaluator(
    dataset,
    teacher_logits,
    distill_settings(steps),
    program_store=program_store.for_cache_dir(cache_dir),
  )
  events = []

  def listen(event, duration, **kwargs):
    del duration, kwargs
    if event in (TRACE_EVENT, BACKEND_COMPILE_EVENT):
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    start = time.perf_counter()
    program, compile_seconds = evaluator.programs.get(student, evaluator.devices[0])
    variables = models.init_variables(
      program.model, evaluator_lib.student_seed(student, seed), student.input_shape, program.shapes
    )
    jax.block_until_ready(program.init_state(variables))
    seconds = time.perf_counter() - start
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  return seconds, compile_seconds, len(events)


def steps_per_second(
  dataset, teacher_logits, student, epoch_steps: int, min_seconds: float
) -> float:
  """Steady-state train steps/s at batch 64: whole epochs of `epoch_steps`
  steps after one untimed warm-up epoch, for at least min_seconds."""
  evaluator = evaluator_lib.Evaluator(dataset, teacher_logits, distill_settings(epoch_steps))
  program, _ = evaluator.programs.get(student, evaluator.devices[0])
  state = train_lib.TrainState.create(
    models.init_variables(program.model, 0, student.input_shape), program.tx
  )
  key = jax.random.key(1)
  state, _ = program.runner.run(state, evaluator.data, key, BATCH)
  jax.block_until_ready(state)
  epochs, start = 0, time.perf_counter()
  while True:
    epochs += 1
    state, _ = program.runner.run(state, evaluator.data, jax.random.fold_in(key, epochs), BATCH)
    jax.block_until_ready(state)
    elapsed = time.perf_counter() - start
    if elapsed >= min_seconds:
      return epochs * epoch_steps / elapsed


def matmul_peak_gflops(n: int, min_seconds: float) -> float:
  """Best GFLOP/s of an n x n float32 jnp.dot (JAX's default precision, as
  training uses), over batches of back-to-back calls."""
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), jnp.float32)
  b = jax.random.normal(kb, (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  jax.block_until_ready(dot(a, b))
  start = time.perf_counter()
  jax.block_until_ready(dot(a, b))
  calls = max(1, int(0.1 / max(time.perf_counter() - start, 1e-6)))  # ~0.1 s per batch
  best, begin = math.inf, time.perf_counter()
  while time.perf_counter() - begin < min_seconds or not math.isfinite(best):
    t0 = time.perf_counter()
    out = None
    for _ in range(calls):
      out = dot(a, b)
    jax.block_until_ready(out)
    best = min(best, (time.perf_counter() - t0) / calls)
  return 2 * n**3 / best / 1e9


def load_config(name: str):
  """configs/NAME.py's get_config(), loaded by path as the command line does."""
  path = os.path.join(ROOT, 'configs', f'{name}.py')
  module_spec = importlib.util.spec_from_file_location(f'config_{name}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config()


def short_search(
  overrides: dict, workroot: str, cache_dir: str, label: str, seeds=(0, 1, 2)
) -> dict:
  """A short compress run on the digits config, in process, with nothing
  compiled in memory and the compilation caches (JAX's and the program store)
  in cache_dir, as the command line has them. Returns its summary['time'] plus
  'xla': the seconds JAX reports for XLA compiles during the compress part,
  which also covers what summary['time']['compile'] leaves out (compiles
  overlapped with training, policy and teacher-logit programs) but not
  tracing or lowering."""
  xla = []

  def listen(event, duration, **kwargs):
    del kwargs
    if event == BACKEND_COMPILE_EVENT:
      xla.append(duration)

  # A sampled batch of students can all be degenerate, and then the search
  # ends without a summary; another seed samples others.
  for seed in seeds:
    config = load_config('digits')
    for dotted, value in overrides.items():
      section, field = dotted.split('.')
      config[section][field] = value
    config.seed = seed
    config.runtime.compilation_cache_dir = cache_dir
    config.runtime.progress = False
    workdir = os.path.join(workroot, f'search_{label}_seed{seed}')
    cold_caches()
    persistent_cache(cache_dir)
    # experiment.run prints its result (to `out`) and the search may print
    # a note (to stdout): neither belongs in this benchmark's output.
    with contextlib.redirect_stdout(io.StringIO()):
      config.mode = 'teacher'  # trained first, so that the compiles counted below are the search's
      experiment.run(config, workdir, out=io.StringIO())
      config.mode = 'compress'
      xla.clear()
      jax.monitoring.register_event_duration_secs_listener(listen)
      try:
        summary = experiment.run(config, workdir, out=io.StringIO())
      except search_lib.SearchError:
        continue
      finally:
        jax.monitoring.unregister_event_duration_listener(listen)
        persistent_cache(None)
    return dict(summary['time'], xla=sum(xla), seed=seed)
  raise RuntimeError(f'short searches with seeds {seeds} found no usable student')


# ---- a whole search (--search)


def kept_pools(student, teacher) -> tuple:
  """The positions in `teacher` of the pooling layers a stage-1 student kept
  (its layers matched to the teacher's in order, earliest first, as
  padding.with_switches matches them)."""
  kept, j = [], 0
  for i, layer in enumerate(teacher.layers):
    if j < len(student.layers) and student.layers[j] == layer:
      j += 1
      if isinstance(layer, (spec_lib.MaxPool, spec_lib.AvgPool)):
        kept.append(i)
  return tuple(kept)


class CountingScorer:
  """The search's default scorer, noting after each call how many programs
  the process had built and which pooling layers stage 1's students kept."""

  def __init__(self, evaluator, teacher, stage1_iterations: int):
    self.evaluator, self.teacher, self.stage1_iterations = evaluator, teacher, stage1_iterations
    self.calls, self.pool_sets, self.tflop = 0, set(), 0.0
    self.trained = []  # per call: the students that trained without error
    self.built_after_search = 0

  def __call__(self, students, keys, seed, *, inside=None):
    results = self.evaluator(students, keys, seed, inside=inside)
    self.calls += 1
    if self.calls <= self.stage1_iterations:
      self.pool_sets.update(kept_pools(student, self.teacher) for student in students)
    images = self.evaluator.data.images.shape[0] * self.evaluator.settings.epochs
    for student, result in zip(students, results):
      if result.error is None:  # the students' own arithmetic, not the padding's
        self.tflop += (
          spec_lib.flops(student) * (3 * images + self.evaluator.dataset.val_images.shape[0]) / 1e12
        )
    self.trained.append([s for s, r in zip(students, results) if r.error is None])
    self.built_after_search = program_cache.SHARED.compiled_count()
    return results


def search_figures(args, say) -> dict:
  """--search: a 10 + 5 iteration search (5 rollouts, each student distilled
  100 steps at batch 64 and scored on 1,000 images, the policies learning),
  caches empty, on an untrained teacher and synthetic data."""
  quick = args.quick
  name = args.search_teacher
  shape = (28, 28, 1) if name != 'digits_cnn' else (8, 8, 1)
  teacher_spec = zoo.get(name, shape, NUM_CLASSES)
  steps, eval_images = (10, 200) if quick else (100, 1000)
  config = config_lib.base_config()
  config.search.stage1_iterations, config.search.stage2_iterations = (
    (2, 1) if quick else tuple(int(n) for n in args.search_iterations.split(','))
  )
  config.search.rollouts = 5
  config.distill.epochs = 1
  config.final.epochs = 1
  config.runtime.compilation_cache_dir = ''
  config.runtime.progress = False
  config.runtime.compile_threads = args.compile_threads
  config.runtime.share_stage1_programs = args.share_stage1
  config.runtime.share_stage2_program = args.share_stage2
  config.runtime.train_together = args.together
  if args.students_per_call:
    config.runtime.students_per_call = args.students_per_call
  dataset = synthetic_dataset(shape, steps * BATCH, eval_images, config.seed)
  model = models.build(teacher_spec)
  variables = models.init_variables(model, config.seed, shape)
  teacher_logits = train_lib.predict(model, variables, dataset.train_images)
  accuracy = train_lib.accuracy_of(
    train_lib.predict(model, variables, dataset.val_images), dataset.val_labels
  )
  teacher = teacher_lib.Teacher(
    teacher_spec,
    model,
    variables,
    {'seconds': 0.0, 'val_accuracy': accuracy, 'test_accuracy': accuracy},
  )
  cold_caches()
  persistent_cache(None)
  scorer = CountingScorer(
    search_lib._evaluator(config, dataset, teacher, teacher_logits),  # pylint: disable=protected-access
    teacher_spec,
    config.search.stage1_iterations,
  )
  workdir = tempfile.mkdtemp(prefix='n2n_search_benchmark_')
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      summary = search_lib.run(config, workdir, teacher, dataset, progress=False, scorer=scorer)
    records = report.read_metrics(workdir)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  stage1 = [r['seconds'] for r in records if r['stage'] == 1]
  out = {
    'search_teacher': name,
    'search_seconds': summary['time']['search'],
    'search_compile_seconds': summary['time']['compile'],
    'iteration_seconds_steady': float(np.median(stage1[1:] or stage1)),
    'programs_compiled': scorer.built_after_search,
    'kept_pool_sets': len(scorer.pool_sets),
    'search_tflop': scorer.tflop,
    'search_iterations': [config.search.stage1_iterations, config.search.stage2_iterations],
    'train_together': str(scorer.evaluator.together),
    'students_per_call': scorer.evaluator.students_per_call,
    'shared_program_stages': sorted({r['stage'] for r in records if r['shared_program']}),
  }
  say(
    f'search_seconds {out["search_seconds"]:.1f}: a {config.search.stage1_iterations} + '
    f'{config.search.stage2_iterations} iteration search on the untrained {name} teacher, '
    f'{config.search.rollouts} rollouts x {steps} steps at batch {BATCH}, scored on '
    f'{eval_images} images, caches empty ({out["search_compile_seconds"]:.1f} s waiting '
    'for compiles)'
  )
  say(
    f'iteration_seconds_steady {out["iteration_seconds_steady"]:.2f}: median of stage-1 '
    'iterations 2 on'
  )
  say(
    f'programs_compiled {out["programs_compiled"]}: student programs XLA compiled; '
    f'kept_pool_sets {out["kept_pool_sets"]} (with both stages shared the bound is that + 2); '
    f'stages sharing: {out["shared_program_stages"]}, trained together: '
    f'{out["train_together"]} x{out["students_per_call"]}'
  )
  say(
    f"search_tflop {out['search_tflop']:.3f}: the students' own training and scoring "
    f'arithmetic ({out["search_tflop"] / summary["time"]["search"] * 1e3:.1f} GFLOP/s over '
    'the search)'
  )
  out.update(torch_iteration_seconds=None, torch_iteration_ratio=None)
  if args.torch and importlib.util.find_spec('torch') is not None:
    # One steady iteration's students (iteration 2 of stage 1) in plain
    # PyTorch: their steps at each one's measured steps/s (0.5 s timings).
    seconds = 0.0
    for student in set(scorer.trained[min(1, len(scorer.trained) - 1)]):
      sps, _ = torch_steps_per_second(student, min(steps, 20), 0.5)
      seconds += steps / sps
    out.update(
      torch_iteration_seconds=seconds,
      torch_iteration_ratio=seconds / out['iteration_seconds_steady'],
    )
    say(
      f"torch_iteration_seconds {seconds:.2f}: that iteration's distinct students, {steps} "
      f'steps each in plain PyTorch; ours / PyTorch '
      f'{out["iteration_seconds_steady"] / seconds:.2f}'
    )
  return out


# ---- PyTorch


def torch_model(student: spec_lib.NetSpec):
  """`student` as a plain PyTorch model with models.SpecNet's semantics
  (NCHW inside; Flatten flattens in NHWC order as Flax does)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  class Lambda(nn.Module):
    def __init__(self, fn):
      super().__init__()
      self.fn = fn

    def forward(self, x):
      return self.fn(x)

  class Residual(nn.Module):
    def __init__(self, main, shortcut):
      super().__init__()
      self.main, self.shortcut = main, shortcut

    def forward(self, x):
      return self.main(x) + self.shortcut(x)

  class Concat(nn.Module):
    def __init__(self, branches):
      super().__init__()
      self.branches = nn.ModuleList(branches)

    def forward(self, x):
      return torch.cat([b(x) for b in self.branches], dim=1)

  class ChannelsDense(nn.Module):
    """Flax's Dense on an image acts on the channel axis."""

    def __init__(self, features, bias):
      super().__init__()
      self.linear = nn.LazyLinear(features, bias=bias)

    def forward(self, x):
      return self.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

  def sequence(layers, flat):
    out = []
    for layer in layers:
      if isinstance(layer, spec_lib.Conv):
        out.append(
          nn.LazyConv2d(
            layer.filters, layer.kernel, layer.stride, layer.padding, bias=layer.use_bias
          )
        )
      elif isinstance(layer, spec_lib.BatchNorm):
        bn = nn.LazyBatchNorm1d if flat else nn.LazyBatchNorm2d
        # PyTorch's momentum weighs the new batch, Flax's the running average.
        out.append(bn(eps=models.BN_EPSILON, momentum=round(1 - models.BN_MOMENTUM, 6)))
      elif isinstance(layer, spec_lib.ReLU):
        out.append(nn.ReLU())
      elif isinstance(layer, spec_lib.MaxPool):
        out.append(nn.MaxPool2d(layer.window, layer.stride, layer.padding, ceil_mode=layer.ceil))
      elif isinstance(layer, spec_lib.AvgPool):
        out.append(nn.AvgPool2d(layer.window, layer.stride))
      elif isinstance(layer, spec_lib.GlobalAvgPool):
        out.append(Lambda(lambda x: x.mean(dim=(2, 3), keepdim=True)))
      elif isinstance(layer, spec_lib.Dropout):
        out.append(nn.Dropout(layer.rate))
      elif isinstance(layer, spec_lib.Flatten):
        out.append(Lambda(lambda x: x.permute(0, 2, 3, 1).flatten(1) if x.dim() == 4 else x))
        flat = True
      elif isinstance(layer, spec_lib.Dense):
        out.append(
          nn.LazyLinear(layer.features, bias=layer.use_bias)
          if flat
          else ChannelsDense(layer.features, layer.use_bias)
        )
      elif isinstance(layer, spec_lib.Residual):
        out.append(
          Residual(
            nn.Sequential(*sequence(layer.main, flat)),
            nn.Sequential(*sequence(layer.shortcut, flat)),
          )
        )
      elif isinstance(layer, spec_lib.Concat):
        out.append(Concat([nn.Sequential(*sequence(b, flat)) for b in layer.branches]))
      else:
        raise ValueError(f'no PyTorch equivalent for {layer!r}')
    return out

  model = nn.Sequential(*sequence(student.layers, False))
  h, w, c = student.input_shape
  with torch.no_grad():
    model.eval()(torch.zeros(2, c, h, w))  # materialises the lazy layers
  return model


def torch_steps_per_second(student, epoch_steps: int, min_seconds: float) -> tuple:
  """(steps/s, device) of a plain PyTorch training loop: Adam with coupled
  weight decay as optax's chain, squared L2 on logits, batch 64."""
  import torch  # pylint: disable=g-import-not-at-top

  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  model = torch_model(student)
  torch_params = sum(p.numel() for p in model.parameters())
  if torch_params != spec_lib.param_count(student):
    raise RuntimeError(
      f'PyTorch model has {torch_params:,} parameters, the spec {spec_lib.param_count(student):,}'
    )
  model = model.to(device).train()
  s = evaluator_lib.DistillSettings()
  opt = torch.optim.Adam(model.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay)
  h, w, c = student.input_shape
  n = epoch_steps * BATCH
  images = torch.randn(n, c, h, w, device=device)
  targets = torch.randn(n, NUM_CLASSES, device=device)
  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)

  def epoch():
    loss = None
    for idx in torch.randperm(n, device=device).view(epoch_steps, BATCH):
      opt.zero_grad(set_to_none=True)
      loss = (model(images[idx]) - targets[idx]).square().sum(-1).mean()
      loss.backward()
      opt.step()
    return loss.item()  # waits for the last step

  epoch()  # warm-up
  sync()
  epochs, start = 0, time.perf_counter()
  while True:
    epochs += 1
    epoch()
    sync()
    elapsed = time.perf_counter() - start
    if elapsed >= min_seconds:
      return epochs * epoch_steps / elapsed, device


# ---- main


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='tiny sizes (tests/test_benchmarks.py)')
  parser.add_argument('--torch', action='store_true', help='also time PyTorch, if importable')
  parser.add_argument('--json-only', action='store_true', help='print only the JSON line')
  parser.add_argument('--data', choices=('synthetic', 'fashion_mnist'), default='synthetic')
  parser.add_argument(
    '--torch-threads',
    type=int,
    default=0,
    help="PyTorch's intra-op threads (0: its default, one per core)",
  )
  parser.add_argument(
    '--compile-threads',
    type=int,
    default=0,
    help='threads compiling students ahead (runtime.compile_threads; '
    '0: one per 4 cores, as the command line)',
  )
  parser.add_argument(
    '--share-stage2',
    choices=runtime.SWITCHES,
    default='auto',
    help="the short search's runtime.share_stage2_program (stage 2 in its "
    "source's program; auto: where it pays, runtime.sharing_pays)",
  )
  parser.add_argument(
    '--share-stage1',
    choices=runtime.SWITCHES,
    default='auto',
    help="the short search's runtime.share_stage1_programs (stage 1 in the "
    "teacher's programs, one per set of pools kept; auto: where students also "
    'train together and it pays)',
  )
  parser.add_argument(
    '--search',
    action='store_true',
    help='instead of the figures above, a 10 + 5 iteration search with caches '
    'empty: search_seconds, iteration_seconds_steady, programs_compiled, '
    'kept_pool_sets, search_tflop (and with --torch the PyTorch iteration)',
  )
  parser.add_argument(
    '--search-teacher',
    default='vgg13',
    choices=('vgg13', 'digits_cnn'),
    help='the --search teacher (vgg13 at 28x28; digits_cnn at 8x8 for a quick CPU run)',
  )
  parser.add_argument(
    '--together',
    choices=runtime.TOGETHER,
    default='auto',
    help="the --search's runtime.train_together (students sharing a program "
    'trained in one call: vmap, map, off; auto: off on CPUs)',
  )
  parser.add_argument(
    '--search-iterations', default='10,5', help="the --search's stage-1,stage-2 iterations"
  )
  parser.add_argument(
    '--students-per-call',
    type=int,
    default=0,
    help="the --search's runtime.students_per_call (0: the rollouts, 5)",
  )
  args = parser.parse_args(argv)
  try:
    iterations = [int(n) for n in args.search_iterations.split(',')]
  except ValueError:
    iterations = []
  if len(iterations) != 2 or min(iterations) < 1:
    parser.error(
      '--search-iterations must be two integers >= 1 (stage 1, stage 2), got '
      f'{args.search_iterations!r}'
    )
  if args.students_per_call < 0:
    parser.error(f'--students-per-call must be >= 0, got {args.students_per_call}')
  if args.compile_threads < 0:
    parser.error(f'--compile-threads must be >= 0, got {args.compile_threads}')
  say = Printer(args.json_only)
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
  profile = QUICK if args.quick else FULL
  if args.data == 'fashion_mnist' and args.quick:
    profile = dataclasses.replace(profile, teacher='conv4', input_shape=(28, 28, 1))
  if args.compile_threads:
    profile = dataclasses.replace(
      profile, search=dict(profile.search, **{'runtime.compile_threads': args.compile_threads})
    )
  if args.share_stage2 != 'auto':
    profile = dataclasses.replace(
      profile, search=dict(profile.search, **{'runtime.share_stage2_program': args.share_stage2})
    )
  if args.share_stage1 != 'auto':
    profile = dataclasses.replace(
      profile, search=dict(profile.search, **{'runtime.share_stage1_programs': args.share_stage1})
    )
  # No persistent cache, whatever the environment says, except where a figure
  # asks for one (in a folder of its own).
  persistent_cache(None)
  if args.search:
    return _run_search(args, say)
  workroot = tempfile.mkdtemp(prefix='n2n_throughput_')
  try:
    return _run(args, profile, workroot, say)
  finally:
    shutil.rmtree(workroot, ignore_errors=True)


def _run_search(args, say) -> dict:
  start = time.perf_counter()
  out = {
    'backend': jax.default_backend(),
    'device_kind': jax.devices()[0].device_kind,
    'device_count': jax.device_count(),
    'cpu_count': os.cpu_count(),
    'jax_version': jax.__version__,
    'command': shlex.join([sys.executable] + sys.argv),
    'machine': platform.platform(),
    'quick': args.quick,
    'share_stage1_programs': args.share_stage1,
    'share_stage2_program': args.share_stage2,
  }
  say(
    f'device: {out["backend"]} ({out["device_kind"]}) x{out["device_count"]}, '
    f'{out["cpu_count"]} CPU cores, jax {jax.__version__}, {out["machine"]}'
  )
  out.update(search_figures(args, say))
  out['wall_seconds'] = time.perf_counter() - start
  print(json.dumps(_rounded(out)), flush=True)
  return out


def _digits_shares(switch: str, profile: Profile, stage: int) -> bool:
  """Whether the short digits search shares programs under `switch`
  (runtime.share_programs on its teacher and distillation)."""
  config = load_config('digits')
  for dotted, value in profile.search.items():
    section, field = dotted.split('.')
    config[section][field] = value
  teacher = zoo.get(config.teacher.name, (8, 8, 1), NUM_CLASSES)
  examples = config.data.max_train_examples or 1293  # the digits' training split
  if config.distill.max_train_examples:
    examples = min(examples, config.distill.max_train_examples)
  return runtime.share_programs(
    switch,
    spec_lib.flops(teacher),
    config.distill.epochs * examples,
    stage=stage,
    together=runtime.train_together(config.runtime.train_together),
  )


def _run(args, profile: Profile, workroot: str, say) -> dict:
  wall_start = time.perf_counter()
  backend = jax.default_backend()
  out = {
    'backend': backend,
    'device_kind': jax.devices()[0].device_kind,
    'device_count': jax.device_count(),
    'cpu_count': os.cpu_count(),
    'compile_threads': runtime.compile_threads(args.compile_threads),
    # The short digits search's, each resolved as the search resolves it.
    'share_stage2_program': _digits_shares(args.share_stage2, profile, 2),
    'share_stage1_programs': _digits_shares(args.share_stage1, profile, 1),
    'jax_version': jax.__version__,
    'command': shlex.join([sys.executable] + sys.argv),
    'machine': platform.platform(),
    'quick': args.quick,
    'data': args.data,
    'teacher': profile.teacher,
    'batch_size': BATCH,
  }
  say(
    f'device: {backend} ({out["device_kind"]}) x{out["device_count"]}, '
    f'{out["cpu_count"]} CPU cores ({out["compile_threads"]} compiling students ahead), '
    f'stage 2 in one program: {"on" if out["share_stage2_program"] else "off"}, '
    f'stage 1 in shared programs: {"on" if out["share_stage1_programs"] else "off"}, '
    f'jax {jax.__version__}, {out["machine"]}'
  )
  sections = {}  # wall seconds each part of this benchmark took

  @contextlib.contextmanager
  def section(name):
    start = time.perf_counter()
    yield
    sections[name] = time.perf_counter() - start

  config = config_lib.base_config()
  config.runtime.compile_threads = args.compile_threads
  teacher = zoo.get(profile.teacher, profile.input_shape, NUM_CLASSES)
  num_train = profile.steps * BATCH
  with section('setup'):
    if args.data == 'fashion_mnist':
      dataset = fashion_mnist_dataset(num_train, profile.eval_images)
    else:
      dataset = synthetic_dataset(profile.input_shape, num_train, profile.eval_images, config.seed)
    teacher_model = models.build(teacher)
    teacher_logits = train_lib.predict(
      teacher_model,
      models.init_variables(teacher_model, config.seed, profile.input_shape),
      dataset.train_images,
    )
    jax.block_until_ready(teacher_logits)
  teacher_flops = spec_lib.flops(teacher)
  say(
    f'setup (in no figure): {args.data} data, {num_train} training and '
    f'{profile.eval_images} validation images of {"x".join(map(str, profile.input_shape))}; '
    f'untrained {teacher.name} teacher ({spec_lib.param_count(teacher):,} params, '
    f'{teacher_flops / 1e9:.4f} GFLOPs/image forward); {sections["setup"]:.1f} s'
  )

  say(
    f'stage-1 iteration: {profile.rollouts} rollouts of an untrained removal policy, each '
    f'student distilled {profile.steps} steps at batch {BATCH} and scored on '
    f'{profile.eval_images} validation images, cold caches:'
  )
  with section('iteration'):
    it = stage1_iteration(
      config, teacher, dataset, teacher_logits, profile.steps, profile.rollouts, say
    )
  out.update(
    iteration_seconds=it['seconds'],
    iteration_students_trained=it['trained'],
    iteration_rollouts=profile.rollouts,
    iteration_compile_seconds=sum(s.get('compile_seconds', 0.0) for s in it['students']),
    iteration_policy_seconds=it['sample_seconds'] + it['update_seconds'],
    iteration_tflop=it['tflop'],
  )
  say(
    f'iteration_seconds {it["seconds"]:.2f}: one cold stage-1 iteration, {it["trained"]} of '
    f'{profile.rollouts} students trained (degenerate ones cost nothing); '
    f"{out['iteration_compile_seconds']:.2f} s of it waiting for students' programs to "
    f'compile, {out["iteration_policy_seconds"]:.2f} s sampling and updating the policy'
  )

  new_student = shrunk(teacher, NEW_ARCH_FACTOR)
  cache_dir = os.path.join(workroot, 'jax_cache')
  with section('new_architecture_cold'):
    # Reading an empty cache finds nothing; writing the programs to it is
    # what a first run of the command line does too, and the warm figure
    # below then needs no compile of its own to fill it.
    persistent_cache(cache_dir)
    try:
      cold_caches()
      cold, cold_compile, _ = bring_up(
        dataset, teacher_logits, profile.steps, new_student, config.seed, cache_dir
      )
    finally:
      persistent_cache(None)
  out['new_architecture_seconds_cold'] = cold
  say(
    f'new_architecture_seconds_cold {cold:.2f}: build + init + compile of one new '
    f"student's programs ({spec_lib.param_count(new_student):,} params, widths "
    f'x{NEW_ARCH_FACTOR}), nothing compiled in memory and empty compilation caches '
    f'({cold_compile:.2f} s of it compiling)'
  )

  sps, flops = {}, {}
  with section('steps_per_second'):
    for name, factor in SIZES:
      student = shrunk(teacher, factor)
      flops[name] = spec_lib.flops(student)
      sps[name] = steps_per_second(
        dataset, teacher_logits, student, profile.epoch_steps, profile.min_seconds
      )
      say(
        f'student_steps_per_second[{name}] {sps[name]:.2f}: train steps/s at batch {BATCH} '
        f'after compile, {spec_lib.param_count(student):,}-param student (widths x{factor}, '
        f'{flops[name] / 1e9:.4f} GFLOPs/image): '
        f'{3 * flops[name] * BATCH * sps[name] / 1e9:.2f} GFLOP/s'
      )
  out.update(
    student_steps_per_second=sps,
    student_flops_per_image=flops,
    epoch_mode=train_lib.resolve_epoch_mode(config.runtime.epoch_mode),
  )

  n = profile.matmul_size if backend == 'cpu' else ACCEL_MATMUL_SIZE
  with section('matmul'):
    peak = matmul_peak_gflops(n, profile.min_seconds)
  train_gflops = 3 * teacher_flops * BATCH * sps['teacher'] / 1e9
  out.update(
    train_gflops=train_gflops,
    matmul_peak_gflops=peak,
    train_vs_matmul_peak=train_gflops / peak,
    matmul_size=n,
  )
  say(f'matmul_peak_gflops {peak:.2f}: best {n}x{n} float32 jnp.dot (default precision)')
  say(
    f'train_gflops {train_gflops:.2f}: teacher-sized student training, counted as 3 x '
    f'forward FLOPs per image (spec.flops) x batch {BATCH} x steps/s; '
    f'train_vs_matmul_peak {train_gflops / peak:.3f}'
  )

  out.update(
    torch_steps_per_second=None, torch_train_gflops=None, torch_version=None, torch_threads=None
  )
  if not args.torch:
    say('torch: not asked for (--torch)')
  elif importlib.util.find_spec('torch') is None:
    say('torch: skipped, PyTorch is not importable (pip install torch)')
  else:
    with section('torch'):
      out.update(torch_figures(teacher, sps, profile, args.torch_threads, say))

  search_cache = os.path.join(workroot, 'search_cache')
  with section('search'):
    times = short_search(profile.search, workroot, search_cache, 'first')
  with section('search_rerun'):
    rerun = short_search(profile.search, workroot, search_cache, 'rerun', (times['seed'],))
  spent = times['search'] + times['final']
  out.update(
    compile_fraction=times['compile'] / spent,
    compile_fraction_xla=times['xla'] / spent,
    search_seconds=times['search'],
    final_seconds=times['final'],
    search_compile_seconds=times['compile'],
    search_overrides=dict(profile.search, seed=times['seed']),
  )
  say(
    f'compile_fraction {out["compile_fraction"]:.3f}: short digits search '
    f'({", ".join(f"{k}={v}" for k, v in profile.search.items())}): search '
    f'{times["search"]:.1f} s + final {times["final"]:.1f} s, of which '
    f'{times["compile"]:.1f} s waiting for student programs to compile (summary time.compile)'
  )
  say(
    f'compile_fraction_xla {out["compile_fraction_xla"]:.3f}: XLA compile time JAX '
    f'reports for every program of that compress run ({times["xla"]:.1f} s: compiles '
    'overlapped with training, policy and teacher-logit programs too; tracing and lowering '
    'not included)'
  )
  rerun_spent = rerun['search'] + rerun['final']
  out.update(
    compile_fraction_rerun=rerun['compile'] / rerun_spent,
    rerun_search_seconds=rerun['search'],
    rerun_final_seconds=rerun['final'],
    rerun_compile_seconds=rerun['compile'],
  )
  say(
    f'compile_fraction_rerun {out["compile_fraction_rerun"]:.3f}: the same search again in '
    f'a new workdir with the caches it filled (a re-run or a resumed search): search '
    f'{rerun["search"]:.1f} s + final {rerun["final"]:.1f} s, {rerun["compile"]:.1f} s '
    'waiting for student programs'
  )

  with section('new_architecture_warm'):
    persistent_cache(cache_dir)
    try:
      cold_caches()
      warm, _, warm_compiles = bring_up(
        dataset, teacher_logits, profile.steps, new_student, config.seed, cache_dir
      )
    finally:
      persistent_cache(None)
  out.update(new_architecture_seconds_warm=warm, new_architecture_warm_compiles=warm_compiles)
  say(
    f'new_architecture_seconds_warm {warm:.2f}: the same student with the in-memory caches '
    f'cleared and the compilation caches warm ({warm_compiles} programs traced or compiled '
    'meanwhile: the program store holds them all)'
  )

  out['section_seconds'] = sections
  out['wall_seconds'] = time.perf_counter() - wall_start
  say(
    f'wall_seconds {out["wall_seconds"]:.1f}: this whole benchmark (by part: '
    + ', '.join(f'{k} {v:.1f} s' for k, v in sections.items())
    + ')'
  )
  print(json.dumps(_rounded(out)), flush=True)
  return out


def torch_figures(teacher, jax_sps: dict, profile: Profile, threads: int, say) -> dict:
  """torch_steps_per_second for the same students, and torch_train_gflops."""
  import torch  # pylint: disable=g-import-not-at-top

  if threads:
    torch.set_num_threads(threads)
  torch_sps = {}
  for name, factor in SIZES:
    torch_sps[name], device = torch_steps_per_second(
      shrunk(teacher, factor), profile.epoch_steps, profile.min_seconds
    )
    say(
      f'torch_steps_per_second[{name}] {torch_sps[name]:.2f}: the same student in plain '
      f'PyTorch {torch.__version__} ({device}, {torch.get_num_threads()} threads), '
      f'JAX {jax_sps[name]:.2f}'
    )
  gflops = 3 * spec_lib.flops(teacher) * BATCH * torch_sps['teacher'] / 1e9
  say(
    f'torch_train_gflops {gflops:.2f}: teacher-sized student in PyTorch, same convention, '
    f'JAX {3 * spec_lib.flops(teacher) * BATCH * jax_sps["teacher"] / 1e9:.2f}'
  )
  return {
    'torch_steps_per_second': torch_sps,
    'torch_train_gflops': gflops,
    'torch_version': torch.__version__,
    'torch_threads': torch.get_num_threads(),
  }


def _rounded(x):
  """Floats to 4 significant digits, so the JSON line stays readable."""
  if isinstance(x, float):
    return float(f'{x:.4g}') if math.isfinite(x) else None
  if isinstance(x, dict):
    return {k: _rounded(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_rounded(v) for v in x]
  return x


if __name__ == '__main__':
  main()
