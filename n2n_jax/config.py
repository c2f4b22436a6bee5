"""The experiment config: every field with its default, and the checks that
run before any work so a bad value fails in seconds with the field's name.

Experiment files in configs/ start from `base_config()` and override fields;
`--config.x.y=value` overrides them again on the command line.
"""

from __future__ import annotations

import difflib
import json
import math
import numbers
import os

import ml_collections

# Only JAX-free modules at the top, so that loading a config file (configs/*.py)
# imports no JAX; the modules that own the other name lists are imported by the
# checks that use them.
from n2n_jax import data_config
from n2n_jax import spec as spec_lib
from n2n_jax import zoo

MODES = ('compress', 'describe', 'teacher', 'prune', 'handdesigned')


class ConfigError(ValueError):
  """A config value is invalid; the message names the field."""


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = 'compress'
  c.seed = 0
  c.data = data_config.default_data_config()

  c.teacher = ml_collections.ConfigDict()
  c.teacher.name = 'digits_cnn'  # a zoo.NAMES entry, unless spec_file is set
  c.teacher.spec_file = ''  # path to a JSON spec (spec.to_json) of your own teacher
  # Used to describe the teacher without its data; empty/0 = from the data source.
  c.teacher.input_shape = ()
  c.teacher.num_classes = 0
  c.teacher.epochs = 30
  c.teacher.batch_size = 64
  c.teacher.optimizer = 'sgd'
  c.teacher.learning_rate = 0.01
  c.teacher.decay_epochs = (20,)
  c.teacher.decay_factor = 0.1
  c.teacher.momentum = 0.9
  c.teacher.weight_decay = 5e-4

  # The N2N search (paper sections 3-4; appendix 10 for the defaults).
  c.search = ml_collections.ConfigDict()
  c.search.stage1_iterations = 100
  c.search.stage2_iterations = 100
  c.search.rollouts = 5  # m students sampled per policy iteration
  c.search.reward = 'n2n'  # 'n2n': C(2-C)A/A_teacher; 'naive': A*C (appendix 11.1)
  c.search.max_dense_inputs = 50_000  # a Dense layer with more inputs is degenerate
  c.search.restart = False  # True: discard this workdir's search state and start over
  # True: an architecture sampled again keeps the validation accuracy of its
  # first training instead of being distilled again. Saves the time of repeats
  # (a converging policy samples many); changes results, because a repeated
  # student's reward no longer carries fresh training noise. Off, as in the paper.
  c.search.reuse_results = False

  c.policy = ml_collections.ConfigDict()
  c.policy.method = 'reinforce'  # or 'actor_critic' (appendix 6)
  c.policy.baseline = 'ema'  # or 'running_mean' (the authors' code)
  c.policy.baseline_decay = 0.9
  c.policy.removal_learning_rate = 0.003
  c.policy.removal_hidden = 30
  c.policy.shrink_learning_rate = 0.01
  c.policy.shrink_hidden = 50
  c.policy.num_layers = 2
  c.policy.shrink_actions = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
  c.policy.shrink_kernels = False  # also shrink kernel sizes
  c.policy.round_to = 1  # round shrunk widths to a multiple (8 suits accelerators)
  c.policy.init_from = ''  # another run's workdir: start from its trained policies

  # Training each sampled student (section 3.5): L2 on the teacher's logits.
  c.distill = ml_collections.ConfigDict()
  c.distill.epochs = 5
  c.distill.batch_size = 64
  c.distill.learning_rate = 5e-4
  c.distill.weight_decay = 5e-4
  c.distill.init = 'scratch'  # or 'teacher': inherit teacher weights where shapes match
  c.distill.max_train_examples = 0  # distil on a fixed random subset of N (0 = all)

  # Constraints (section 3.3.1); 0 = no limit.
  c.constraints = ml_collections.ConfigDict()
  c.constraints.max_params = 0
  c.constraints.max_flops = 0
  # Inference time: milliseconds for one forward pass of a batch of
  # latency_batch_size images, measured on the search's device (latency.py).
  c.constraints.max_latency_ms = 0.0
  c.constraints.latency_batch_size = 1
  c.constraints.epsilon_schedule = 'poly'  # 'poly' (authors' code), 'linear', 'hard'
  c.constraints.epsilon_horizon = 15.0
  c.constraints.epsilon_power = 4.0

  # Training the chosen student to convergence: cross-entropy + soft_weight * L2
  # on the teacher's logits (section 3.5). The L2 sums over classes, so 0.1 puts
  # it on the scale of a per-class mean squared error.
  c.final = ml_collections.ConfigDict()
  c.final.epochs = 30
  c.final.batch_size = 64
  c.final.learning_rate = 1e-3
  c.final.weight_decay = 0.0
  c.final.soft_weight = 0.1
  # Besides the answer, train and export (WORKDIR/students/, pareto.json) up to
  # this many students of the search's accuracy-vs-params Pareto front, spread
  # evenly in log(params), each exactly like the answer. 0: none. Changing it
  # on resume is allowed (the front is kept either way).
  c.final.pareto_max = 0

  # Baseline of paper Table 2 (mode=prune): filter pruning with the Taylor
  # criterion of Molchanov et al. (2016), fine-tuning after every step, the
  # paper's stopping rule against the N2N student, repeated, best kept.
  c.pruning = ml_collections.ConfigDict()
  c.pruning.repeats = 5  # independent pruning runs (different batches); the best is reported
  c.pruning.fraction_per_step = 0.1  # share of the remaining prunable filters removed per step
  c.pruning.score_batches = 10  # training batches the Taylor scores are averaged over
  c.pruning.finetune_steps = 100  # fine-tuning steps (hard + soft loss) after each step
  c.pruning.batch_size = 64
  c.pruning.learning_rate = 1e-3  # Adam, for fine-tuning between steps
  c.pruning.max_steps = 200
  # Stop when validation accuracy falls more than this below the N2N
  # student's, or when the net has fewer parameters than it (paper 4.4.1).
  c.pruning.max_accuracy_drop = 0.01
  # The workdir whose summary.json holds the N2N student to stop at ('' = this
  # workdir). Without a reference, min_params / min_accuracy, when either is
  # set, are the limits instead of this workdir's student (e.g. to stop at a
  # Pareto student's size, from pareto.json).
  c.pruning.reference = ''
  c.pruning.min_params = 0
  c.pruning.min_accuracy = 0.0

  # Baseline of paper Table 3 (mode=handdesigned): a hand-designed student from
  # the zoo, trained with the same distillation as the N2N student (config.final).
  c.handdesigned = ml_collections.ConfigDict()
  c.handdesigned.name = 'fitnet4'  # fitnet4, squeezenet1_1, vgg_small or any zoo name

  c.runtime = ml_collections.ConfigDict()
  # 'auto' runs epochs as a Python loop of jitted steps on the CPU and as one
  # lax.scan on accelerators (see n2n_jax/train.py for why).
  c.runtime.epoch_mode = 'auto'
  # JAX's persistent compilation cache, and the program store (program_store.py) in
  # its n2n_programs/ subfolder; '' turns both off.
  c.runtime.compilation_cache_dir = os.path.join(
    os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'n2n_jax', 'jax'
  )
  # A compilation cache folder that other users can write to (or that one
  # owns) is not used: its files are executables, which would run as you.
  # True uses it anyway; program store entries must still be signed with your
  # key ($XDG_CONFIG_HOME/n2n_jax/program_store.key, see program_store.py).
  c.runtime.trust_shared_cache = False
  c.runtime.progress = True  # progress bars on stderr
  # Teacher training saves its progress (weights, optimiser state, history) at
  # the end of an epoch at most this often, and always on SIGTERM or Ctrl-C, so
  # a stopped run resumes it; 0 saves after every epoch.
  c.runtime.teacher_checkpoint_seconds = 60.0
  # Minutes of search time (teacher and final training not counted, resumed
  # runs summed) after which the search ends even if iterations are left:
  # stage 1 gets its share (by iteration counts), stage 2 the rest; 0 = no
  # budget. Recorded in summary.json's 'iterations'. See n2n_jax/time_budget.py.
  c.runtime.time_budget_minutes = 0.0
  # A student whose estimated training memory exceeds this many MB scores -1
  # (reason recorded) instead of being compiled; 0 uses the device's own limit
  # where JAX reports one (GPUs, TPUs), none on CPUs.
  c.runtime.student_memory_limit_mb = 0.0
  # The search trains an iteration's students concurrently, one per device,
  # over this many local devices (0 = all); results do not depend on it.
  c.runtime.student_devices = 0
  # Compile the next students of an iteration on background threads while
  # the current one trains (results do not depend on it).
  c.runtime.compile_ahead = True
  # Threads compiling students ahead (0 = one per 4 CPU cores, at least 1). On
  # GPUs compiling a student takes longer than training it (docs/performance.md).
  c.runtime.compile_threads = 0
  # Stage 2: train each student as its source (the stage-1 student it
  # shrinks), with the channels it lacks held at zero (n2n_jax/padding.py), so
  # the whole stage runs one compiled program instead of compiling every new
  # set of widths. Results are the same up to floating-point rounding (dropout
  # draws other, equally random masks); each student costs its source's
  # arithmetic. 'on', 'off', or 'auto': on where that extra arithmetic costs
  # less than the compiles it saves (runtime.sharing_pays, from the source's
  # FLOPs, the images a student trains on and the backend's measured compile
  # seconds and FLOP/s): on for the bundled digits everywhere and for GPU
  # searches of short distillations, off for VGG-13 students on CPUs
  # (docs/performance.md).
  c.runtime.share_stage2_program = 'auto'
  # Stage 1: train each student as the teacher with the layers it removed
  # switched off at run time (n2n_jax/padding.py), so that students keeping
  # the same pooling layers share one compiled program (a removed pool changes
  # every later shape). Results are the same up to floating-point rounding
  # (dropout draws other, equally random masks); each student costs the
  # arithmetic of the teacher without its removed pools. 'on', 'off' or
  # 'auto': the rule above, and only where students train together
  # (runtime.train_together): a switched teacher compiles several times slower
  # than a student, so sharing alone costs more than the compiles it saves
  # (docs/performance.md, "Sharing programs: the rule").
  c.runtime.share_stage1_programs = 'auto'
  # Students that share a program (above) train together, stacked in one
  # compiled call (n2n_jax/stacked.py): 'vmap' (vectorised: grouped
  # convolutions), 'map' (a loop over students inside the program), 'off'
  # (one student per call), or 'auto': off on CPUs, where stacking measured
  # slower per student, 'vmap' on GPUs and TPUs (docs/performance.md).
  # Results are the same as one by one up to floating-point rounding.
  c.runtime.train_together = 'auto'
  # Students per stacked call (0 = search.rollouts): fixed for the search, a
  # shorter group is padded with inert copies so no count compiles anew.
  c.runtime.students_per_call = 0
  # Deterministic XLA kernels on GPUs (--xla_gpu_deterministic_ops), so a run
  # and its re-run or resume give the same numbers; set by the command line
  # before JAX starts. CPU runs are deterministic without it.
  c.runtime.deterministic = False
  # XLA's GPU autotuning level (--xla_gpu_autotune_level: 0 none .. 4, XLA's
  # default, which leaves XLA_FLAGS as it is), set by the command line before
  # JAX starts. Autotuning is most of a student's compile on a GPU.
  c.runtime.gpu_autotune_level = 4
  # Teacher training splits each batch over this many local devices (0 = all;
  # fewer when the batch size does not divide evenly).
  c.runtime.teacher_devices = 0
  # The same for the final training of the chosen student and of the baselines.
  c.runtime.final_devices = 0
  # Joining the other processes of a multi-host run (jax.distributed): 'auto'
  # when the environment says there are several (Slurm, Open MPI,
  # JAX_NUM_PROCESSES; see n2n_jax/distributed.py), 'on' always (Cloud TPU
  # slices), 'off' never.
  c.runtime.distributed = 'auto'
  # Seconds after which a process of such a run that stops answering (killed,
  # preempted, its machine gone) counts as lost: the others then stop with
  # exit code 75 and a line naming it, and the whole job is run again to
  # resume (docs/reliability.md). JAX's heartbeat timeout; 100 is JAX's default.
  c.runtime.peer_timeout_seconds = 100
  return c


