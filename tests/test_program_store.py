"""Compiled student programs kept on disk: a known architecture comes up in a
new process without tracing or compiling, and trains exactly as if compiled."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import zlib

import jax
import numpy as np
import pytest
from conftest import ROOT
from conftest import run_records
from conftest import tiny_run_flags

from n2n_jax import data as data_lib
from n2n_jax import evaluator as E
from n2n_jax import models
from n2n_jax import program_cache
from n2n_jax import program_store
from n2n_jax import spec as S
from n2n_jax import train
from n2n_jax import zoo

TEACHER = zoo.get('digits_cnn', (8, 8, 1), 10)
# Trace and XLA-compile events JAX reports; the store must avoid both.
COMPILE_EVENTS = (
  '/jax/core/compile/jaxpr_trace_duration',
  '/jax/core/compile/backend_compile_duration',
)


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
    lambda event, duration, **kw: events.append(event) if event in COMPILE_EVENTS else None
  )
  return events


def student():
  return S.shrink(TEACHER, [0.25] * len(S.shrink_vars(TEACHER)))


def new_process():
  """Forget every compiled program held in memory, as a new process would."""
  program_cache.SHARED.clear()
  jax.clear_caches()


def entries(store):
  return sorted(f for f in os.listdir(store.directory) if f.endswith(program_store.SUFFIX))


def key_of(name):
  return name[: -len(program_store.SUFFIX)]


ONE_EPOCH = E.DistillSettings(epochs=1)


def train_once(ds, logits, store, settings=ONE_EPOCH):
  evaluator = E.Evaluator(ds, logits, settings, program_store=store)
  result = evaluator.train(student(), jax.random.key(3), 0, keep_variables=True)
  assert result.error is None
  return evaluator, result


def assert_same_training(a, b):
  assert a.accuracy == b.accuracy
  for x, y in zip(jax.tree_util.tree_leaves(a.variables), jax.tree_util.tree_leaves(b.variables)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_known_architecture_loads_without_tracing_and_trains_identically(
  setup, compile_events, tmp_path
):
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
  program, _ = evaluator.programs.get(student(), evaluator.devices[0])
  assert compile_events == []  # nothing traced, nothing compiled
  assert program.shapes == models.variable_shapes(program.model, (8, 8, 1))
  second = evaluator.train(student(), jax.random.key(3), 0, keep_variables=True)
  assert_same_training(second, without_store)


@pytest.mark.slow
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


@pytest.mark.slow
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
  with pytest.warns(UserWarning, match='not signed with your key'):
    _, again = train_once(ds, logits, store)
  assert COMPILE_EVENTS[1] in compile_events  # compiled, not loaded
  assert_same_training(again, good)
  assert entries(store) == [name] and store.load(key_of(name)) is not None  # rewritten


@pytest.mark.slow
def test_stored_program_that_fails_is_dropped_and_compiled_again(setup, tmp_path):
  # An entry that loads but fails when called (the way an incompletely
  # serialized program fails) must not become the student's error: here its
  # train step is another student's, which rejects this student's state.
  ds, logits = setup
  store = program_store.ProgramStore(str(tmp_path / 'programs'))
  new_process()
  _, good = train_once(ds, logits, store)
  (name,) = entries(store)
  other = S.shrink(TEACHER, [0.5] * len(S.shrink_vars(TEACHER)))
  E.Evaluator(ds, logits, E.DistillSettings(epochs=1), program_store=store).train(
    other, jax.random.key(3), 0
  )
  (other_name,) = set(entries(store)) - {name}
  entry = store._read_entry(key_of(name))  # pylint: disable=protected-access
  other_entry = store._read_entry(key_of(other_name))  # pylint: disable=protected-access
  entry['programs']['train'] = other_entry['programs']['train']
  store._write_entry(key_of(name), entry)  # signed: it loads, and fails when called  # pylint: disable=protected-access

  new_process()
  _, again = train_once(ds, logits, store)
  assert_same_training(again, good)
  # Rewritten with this student's own programs.
  rewritten = store._read_entry(key_of(name))  # pylint: disable=protected-access
  assert rewritten['programs']['train'] != entry['programs']['train']


@pytest.mark.slow
def test_entry_for_another_spec_is_a_miss(setup, tmp_path):
  ds, logits = setup
  store = program_store.ProgramStore(str(tmp_path / 'programs'))
  new_process()
  train_once(ds, logits, store)
  (name,) = entries(store)
  key = key_of(name)
  assert store.load(key, spec=S.to_json(student())) is not None
  assert store.load(key, spec=S.to_json(TEACHER)) is None
  assert entries(store) == []  # dropped


def test_store_lives_beside_the_persistent_cache(tmp_path):
  assert program_store.for_cache_dir('') is None
  store = program_store.for_cache_dir(str(tmp_path))
  assert store.directory == os.path.join(str(tmp_path), program_store.SUBDIR)
  device = jax.local_devices()[0]
  assert store.key(device, 'a') != store.key(device, 'b')
  assert store.load(store.key(device, 'a')) is None  # a miss on an empty folder


# ---- what the store trusts (program_store's docstring)


def small_entry(store, key='a' * 64):
  """A real signed entry, cheap to make: one compiled program."""
  program = jax.jit(lambda x: x * 2.0 + 1.0).lower(jax.ShapeDtypeStruct((3,), np.float32))
  store.save(key, {'f': program.compile()}, {'spec': 'small'})
  return key


class Planted:
  """A pickle that, when loaded, creates a file: code an attacker would plant."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, 'w'))


