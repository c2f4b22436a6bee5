"""The two-stage N2N search (paper Algorithm 1): stage 1 removes layers with a
bidirectional-LSTM policy, stage 2 shrinks the best stage-1 student's layers
with an autoregressive one; each sampled student is distilled briefly and
scored; the best student overall is then trained to convergence and exported.

Every random draw comes from the run's seed folded with (stage, iteration), and
the state that changes between iterations (policy parameters, optimiser
states, baselines, best students, metrics) is checkpointed after each
iteration, so an interrupted run resumes where it stopped and ends with the
same result as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import auto as tqdm  # a text bar in a terminal, a widget in Jupyter

from n2n_jax import baselines
from n2n_jax import checkpoint as checkpoint_lib
from n2n_jax import config as config_lib
from n2n_jax import distributed
from n2n_jax import evaluator as evaluator_lib
from n2n_jax import export as export_lib
from n2n_jax import latency as latency_lib
from n2n_jax import pareto
from n2n_jax import policies
from n2n_jax import program_store
from n2n_jax import reinforce
from n2n_jax import report
from n2n_jax import reward as reward_lib
from n2n_jax import runtime
from n2n_jax import scoring
from n2n_jax import search_state
from n2n_jax import spec as spec_lib
from n2n_jax import teacher as teacher_lib
from n2n_jax import time_budget
from n2n_jax import train as train_lib

STUDENT_DIR = 'student'


class SearchError(RuntimeError):
  """The search cannot go on (e.g. a non-finite policy loss); the last good
  checkpoint is kept."""


class ResumeMismatch(ValueError):
  """The workdir holds a search this run cannot resume: made from a different
  config, or stored in a layout this version does not read."""


# Config sections that decide a search's result; runtime settings do not.
RESULT_SECTIONS = ('seed', 'data', 'teacher', 'search', 'policy', 'distill', 'constraints', 'final')


# Fields added after searches were first stored: left out of a search's
# origin while at these defaults, so a search stored before them still resumes.
ADDED_LATER = {('constraints', 'max_latency_ms'): 0.0, ('constraints', 'latency_batch_size'): 1}


def _search_origin(config) -> dict:
  d = config.to_dict()
  origin = {k: d[k] for k in RESULT_SECTIONS}
  origin['data'] = teacher_lib.data_origin(config.data)
  origin['search'] = {k: v for k, v in origin['search'].items() if k != 'restart'}
  # How many front students to train afterwards changes no search result.
  origin['final'] = {k: v for k, v in origin['final'].items() if k != 'pareto_max'}
  if not config.constraints.max_latency_ms:
    for section, field in ADDED_LATER:
      origin[section].pop(field)
  return config_lib.as_json(origin)


# ---- the two stages as data: what differs between them is in the Stage


@dataclasses.dataclass
class Stage:
  """One stage of the search; the loop calls what it carries and never asks
  which stage it is."""

  number: int  # 1 or 2: a label (records, checkpoints) and part of its random keys
  name: str  # its policy state's key in the checkpoint and its update's kind
  source: spec_lib.NetSpec  # the spec this stage transforms
  features: np.ndarray  # (T, F) policy input
  mask: np.ndarray  # (T,) True where the action counts
  policy: object
  iterations: int
  learning_rate: float
  # (stage, policy params, key, m) -> (m, T) actions.
  sampler: Callable
  # (stage, actions, config, **limits) -> the student spec or a Degenerate verdict.
  transform: Callable
  # (state, features, mask, actions, rewards) -> (state, metrics): its policy update.
  update: Callable
  # The runtime setting that says whether its students train inside its source.
  share_setting: str
  # Whether its students drop layers of the source (the scorer's shared program
  # then keeps a switch per layer), rather than narrow them.
  removals: bool
  # What it acts on, for the message when the source has none of it.
  unit: str

  def sample(self, params, key, m: int):
    return self.sampler(self, params, key, m)

  def to_student(self, actions, config, teacher_params: int):
    """The student (or Degenerate verdict) for one rollout's actions."""
    return self.transform(
      self,
      actions,
      config,
      max_params=teacher_params,
      max_dense_inputs=config.search.max_dense_inputs,
    )


def _sample_removal(stage: Stage, params, key, m: int):
  return reinforce.sample_removal(
    stage.policy, params, jnp.asarray(stage.features), jnp.asarray(stage.mask), key, m
  )


