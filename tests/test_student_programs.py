"""A student's programs (student_programs.py) in a program cache handed in
(program_cache.py), and work spread over devices (fanout.py)."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from n2n_jax import data as data_lib
from n2n_jax import evaluator as E
from n2n_jax import fanout
from n2n_jax import models
from n2n_jax import program_cache
from n2n_jax import spec as S
from n2n_jax import student_programs
from n2n_jax import train
from n2n_jax import zoo

TEACHER = zoo.get('digits_cnn', (8, 8, 1), 10)
SETTINGS = E.DistillSettings(epochs=1, batch_size=64)


@pytest.fixture(scope='module')
def resident():
  ds = data_lib.load(data_lib.default_data_config())
  images, labels = ds.train_images[:256], ds.train_labels[:256]
  arrays = (
    train.Data(jnp.asarray(images), jnp.asarray(labels), jnp.zeros((256, 10))),
    jnp.asarray(ds.val_images),
    jnp.asarray(ds.val_labels),
  )
  return lambda device: jax.device_put(arrays, device)


def programs_in(cache, resident):
  return student_programs.StudentPrograms(SETTINGS, 'scan', resident, 256, cache=cache)


def test_programs_are_compiled_once_per_cache_handed_in(resident):
  device = jax.local_devices()[0]
  student = S.shrink(TEACHER, [0.5] * len(S.shrink_vars(TEACHER)))
  shared_before = len(program_cache.SHARED.built)
  mine, other = program_cache.ProgramCache(), program_cache.ProgramCache()
  programs = programs_in(mine, resident)
  first, waited = programs.get(student, device)
  again, waited_again = programs.get(student, device)
  assert again is first and waited > 0 and waited_again == 0.0
  assert programs.compile_seconds == pytest.approx(waited)
  assert [(b.spec, b.stacking, b.loaded) for b in mine.built] == [(student, None, False)]
  # A stacked program of the same student is another program.
  stacked_program, _ = programs.get(student, device, ('vmap', 2))
  assert stacked_program is not first and mine.compiled_count() == 2
  # Another cache knows none of them; the process-wide one was not touched.
  fresh, _ = programs_in(other, resident).get(student, device)
  assert fresh is not first and other.compiled_count() == 1
  assert len(program_cache.SHARED.built) == shared_before
  # The compiled programs train: one epoch of 4 steps.
  variables = models.init_variables(first.model, 0, (8, 8, 1))
  data, _, _ = resident(device)
  state, metrics = first.runner.run(
    first.init_state(variables), data, jax.random.key(0), SETTINGS.batch_size
  )
  assert np.isfinite(float(metrics['loss'])) and int(state.step) == 4


def test_a_program_compiled_ahead_is_waited_for_not_compiled_again(resident):
  device = jax.local_devices()[0]
  student = S.shrink(TEACHER, [0.25] * len(S.shrink_vars(TEACHER)))
  cache = program_cache.ProgramCache()
  programs = programs_in(cache, resident)
  programs.compile_ahead([(student, device, None), (student, device, None)])
  program, _ = programs.get(student, device)
  assert [(b.spec, b.thread) for b in cache.built] == [(student, 'n2n-compile-ahead')]
  assert cache.pending() == 0 and programs.get(student, device)[0] is program


def test_units_spread_over_devices_each_device_in_order():
  ran, lock = [], threading.Lock()

  def run(unit, device):
    with lock:
      ran.append((unit, device, threading.current_thread().name))

  fanout.over_devices(list(range(7)), ['a', 'b', 'c'], run)
  assert fanout.placement(7, ['a', 'b', 'c']) == list('abcabca')
  assert sorted((u, d) for u, d, _ in ran) == list(zip(range(7), 'abcabca'))
  for device in 'abc':  # one thread per device, its units in order
    mine = [(u, t) for u, d, t in ran if d == device]
    assert [u for u, _ in mine] == sorted(u for u, _ in mine)
    assert len({t for _, t in mine}) == 1
  assert len({t for _, _, t in ran}) == 3


def test_an_error_on_one_device_is_raised_after_the_others_finish():
  ran = []

  def run(unit, device):
    if unit in (3, 1):
      raise ValueError(f'unit {unit} on {device}')
    ran.append(unit)

  with pytest.raises(ValueError, match='unit 1 on b'):
    fanout.over_devices(list(range(6)), ['a', 'b'], run)
  # Device a finished all its units; device b stopped at its first error.
  assert sorted(ran) == [0, 2, 4]
