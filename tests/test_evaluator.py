"""Student evaluation: distillation, failures as results, teacher-weight inheritance."""

import jax
import numpy as np
import pytest

from n2n_jax import data as data_lib
from n2n_jax import evaluator as E
from n2n_jax import models
from n2n_jax import padding
from n2n_jax import program_cache
from n2n_jax import spec as S
from n2n_jax import train
from n2n_jax import zoo

TEACHER = zoo.get('digits_cnn', (8, 8, 1), 10)
# Padded layers draw their dropout masks over all their channels (padding.py),
# so tests of students inside a source compare on a source without dropout.
NO_DROPOUT = S.NetSpec(
  'digits_cnn',
  TEACHER.input_shape,
  tuple(l for l in TEACHER.layers if not isinstance(l, S.Dropout)),
)


@pytest.fixture(scope='module')
def setup():
  ds = data_lib.load(data_lib.default_data_config())
  model = models.build(TEACHER)
  variables = models.init_variables(model, 0, (8, 8, 1))
  return ds, variables, train.predict(model, variables, ds.train_images)


def small_student():
  keep = [True] * S.removable_count(TEACHER)
  keep[3] = keep[4] = False  # the second conv's batch-norm and ReLU
  return S.remove(TEACHER, keep)


@pytest.mark.slow
def test_untrainable_student_is_a_result_not_an_exception(setup):
  ds, _, logits = setup
  student = small_student()
  wild = E.Evaluator(ds, logits, E.DistillSettings(epochs=1, learning_rate=1e30))
  result = wild.train(student, jax.random.key(0), 0)
  assert result.error.startswith('training loss is')
  assert np.isnan(result.accuracy)

  broken = S.NetSpec('broken', (8, 8, 1), (S.Conv(4, 9), S.Flatten(), S.Dense(10)))
  result = E.Evaluator(ds, logits, E.DistillSettings(epochs=1)).train(broken, jax.random.key(0), 0)
  assert result.error.startswith('SpecError') and 'collapsed' in result.error


@pytest.mark.slow
def test_distillation_subset_and_seeded_init(setup):
  ds, _, logits = setup
  ev = E.Evaluator(ds, logits, E.DistillSettings(epochs=2, max_train_examples=200))
  assert ev.data.images.shape[0] == 200
  a = ev.train(small_student(), jax.random.key(1), seed=5)
  b = ev.train(small_student(), jax.random.key(1), seed=5)
  assert a.error is None and a.accuracy == b.accuracy  # same student, same seed: same result
  assert b.compile_seconds == 0.0  # the second time the compiled program is reused


def test_inherit_teacher_weights_where_shapes_match(setup):
  _, teacher_vars, _ = setup
  student = small_student()
  fresh = models.init_variables(models.build(student), 1, (8, 8, 1))
  inherited, copied = models.inherit_variables(fresh, teacher_vars)
  # Removing a batch-norm and a ReLU leaves every weighted layer's shape as it
  # was: all are copied, each from the teacher layer it came from.
  params = inherited['params']
  assert copied == len(params) == len(teacher_vars['params']) - 1
  assert set(params) == set(fresh['params'])
  order = lambda tree: sorted(tree, key=models._network_order)
  student_layers = [n for n in order(params)]
  teacher_layers = [n for n in order(teacher_vars['params']) if n != '4_BatchNorm']
  for s_name, t_name in zip(student_layers, teacher_layers):
    for leaf in params[s_name]:
      np.testing.assert_array_equal(params[s_name][leaf], teacher_vars['params'][t_name][leaf])
  np.testing.assert_array_equal(
    inherited['batch_stats'][student_layers[1]]['var'],
    teacher_vars['batch_stats']['1_BatchNorm']['var'],
  )
  # A shrunk student keeps fresh values where the shapes changed.
  factors = [0.5] * len(S.shrink_vars(TEACHER))
  shrunk = S.shrink(TEACHER, factors)
  fresh = models.init_variables(models.build(shrunk), 1, (8, 8, 1))
  inherited, copied = models.inherit_variables(fresh, teacher_vars)
  assert copied < len(fresh['params'])
  np.testing.assert_array_equal(
    inherited['params']['0_Conv']['kernel'], fresh['params']['0_Conv']['kernel']
  )