def _sample_shrink(stage: Stage, params, key, m: int):
  return reinforce.sample_shrink(stage.policy, params, jnp.asarray(stage.features), key, m)


def _remove_layers(stage: Stage, actions, config, **limit):
  del config  # removal has no settings of its own
  keep = [bool(a) for a, m in zip(actions, stage.mask) if m]
  return spec_lib.remove(stage.source, keep, **limit)


def _shrink_layers(stage: Stage, actions, config, **limit):
  factors = [config.policy.shrink_actions[int(a)] for a in actions]
  return spec_lib.shrink(
    stage.source,
    factors,
    kernels=config.policy.shrink_kernels,
    round_to=config.policy.round_to,
    **limit,
  )


def _policy_update(config, policy, learning_rate: float, kind: str):
  return reinforce.make_update(
    policy,
    reinforce.make_optimizer(learning_rate),
    kind,
    config.policy.method,
    config.policy.baseline,
    config.policy.baseline_decay,
  )


def removal_stage(config, teacher_spec) -> Stage:
  sites = spec_lib.sites(teacher_spec)
  features = np.asarray([spec_lib.site_features(s) for s in sites], np.float32)
  mask = np.asarray([s.removable for s in sites])
  policy = policies.RemovalPolicy(
    hidden=config.policy.removal_hidden,
    num_layers=config.policy.num_layers,
    critic=config.policy.method == 'actor_critic',
  )
  learning_rate = config.policy.removal_learning_rate
  return Stage(
    1,
    'removal',
    teacher_spec,
    features,
    mask,
    policy,
    config.search.stage1_iterations,
    learning_rate,
    sampler=_sample_removal,
    transform=_remove_layers,
    update=_policy_update(config, policy, learning_rate, 'removal'),
    share_setting='share_stage1_programs',
    removals=True,
    unit='removable layer',
  )


def shrink_policy(config) -> policies.ShrinkPolicy:
  return policies.ShrinkPolicy(
    num_actions=len(config.policy.shrink_actions),
    hidden=config.policy.shrink_hidden,
    num_layers=config.policy.num_layers,
    critic=config.policy.method == 'actor_critic',
  )


def shrink_stage(config, source) -> Stage:
  """Features of stage 2: the site features of each shrinkable variable's
  layer plus a flag saying whether the variable is a kernel size."""
  sites = spec_lib.sites(source)
  variables = spec_lib.shrink_vars(source, config.policy.shrink_kernels)
  features = np.asarray(
    [
      spec_lib.site_features(sites[v.site_index]) + (float(v.variable == 'kernel'),)
      for v in variables
    ],
    np.float32,
  )
  features = features.reshape(len(variables), len(spec_lib.FEATURE_NAMES) + 1)
  policy = shrink_policy(config)
  learning_rate = config.policy.shrink_learning_rate
  return Stage(
    2,
    'shrink',
    source,
    features,
    np.ones(len(variables), bool),
    policy,
    config.search.stage2_iterations,
    learning_rate,
    sampler=_sample_shrink,
    transform=_shrink_layers,
    update=_policy_update(config, policy, learning_rate, 'shrink'),
    share_setting='share_stage2_program',
    removals=False,
    unit='shrinkable layer',
  )


def _stages(config, state: search_state.SearchState, stage1: Stage, teacher_spec):
  """The search's stages in order, each made when the one before has ended:
  stage 2 shrinks the best stage-1 student (the teacher if there is none), a
  choice kept in the state so that a resumed run shrinks the same one."""
  yield stage1
  if state.stage2_source is None:
    best = state.stage_best[stage1.number]
    state.stage2_source = best['spec'] if best else spec_lib.to_dict(teacher_spec)
  yield shrink_stage(config, spec_lib.from_dict(state.stage2_source))


def _describe_student(student) -> str:
  if spec_lib.is_degenerate(student):
    return f'degenerate ({student.kind})'
  return spec_lib.short_text(student)


# ---- the search


