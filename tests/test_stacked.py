"""Students trained together (n2n_jax/stacked.py) against the same students
trained one by one in the same shared program."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from n2n_jax import data as data_lib
from n2n_jax import evaluator as E
from n2n_jax import models
from n2n_jax import padding
from n2n_jax import program_cache
from n2n_jax import program_store
from n2n_jax import spec as S
from n2n_jax import stacked
from n2n_jax import train
from n2n_jax import zoo

DIGITS = zoo.get('digits_cnn', (8, 8, 1), 10)
# Padded layers draw their dropout masks over all their channels (padding.py),
# so students compare on teachers without dropout.
DIGITS = S.NetSpec(
  'digits', DIGITS.input_shape, tuple(l for l in DIGITS.layers if not isinstance(l, S.Dropout))
)
# A VGG-like teacher: 3x3 convs with batch norm and ReLU, two pools, a dense head.
_C = lambda f: S.Conv(f, kernel=3, stride=1, padding=1)  # pylint: disable=unnecessary-lambda-assignment
VGG = S.NetSpec(
  'vgg_like',
  (8, 8, 1),
  (
    _C(8),
    S.BatchNorm(),
    S.ReLU(),
    _C(8),
    S.BatchNorm(),
    S.ReLU(),
    S.MaxPool(2, 2),
    _C(16),
    S.BatchNorm(),
    S.ReLU(),
    _C(16),
    S.BatchNorm(),
    S.ReLU(),
    S.MaxPool(2, 2),
    S.Flatten(),
    S.Dense(32),
    S.ReLU(),
    S.Dense(10),
  ),
)
TEACHERS = {'digits': DIGITS, 'vgg': VGG}


@pytest.fixture(scope='module')
def digits_data():
  ds = data_lib.load(data_lib.default_data_config())
  model = models.build(DIGITS)
  logits = train.predict(model, models.init_variables(model, 0, (8, 8, 1)), ds.train_images)
  return ds, logits


def removed(teacher, count, seed=0):
  """`count` distinct stage-1 students of `teacher` that keep all its pools
  (so they share one wide program)."""
  rng, out = np.random.default_rng(seed), []
  pools = [isinstance(l, (S.MaxPool, S.AvgPool)) for l in teacher.layers]
  while len(out) < count:
    keep = list(rng.random(S.removable_count(teacher)) < 0.7)
    student = S.remove(teacher, keep)
    if (
      not S.is_degenerate(student)
      and student not in out
      and sum(isinstance(l, (S.MaxPool, S.AvgPool)) for l in student.layers) == sum(pools)
    ):
      out.append(student)
  return out


def unstack(tree, count: int) -> list:
  """The first `count` trees along the leading axis of `tree`."""
  return [jax.tree_util.tree_map(lambda x, i=i: x[i], tree) for i in range(count)]


def shrunk(teacher, factors):
  return [S.shrink(teacher, [f] * len(S.shrink_vars(teacher))) for f in factors]


def students_of(teacher):
  """Two stage-1 removals and two stage-2 shrinks of `teacher`."""
  return removed(teacher, 2) + shrunk(teacher, (0.5, 0.25))


@pytest.mark.parametrize(
  'teacher,lowering',
  [
    ('digits', 'vmap'),
    pytest.param('digits', 'map', marks=pytest.mark.slow),
    pytest.param('vgg', 'vmap', marks=pytest.mark.slow),
    pytest.param('vgg', 'map', marks=pytest.mark.slow),
  ],
)
def test_a_stacked_step_gives_each_student_its_own_loss_and_gradients(
  digits_data, teacher, lowering
):
  # Plain SGD at rate 1, so the step's parameter change is minus the gradient.
  ds, logits = digits_data
  source = TEACHERS[teacher]
  data = train.Data(
    jnp.asarray(ds.train_images[:256]),
    jnp.asarray(ds.train_labels[:256]),
    jnp.asarray(logits[:256]),
  )
  tx = optax.sgd(1.0)
  for group in (removed(source, 3), shrunk(source, (0.5, 0.25, 0.75))):
    wide, _ = (
      padding.with_switches(group[0], source)
      if len(group[0].layers) < len(source.layers)
      else (padding.widen(group[0], source), None)
    )
    model = models.build(wide)
    shapes = models.variable_shapes(model, wide.input_shape)
    step = train.make_step(model, tx, train.make_loss('l2'))
    states, indices, keys = [], [], []
    for i, student in enumerate(group):
      wide_i, on = (
        padding.with_switches(student, source)
        if wide.switched
        else (padding.widen(student, source), None)
      )
      assert wide_i == wide
      own = models.init_variables(models.build(student), i, student.input_shape)
      variables = padding.pad(own, padding.embedding(student, wide, on), shapes, on)
      states.append(train.TrainState.create(variables, tx))
      indices.append(np.random.default_rng(i).permutation(256)[:64])
      keys.append(jax.random.key(i))
    alone = [
      jax.jit(step)(s, data, jnp.asarray(idx), k) for s, idx, k in zip(states, indices, keys)
    ]
    runner = stacked.StackedRunner(step, 'loop', lowering, len(group))
    together = runner.lower(jax.eval_shape(lambda s: s, stacked.stack(states)), data, 64).compile()
    out, metrics = together(
      stacked.stack(states), data, jnp.asarray(np.stack(indices)), jnp.stack(keys)
    )
    for i, (state, (one, one_metrics)) in enumerate(zip(states, alone)):
      assert float(metrics['loss'][i]) == pytest.approx(float(one_metrics['loss']), rel=1e-5)
      assert int(metrics['correct'][i]) == int(one_metrics['correct'])
      for before, after_alone, after_together in zip(
        jax.tree_util.tree_leaves(state.params),
        jax.tree_util.tree_leaves(one.params),
        jax.tree_util.tree_leaves(unstack(out.params, len(group))[i]),
      ):
        # Within 1e-5: conv biases ahead of batch norm have zero gradient
        # in exact arithmetic and carry ~1e-6 of rounding either way.
        np.testing.assert_allclose(
          before - after_together, before - after_alone, rtol=1e-4, atol=1e-5
        )
      for a, b in zip(
        jax.tree_util.tree_leaves(one.batch_stats),
        jax.tree_util.tree_leaves(unstack(out.batch_stats, len(group))[i]),
      ):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def evaluator(ds, logits, together, **kwargs):
  return E.Evaluator(
    ds,
    logits,
    E.DistillSettings(epochs=2, max_train_examples=256),
    together=together,
    students_per_call=5,
    **kwargs,
  )


@pytest.mark.parametrize(
  'lowering,teacher',
  [
    ('vmap', 'digits'),
    pytest.param('vmap', 'vgg', marks=pytest.mark.slow),
    pytest.param('map', 'digits', marks=pytest.mark.slow),
    pytest.param('map', 'vgg', marks=pytest.mark.slow),
  ],
)
def test_students_distilled_together_score_as_they_do_one_by_one(digits_data, lowering, teacher):
  # Removals and shrinks of one teacher in one call: the removals run in
  # the teacher with layers switched off, the shrinks in the teacher widened;
  # each group trains in one stacked program, padded to 5 students.
  ds, logits = digits_data
  source = TEACHERS[teacher]
  students = students_of(source)
  jobs = [(s, jax.random.key(i)) for i, s in enumerate(students)]
  one_by_one = evaluator(ds, logits, None).train_many(jobs, 0, inside=source)
  program_cache.SHARED.clear()
  results = evaluator(ds, logits, lowering).train_many(jobs, 0, inside=source)
  assert [r.error for r in results] == [None] * len(students)
  for a, b in zip(results, one_by_one):
    assert abs(a.accuracy - b.accuracy) <= 1 / len(ds.val_labels) + 1e-9, (a, b)
  # Two programs, each training its group together: the teacher with
  # switches (the removals) and the teacher itself (the shrinks).
  built = program_cache.SHARED.built
  assert [b.stacking for b in built] == [(lowering, 5)] * 2
  assert {b.spec for b in built} == {padding.with_switches(students[0], source)[0], source}


def test_a_student_whose_training_fails_fails_alone(digits_data):
  # Students start from the teacher's weights where shapes match; the
  # teacher's first kernel is NaN, which only the full-width student takes.
  ds, logits = digits_data
  teacher = models.init_variables(models.build(DIGITS), 0, DIGITS.input_shape)
  first = sorted(teacher['params'])[0]
  teacher['params'][first]['kernel'] = np.full_like(teacher['params'][first]['kernel'], np.nan)
  students = [DIGITS] + shrunk(DIGITS, (0.5,))
  jobs = [(s, jax.random.key(i)) for i, s in enumerate(students)]
  settings = E.DistillSettings(epochs=1, max_train_examples=256, init='teacher')
  alone = E.Evaluator(ds, logits, settings, teacher_variables=teacher).train_many(
    jobs, 0, inside=DIGITS
  )
  together = E.Evaluator(
    ds, logits, settings, teacher_variables=teacher, together='vmap', students_per_call=5
  ).train_many(jobs, 0, inside=DIGITS)
  assert together[0].error == alone[0].error == 'training loss is nan at epoch 1'
  assert together[1].error is None
  assert abs(together[1].accuracy - alone[1].accuracy) <= 1 / len(ds.val_labels) + 1e-9


def test_a_group_too_large_to_train_together_trains_one_by_one(digits_data):
  # A memory limit that fits the wide network once but not five times.
  ds, logits = digits_data
  students = shrunk(DIGITS, (0.5, 0.25))
  jobs = [(s, jax.random.key(i)) for i, s in enumerate(students)]
  need = E.training_memory_bytes(DIGITS, 64)
  program_cache.SHARED.clear()
  limited = evaluator(ds, logits, 'vmap', memory_limit_bytes=2 * need).train_many(
    jobs, 0, inside=DIGITS
  )
  assert [(b.spec, b.stacking) for b in program_cache.SHARED.built] == [(DIGITS, None)]
  alone = evaluator(ds, logits, None).train_many(jobs, 0, inside=DIGITS)
  assert [r.accuracy for r in limited] == [r.accuracy for r in alone]
  assert all(r.error is None for r in limited)


def test_stacked_programs_are_per_lowering_and_count(digits_data):
  # Another lowering or another students_per_call is another program, and a
  # group of any size up to it reuses the one program.
  ds, logits = digits_data
  students = shrunk(DIGITS, (0.5, 0.25, 0.75))
  program_cache.SHARED.clear()
  ev = evaluator(ds, logits, 'vmap')
  for count in (1, 3, 2):
    jobs = [(s, jax.random.key(i)) for i, s in enumerate(students[:count])]
    assert all(r.error is None for r in ev.train_many(jobs, 0, inside=DIGITS))
  assert [b.stacking for b in program_cache.SHARED.built] == [('vmap', 5)]
  with pytest.raises(ValueError, match="unknown together='scan'; valid: None, vmap, map"):
    evaluator(ds, logits, 'scan')


def test_stacked_programs_come_back_from_the_program_store(digits_data, tmp_path):
  # A new process (memory cache cleared) loads the stacked program instead
  # of compiling it, and trains the students to the same results.
  ds, logits = digits_data
  store = program_store.ProgramStore(str(tmp_path / 'programs'))
  students = shrunk(DIGITS, (0.5, 0.25))
  jobs = [(s, jax.random.key(i)) for i, s in enumerate(students)]
  program_cache.SHARED.clear()
  first = evaluator(ds, logits, 'vmap', program_store=store).train_many(jobs, 0, inside=DIGITS)
  program_cache.SHARED.clear()
  jax.clear_caches()
  again = evaluator(ds, logits, 'vmap', program_store=store).train_many(jobs, 0, inside=DIGITS)
  assert [(b.spec, b.stacking, b.loaded) for b in program_cache.SHARED.built] == [
    (DIGITS, ('vmap', 5), True)
  ]  # loaded, not compiled
  assert [r.accuracy for r in again] == [r.accuracy for r in first]
  assert all(r.error is None for r in again)
