"""Compiled student programs kept on disk: a known architecture comes up in a
new process without tracing or compiling, and trains exactly as if compiled."""

import os

import jax
import numpy as np
import pytest

from n2n_jax import data as data_lib
from n2n_jax import evaluator as E
from n2n_jax import models
from n2n_jax import program_store
from n2n_jax import spec as S
from n2n_jax import train
from n2n_jax import zoo

TEACHER = zoo.get('digits_cnn', (8, 8, 1), 10)
# Trace and XLA-compile events JAX reports; the store must avoid both.
COMPILE_EVENTS = ('/jax/core/compile/jaxpr_trace_duration',
                  '/jax/core/compile/backend_compile_duration')


@pytest.fixture(scope='module')
def setup():
  ds = data_lib.load(data_lib.default_data_config())
  model = models.build(TEACHER)
  variables = models.init_variables(model, 0, (8, 8, 1))
  return ds, train.predict(model, variables, ds.train_images)


@pytest.fixture(scope='module')
def compile_events():
  events = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, duration, **kw: events.append(event) if event in COMPILE_EVENTS else None)
  return events


def student():
  return S.shrink(TEACHER, [0.25] * len(S.shrink_vars(TEACHER)))


def new_process():
  """Forget every compiled program held in memory, as a new process would."""
  E._PROGRAMS.clear()  # pylint: disable=protected-access
  jax.clear_caches()


def entries(store):
  return sorted(f for f in os.listdir(store.directory) if f.endswith('.pkl'))


def train_once(ds, logits, store, settings=E.DistillSettings(epochs=1)):
  evaluator = E.Evaluator(ds, logits, settings, program_store=store)
  result = evaluator.train(student(), jax.random.key(3), 0, keep_variables=True)
  assert result.error is None
  return evaluator, result


def assert_same_training(a, b):
  assert a.accuracy == b.accuracy
  for x, y in zip(jax.tree_util.tree_leaves(a.variables), jax.tree_util.tree_leaves(b.variables)):
    np.testing.assert_array_equal(x, y)


def test_known_architecture_loads_without_tracing_and_trains_identically(
    setup, compile_events, tmp_path):
  ds, logits = setup
  new_process()
  _, without_store = train_once(ds, logits, None)

  store = program_store.ProgramStore(str(tmp_path / 'programs'))
  new_process()
  _, first = train_once(ds, logits, store)
  assert len(entries(store)) == 1  # train step, forward pass and initial state: one entry
  assert_same_training(first, without_store)

  new_process()
  evaluator = E.Evaluator(ds, logits, E.DistillSettings(epochs=1), program_store=store)
  del compile_events[:]
  program, _ = evaluator._program(student())  # pylint: disable=protected-access
  assert compile_events == []  # nothing traced, nothing compiled
  assert program.shapes == models.variable_shapes(program.model, (8, 8, 1))
  second = evaluator.train(student(), jax.random.key(3), 0, keep_variables=True)
  assert_same_training(second, without_store)


def test_programs_are_keyed_by_settings_and_data(setup, tmp_path):
  ds, logits = setup
  store = program_store.ProgramStore(str(tmp_path / 'programs'))
  new_process()
  train_once(ds, logits, store)
  train_once(ds, logits, store, E.DistillSettings(epochs=1, learning_rate=1e-3))
  assert len(entries(store)) == 2
  train_once(ds, logits, store, E.DistillSettings(epochs=1, max_train_examples=256))
  assert len(entries(store)) == 3
  new_process()
  train_once(ds, logits, store)  # a hit: nothing new written
  assert len(entries(store)) == 3


def test_damaged_entry_is_compiled_again(setup, compile_events, tmp_path):
  ds, logits = setup
  store = program_store.ProgramStore(str(tmp_path / 'programs'))
  new_process()
  _, good = train_once(ds, logits, store)
  (name,) = entries(store)
  path = os.path.join(store.directory, name)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)

  new_process()
  del compile_events[:]
  _, again = train_once(ds, logits, store)
  assert COMPILE_EVENTS[1] in compile_events  # compiled, not loaded
  assert_same_training(again, good)
  assert entries(store) == [name] and store.load(name[:-len('.pkl')]) is not None  # rewritten


def test_store_lives_beside_the_persistent_cache(tmp_path):
  assert program_store.for_cache_dir('') is None
  store = program_store.for_cache_dir(str(tmp_path))
  assert store.directory == os.path.join(str(tmp_path), program_store.SUBDIR)
  device = jax.local_devices()[0]
  assert store.key(device, 'a') != store.key(device, 'b')
  assert store.load(store.key(device, 'a')) is None  # a miss on an empty folder