@dataclasses.dataclass
class SearchContext:
  """What every iteration needs and nothing checkpointed."""

  config: object
  workdir: str
  teacher: object  # teacher.Teacher
  dataset: object
  scorer: scoring.Scorer  # students -> validation accuracies (the Evaluator by default)
  teacher_params: int
  teacher_accuracy: float  # validation accuracy: the reward's A_teacher
  constraints: reward_lib.Constraints | None
  teacher_logits: jax.Array  # on the whole training split
  # architecture_key -> first validation accuracy, with search.reuse_results;
  # it lives in the checkpointed SearchState, so a resumed search knows what it knew.
  known_accuracies: dict | None = None
  # With constraints.max_latency_ms: spec -> milliseconds (latency.measure),
  # and architecture_key -> milliseconds measured so far (checkpointed too).
  latency: object = None
  latencies: dict | None = None


def _latency_of(ctx: SearchContext, student) -> float:
  """The student's inference time in ms, measured once per architecture."""
  key = architecture_key(student)
  if key not in ctx.latencies:
    ctx.latencies[key] = float(distributed.from_primary(np.float64(ctx.latency(student))))
  return ctx.latencies[key]


def _score(ctx: SearchContext, student, result, iteration: int) -> tuple:
  """(reward, why-degenerate or None, violations, latency in ms or None)."""
  if spec_lib.is_degenerate(student):
    return reward_lib.DEGENERATE_REWARD, f'{student.kind}: {student.reason}', (), None
  # Every buildable student is timed, failed ones too: then every process of
  # a multi-process run times the same students (the figures are shared).
  ms = _latency_of(ctx, student) if ctx.latency is not None else None
  if result.error is not None or not math.isfinite(result.accuracy):
    return reward_lib.DEGENERATE_REWARD, result.error or 'the accuracy is not finite', (), ms
  params = spec_lib.param_count(student)
  measured = {'params': params, 'flops': spec_lib.flops(student)}
  if ms is not None:
    measured['latency_ms'] = ms
  k = ctx.config.constraints
  eps = reward_lib.epsilon(iteration, k.epsilon_schedule, k.epsilon_horizon, k.epsilon_power)
  s = reward_lib.score(
    result.accuracy,
    params,
    ctx.teacher_params,
    ctx.teacher_accuracy,
    kind=ctx.config.search.reward,
    constraints=ctx.constraints,
    measured=measured,
    eps=eps,
  )
  return s.reward, None, s.violations, ms


def architecture_key(student) -> str:
  """A short, stable name for an architecture (its spec's JSON, hashed)."""
  return hashlib.sha256(spec_lib.to_json(student).encode()).hexdigest()[:24]


def _known_results(ctx: SearchContext, students, trainable) -> tuple:
  """With search.reuse_results: ({i: result} for students whose architecture
  has a recorded accuracy, {i: None, or the index of an earlier rollout of
  this iteration with the same architecture}, the indices left to train).
  Without it: nothing known, every trainable index to train."""
  if ctx.known_accuracies is None:
    return {}, {}, list(trainable)
  results, reused, first, to_train = {}, {}, {}, []
  for i in trainable:
    key = architecture_key(students[i])
    if key in ctx.known_accuracies:
      results[i] = scoring.StudentResult(ctx.known_accuracies[key], None)
      reused[i] = None
    elif key in first:
      reused[i] = first[key]
    else:
      first[key] = i
      to_train.append(i)
  return results, reused, to_train


