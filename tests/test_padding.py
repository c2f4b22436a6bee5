"""Tests for n2n_jax.padding: a shrunk student run inside its source's
architecture computes the student's function, and its missing channels stay
zero through training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from n2n_jax import models
from n2n_jax import padding as P
from n2n_jax import spec as S
from n2n_jax import train
from n2n_jax import zoo

# Containers of every kind: plain stacks with Flatten (digits_cnn, conv4),
# residual blocks with shortcut convs (resnet18), concatenating fire modules
# (squeezenet1_1).
NETS = (
  ('digits_cnn', (8, 8, 1)),
  ('conv4', (28, 28, 1)),
  ('resnet18', (32, 32, 3)),
  ('squeezenet1_1', (28, 28, 1)),
)


def shrunk(source, seed=0):
  rng = np.random.default_rng(seed)
  while True:
    student = S.shrink(source, list(rng.choice([0.1, 0.3, 0.6, 1.0], len(S.shrink_vars(source)))))
    if not S.is_degenerate(student):
      return student


def removed(source, seed=0):
  """A stage-1 student: `source` with random layers removed."""
  rng = np.random.default_rng(seed)
  while True:
    student = S.remove(source, list(rng.random(S.removable_count(source)) < 0.6))
    if not S.is_degenerate(student) and student != source:
      return student


def leaves_equal(a, b) -> bool:
  return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and all(
    np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
  )


@pytest.mark.slow
@pytest.mark.parametrize('name,shape', NETS)
def test_a_padded_student_computes_the_students_function(name, shape):
  source = zoo.get(name, shape, 10)
  student = shrunk(source)
  wide = P.widen(student, source)
  assert wide == source  # a stage-2 student widens back to its source
  places = P.embedding(student, wide)
  own, big = models.build(student), models.build(wide)
  # The embedding knows the student's variable shapes without tracing it.
  assert jax.tree_util.tree_map(np.shape, P.student_shapes(places)) == jax.tree_util.tree_map(
    np.shape, models.variable_shapes(own, shape)
  )
  rng = np.random.default_rng(1)
  variables = models.init_variables(own, 3, shape)
  # Non-trivial batch-norm statistics, so that every variable matters.
  variables = jax.tree_util.tree_map(
    lambda v: np.asarray(v) + rng.uniform(0.1, 0.5, v.shape).astype(np.float32), variables
  )
  padded = P.pad(variables, places, models.variable_shapes(big, shape))
  assert models.count_params(padded['params']) == S.param_count(source)
  images = jnp.asarray(rng.standard_normal((3,) + shape), jnp.float32)
  expected = own.apply(variables, images)
  got = big.apply(padded, images)
  np.testing.assert_allclose(
    got, expected, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(expected)))
  )
  assert leaves_equal(P.unpad(padded, places), jax.tree_util.tree_map(np.asarray, variables))


# (student kind, optimizer, how close the losses stay (relative), and the
# trained networks' logits (absolute; None: not compared)). The first
# gradients of a stage-1 student and of the wide network agree to the bit,
# but Adam turns rounding noise in near-zero gradients (a unit that ReLU all
# but silences) into full-size steps, and the wide network sums over other
# channel counts, so after 5 Adam steps the losses part by ~2e-3 and the
# logits (eval mode, barely updated running statistics) by up to 0.2, while
# plain SGD keeps both within 1e-5.
TRAINING_CASES = [
  ('shrunk', 'adam', 1e-4, 5e-3),
  ('removed', 'sgd', 1e-5, 1e-4),
  ('removed', 'adam', 1e-2, None),
]


@pytest.mark.slow
@pytest.mark.parametrize('kind,optimizer,rtol,atol', TRAINING_CASES)
def test_missing_channels_stay_zero_through_training(kind, optimizer, rtol, atol):
  # Weight decay and batch norm in training mode: every entry of the wide
  # network that the student does not own is exactly zero after the steps,
  # and the student's own entries follow its own training. No dropout here: a
  # wide layer draws its dropout mask over all its channels, so with dropout
  # the two runs drop different units. 'removed': a stage-1 student, run
  # inside its source with the layers it removed switched off.
  conv4 = zoo.get('conv4', (28, 28, 1), 10)
  source = S.NetSpec(
    'conv4', conv4.input_shape, tuple(l for l in conv4.layers if not isinstance(l, S.Dropout))
  )
  if kind == 'shrunk':
    student, wide, on = shrunk(source, seed=2), source, None
  else:
    student = removed(source, seed=2)
    wide, on = P.with_switches(student, source)
  places = P.embedding(student, wide, on)
  own, big = models.build(student), models.build(wide)
  tx = train.make_optimizer(
    optimizer, 1e-3 if optimizer == 'adam' else 0.05, steps_per_epoch=10, weight_decay=5e-4
  )
  rng = np.random.default_rng(0)
  data = train.Data(
    jnp.asarray(rng.standard_normal((64, 28, 28, 1)), jnp.float32),
    jnp.asarray(rng.integers(0, 10, 64), jnp.int32),
  )
  variables = models.init_variables(own, 0, (28, 28, 1))
  losses, trained = {}, {}
  for model, start in (
    (own, variables),
    (big, P.pad(variables, places, models.variable_shapes(big, (28, 28, 1)), on)),
  ):
    step = jax.jit(train.make_step(model, tx, train.cross_entropy))
    state = train.TrainState.create(start, tx)
    losses[model] = []
    for i in range(5):
      state, metrics = step(state, data, jnp.arange(32) + 32 * (i % 2), jax.random.key(i))
      losses[model].append(float(metrics['loss']))
    trained[model] = jax.device_get(state.variables)
  wide_shapes = jax.tree_util.tree_map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), trained[big]
  )
  repadded = flatten_dict(P.pad(P.unpad(trained[big], places), places, wide_shapes, on))
  got = flatten_dict(trained[big])
  assert repadded.keys() == got.keys()
  # Switched-off batch norms still compute (their output is discarded), so
  # their running statistics move; nothing else the student lacks does.
  off = {str(j) for j, running in enumerate(on if on is not None else ()) if not running}
  moved = [k for k in got if not np.array_equal(got[k], repadded[k])]
  assert all(k[0] == 'batch_stats' and k[1].split('_')[0] in off for k in moved), moved
  np.testing.assert_allclose(losses[big], losses[own], rtol=rtol)
  if atol is not None:
    np.testing.assert_allclose(
      big.apply(trained[big], data.images), own.apply(trained[own], data.images), atol=atol
    )


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


@pytest.mark.slow
@pytest.mark.parametrize('name,shape', NETS[:2] + (('vgg13', (28, 28, 1)),))
def test_a_student_with_layers_switched_off_computes_the_students_function(name, shape):
  source = zoo.get(name, shape, 10)
  rng = np.random.default_rng(1)
  students = {removed(source, seed) for seed in range(6)}
  wides = set()
  for student in students:
    wide, on = P.with_switches(student, source)
    wides.add(wide)

    # The source without the pools the student removed; every layer it
    # removed is switched off, every one it kept on.
    def pools(spec):
      return sum(isinstance(l, S.MaxPool) for l in spec.layers)

    def others(spec):
      return [l for l in spec.layers if not isinstance(l, S.MaxPool)]

    assert others(wide) == others(source) and pools(wide) == pools(student)
    assert [l for l, o in zip(wide.layers, on) if o] == list(student.layers)
    assert all(j in wide.switched for j, o in enumerate(on) if not o)
    places = P.embedding(student, wide, on)
    own, big = models.build(student), models.build(wide)
    assert jax.tree_util.tree_map(np.shape, P.student_shapes(places)) == jax.tree_util.tree_map(
      np.shape, models.variable_shapes(own, shape)
    )
    variables = jax.tree_util.tree_map(
      lambda v: np.asarray(v) + rng.uniform(0.1, 0.5, v.shape).astype(np.float32),
      models.init_variables(own, 3, shape),
    )
    padded = P.pad(variables, places, models.variable_shapes(big, shape), on)
    images = jnp.asarray(rng.standard_normal((3,) + shape), jnp.float32)
    expected = own.apply(variables, images)
    got = big.apply(padded, images)
    np.testing.assert_allclose(
      got, expected, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(expected)))
    )
    assert leaves_equal(P.unpad(padded, places), jax.tree_util.tree_map(np.asarray, variables))
  # Students that keep the same pools share a network, hence a program.
  assert len(wides) < len(students)


def test_students_that_do_not_fit_switches_are_refused():
  source = zoo.get('digits_cnn', (8, 8, 1), 10)
  student = removed(source)
  shrunk_and_removed = S.shrink(student, [0.5] * len(S.shrink_vars(student)))
  with pytest.raises(P.NotEmbeddable, match="not the source's next layer"):
    P.with_switches(shrunk_and_removed, source)
  # A removed conv that narrows the activation (64 -> 16 channels) has no
  # pass-through; nor has a strided one.
  narrowing = S.NetSpec(
    'n', (8, 8, 1), (S.Conv(64, padding=1), S.Conv(16, padding=1), S.Flatten(), S.Dense(10))
  )
  without = S.NetSpec('n', (8, 8, 1), (S.Conv(64, padding=1), S.Flatten(), S.Dense(10)))
  with pytest.raises(
    P.NotEmbeddable,
    match=r'removed layer Conv cannot be switched off on '
    r'inputs of shape \(8, 8, 64\)',
  ):
    P.with_switches(without, narrowing)
  strided = S.NetSpec(
    's', (8, 8, 1), (S.Conv(8, padding=1), S.Conv(8, stride=2, padding=1), S.Flatten(), S.Dense(10))
  )
  with pytest.raises(P.NotEmbeddable, match='removed layer Conv'):
    P.with_switches(
      S.NetSpec('s', (8, 8, 1), (S.Conv(8, padding=1), S.Flatten(), S.Dense(10))), strided
    )