@pytest.mark.slow
def test_students_train_from_teacher_weights(setup):
  # The inherited variables go through the same compiled initial-state program
  # as fresh ones; a student the teacher's weights start differs from scratch.
  ds, teacher_vars, logits = setup
  settings = E.DistillSettings(epochs=1, learning_rate=0.0, init='teacher')
  ev = E.Evaluator(ds, logits, settings, teacher_variables=teacher_vars)
  result = ev.train(small_student(), jax.random.key(0), 0, keep_variables=True)
  assert result.error is None
  # Learning rate 0: the first conv is still exactly the teacher's.
  np.testing.assert_array_equal(
    result.variables['params']['0_Conv']['kernel'], teacher_vars['params']['0_Conv']['kernel']
  )
  shrunk = S.shrink(TEACHER, [0.5] * len(S.shrink_vars(TEACHER)))
  assert ev.train(shrunk, jax.random.key(0), 0).error is None


def test_unknown_init_is_refused(setup):
  ds, _, logits = setup
  with pytest.raises(ValueError, match='scratch, teacher'):
    E.Evaluator(ds, logits, E.DistillSettings(init='imagenet'))
  with pytest.raises(ValueError, match="needs the teacher's variables"):
    E.Evaluator(ds, logits, E.DistillSettings(init='teacher'))
  with pytest.raises(ValueError, match='compile_threads must be an integer >= 1, got 0'):
    E.Evaluator(ds, logits, E.DistillSettings(), compile_threads=0)


def _students(n):
  """n distinct trainable students of the digits teacher (one layer removed each)."""
  out = []
  for i in range(S.removable_count(TEACHER)):
    keep = [True] * S.removable_count(TEACHER)
    keep[i] = False
    student = S.remove(TEACHER, keep)
    if not S.is_degenerate(student) and student not in out:
      out.append(student)
  return out[:n]


@pytest.mark.slow
@pytest.mark.parametrize('threads', [1, 2])
def test_compile_ahead_gives_the_same_results_and_compiles_each_program_once(setup, threads):
  ds, _, logits = setup
  settings = E.DistillSettings(epochs=1, max_train_examples=256)
  students = _students(3)
  jobs = [(s, jax.random.key(i)) for i, s in enumerate(students)]
  program_cache.SHARED.clear()
  plain = E.Evaluator(ds, logits, settings, compile_ahead=False).train_many(jobs, seed=0)

  program_cache.SHARED.clear()
  ahead = E.Evaluator(ds, logits, settings, compile_ahead=True, compile_threads=threads)
  results = ahead.train_many(jobs, seed=0)
  assert [r.error for r in results] == [None] * 3
  assert [r.accuracy for r in results] == [r.accuracy for r in plain]
  # Each student compiled once: the first where it trains, the others in the
  # background while the ones before them trained.
  built = program_cache.SHARED.built
  assert sorted(b.thread for b in built) == ['MainThread', 'n2n-compile-ahead', 'n2n-compile-ahead']
  (start1, end1), (start2, _) = sorted(
    (b.started, b.ended) for b in built if b.thread != 'MainThread'
  )
  # One thread compiles the two in turn; two compile them at the same time.
  assert (start2 < end1) == (threads == 2)
  assert ahead.programs.cache.pending() == 0  # every compile was collected
  # The run's compile time is what students waited, each wait counted once.
  assert ahead.compile_seconds == pytest.approx(sum(r.compile_seconds for r in results))