def _iteration(ctx: SearchContext, stage: Stage, state, iteration: int):
  """One policy iteration: sample m students, train and score them, update."""
  config = ctx.config
  start = time.perf_counter()
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), stage.number), iteration)
  sample_key, train_key = jax.random.split(key)
  # Process 0's actions and (below) scores on every process: hosts that compute
  # the last bits differently (GPU reductions) would otherwise drift apart.
  actions = distributed.from_primary(
    np.asarray(stage.sample(state.params, sample_key, config.search.rollouts))
  )
  students = [stage.to_student(a, config, ctx.teacher_params) for a in actions]
  trainable = [i for i, s in enumerate(students) if not spec_lib.is_degenerate(s)]
  results, reused, to_train = _known_results(ctx, students, trainable)
  # A student's key depends on its rollout index only, so reusing results
  # never changes what the students that do train see.
  shared = _shares_programs(config, stage, ctx.dataset)
  chosen = [students[i] for i in to_train]
  trained = ctx.scorer(
    chosen,
    [jax.random.fold_in(train_key, i) for i in to_train],
    config.seed,
    inside=stage.source if shared else None,
  )
  results.update(zip(to_train, scoring.check_results(trained, chosen)))
  for i, twin in reused.items():
    if twin is not None:  # sampled twice in this iteration: trained once
      results[i] = results[twin]
  rewards, accuracies, params, degenerate, violations, latencies = [], [], [], [], [], []
  for i, student in enumerate(students):
    result = results.get(i, scoring.StudentResult(float('nan'), None))
    r, why, broken, ms = _score(ctx, student, result, iteration - 1)
    latencies.append(ms)
    rewards.append(float(r))
    accuracies.append(None if math.isnan(result.accuracy) else float(result.accuracy))
    params.append(0 if spec_lib.is_degenerate(student) else spec_lib.param_count(student))
    degenerate.append(why)
    violations.append(list(broken))
  if distributed.process_count() > 1:
    scores = distributed.from_primary(
      np.asarray([rewards, [math.nan if a is None else a for a in accuracies]], np.float64)
    )
    rewards = scores[0].tolist()
    accuracies = [None if math.isnan(a) else a for a in scores[1].tolist()]
  if ctx.known_accuracies is not None:
    for i in to_train:
      if accuracies[i] is not None:
        ctx.known_accuracies[architecture_key(students[i])] = accuracies[i]
  baseline_before = float(state.baseline)
  state, metrics = stage.update(
    state,
    jnp.asarray(stage.features),
    jnp.asarray(stage.mask),
    jnp.asarray(actions),
    jnp.asarray(rewards, jnp.float32),
  )
  loss = float(metrics['loss'])
  if not bool(metrics['finite']):
    raise SearchError(
      f'stage {stage.number} iteration {iteration}: the policy loss is {loss} '
      f'(gradient norm {float(metrics["grad_norm"])}); the run stops here and '
      'keeps the checkpoint of the previous iteration. Try a lower policy '
      'learning rate, with --config.search.restart=True.'
    )
  record = {
    'stage': stage.number,
    'iteration': iteration,
    'rewards': rewards,
    'accuracies': accuracies,
    'params': params,
    'compressions': [ctx.teacher_params / p if p else 0.0 for p in params],
    'degenerate': degenerate,
    'violations': violations,
    'mean_reward': float(np.mean(rewards)),
    'baseline': baseline_before,
    'policy_loss': loss,
    'seconds': round(time.perf_counter() - start, 3),
    'specs': [_describe_student(s) for s in students],
    'reused': [i in reused for i in range(len(students))],
    # Trained inside the stage's source (runtime.share_stage1_programs or
    # share_stage2_program).
    'shared_program': shared,
  }
  if ctx.latency is not None:
    record['latencies_ms'] = latencies  # None where a student was not timed
  return state, record, students


def _better(candidate: dict | None, best: dict | None) -> bool:
  return candidate is not None and (best is None or candidate['reward'] > best['reward'])


def _starts_another(
  config, state: search_state.SearchState, number: int, stage1_iterations: int, elapsed: float
) -> bool:
  """Whether stage `number` runs another iteration: it has some left, no later
  stage has begun, and runtime.time_budget_minutes leaves room for one
  (time_budget.py; process 0 decides for all)."""
  done, records = state.done, state.records
  planned = {1: stage1_iterations, 2: config.search.stage2_iterations}
  if done[number] >= planned[number] or any(done[n] for n in done if n > number):
    return False
  deadline = time_budget.stage_deadline(
    config.runtime.time_budget_minutes, number, stage1_iterations, config.search.stage2_iterations
  )
  finished = [r['seconds'] for r in records if r['stage'] == number]
  return bool(
    distributed.from_primary(np.asarray(time_budget.room_for_another(elapsed, deadline, finished)))
  )


def _valid_students(students, record) -> list[dict]:
  """The iteration's students that may be an answer, as entries (spec, params,
  val_accuracy, reward, stage, iteration). A student that breaks a
  constraint may still score well while epsilon relaxes the penalty, but it
  must never be the answer."""
  entries = []
  for student, r, acc, broken in zip(
    students, record['rewards'], record['accuracies'], record['violations']
  ):
    if (
      spec_lib.is_degenerate(student) or acc is None or broken or r <= reward_lib.DEGENERATE_REWARD
    ):
      continue
    entries.append(
      {
        'reward': r,
        'val_accuracy': acc,
        'params': spec_lib.param_count(student),
        'spec': spec_lib.to_dict(student),
        'stage': record['stage'],
        'iteration': record['iteration'],
      }
    )
  return entries


