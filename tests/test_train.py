"""Losses, optimiser schedule, epoch runners and evaluation on real digits."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from n2n_jax import data as data_lib
from n2n_jax import models
from n2n_jax import spec as S
from n2n_jax import train

TINY = S.NetSpec(
  'tiny',
  (8, 8, 1),
  (
    S.Conv(8, 3, 1, 1),
    S.BatchNorm(),
    S.ReLU(),
    S.MaxPool(2, 2),
    S.Dropout(0.1),
    S.Flatten(),
    S.Dense(10),
  ),
)


@pytest.fixture(scope='module')
def digits():
  config = data_lib.default_data_config()
  return data_lib.load(config)


def test_cross_entropy_matches_hand_computation():
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0]])
  labels = jnp.array([0, 0])
  expected = np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(1.0))])
  np.testing.assert_allclose(train.cross_entropy(logits, labels), expected, rtol=1e-6)


def test_l2_logits_sums_classes_and_averages_batch():
  z = jnp.array([[1.0, 2.0], [0.0, 0.0]])
  t = jnp.array([[0.0, 0.0], [1.0, 1.0]])
  assert float(train.l2_logits(z, None, t)) == pytest.approx((1 + 4 + 1 + 1) / 2)


def test_hard_soft_is_ce_plus_weighted_l2():
  z = jnp.array([[1.0, -1.0, 0.5]])
  t = jnp.array([[0.0, 1.0, 0.0]])
  y = jnp.array([2])
  loss = train.make_loss('hard_soft', soft_weight=0.3)
  expected = train.cross_entropy(z, y) + 0.3 * train.l2_logits(z, y, t)
  assert float(loss(z, y, t)) == pytest.approx(float(expected))


def test_unknown_names_list_valid_ones():
  with pytest.raises(ValueError, match='ce, l2, hard_soft'):
    train.make_loss('kl')
  with pytest.raises(ValueError, match='sgd, adam, adamw'):
    train.make_optimizer('rmsprop', 0.1, steps_per_epoch=1)
  with pytest.raises(ValueError, match='auto, scan, loop'):
    train.resolve_epoch_mode('fast')


def test_step_schedule_divides_rate_at_decay_epoch():
  tx = train.make_optimizer('sgd', 0.5, steps_per_epoch=2, decay_epochs=(1,), momentum=0.0)
  params = {'w': jnp.zeros(())}
  state = tx.init(params)
  moves = []
  for _ in range(4):
    updates, state = tx.update({'w': jnp.ones(())}, state, params)
    moves.append(float(updates['w']))
  np.testing.assert_allclose(moves, [-0.5, -0.5, -0.05, -0.05], rtol=1e-6)


def test_epoch_indices_are_a_permutation_cut_into_full_batches():
  idx = np.asarray(train.epoch_indices(jax.random.key(0), 103, 10))
  assert idx.shape == (10, 10)
  assert len(set(idx.ravel())) == 100 and idx.max() < 103
  assert train.epoch_indices(jax.random.key(0), 7, 64).shape == (1, 7)


def _fresh_state(model, tx):
  return train.TrainState.create(models.init_variables(model, 0, (8, 8, 1)), tx)


@pytest.mark.slow
def test_scan_and_loop_epochs_agree(digits):
  model = models.build(TINY)
  # SGD, not Adam: Adam turns float noise in the near-zero gradients of the
  # conv bias (cancelled by batch-norm) into full-size steps.
  tx = optax.sgd(0.05, momentum=0.9)
  step = train.make_step(model, tx, train.cross_entropy)
  data = train.Data(digits.train_images[:256], digits.train_labels[:256])
  results = {}
  for mode in ('loop', 'scan'):
    state, metrics = train.EpochRunner(step, mode).run(
      _fresh_state(model, tx), data, jax.random.key(3), 32
    )
    results[mode] = (state, metrics)
  a, b = results['loop'][0], results['scan'][0]
  for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
  assert results['loop'][1]['loss'] == pytest.approx(results['scan'][1]['loss'], rel=1e-4)
  assert int(a.step) == 8


@pytest.mark.slow
def test_training_learns_digits_and_distillation_follows_teacher(digits):
  model = models.build(TINY)
  tx = optax.adam(3e-3)
  runner = train.EpochRunner(train.make_step(model, tx, train.cross_entropy))
  state = _fresh_state(model, tx)
  data = train.Data(digits.train_images, digits.train_labels)
  before = train.accuracy(model, state.variables, digits.val_images, digits.val_labels)
  for epoch in range(5):
    state, metrics = runner.run(state, data, jax.random.key(epoch), 64)
  after = train.accuracy(model, state.variables, digits.val_images, digits.val_labels)
  assert before < 0.3 and after > 0.85

  # A student distilled with L2 on those logits moves towards them.
  teacher_logits = train.predict(model, state.variables, digits.train_images)
  student = models.build(TINY)
  tx2 = optax.adam(3e-3)
  distil = train.EpochRunner(train.make_step(student, tx2, train.l2_logits))
  s_state = train.TrainState.create(models.init_variables(student, 7, (8, 8, 1)), tx2)
  soft = train.Data(digits.train_images, digits.train_labels, teacher_logits)
  losses = []
  for epoch in range(3):
    s_state, m = distil.run(s_state, soft, jax.random.key(10 + epoch), 64)
    losses.append(m['loss'])
  assert losses[-1] < 0.5 * losses[0]


@pytest.mark.slow
def test_augmented_step_runs_and_changes_inputs(digits):
  model = models.build(TINY)
  tx = optax.sgd(0.0)  # no learning: the loss differs only through the inputs
  data = train.Data(digits.train_images[:64], digits.train_labels[:64])
  plain = train.make_step(model, tx, train.cross_entropy)
  aug = train.make_step(
    model, tx, train.cross_entropy, lambda k, x: data_lib.augment_batch(k, x, crop_padding=2)
  )
  idx = jnp.arange(64)
  key = jax.random.key(1)
  _, m_plain = jax.jit(plain)(_fresh_state(model, tx), data, idx, key)
  _, m_aug = jax.jit(aug)(_fresh_state(model, tx), data, idx, key)
  assert np.isfinite(float(m_aug['loss']))
  assert float(m_aug['loss']) != pytest.approx(float(m_plain['loss']), rel=1e-6)


def test_predict_pads_last_chunk_and_matches_direct_apply(digits):
  model = models.build(TINY)
  variables = models.init_variables(model, 1, (8, 8, 1))
  images = digits.val_images[:37]
  direct = model.apply(variables, images, train=False)
  chunked = train.predict(model, variables, images, batch_size=10)
  assert chunked.shape == (37, 10)
  np.testing.assert_allclose(chunked, direct, rtol=1e-5, atol=1e-5)


def test_is_finite():
  assert train.is_finite({'a': jnp.ones(3)})
  assert not train.is_finite({'a': jnp.array([1.0, jnp.nan])})