def tampered(store, key, how, marker):
  """Changes the entry under `key` the way `how` says."""
  path = os.path.join(store.directory, key + program_store.SUFFIX)
  data = open(path, 'rb').read()
  if how == 'flipped_byte':
    data = data[:-100] + bytes([data[-100] ^ 1]) + data[-99:]
  elif how == 'entry_of_another_key':
    other = small_entry(store, 'b' * 64)
    data = open(os.path.join(store.directory, other + program_store.SUFFIX), 'rb').read()
  elif how == 'planted_pickle':
    data = zlib.compress(pickle.dumps({'programs': Planted(marker), 'extras': {}}))
  elif how == 'planted_pickle_with_a_made_up_tag':
    body = zlib.compress(pickle.dumps({'programs': Planted(marker), 'extras': {}}))
    data = program_store.MAGIC + bytes(32) + body
  with open(path, 'wb') as f:
    f.write(data)


def test_an_honest_entry_loads_and_runs(tmp_path):
  store = program_store.ProgramStore(str(tmp_path / 'programs'))
  key = small_entry(store)
  programs, extras = store.load(key, spec='small')
  assert extras == {'spec': 'small'}
  np.testing.assert_allclose(programs['f'](np.arange(3, dtype=np.float32)), [1.0, 3.0, 5.0])
  # Only this user can read the folder and the key that signs it.
  assert os.stat(store.directory).st_mode & 0o777 == 0o700
  assert os.stat(program_store.key_file()).st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
  'how',
  ['flipped_byte', 'entry_of_another_key', 'planted_pickle', 'planted_pickle_with_a_made_up_tag'],
)
def test_a_tampered_entry_is_never_unpickled_and_compiles_again(tmp_path, how):
  store = program_store.ProgramStore(str(tmp_path / 'programs'))
  marker = tmp_path / 'planted_code_ran'
  key = small_entry(store)
  tampered(store, key, how, str(marker))
  program_store._WARNED.clear()  # pylint: disable=protected-access
  with pytest.warns(UserWarning, match='not signed with your key'):
    assert store.load(key, spec='small') is None
  assert not marker.exists()
  assert not os.path.exists(os.path.join(store.directory, key + program_store.SUFFIX))
  small_entry(store, key)  # what compiling again writes: it loads
  assert store.load(key, spec='small') is not None


def test_another_users_key_does_not_open_this_users_entries(tmp_path):
  mine = program_store.ProgramStore(str(tmp_path / 'programs'))
  key = small_entry(mine)
  theirs = program_store.ProgramStore(mine.directory, secret=b'k' * program_store.KEY_BYTES)
  with pytest.warns(UserWarning, match='not signed with your key'):
    assert theirs.load(key) is None


@pytest.mark.parametrize(
  'mode,why', [(0o770, 'can be written by its group'), (0o707, 'can be written by everyone')]
)
def test_a_folder_others_can_write_to_is_not_used(tmp_path, mode, why):
  store = program_store.ProgramStore(str(tmp_path / 'cache' / 'programs'))
  key = small_entry(store)
  for folder in (store.directory, os.path.dirname(store.directory)):
    os.chmod(folder, mode)
    program_store._WARNED.clear()  # pylint: disable=protected-access
    with pytest.warns(UserWarning, match=why + '.*could plant code there'):
      assert store.load(key) is None
    small_entry(store, 'c' * 64)
    assert not os.path.exists(os.path.join(store.directory, 'c' * 64 + program_store.SUFFIX))
    # Opting in reads it (the entry is still checked against the key).
    trusting = program_store.ProgramStore(store.directory, trust_shared=True)
    assert trusting.load(key) is not None
    os.chmod(folder, 0o700)
  # The sticky bit (as on /tmp) stops others from replacing our files.
  os.chmod(store.directory, 0o1777)
  assert store.load(key) is not None