def _best_of(entries: list[dict]) -> dict | None:
  best = None
  for entry in entries:
    if _better(entry, best):
      best = entry
  return best


def _policy_states(config, stage1, key, init_from: str) -> dict:
  """Fresh policy states for both stages. Policy parameter shapes depend only on
  the feature size and hidden sizes, never on the teacher, so both exist from
  the start, and `init_from` (another run's workdir) can seed them even when
  its teacher differs (paper section 4.6)."""
  shrink = shrink_policy(config)
  states = {}
  for name, policy, features, lr in (
    ('removal', stage1.policy, stage1.features.shape[1], stage1.learning_rate),
    ('shrink', shrink, len(spec_lib.FEATURE_NAMES) + 1, config.policy.shrink_learning_rate),
  ):
    params = policies.init_policy(policy, jax.random.fold_in(key, len(states)), features)
    states[name] = reinforce.PolicyState.create(params, reinforce.make_optimizer(lr))
  if init_from:
    other = None if not os.path.isdir(init_from) else checkpoint_lib.Checkpoints(init_from)
    if other is None or other.latest_step() is None:
      raise ResumeMismatch(
        f'policy.init_from={init_from!r} holds no trained policies (no '
        f'{checkpoint_lib.SEARCH_DIR}/ with a checkpoint in it)'
      )
    try:
      trained, _ = other.restore(states)
    except Exception as e:  # pylint: disable=broad-except
      raise ResumeMismatch(
        f'policy.init_from={init_from!r}: its policies do not fit this '
        f'config (policy sizes differ?): {str(e).splitlines()[0][:200]}'
      ) from None
    # Parameters only: optimiser state and baseline start afresh for the new teacher.
    states = {k: v.replace(params=trained[k].params) for k, v in states.items()}
  return states


def _compile_in_background(update, state, stage: Stage, rollouts: int) -> threading.Thread:
  """Compile the stage's policy update (seconds: more than many students) on a
  background thread while its first students train, by calling it once on
  arguments shaped like the real ones and dropping the result. The real call
  then finds the program in the jit cache. Any failure is left for the real
  call to report."""
  args = (
    state,
    jnp.asarray(stage.features),
    jnp.asarray(stage.mask),
    jnp.zeros((rollouts, len(stage.features)), jnp.int32),
    jnp.zeros((rollouts,), jnp.float32),
  )

  def work():
    try:
      jax.block_until_ready(update(*args))
    except Exception:  # pylint: disable=broad-except
      pass

  thread = threading.Thread(target=work, name='n2n-policy-update-compile', daemon=True)
  thread.start()
  return thread


def _shares_programs(config, stage: Stage, dataset) -> bool:
  """Whether the stage's students train inside its source (its
  stage.share_setting, runtime.share_stage1_programs or share_stage2_program;
  'auto' weighs the source's arithmetic against compiles, see
  runtime.share_programs)."""
  switch = getattr(config.runtime, stage.share_setting)
  examples = len(dataset.train_images)
  if config.distill.max_train_examples:
    examples = min(examples, config.distill.max_train_examples)
  return runtime.share_programs(
    switch,
    spec_lib.flops(stage.source),
    config.distill.epochs * examples,
    stage=stage.number,
    together=runtime.train_together(config.runtime.train_together),
  )


def _evaluator(config, dataset, teacher, teacher_logits) -> evaluator_lib.Evaluator:
  """The default scorer: students distilled from the teacher's logits as
  config.distill says, on the devices and with the caches config.runtime says."""
  return evaluator_lib.Evaluator(
    dataset,
    teacher_logits,
    evaluator_lib.DistillSettings.from_config(config.distill),
    config.runtime.epoch_mode,
    teacher.variables,
    memory_limit_bytes=int(config.runtime.student_memory_limit_mb * 2**20),
    devices=student_devices(config.runtime.student_devices),
    compile_ahead=config.runtime.compile_ahead,
    compile_threads=runtime.compile_threads(config.runtime.compile_threads),
    program_store=program_store.for_runtime(config.runtime),
    together=runtime.train_together(config.runtime.train_together),
    students_per_call=config.runtime.students_per_call or config.search.rollouts,
  )


