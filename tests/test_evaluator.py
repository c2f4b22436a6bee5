"""Student evaluation: distillation, failures as results, teacher-weight inheritance."""

import jax
import numpy as np
import pytest

from n2n_jax import data as data_lib
from n2n_jax import evaluator as E
from n2n_jax import models
from n2n_jax import spec as S
from n2n_jax import train
from n2n_jax import zoo

TEACHER = zoo.get('digits_cnn', (8, 8, 1), 10)


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
  np.testing.assert_array_equal(inherited['batch_stats'][student_layers[1]]['var'],
                                teacher_vars['batch_stats']['1_BatchNorm']['var'])
  # A shrunk student keeps fresh values where the shapes changed.
  factors = [0.5] * len(S.shrink_vars(TEACHER))
  shrunk = S.shrink(TEACHER, factors)
  fresh = models.init_variables(models.build(shrunk), 1, (8, 8, 1))
  inherited, copied = models.inherit_variables(fresh, teacher_vars)
  assert copied < len(fresh['params'])
  np.testing.assert_array_equal(inherited['params']['0_Conv']['kernel'],
                                fresh['params']['0_Conv']['kernel'])


def test_unknown_init_is_refused(setup):
  ds, _, logits = setup
  with pytest.raises(ValueError, match='scratch, teacher'):
    E.Evaluator(ds, logits, E.DistillSettings(init='imagenet'))
  with pytest.raises(ValueError, match="needs the teacher's variables"):
    E.Evaluator(ds, logits, E.DistillSettings(init='teacher'))