# The paper's teacher schedules (appendix 10.2). The paper names no optimiser:
# SGD with momentum 0.9 suits MNIST's lr 0.01, and Adam CIFAR/SVHN's lr 0.001
# (SGD at 0.001 would barely move in 150 epochs).
TEACHER_SCHEDULES = {
  'mnist': dict(epochs=50, batch_size=64, optimizer='sgd', learning_rate=0.01, decay_epochs=(30,)),
  'cifar': dict(
    epochs=150, batch_size=128, optimizer='adam', learning_rate=0.001, decay_epochs=(80, 120)
  ),
  # "50 epochs at 0.01, reduced to 0.001 after the 50th": we read it as 50 + 20.
  'caltech256': dict(
    epochs=70, batch_size=64, optimizer='sgd', learning_rate=0.01, decay_epochs=(50,)
  ),
}


def paper_teacher_schedule(config, which: str) -> None:
  """Set config.teacher's schedule to the paper's for 'mnist', 'cifar' (also
  SVHN) or 'caltech256'."""
  config.teacher.update(TEACHER_SCHEDULES[which])


VARIANTS = ('reduced',)


def apply_variant(config, variant: str = ''):
  """A config file's named variant, chosen on the command line as
  --config=configs/NAME.py:VARIANT ('' = the paper's full experiment).

  'reduced' makes an experiment small enough for a 2-core CPU (minutes to
  tens of minutes instead of GPU-days), keeping the model, the data source and
  every step of the pipeline: 5,000 training images (Caltech-256: 2,000 at
  64x64) with 5 % held out for validation, a 5-epoch teacher (lr /10 at epoch
  4), 10 + 6 policy iterations of 5 students distilled 1 epoch on 2,000 of the
  training images, 10 epochs of final training, and 2 pruning repeats
  removing 20 % of the filters per step with 30 fine-tuning steps.
  """
  if variant in ('', None):
    return config
  if variant not in VARIANTS:
    raise ConfigError(
      f'unknown config variant {variant!r}; valid variants: '
      f'{", ".join(VARIANTS)} (or none: configs/NAME.py)'
    )
  config.data.max_train_examples = 5000
  config.data.validation_fraction = 0.05
  if config.data.source == 'folder':
    config.data.max_train_examples = 2000
    config.data.image_size = 64
    config.teacher.input_shape = (64, 64, 3) if config.teacher.input_shape else ()
  config.teacher.epochs = 5
  config.teacher.decay_epochs = (4,)
  config.search.stage1_iterations = 10
  config.search.stage2_iterations = 6
  config.distill.epochs = 1
  config.distill.max_train_examples = 2000
  config.final.epochs = 10
  config.pruning.repeats = 2
  config.pruning.fraction_per_step = 0.2
  config.pruning.finetune_steps = 30
  config.pruning.score_batches = 4
  return config