def student_devices(count: int) -> list:
  """The devices an iteration's students are spread over: the first `count`
  local devices (0 = all of them)."""
  local = jax.local_devices()
  return local[:count] if count else local


# What a search writes besides its checkpoints; a restart removes it all.
OUTPUTS = (
  report.METRICS_FILE,
  report.SUMMARY_FILE,
  report.TENSORBOARD_DIR,
  'report.md',
  'search_stage1.png',
  'search_stage2.png',
  'accuracy_vs_params.png',
  STUDENT_DIR,
  pareto.FILE,
  pareto.STUDENTS_DIR,
)


def run(
  config,
  workdir: str,
  teacher,
  dataset,
  *,
  progress: bool = True,
  scorer: scoring.Scorer | None = None,
  latency=None,
) -> dict:
  """The whole compression pipeline after the teacher; returns summary.json's content.

  `scorer` turns each iteration's students into validation accuracies (see
  scoring.py); by default an evaluator.Evaluator distils them from the
  teacher as config.distill says. The final training of the chosen student is
  always real. `latency` (spec -> milliseconds) times students for
  constraints.max_latency_ms; by default latency.measure on the first
  student device, with constraints.latency_batch_size images."""
  os.makedirs(workdir, exist_ok=True)
  ckpts = checkpoint_lib.Checkpoints(workdir)
  origin = _search_origin(config)
  if config.search.restart and ckpts.latest_step() is not None:
    ckpts.delete_all()

    def remove_outputs():
      for name in OUTPUTS:
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
          shutil.rmtree(path)
        elif os.path.exists(path):
          os.remove(path)

    distributed.on_primary('remove outputs', remove_outputs)
    ckpts = checkpoint_lib.Checkpoints(workdir)

  stage1 = removal_stage(config, teacher.spec)
  resuming = ckpts.latest_step() is not None
  # A resumed run takes its policies from its own checkpoint, so init_from
  # is only read (and must exist) when a search starts.
  states = _policy_states(
    config,
    stage1,
    jax.random.fold_in(jax.random.key(config.seed), 0),
    '' if resuming else config.policy.init_from,
  )
  state = search_state.SearchState.fresh(origin)
  if resuming:

    def same_config(stored):
      # A record without an origin is refused below, once its checksum shows
      # it was stored that way and not damaged since.
      if not isinstance(stored.get('origin'), dict):
        return
      diff = config_lib.differences(stored['origin'], origin)
      if diff:
        raise ResumeMismatch(
          f'{workdir} holds a search made with a different config:\n  '
          + '\n  '.join(diff)
          + '\nRun with --config.search.restart=True to discard it, or use another '
          '--workdir.'
        )

    states, stored = ckpts.restore_latest_good(
      states,
      same_config,
      remedy='Rerun with --config.search.restart=True to start the search over.',
    )
    states = dict(states)
    state = _stored_state(stored, ckpts)

  teacher_logits = train_lib.predict(teacher.model, teacher.variables, dataset.train_images)
  scorer = scorer or _evaluator(config, dataset, teacher, teacher_logits)
  k = config.constraints
  constraints = (
    reward_lib.Constraints.upper_bounds(
      params=k.max_params, flops=k.max_flops, latency_ms=k.max_latency_ms
    )
    if (k.max_params or k.max_flops or k.max_latency_ms)
    else None
  )
  if k.max_latency_ms and latency is None:
    latency = functools.partial(
      latency_lib.measure,
      batch_size=k.latency_batch_size,
      device=student_devices(config.runtime.student_devices)[0],
      store=program_store.for_runtime(config.runtime),
    )
  ctx = SearchContext(
    config,
    workdir,
    teacher,
    dataset,
    scorer,
    spec_lib.param_count(teacher.spec),
    teacher.record['val_accuracy'],
    constraints,
    teacher_logits,
    state.known_accuracies if config.search.reuse_results else None,
    latency if k.max_latency_ms else None,
    state.latencies,
  )

  # Process 0 writes the logs; the others compute the same records.
  primary = distributed.is_primary()
  writer = report.MetricsWriter(workdir, state.records) if primary else None
  board = report.TensorBoardWriter(workdir, first_step=len(state.records)) if primary else None
  total = stage1.iterations + config.search.stage2_iterations
  bar = tqdm.tqdm(
    total=total,
    initial=sum(state.done.values()),
    unit='iter',
    desc='search',
    disable=not progress,
    dynamic_ncols=True,
  )
  search_start = time.perf_counter() - state.search_seconds
  compile_before = state.compile_seconds
  try:
    for stage in _stages(config, state, stage1, teacher.spec):
      if stage.iterations and not len(stage.features):
        # Nothing to act on (stage 2: only the class layer has a width): no actions.
        if primary:
          tqdm.tqdm.write(
            f'stage {stage.number} skipped: {stage.source.name} has no {stage.unit}',
            file=sys.stderr,
          )
        continue
      if state.done[stage.number] < stage.iterations:
        if hasattr(scorer, 'prepare') and _shares_programs(config, stage, dataset):
          # The stage's shared program compiles while the policy's sampler does.
          scorer.prepare(stage.source, removals=stage.removals)
        _compile_in_background(stage.update, states[stage.name], stage, config.search.rollouts)
      while _starts_another(
        config, state, stage.number, stage1.iterations, time.perf_counter() - search_start
      ):
        iteration = state.done[stage.number] + 1
        states[stage.name], record, students = _iteration(ctx, stage, states[stage.name], iteration)
        valid = _valid_students(students, record)
        best_here = _best_of(valid)
        state.pareto = pareto.update(state.pareto, valid)
        if _better(best_here, state.stage_best[stage.number]):
          state.stage_best[stage.number] = best_here
        if _better(best_here, state.best):
          state.best = best_here
        stage_best = state.stage_best[stage.number]
        record['best_reward'] = stage_best['reward'] if stage_best else reward_lib.DEGENERATE_REWARD
        state.records.append(record)
        state.done[stage.number] = iteration
        state.compile_seconds = compile_before + getattr(scorer, 'compile_seconds', 0.0)
        state.search_seconds = time.perf_counter() - search_start
        ckpts.save(len(state.records), states, state.to_dict())
        if primary:
          writer.append(record)
          board.append(record)
        best = state.best
        bar.set_postfix(
          stage=stage.number,
          it=iteration,
          reward=f'{record["mean_reward"]:.3f}',
          best=f'{ctx.teacher_params / best["params"]:.1f}x' if best else '-',
        )
        bar.update(1)
  finally:
    bar.close()
    if board is not None:
      # After a failed write (a full disk) that failure is the one to report,
      # not the flush that fails after it.
      with contextlib.suppress(OSError) if sys.exc_info()[0] else contextlib.nullcontext():
        board.close()
  return _finish(ctx, state, progress)


