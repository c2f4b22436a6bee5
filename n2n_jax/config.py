"""The experiment config: every field with its default, and the checks that
run before any work so a bad value fails in seconds with the field's name.

Experiment files in configs/ start from `base_config()` and override fields;
`--config.x.y=value` overrides them again on the command line.
"""

from __future__ import annotations

import numbers
import os

import ml_collections

from n2n_jax import data as data_lib
from n2n_jax import spec as spec_lib
from n2n_jax import train as train_lib
from n2n_jax import zoo

MODES = ('describe', 'teacher')


class ConfigError(ValueError):
  """A config value is invalid; the message names the field."""


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = 'teacher'
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