# Counts (epochs, batch sizes, widths, ...) end up in int32 JAX arrays, and the
# seed in a 64-bit JAX key; anything larger fails deep inside JAX (OverflowError)
# instead of here with the field's name.
MAX_COUNT = 2**31 - 1
MAX_INT64 = 2**63 - 1
MAX_SPEC_FILE_BYTES = 16 * 2**20


def _short(value) -> str:
  try:
    text = repr(value)
  except ValueError:  # an integer over Python's 4,300-digit conversion limit
    return f'<{type(value).__name__} too long to print>'
  return text if len(text) <= 80 else text[:77] + '...'


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _int_in(value, field, low, high=MAX_COUNT, what=None):
  if not _is_int(value) or value < low:
    what = what or ('a positive integer' if low == 1 else f'an integer >= {low}')
    raise ConfigError(f'{field} must be {what}, got {_short(value)}')
  if value > high:
    raise ConfigError(f'{field} is {_short(value)}, over the limit of {high:,}')


def _positive(value, field, kind=numbers.Integral):
  if kind is numbers.Integral:
    _int_in(value, field, 1)
  elif not _is_number(value) or not 0 < value < math.inf:
    raise ConfigError(f'{field} must be a positive number, got {_short(value)}')


def _non_negative(value, field):
  # `not value >= 0` also catches NaN, which compares false with everything.
  if not _is_number(value) or not 0 <= value < math.inf:
    raise ConfigError(f'{field} must be a finite number >= 0, got {_short(value)}')