def _stored_state(stored: dict, ckpts: checkpoint_lib.Checkpoints) -> search_state.SearchState:
  """The SearchState a restored checkpoint holds, or a refusal saying what to do."""
  try:
    return search_state.SearchState.from_dict(stored)
  except search_state.LayoutError as e:
    raise ResumeMismatch(
      f'{ckpts.workdir} holds a search checkpoint ({ckpts.directory}) this version cannot '
      f'resume: {e}. Rerun with --config.search.restart=True to start the search over, or '
      'use another --workdir.'
    ) from None


def _finish(ctx: SearchContext, state: search_state.SearchState, progress) -> dict:
  """Train the best student to convergence, export it, write the summary and report."""
  config, workdir = ctx.config, ctx.workdir
  best = state.best
  if best is None:
    raise SearchError(
      'the search found no usable student: every sampled student was '
      'degenerate or failed (see metrics.jsonl "degenerate"). Try more '
      'iterations or another seed.'
    )
  spec = spec_lib.from_dict(best['spec'])
  try:
    final = baselines.train_final(config, ctx.dataset, ctx.teacher_logits, spec, progress=progress)
  except baselines.BaselineError as e:
    raise SearchError(str(e)) from None
  teacher_record = ctx.teacher.record
  teacher_seconds = teacher_record['seconds']  # its training, whenever that ran
  student_params = spec_lib.param_count(spec)
  summary = {
    'teacher': {
      'name': ctx.teacher.spec.name,
      'params': ctx.teacher_params,
      'val_accuracy': teacher_record['val_accuracy'],
      'test_accuracy': teacher_record['test_accuracy'],
    },
    'student': {
      'params': student_params,
      'flops': spec_lib.flops(spec),
      'val_accuracy': final.val_accuracy,
      'test_accuracy': final.test_accuracy,
      'search_val_accuracy': best['val_accuracy'],
      'stage': best['stage'],
      'spec': spec_lib.to_dict(spec),
      **(
        {
          'latency_ms': ctx.latencies[architecture_key(spec)],
          'latency_batch_size': config.constraints.latency_batch_size,
        }
        if ctx.latency is not None
        else {}
      ),
    },
    'stage1_best': _brief(state.stage_best[1]),
    'stage2_best': _brief(state.stage_best[2]),
    'compression': ctx.teacher_params / student_params,
    # The iterations run: fewer than planned where runtime.time_budget_minutes ended a stage.
    'iterations': {
      'stage1': state.done[1],
      'stage2': state.done[2],
      'planned': [config.search.stage1_iterations, config.search.stage2_iterations],
      'time_budget_minutes': config.runtime.time_budget_minutes,
    },
    # Summed over every process a resumed run took. 'compile' is the part of
    # search and final spent compiling student programs, not a fourth share.
    'wall_seconds': round(teacher_seconds + state.search_seconds + final.seconds, 2),
    'time': {
      'teacher': round(teacher_seconds, 2),
      'search': round(state.search_seconds, 2),
      'compile': round(state.compile_seconds + final.compile_seconds, 2),
      'final': round(final.seconds, 2),
    },
  }
  export_lib.save_student(
    os.path.join(workdir, STUDENT_DIR),
    spec,
    final.variables,
    {
      'val_accuracy': final.val_accuracy,
      'test_accuracy': final.test_accuracy,
      'normalisation': teacher_record.get('normalisation'),
    },
  )
  if config.final.pareto_max:
    front = state.pareto
    trained = _train_pareto(
      ctx, pareto.spread(front, config.final.pareto_max, best['spec']), progress
    )
    summary['pareto'] = {
      'front_size': len(front),
      'students': [{k: v for k, v in t.items() if k != 'spec'} for t in trained],
    }
  if distributed.is_primary():  # the others' results are the same run's; process 0 reports
    if 'pareto' in summary:
      report.write_json(
        os.path.join(workdir, pareto.FILE), dict(summary['pareto'], students=trained)
      )
    report.write_summary(summary, workdir)
    # write_report draws the plots beside report.md (search_stage*.png,
    # accuracy_vs_params.png, with the Pareto students) and links them.
    report.write_report(summary, state.records, os.path.join(workdir, 'report.md'))
  return summary