@pytest.mark.slow
def test_a_failed_background_compile_is_that_students_error(setup, monkeypatch):
  ds, _, logits = setup
  ev = E.Evaluator(ds, logits, E.DistillSettings(epochs=1, max_train_examples=256))
  first, second = _students(2)
  real_build = models.build

  def fail_for_second(spec):
    if spec == second:
      raise RuntimeError('injected compile failure')
    return real_build(spec)

  monkeypatch.setattr(models, 'build', fail_for_second)
  program_cache.SHARED.clear()
  results = ev.train_many([(first, jax.random.key(0)), (second, jax.random.key(1))], seed=0)
  assert results[0].error is None
  assert results[1].error == 'RuntimeError: injected compile failure'


@pytest.mark.parametrize('removals, together', [(True, None), (False, 'vmap')])
def test_prepare_compiles_the_stage_program_ahead_for_its_first_students(setup, removals, together):
  # The search calls prepare as a sharing stage starts: the program its
  # students share then compiles in the background (beside the policy's
  # sampler), and the first student trains on it without compiling again.
  ds, _, logits = setup
  cache = program_cache.ProgramCache()
  ev = E.Evaluator(
    ds,
    logits,
    E.DistillSettings(epochs=1, max_train_examples=256),
    program_cache=cache,
    together=together,
    students_per_call=2,
  )
  source = NO_DROPOUT
  ev.prepare(source, removals=removals)
  if removals:
    student, wide = small_student_of(source), padding.with_switches(source, source)[0]
    assert wide.switched and padding.with_switches(student, source)[0] == wide
  else:
    student, wide = S.shrink(source, [0.5] * len(S.shrink_vars(source))), source
  stacking = None if together is None else (together, 2)
  results = ev.train_many([(student, jax.random.key(0))], seed=0, inside=source)
  assert results[0].error is None
  assert [(b.spec, b.stacking, b.thread) for b in cache.built] == [
    (wide, stacking, 'n2n-compile-ahead')
  ]
  # Without compiling ahead, prepare starts nothing.
  idle = E.Evaluator(
    ds,
    logits,
    E.DistillSettings(epochs=1, max_train_examples=256),
    program_cache=program_cache.ProgramCache(),
    compile_ahead=False,
  )
  idle.prepare(source, removals=removals)
  assert idle.programs.cache.built == [] and idle.programs.cache.pending() == 0


def small_student_of(source):
  keep = [True] * S.removable_count(source)
  keep[3] = keep[4] = False  # the second conv's batch-norm and ReLU
  return S.remove(source, keep)


@pytest.mark.slow
def test_students_inside_their_source_share_one_program(setup, compiled_specs):
  # Two shrunk students (the source without dropout: padded layers draw their
  # dropout masks over all their channels, see padding.py) trained inside the
  # source compile one program between them, and match their own programs'
  # results up to rounding.
  ds, _, logits = setup
  source, compiled = NO_DROPOUT, compiled_specs
  students = [S.shrink(source, [f] * len(S.shrink_vars(source))) for f in (0.5, 0.25)]
  jobs = [(s, jax.random.key(i)) for i, s in enumerate(students)]
  settings = E.DistillSettings(epochs=2, max_train_examples=256)
  ev = E.Evaluator(ds, logits, settings)
  own = [ev.train(s, k, 0, keep_variables=True) for s, k in jobs]
  assert compiled == students
  compiled.clear()
  inside = ev.train_many(jobs, seed=0, inside=source)
  assert compiled == [source]
  assert [r.error for r in inside] == [None, None]
  for a, b in zip(inside, own):
    assert abs(a.accuracy - b.accuracy) <= 1.5 / len(ds.val_labels)
  kept = ev.train(students[1], jobs[1][1], 0, keep_variables=True, inside=source)
  assert kept.compile_seconds == 0.0
  assert jax.tree_util.tree_map(np.shape, kept.variables) == jax.tree_util.tree_map(
    np.shape, own[1].variables
  )
  for x, y in zip(
    jax.tree_util.tree_leaves(kept.variables), jax.tree_util.tree_leaves(own[1].variables)
  ):
    np.testing.assert_allclose(x, y, atol=5e-3)
  # A student that is neither `inside` shrunk nor `inside` with layers
  # removed (here: both) runs as itself.
  compiled.clear()
  removed = S.shrink(small_student(), [0.5] * len(S.shrink_vars(small_student())))
  alone = ev.train(removed, jax.random.key(5), 0, inside=source)
  assert compiled == [removed] and alone.error is None
  assert alone.accuracy == ev.train(removed, jax.random.key(5), 0).accuracy