def test_jaxs_cache_in_a_folder_others_can_write_to_is_not_enabled(tmp_path):
  from n2n_jax import runtime  # pylint: disable=g-import-not-at-top

  shared = tmp_path / 'shared'
  shared.mkdir()
  os.chmod(shared, 0o777)
  with pytest.warns(UserWarning, match='can be written by everyone'):
    assert runtime.enable_compilation_cache(str(shared / 'jax')) is False
  assert jax.config.jax_compilation_cache_dir != str(shared / 'jax')


@pytest.mark.parametrize(
  'mode,size,why',
  [
    (0o640, 32, 'can be read by other users'),
    (0o604, 32, 'can be read by other users'),
    (0o600, 5, 'is damaged'),
  ],
)
def test_a_key_that_is_not_private_turns_the_store_off(tmp_path, mode, size, why):
  path = tmp_path / 'key'
  path.write_bytes(b'x' * size)
  os.chmod(path, mode)
  with pytest.warns(UserWarning, match=why):
    assert program_store.user_key(str(path)) is None
  fresh = tmp_path / 'new' / 'key'
  key = program_store.user_key(str(fresh))
  assert len(key) == program_store.KEY_BYTES and fresh.read_bytes() == key
  assert os.stat(fresh).st_mode & 0o777 == 0o600


# A student trained in a fresh interpreter: what a re-run of the command line does.
CHILD = textwrap.dedent("""
    import json, sys
    from n2n_jax import runtime
    runtime.set_cpu_flags()
    import jax, numpy as np
    from n2n_jax import data, evaluator, program_store, spec, zoo
    runtime.enable_compilation_cache(sys.argv[2])  # JAX's own cache, as the command line has it
    events = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda e, d, **kw: events.append(e) if e.endswith('backend_compile_duration') else None)
    teacher = zoo.get('digits_cnn', (8, 8, 1), 10)
    student = spec.shrink(teacher, [0.25] * len(spec.shrink_vars(teacher)))
    ds = data.load(data.default_data_config())
    logits = np.zeros((ds.train_images.shape[0], 10), np.float32)
    ev = evaluator.Evaluator(ds, logits, evaluator.DistillSettings(epochs=1),
                             program_store=program_store.ProgramStore(sys.argv[1]))
    ev._resident(ev.devices[0])
    del events[:]
    program, _ = ev.programs.get(student, ev.devices[0])
    compiles = len(events)
    r = ev.train(student, jax.random.key(3), 0)
    print(json.dumps({'accuracy': r.accuracy, 'error': r.error, 'compiles': compiles}))
""")


def run_child(directory, jax_cache):
  proc = subprocess.run(
    [sys.executable, '-c', CHILD, directory, jax_cache],
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_new_process_loads_what_another_compiled(tmp_path):
  store, jax_cache = str(tmp_path / 'programs'), str(tmp_path / 'jax_cache')
  first = run_child(store, jax_cache)
  assert first['error'] is None and first['compiles'] > 0
  second = run_child(store, jax_cache)
  assert second == dict(first, compiles=0)  # loaded, not compiled; same accuracy

  # With JAX's cache warm and the store empty, the programs come from JAX's
  # cache, which serializes them incompletely (see program_store): they must
  # not be stored, or a later process would load programs that fail.
  other = str(tmp_path / 'other_programs')
  third = run_child(other, jax_cache)
  assert third['error'] is None and third['accuracy'] == first['accuracy']
  assert not os.path.isdir(other) or os.listdir(other) == []


@pytest.mark.slow
def test_caches_do_not_change_a_search(tmp_path):
  """The same command line with every cache off, with empty caches (programs
  compiled and stored) and with the program store filled (programs loaded):
  the same records, the same student."""
  flags = tiny_run_flags(tmp_path)
  cold, warm = tmp_path / 'cold_cache', tmp_path / 'warm_cache'
  runs = {}
  for name, cache in (('off', ''), ('cold', cold), ('warm', warm)):
    if name == 'warm':
      # Only the store carries over: a student the store did not have would
      # compile afresh here (JAX's own cache is empty) and add an entry.
      shutil.copytree(cold / program_store.SUBDIR, warm / program_store.SUBDIR)
    workdir = tmp_path / name
    done = subprocess.run(
      [
        sys.executable,
        '-m',
        'n2n_jax.main',
        '--config=configs/digits.py',
        f'--workdir={workdir}',
        *flags,
        f'--config.runtime.compilation_cache_dir={cache}',
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((workdir / 'summary.json').read_text())
    del summary['wall_seconds'], summary['time']
    runs[name] = (run_records(workdir), summary)
  stored = sorted(os.listdir(cold / program_store.SUBDIR))
  assert stored and sorted(os.listdir(warm / program_store.SUBDIR)) == stored
  assert not (tmp_path / 'off' / program_store.SUBDIR).exists()
  assert runs['off'] == runs['cold'] == runs['warm']
  records = runs['off'][0]
  assert len(records) == 2 and any(a is not None for r in records for a in r['accuracies'])