def _train_pareto(ctx: SearchContext, chosen: list[dict], progress: bool) -> list[dict]:
  """Train each chosen front member like the answer and export it to
  WORKDIR/students/N_PARAMSparams/ (the folder replaced whole); returns
  pareto.json's entries, smallest first."""
  config = ctx.config
  trained = []
  with export_lib.folder_written_whole(os.path.join(ctx.workdir, pareto.STUDENTS_DIR)) as folder:
    for n, entry in enumerate(chosen, 1):
      spec = spec_lib.from_dict(entry['spec'])
      try:
        final = baselines.train_final(
          config,
          ctx.dataset,
          ctx.teacher_logits,
          spec,
          progress=progress,
          desc=f'Pareto student {n}/{len(chosen)}',
        )
      except baselines.BaselineError as e:
        raise SearchError(str(e)) from None
      name = f'{n}_{entry["params"]}params'
      export_lib.save_student(
        os.path.join(folder, name),
        spec,
        final.variables,
        {
          'val_accuracy': final.val_accuracy,
          'test_accuracy': final.test_accuracy,
          'normalisation': ctx.teacher.record.get('normalisation'),
        },
      )
      trained.append(
        {
          'directory': os.path.join(pareto.STUDENTS_DIR, name),
          'params': entry['params'],
          'flops': spec_lib.flops(spec),
          'compression': ctx.teacher_params / entry['params'],
          'val_accuracy': final.val_accuracy,
          'test_accuracy': final.test_accuracy,
          'search_val_accuracy': entry['val_accuracy'],
          'reward': entry['reward'],
          'stage': entry['stage'],
          'iteration': entry['iteration'],
          'spec': entry['spec'],
        }
      )
  return trained


def _brief(best):
  if best is None:
    return None
  return {
    'params': best['params'],
    'val_accuracy': best['val_accuracy'],
    'reward': best['reward'],
    'iteration': best['iteration'],
  }
