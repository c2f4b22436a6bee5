"""The experiment config: every field with its default, and the checks that
run before any work so a bad value fails in seconds with the field's name.

Experiment files in configs/ start from `base_config()` and override fields;
`--config.x.y=value` overrides them again on the command line.
"""

from __future__ import annotations

import json
import numbers
import os

import ml_collections

from n2n_jax import data as data_lib
from n2n_jax import evaluator
from n2n_jax import reinforce
from n2n_jax import reward as reward_lib
from n2n_jax import spec as spec_lib
from n2n_jax import train as train_lib
from n2n_jax import zoo

MODES = ('compress', 'describe', 'teacher')


class ConfigError(ValueError):
  """A config value is invalid; the message names the field."""


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = 'compress'
  c.seed = 0
  c.data = data_lib.default_data_config()

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

  c.runtime = ml_collections.ConfigDict()
  # 'auto' runs epochs as a Python loop of jitted steps on the CPU and as one
  # lax.scan on accelerators (see n2n_jax/train.py for why).
  c.runtime.epoch_mode = 'auto'
  # JAX's persistent compilation cache; '' turns it off.
  c.runtime.compilation_cache_dir = os.path.join(
      os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'n2n_jax', 'jax')
  c.runtime.progress = True  # progress bars on stderr
  return c


# The paper's teacher schedules (appendix 10.2). The paper names no optimiser:
# SGD with momentum 0.9 suits MNIST's lr 0.01, and Adam CIFAR/SVHN's lr 0.001
# (SGD at 0.001 would barely move in 150 epochs).
TEACHER_SCHEDULES = {
    'mnist': dict(epochs=50, batch_size=64, optimizer='sgd', learning_rate=0.01,
                  decay_epochs=(30,)),
    'cifar': dict(epochs=150, batch_size=128, optimizer='adam', learning_rate=0.001,
                  decay_epochs=(80, 120)),
    # "50 epochs at 0.01, reduced to 0.001 after the 50th": we read it as 50 + 20.
    'caltech256': dict(epochs=70, batch_size=64, optimizer='sgd', learning_rate=0.01,
                       decay_epochs=(50,)),
}


def paper_teacher_schedule(config, which: str) -> None:
  """Set config.teacher's schedule to the paper's for 'mnist', 'cifar' (also
  SVHN) or 'caltech256'."""
  config.teacher.update(TEACHER_SCHEDULES[which])


def _positive(value, field, kind=numbers.Integral):
  if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
    what = 'a positive integer' if kind is numbers.Integral else 'a positive number'
    raise ConfigError(f'{field} must be {what}, got {value!r}')


def _one_of(value, valid, field):
  if value not in valid:
    raise ConfigError(f'{field}={value!r} is not valid; choose one of {", ".join(valid)}')


def validate(config) -> None:
  """Checks that need no data: names, ranges and types."""
  _one_of(config.mode, MODES, 'mode')
  if not isinstance(config.seed, numbers.Integral) or config.seed < 0:
    raise ConfigError(f'seed must be a non-negative integer, got {config.seed!r}')
  try:
    data_lib.validate_data_config(config.data)
  except data_lib.DataError as e:
    raise ConfigError(str(e)) from None
  t = config.teacher
  if not t.spec_file:
    _one_of(t.name, zoo.NAMES, 'teacher.name')
  _positive(t.epochs, 'teacher.epochs')
  _positive(t.batch_size, 'teacher.batch_size')
  _positive(t.learning_rate, 'teacher.learning_rate', numbers.Real)
  _one_of(t.optimizer, train_lib.OPTIMIZERS, 'teacher.optimizer')
  if any(not isinstance(e, numbers.Integral) or e < 0 for e in t.decay_epochs):
    raise ConfigError(f'teacher.decay_epochs must be non-negative integers, got {t.decay_epochs!r}')
  if t.weight_decay < 0 or not 0 <= t.momentum < 1:
    raise ConfigError('teacher.weight_decay must be >= 0 and teacher.momentum in [0, 1)')
  if t.input_shape and (len(t.input_shape) != 3 or min(t.input_shape) < 1):
    raise ConfigError(f'teacher.input_shape must be (H, W, C) or empty, got {t.input_shape!r}')
  _one_of(config.runtime.epoch_mode, train_lib.EPOCH_MODES, 'runtime.epoch_mode')
  _validate_search(config)


