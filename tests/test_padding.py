"""Tests for n2n_jax.padding: a shrunk student run inside its source's
architecture computes the student's function, and its missing channels stay
zero through training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from n2n_jax import models, train, zoo
from n2n_jax import padding as P
from n2n_jax import spec as S

# Containers of every kind: plain stacks with Flatten (digits_cnn, conv4),
# residual blocks with shortcut convs (resnet18), concatenating fire modules
# (squeezenet1_1).
NETS = (('digits_cnn', (8, 8, 1)), ('conv4', (28, 28, 1)), ('resnet18', (32, 32, 3)),
        ('squeezenet1_1', (28, 28, 1)))


def shrunk(source, seed=0):
  rng = np.random.default_rng(seed)
  while True:
    student = S.shrink(source, list(rng.choice([0.1, 0.3, 0.6, 1.0], len(S.shrink_vars(source)))))
    if not S.is_degenerate(student):
      return student


def leaves_equal(a, b) -> bool:
  return (jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
          and all(np.array_equal(x, y) for x, y in
                  zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))))


@pytest.mark.parametrize('name,shape', NETS)
def test_a_padded_student_computes_the_students_function(name, shape):
  source = zoo.get(name, shape, 10)
  student = shrunk(source)
  wide = P.widen(student, source)
  assert wide == source  # a stage-2 student widens back to its source
  places = P.embedding(student, wide)
  own, big = models.build(student), models.build(wide)
  # The embedding knows the student's variable shapes without tracing it.
  assert (jax.tree_util.tree_map(np.shape, P.student_shapes(places))
          == jax.tree_util.tree_map(np.shape, models.variable_shapes(own, shape)))
  rng = np.random.default_rng(1)
  variables = models.init_variables(own, 3, shape)
  # Non-trivial batch-norm statistics, so that every variable matters.
  variables = jax.tree_util.tree_map(
      lambda v: np.asarray(v) + rng.uniform(0.1, 0.5, v.shape).astype(np.float32), variables)
  padded = P.pad(variables, places, models.variable_shapes(big, shape))
  assert models.count_params(padded['params']) == S.param_count(source)
  images = jnp.asarray(rng.standard_normal((3,) + shape), jnp.float32)
  expected = own.apply(variables, images)
  got = big.apply(padded, images)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(expected))))
  assert leaves_equal(P.unpad(padded, places), jax.tree_util.tree_map(np.asarray, variables))


def test_missing_channels_stay_zero_through_training():
  # Adam with weight decay and batch norm in training mode: every padded
  # entry of the wide network is exactly zero after the steps, and the
  # student's own entries follow its own training up to rounding (which Adam
  # amplifies where gradients are near zero). No dropout here: a wide layer
  # draws its dropout mask over all its channels, so with dropout the two
  # runs drop different units.
  conv4 = zoo.get('conv4', (28, 28, 1), 10)
  source = S.NetSpec('conv4', conv4.input_shape,
                     tuple(l for l in conv4.layers if not isinstance(l, S.Dropout)))
  student = shrunk(source, seed=2)
  places = P.embedding(student, source)
  own, big = models.build(student), models.build(source)
  tx = train.make_optimizer('adam', 1e-3, steps_per_epoch=10, weight_decay=5e-4)
  rng = np.random.default_rng(0)
  data = train.Data(jnp.asarray(rng.standard_normal((64, 28, 28, 1)), jnp.float32),
                    jnp.asarray(rng.integers(0, 10, 64), jnp.int32))
  variables = models.init_variables(own, 0, (28, 28, 1))
  losses, trained = {}, {}
  for model, start in ((own, variables),
                       (big, P.pad(variables, places, models.variable_shapes(big, (28, 28, 1))))):
    step = jax.jit(train.make_step(model, tx, train.cross_entropy))
    state = train.TrainState.create(start, tx)
    losses[model] = []
    for i in range(5):
      state, metrics = step(state, data, jnp.arange(32) + 32 * (i % 2), jax.random.key(i))
      losses[model].append(float(metrics['loss']))
    trained[model] = jax.device_get(state.variables)
  wide = trained[big]
  wide_shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), wide)
  assert leaves_equal(P.pad(P.unpad(wide, places), places, wide_shapes), wide)
  np.testing.assert_allclose(losses[big], losses[own], rtol=1e-4)
  np.testing.assert_allclose(big.apply(wide, data.images), own.apply(trained[own], data.images),
                             atol=5e-3)


def test_a_student_with_other_layers_cannot_be_embedded():
  source = zoo.get('digits_cnn', (8, 8, 1), 10)
  keep = [True] * S.removable_count(source)
  keep[0] = False
  removed = S.remove(source, keep)
  with pytest.raises(P.NotEmbeddable, match='layers against'):
    P.widen(removed, source)
  relu_for_bn = S.NetSpec('x', (8, 8, 1), (S.Conv(4), S.ReLU(), S.Flatten(), S.Dense(10)))
  bn = S.NetSpec('y', (8, 8, 1), (S.Conv(8), S.BatchNorm(), S.Flatten(), S.Dense(10)))
  with pytest.raises(P.NotEmbeddable, match=r'layers\[1\]: ReLU against BatchNorm'):
    P.widen(relu_for_bn, bn)