@pytest.mark.slow
def test_stage1_students_inside_the_teacher_share_one_program_per_pool_set(setup, compiled_specs):
  # Three students of the teacher (without dropout, as above) with layers
  # removed: two keep the same pooling layers and share one program with
  # switches, the third keeps others and gets a second one. Each matches its
  # own program's result up to rounding.
  ds, _, logits = setup
  source, compiled = NO_DROPOUT, compiled_specs
  rng, by_wide = np.random.default_rng(0), {}
  while len(by_wide) < 2 or max(map(len, by_wide.values())) < 2:
    student = S.remove(source, list(rng.random(S.removable_count(source)) < 0.6))
    if not S.is_degenerate(student) and student not in sum(by_wide.values(), []):
      by_wide.setdefault(padding.with_switches(student, source)[0], []).append(student)
  pair = next(v for v in by_wide.values() if len(v) >= 2)[:2]
  other = next(v for v in by_wide.values() if v[0] not in pair)[0]
  students = pair + [other]
  wides = [padding.with_switches(s, source)[0] for s in students]
  assert wides[0] == wides[1] != wides[2] and all(w.switched for w in wides)
  jobs = [(s, jax.random.key(i)) for i, s in enumerate(students)]
  ev = E.Evaluator(ds, logits, E.DistillSettings(epochs=2, max_train_examples=256))
  own = [ev.train(s, k, 0, keep_variables=True) for s, k in jobs]
  compiled.clear()
  inside = [ev.train(s, k, 0, keep_variables=True, inside=source) for s, k in jobs]
  assert compiled == [wides[0], wides[2]]
  for a, b in zip(inside, own):
    assert a.error is None and abs(a.accuracy - b.accuracy) <= 1.5 / len(ds.val_labels)
    assert jax.tree_util.tree_map(np.shape, a.variables) == jax.tree_util.tree_map(
      np.shape, b.variables
    )
    for x, y in zip(jax.tree_util.tree_leaves(a.variables), jax.tree_util.tree_leaves(b.variables)):
      np.testing.assert_allclose(x, y, atol=5e-3)
  # Where the wide network would not fit the device's memory but the student
  # does, the student runs on its own program.
  limit = E.training_memory_bytes(students[0], 64)
  assert E.training_memory_bytes(wides[0], 64) > limit
  small = E.Evaluator(
    ds, logits, E.DistillSettings(epochs=2, max_train_examples=256), memory_limit_bytes=limit
  )
  compiled.clear()
  program_cache.SHARED.clear()
  alone = small.train(students[0], jobs[0][1], 0, inside=source)
  assert compiled == [students[0]] and alone.accuracy == own[0].accuracy


def test_datasets_that_differ_only_in_validation_size_do_not_share_programs():
  # Programs are kept per process; the forward pass is compiled for the
  # validation images' shape, so a second dataset in the same process (two
  # compress calls, say) must not get the first one's (it failed with
  # "Argument types differ from the types for which this computation was
  # compiled").
  x = np.zeros((400, 8, 8, 1), np.float32)
  y = np.arange(400) % 10
  student = S.NetSpec('s', (8, 8, 1), (S.Conv(4, 3, 1, 1), S.ReLU(), S.Flatten(), S.Dense(10)))
  for val_size in (100, 120):
    ds = data_lib.from_arrays(
      train=(x[:256], y[:256]),
      val=(x[256 : 256 + val_size], y[256 : 256 + val_size]),
      test=(x[:10], y[:10]),
    )
    evaluator = E.Evaluator(ds, np.zeros((256, 10), np.float32), E.DistillSettings(epochs=1))
    assert evaluator.train(student, jax.random.key(0), 0).error is None