def _validate_search(config) -> None:
  s, p, d, f, k = config.search, config.policy, config.distill, config.final, config.constraints
  for value, field in ((s.stage1_iterations, 'search.stage1_iterations'),
                       (s.stage2_iterations, 'search.stage2_iterations')):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
      raise ConfigError(f'{field} must be a non-negative integer, got {value!r}')
  _positive(s.rollouts, 'search.rollouts')
  _positive(s.max_dense_inputs, 'search.max_dense_inputs')
  _one_of(s.reward, reward_lib.REWARDS, 'search.reward')
  _one_of(p.method, reinforce.METHODS, 'policy.method')
  _one_of(p.baseline, tuple(reinforce.BASELINES), 'policy.baseline')
  if not 0 <= p.baseline_decay < 1:
    raise ConfigError(f'policy.baseline_decay must be in [0, 1), got {p.baseline_decay!r}')
  for name in ('removal_learning_rate', 'shrink_learning_rate'):
    _positive(p[name], f'policy.{name}', numbers.Real)
  for name in ('removal_hidden', 'shrink_hidden', 'num_layers', 'round_to'):
    _positive(p[name], f'policy.{name}')
  if not p.shrink_actions or any(not 0 < a <= 1 for a in p.shrink_actions):
    raise ConfigError(f'policy.shrink_actions must be factors in (0, 1], got {p.shrink_actions!r}')
  for section, name in ((d, 'distill'), (f, 'final')):
    _positive(section.epochs, f'{name}.epochs')
    _positive(section.batch_size, f'{name}.batch_size')
    _positive(section.learning_rate, f'{name}.learning_rate', numbers.Real)
    if section.weight_decay < 0:
      raise ConfigError(f'{name}.weight_decay must be >= 0, got {section.weight_decay!r}')
  _one_of(d.init, evaluator.INITS, 'distill.init')
  if isinstance(d.max_train_examples, bool) or not isinstance(
      d.max_train_examples, numbers.Integral) or d.max_train_examples < 0:
    raise ConfigError(f'distill.max_train_examples must be an integer >= 0, '
                      f'got {d.max_train_examples!r}')
  if f.soft_weight < 0:
    raise ConfigError(f'final.soft_weight must be >= 0, got {f.soft_weight!r}')
  if k.max_params < 0 or k.max_flops < 0:
    raise ConfigError('constraints.max_params and constraints.max_flops must be >= 0 (0 = none)')
  _one_of(k.epsilon_schedule, reward_lib.EPSILON_SCHEDULES, 'constraints.epsilon_schedule')
  _positive(k.epsilon_horizon, 'constraints.epsilon_horizon', numbers.Real)
  _positive(k.epsilon_power, 'constraints.epsilon_power', numbers.Real)


def input_of(config, need_data: bool = True) -> tuple:
  """(input_shape, num_classes) from the data source's metadata, without loading
  images. With need_data=False the teacher's declared shape may stand in for
  data that is not on this machine (describe mode)."""
  t = config.teacher
  declared = (tuple(t.input_shape), t.num_classes) if t.input_shape and t.num_classes else None
  try:
    found = data_lib.describe_source(config.data)
  except data_lib.DataError:
    if declared and not need_data:
      return declared
    raise
  if declared and declared != (tuple(found[0]), found[1]):
    raise ConfigError(f'teacher.input_shape/num_classes say {declared} but the data gives '
                      f'{found}; fix or clear teacher.input_shape and teacher.num_classes')
  return tuple(found[0]), found[1]


def teacher_spec(config, input_shape, num_classes) -> spec_lib.NetSpec:
  """The teacher's spec, checked against the data: a spec that cannot take
  this input fails here, naming the layer."""
  t = config.teacher
  if t.spec_file:
    try:
      with open(t.spec_file) as f:
        spec = spec_lib.from_json(f.read())
    except OSError as e:
      raise ConfigError(f'teacher.spec_file: cannot read {t.spec_file!r}: {e.strerror}') from None
    if spec.input_shape != tuple(input_shape):
      raise ConfigError(f'teacher.spec_file {t.spec_file!r} is for input {spec.input_shape}, '
                        f'but the data is {tuple(input_shape)}')
  else:
    spec = zoo.get(t.name, input_shape, num_classes)
  try:
    spec_lib.validate(spec)
  except spec_lib.SpecError as e:
    raise ConfigError(f'teacher {spec.name!r} cannot take input {tuple(input_shape)}: {e}') from None
  if spec_lib.output_shape(spec) != (num_classes,):
    raise ConfigError(f'teacher {spec.name!r} outputs {spec_lib.output_shape(spec)} but the '
                      f'data has {num_classes} classes')
  return spec


def as_json(x):
  """`x` as it reads back from JSON (tuples become lists), so a stored run
  origin and the current one compare equal when they mean the same."""
  return json.loads(json.dumps(x, default=list))


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