def _one_of(value, valid, field):
  if not isinstance(value, str) or value not in valid:
    raise ConfigError(f'{field}={_short(value)} is not valid; choose one of {", ".join(valid)}')


def _kind(reference) -> tuple:
  """(check, description) for values that may replace `reference`."""
  if isinstance(reference, bool):
    return (lambda v: isinstance(v, bool)), 'True or False'
  if isinstance(reference, int):
    return _is_int, 'an integer'
  if isinstance(reference, float):
    return _is_number, 'a number'
  if isinstance(reference, str):
    return (lambda v: isinstance(v, str)), 'a string'
  if isinstance(reference, (tuple, list)):
    return (lambda v: isinstance(v, (tuple, list))), 'a tuple'
  return (lambda v: True), ''


def _check_structure(config, reference, prefix='') -> None:
  """Every field of base_config() is there with a value of the right kind.

  ml_collections checks types when one field is overridden, but a whole section
  can be replaced (--config.teacher="{'name': 'vgg11'}"), which drops its other
  fields; without this check that surfaces as an AttributeError later.
  """
  for key, ref in reference.items():
    field = prefix + key
    try:
      value = config[key]
    except (KeyError, AttributeError, TypeError):
      raise ConfigError(
        f'{field} is missing; set fields one at a time (--config.{field}=...) rather than '
        f'replacing the section --config.{prefix[:-1] or key}'
      ) from None
    if isinstance(ref, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(f'{field} must be a section of fields, got {_short(value)}')
      _check_structure(value, ref, field + '.')
      continue
    ok, what = _kind(ref)
    if not ok(value):
      raise ConfigError(f'{field} must be {what}, got {_short(value)}')


_REFERENCE = base_config()


def validate(config) -> None:
  """Checks that need no data: names, ranges and types."""
  from n2n_jax import distributed  # pylint: disable=g-import-not-at-top
  from n2n_jax import runtime  # pylint: disable=g-import-not-at-top
  from n2n_jax import train as train_lib  # pylint: disable=g-import-not-at-top

  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(
      f'the config must be an ml_collections.ConfigDict, got {type(config).__name__}'
    )
  _check_structure(config, _REFERENCE)
  _one_of(config.mode, MODES, 'mode')
  _int_in(config.seed, 'seed', 0, MAX_INT64, 'a non-negative integer')
  try:
    data_config.validate_data_config(config.data)
  except data_config.DataError as e:
    raise ConfigError(str(e)) from None
  t = config.teacher
  if not t.spec_file:
    _one_of(t.name, zoo.NAMES, 'teacher.name')
  _positive(t.epochs, 'teacher.epochs')
  _positive(t.batch_size, 'teacher.batch_size')
  _positive(t.learning_rate, 'teacher.learning_rate', numbers.Real)
  _one_of(t.optimizer, train_lib.OPTIMIZERS, 'teacher.optimizer')
  if any(not _is_int(e) or not 0 <= e <= MAX_COUNT for e in t.decay_epochs):
    raise ConfigError(
      f'teacher.decay_epochs must be non-negative integers, got {_short(t.decay_epochs)}'
    )
  _positive(t.decay_factor, 'teacher.decay_factor', numbers.Real)
  _non_negative(t.weight_decay, 'teacher.weight_decay')
  if not _is_number(t.momentum) or not 0 <= t.momentum < 1:
    raise ConfigError(f'teacher.momentum must be in [0, 1), got {_short(t.momentum)}')
  if t.input_shape and (
    len(t.input_shape) != 3 or not all(_is_int(d) and 1 <= d <= MAX_COUNT for d in t.input_shape)
  ):
    raise ConfigError(
      f'teacher.input_shape must be (H, W, C) or empty, got {_short(t.input_shape)}'
    )
  _int_in(t.num_classes, 'teacher.num_classes', 0, what='an integer >= 0 (0 = from the data)')
  r = config.runtime
  _one_of(r.epoch_mode, train_lib.EPOCH_MODES, 'runtime.epoch_mode')
  _non_negative(r.teacher_checkpoint_seconds, 'runtime.teacher_checkpoint_seconds')
  _non_negative(r.time_budget_minutes, 'runtime.time_budget_minutes')
  for name in ('student_devices', 'teacher_devices', 'final_devices'):
    _int_in(r[name], f'runtime.{name}', 0, what='an integer >= 0 (0 = all)')
  _int_in(r.compile_threads, 'runtime.compile_threads', 0, what='an integer >= 0 (0 = auto)')
  _non_negative(r.student_memory_limit_mb, 'runtime.student_memory_limit_mb')
  _one_of(r.distributed, distributed.MODES, 'runtime.distributed')
  _int_in(
    r.peer_timeout_seconds,
    'runtime.peer_timeout_seconds',
    2,
    24 * 3600,
    what='an integer number of seconds from 2 to 86400',
  )
  _one_of(r.share_stage2_program, runtime.SWITCHES, 'runtime.share_stage2_program')
  _one_of(r.share_stage1_programs, runtime.SWITCHES, 'runtime.share_stage1_programs')
  _one_of(r.train_together, runtime.TOGETHER, 'runtime.train_together')
  _int_in(
    r.gpu_autotune_level,
    'runtime.gpu_autotune_level',
    0,
    4,
    what='an integer from 0 (no autotuning) to 4 (XLA default)',
  )
  _int_in(
    r.students_per_call,
    'runtime.students_per_call',
    0,
    what='an integer >= 0 (0 = search.rollouts)',
  )
  if r.student_memory_limit_mb > MAX_INT64 >> 20:
    # Multiplied by 2**20 into a byte count that must fit the int64 JAX reports.
    raise ConfigError(
      f'runtime.student_memory_limit_mb is {_short(r.student_memory_limit_mb)}, '
      f'over the limit of {MAX_INT64 >> 20:,}'
    )
  _validate_search(config)
  _validate_baselines(config)


def _validate_baselines(config) -> None:
  p = config.pruning
  for name in ('repeats', 'score_batches', 'batch_size', 'max_steps'):
    _positive(p[name], f'pruning.{name}')
  _int_in(p.finetune_steps, 'pruning.finetune_steps', 0)
  if not _is_number(p.fraction_per_step) or not 0 < p.fraction_per_step < 1:
    raise ConfigError(
      f'pruning.fraction_per_step must be in (0, 1), got {_short(p.fraction_per_step)}'
    )
  _positive(p.learning_rate, 'pruning.learning_rate', numbers.Real)
  for name in ('max_accuracy_drop', 'min_accuracy'):
    if not _is_number(p[name]) or not 0 <= p[name] <= 1:
      raise ConfigError(f'pruning.{name} must be in [0, 1], got {_short(p[name])}')
  _int_in(p.min_params, 'pruning.min_params', 0, MAX_INT64, 'an integer >= 0 (0 = none)')
  _one_of(config.handdesigned.name, zoo.NAMES, 'handdesigned.name')


def _validate_search(config) -> None:
  from n2n_jax import evaluator  # pylint: disable=g-import-not-at-top
  from n2n_jax import reinforce  # pylint: disable=g-import-not-at-top
  from n2n_jax import reward as reward_lib  # pylint: disable=g-import-not-at-top

  s, p, d, f, k = config.search, config.policy, config.distill, config.final, config.constraints
  for value, field in (
    (s.stage1_iterations, 'search.stage1_iterations'),
    (s.stage2_iterations, 'search.stage2_iterations'),
  ):
    _int_in(value, field, 0, what='a non-negative integer')
  _positive(s.rollouts, 'search.rollouts')
  _positive(s.max_dense_inputs, 'search.max_dense_inputs')
  _one_of(s.reward, reward_lib.REWARDS, 'search.reward')
  _one_of(p.method, reinforce.METHODS, 'policy.method')
  _one_of(p.baseline, tuple(reinforce.BASELINES), 'policy.baseline')
  if not _is_number(p.baseline_decay) or not 0 <= p.baseline_decay < 1:
    raise ConfigError(f'policy.baseline_decay must be in [0, 1), got {_short(p.baseline_decay)}')
  for name in ('removal_learning_rate', 'shrink_learning_rate'):
    _positive(p[name], f'policy.{name}', numbers.Real)
  for name in ('removal_hidden', 'shrink_hidden', 'num_layers', 'round_to'):
    _positive(p[name], f'policy.{name}')
  if not p.shrink_actions or any(not _is_number(a) or not 0 < a <= 1 for a in p.shrink_actions):
    raise ConfigError(
      f'policy.shrink_actions must be factors in (0, 1], got {_short(p.shrink_actions)}'
    )
  for section, name in ((d, 'distill'), (f, 'final')):
    _positive(section.epochs, f'{name}.epochs')
    _positive(section.batch_size, f'{name}.batch_size')
    _positive(section.learning_rate, f'{name}.learning_rate', numbers.Real)
    _non_negative(section.weight_decay, f'{name}.weight_decay')
  _one_of(d.init, evaluator.INITS, 'distill.init')
  _int_in(d.max_train_examples, 'distill.max_train_examples', 0, what='an integer >= 0')
  _non_negative(f.soft_weight, 'final.soft_weight')
  _int_in(f.pareto_max, 'final.pareto_max', 0, 100, what='an integer from 0 to 100')
  for name in ('max_params', 'max_flops'):
    # Converted to floats for the constraint rows: beyond 2**63 is no real limit.
    _int_in(k[name], f'constraints.{name}', 0, MAX_INT64, 'an integer >= 0 (0 = none)')
  _non_negative(k.max_latency_ms, 'constraints.max_latency_ms')
  _positive(k.latency_batch_size, 'constraints.latency_batch_size')
  _one_of(k.epsilon_schedule, reward_lib.EPSILON_SCHEDULES, 'constraints.epsilon_schedule')
  _positive(k.epsilon_horizon, 'constraints.epsilon_horizon', numbers.Real)
  _positive(k.epsilon_power, 'constraints.epsilon_power', numbers.Real)


def input_of(config, need_data: bool = True) -> tuple:
  """(input_shape, num_classes) from the data source's metadata, without loading
  images. With need_data=False the teacher's declared shape may stand in for
  data that is not on this machine (describe mode)."""
  from n2n_jax import data as data_lib  # pylint: disable=g-import-not-at-top

  t = config.teacher
  declared = (tuple(t.input_shape), t.num_classes) if t.input_shape and t.num_classes else None
  try:
    found = data_lib.describe_source(config.data)
  except data_lib.DataError:
    if declared and not need_data:
      return declared
    raise
  if declared and declared != (tuple(found[0]), found[1]):
    raise ConfigError(
      f'teacher.input_shape/num_classes say {declared} but the data gives '
      f'{found}; fix or clear teacher.input_shape and teacher.num_classes'
    )
  return tuple(found[0]), found[1]


def teacher_spec(config, input_shape, num_classes) -> spec_lib.NetSpec:
  """The teacher's spec, checked against the data: a spec that cannot take
  this input fails here, naming the layer."""
  t = config.teacher
  if t.spec_file:
    try:
      # Binary and bounded: a spec file pointed at /dev/zero or a dataset must
      # fail with its name, not read forever or die decoding.
      with open(t.spec_file, 'rb') as f:
        text = f.read(MAX_SPEC_FILE_BYTES + 1)
    except OSError as e:
      raise ConfigError(
        f'teacher.spec_file: cannot read {t.spec_file!r}: {e.strerror or e}'
      ) from None
    if len(text) > MAX_SPEC_FILE_BYTES:
      raise ConfigError(
        f'teacher.spec_file {t.spec_file!r} is over {MAX_SPEC_FILE_BYTES:,} '
        'bytes; it is not a JSON spec (spec.to_json writes a few KB)'
      )
    try:
      spec = spec_lib.from_json(text)
    except spec_lib.SpecError as e:
      raise spec_lib.SpecError(f'teacher.spec_file {t.spec_file!r}: {e}') from None
    if spec.input_shape != tuple(input_shape):
      raise ConfigError(
        f'teacher.spec_file {t.spec_file!r} is for input {spec.input_shape}, '
        f'but the data is {tuple(input_shape)}'
      )
  else:
    spec = zoo.get(t.name, input_shape, num_classes)
  try:
    spec_lib.validate(spec)
  except spec_lib.SpecError as e:
    raise ConfigError(
      f'teacher {spec.name!r} cannot take input {tuple(input_shape)}: {e}'
    ) from None
  if spec_lib.output_shape(spec) != (num_classes,):
    raise ConfigError(
      f'teacher {spec.name!r} outputs {spec_lib.output_shape(spec)} but the '
      f'data has {num_classes} classes'
    )
  return spec


def as_json(x):
  """`x` as it reads back from JSON (tuples become lists), so a stored run
  origin and the current one compare equal when they mean the same."""
  return json.loads(json.dumps(x, default=list))


def apply_overrides(config, overrides) -> ml_collections.ConfigDict:
  """`config` with {'section.field': value, ...} set, the Python form of
  --config.section.field=value; an unknown name or a value of the wrong type
  raises ConfigError naming it. Run validate() afterwards."""
  for dotted, value in dict(overrides or {}).items():
    node, walked = config, []
    for part in str(dotted).split('.'):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        where = '.'.join(walked) or 'the config'
        names = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        close = difflib.get_close_matches(part, names, n=1)
        raise ConfigError(
          f'override {dotted!r}: {where} has no field {part!r}'
          + (f' (did you mean {close[0]!r}?)' if close else '')
          + (f'; its fields: {", ".join(names)}' if names else '')
        )
      walked.append(part)
      parent, node = node, node[part]
    if isinstance(node, ml_collections.ConfigDict):
      raise ConfigError(f'override {dotted!r} names a section; set its fields one at a time')
    try:
      parent[walked[-1]] = value
    except (TypeError, ValueError) as e:
      raise ConfigError(f'override {dotted!r}: {e}') from None
  return config


def differences(old: dict, new: dict, prefix: str = '') -> list:
  """Readable 'field: stored X, now Y' lines for nested dicts (stored run
  origins against the current config)."""
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += differences(a, b, f'{prefix}{key}.')
    elif a != b:
      out.append(f'{prefix}{key}: stored {a!r:.60}, now {b!r:.60}')
  return out
