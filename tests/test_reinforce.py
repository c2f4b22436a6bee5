import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from n2n_jax import policies
from n2n_jax import reinforce
from n2n_jax import spec

F = len(spec.FEATURE_NAMES)
MASK = jnp.array([False, True, True, True, True, False])  # first and last layers fixed


def features(t, seed=0):
  # numpy, not jax.random: an eager jax draw is one more compile per shape
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(t, F)), jnp.float32)


# Compiling dominates these tests, so they share policies, shapes (T = 6 or
# 3, m = 5) and one removal update wherever they can: jit caches by the
# (static, equal) policy and the shapes. The removal policy has a critic so
# REINFORCE and actor-critic share its sampling; REINFORCE ignores the head.
@pytest.fixture(scope='module')
def removal():
  policy = policies.RemovalPolicy(hidden=8, critic=True)
  return policy, policies.init_policy(policy, jax.random.key(0), F)


@pytest.fixture(scope='module')
def shrink():
  policy = policies.ShrinkPolicy(num_actions=10, hidden=8)
  return policy, policies.init_policy(policy, jax.random.key(0), F)


@functools.partial(jax.jit, static_argnames='policy')
def forward(policy, params, x, actions=None):
  """A removal policy's (logits, values), or a shrink policy's teacher-forced
  (logits, values) for each row of actions (m, T); compiled once per shape."""
  if actions is None:
    return policy.apply(params, x)
  return jax.vmap(lambda a: policy.apply(params, x, a, method='score'))(actions)


# ---- sampling and log-probabilities


def test_sample_removal_is_keyed_respects_mask_and_follows_the_policy(removal):
  policy, params = removal
  x = features(6)
  a = reinforce.sample_removal(policy, params, x, MASK, jax.random.key(1), 5)
  assert a.shape == (5, 6) and a.dtype == jnp.int32
  np.testing.assert_array_equal(
    a, reinforce.sample_removal(policy, params, x, MASK, jax.random.key(1), 5)
  )
  # 2,000 rollouts (400 keys, reusing the m = 5 compile): fixed layers are
  # always kept, the others follow softmax(logits).
  many, key = [], jax.random.key(2)
  for _ in range(400):
    key, k = jax.random.split(key)
    many.append(reinforce.sample_removal(policy, params, x, MASK, k, 5))
  many = np.concatenate(many)
  assert (many[:, ~np.asarray(MASK)] == policies.KEEP).all()
  assert (many[:5] != a).any()
  logits, _ = forward(policy, params, x)
  p_keep = jax.nn.softmax(logits)[:, policies.KEEP]
  freq = many.mean(0)
  np.testing.assert_allclose(freq[np.asarray(MASK)], p_keep[np.asarray(MASK)], atol=0.04)


def test_removal_log_probs_sum_over_removable_sites(removal):
  policy, params = removal
  x = features(6)
  a = reinforce.sample_removal(policy, params, x, MASK, jax.random.key(3), 5)
  logits, _ = forward(policy, params, x)
  log_pi = np.asarray(jax.nn.log_softmax(logits))
  manual = [sum(log_pi[t, a[k, t]] for t in range(6) if MASK[t]) for k in range(5)]
  np.testing.assert_allclose(
    reinforce.removal_log_probs(policy, params, x, MASK, a), manual, rtol=1e-5
  )


def test_sample_shrink_is_keyed_and_log_probs_sum_the_steps(shrink):
  policy, params = shrink
  x = features(3)
  a = reinforce.sample_shrink(policy, params, x, jax.random.key(1), 5)
  assert a.shape == (5, 3) and a.dtype == jnp.int32
  assert ((a >= 0) & (a < 10)).all()
  np.testing.assert_array_equal(a, reinforce.sample_shrink(policy, params, x, jax.random.key(1), 5))
  assert (a != reinforce.sample_shrink(policy, params, x, jax.random.key(2), 5)).any()
  assert len({tuple(r) for r in np.asarray(a)}) > 1  # rollouts differ from each other

  logits, _ = forward(policy, params, x, a)
  manual = jnp.take_along_axis(jax.nn.log_softmax(logits), a[..., None], -1)[..., 0]
  np.testing.assert_allclose(
    reinforce.shrink_log_probs(policy, params, x, a, jnp.ones(3, bool)), manual.sum(-1), rtol=1e-5
  )
  # A mask leaves steps out of the sum.
  mask = jnp.array([True, False, True])
  np.testing.assert_allclose(
    reinforce.shrink_log_probs(policy, params, x, a, mask),
    manual[:, np.asarray(mask)].sum(-1),
    rtol=1e-5,
  )


# ---- baselines


def test_ema_baseline_hand_computed():
  b, n = jnp.float32(0.0), 0
  for rewards, expected in [
    ([1.0, 2.0, 3.0], 2.0),  # first update: the batch mean
    ([5.0, 5.0], 0.9 * 2.0 + 0.1 * 5.0),
    ([0.0], 0.9 * 2.3),
  ]:
    b = reinforce.update_baseline('ema', b, n, jnp.array(rewards), 0.9)
    n += 1
    np.testing.assert_allclose(b, expected, rtol=1e-6)
  np.testing.assert_allclose(reinforce.update_baseline('ema', 1.0, 3, jnp.array([3.0]), 0.5), 2.0)


def test_running_mean_baseline_hand_computed():
  # The authors' b_e = sum_{i<e} mean(R_i) / (e + 1): 0, 2/2, (2+5)/3, (2+5+0)/4.
  b = jnp.float32(0.0)
  for n, (rewards, expected) in enumerate(
    [([1.0, 2.0, 3.0], 1.0), ([5.0, 5.0], 7 / 3), ([0.0, 0.0], 7 / 4)]
  ):
    b = reinforce.update_baseline('running_mean', b, n, jnp.array(rewards))
    np.testing.assert_allclose(b, expected, rtol=1e-6)


def test_unknown_names_list_the_valid_ones(removal, shrink):
  policy, _ = removal
  opt = reinforce.make_optimizer(0.01)
  with pytest.raises(ValueError, match='ema, running_mean'):
    reinforce.update_baseline('median', 0.0, 0, jnp.ones(2))
  with pytest.raises(ValueError, match='ema, running_mean'):
    reinforce.make_update(policy, opt, 'removal', baseline='median')
  with pytest.raises(ValueError, match='reinforce, actor_critic'):
    reinforce.make_update(policy, opt, 'removal', method='ppo')
  with pytest.raises(ValueError, match='removal, shrink'):
    reinforce.make_update(policy, opt, 'grow')
  with pytest.raises(ValueError, match='ShrinkPolicy'):
    reinforce.make_update(policy, opt, 'shrink')
  with pytest.raises(ValueError, match='critic=True'):
    reinforce.make_update(shrink[0], opt, 'shrink', method='actor_critic')


# ---- the update

LR = 0.01


@pytest.fixture(scope='module')
def removal_update(removal):
  policy, _ = removal
  opt = reinforce.make_optimizer(LR)
  return opt, reinforce.make_update(policy, opt, 'removal', baseline='ema')


@pytest.mark.slow
def test_loss_uses_per_rollout_advantage_and_the_previous_baseline(removal, removal_update):
  policy, params = removal
  opt, update = removal_update
  x = features(6)
  a = reinforce.sample_removal(policy, params, x, MASK, jax.random.key(4), 5)
  rewards = jnp.array([0.9, 0.1, 0.5, 0.7, 0.3])
  state = reinforce.PolicyState.create(params, opt, baseline=0.4)
  state = state.replace(num_updates=jnp.int32(3))
  new, metrics = update(state, x, MASK, a, rewards)

  logp = reinforce.removal_log_probs(policy, params, x, MASK, a)
  expected = -np.mean((np.asarray(rewards) - 0.4) * np.asarray(logp))
  np.testing.assert_allclose(metrics['loss'], expected, rtol=1e-5)
  # The authors' code (batch-mean advantage for every rollout) would differ.
  assert not np.isclose(expected, -np.mean(rewards - 0.4) * np.mean(logp), rtol=1e-3)
  np.testing.assert_allclose(metrics['advantage'], np.mean(rewards) - 0.4, rtol=1e-5)
  np.testing.assert_allclose(metrics['baseline'], 0.4)  # the b the loss used
  np.testing.assert_allclose(new.baseline, 0.9 * 0.4 + 0.1 * 0.5, rtol=1e-6)
  assert int(new.num_updates) == 4 and bool(metrics['finite'])
  assert float(metrics['grad_norm']) > 0 and float(metrics['value_loss']) == 0
  # One Adam step from a fresh state moves each parameter by at most the
  # learning rate, and moves the ones with a gradient.
  moved = jax.tree_util.tree_map(lambda u, v: np.abs(np.asarray(u - v)), new.params, params)
  assert max(float(m.max()) for m in jax.tree_util.tree_leaves(moved)) <= LR * (1 + 1e-4)
  assert float(moved['params']['logits']['kernel'].min()) > 0


def test_update_compiles_once_and_reports_non_finite_loss(removal, removal_update):
  policy, params = removal
  opt, update = removal_update
  x = features(6)
  state = reinforce.PolicyState.create(params, opt)
  update(state, x, MASK, jnp.ones((5, 6), jnp.int32), jnp.ones((5,)))
  compiled = update._cache_size()
  for i in range(3):
    a = reinforce.sample_removal(policy, state.params, x, MASK, jax.random.key(i), 5)
    rewards = jnp.asarray(np.random.default_rng(i).uniform(size=5), jnp.float32)
    state, metrics = update(state, x, MASK, a, rewards)
    assert bool(metrics['finite'])
  bad = jnp.array([0.5, jnp.nan, 0.2, 0.1, 0.3])
  after, metrics = update(state, x, MASK, a, bad)
  assert update._cache_size() == compiled  # no retrace for the same shapes
  assert not np.isfinite(metrics['loss']) and not bool(metrics['finite'])
  # The last good state comes back untouched, ready to checkpoint.
  jax.tree_util.tree_map(np.testing.assert_array_equal, after, state)


def test_policy_state_round_trips_through_orbax(tmp_path, removal):
  import orbax.checkpoint as ocp

  policy, params = removal
  opt = reinforce.make_optimizer(0.003)
  state = reinforce.PolicyState.create(params, opt, baseline=0.25)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / 'policy', state)
    ckpt.wait_until_finished()
    restored = ckpt.restore(tmp_path / 'policy', state)
  assert isinstance(restored, reinforce.PolicyState)
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored, state)
  assert restored.baseline.dtype == jnp.float32 and restored.num_updates.dtype == jnp.int32


# ---- learning on toy problems with known answers


def train(policy, params, update, opt, kind, reward_fn, x, mask, iters, seed=1):
  state = reinforce.PolicyState.create(params, opt)
  key = jax.random.key(seed)
  rewards_seen = []
  for _ in range(iters):
    key, k = jax.random.split(key)
    if kind == 'removal':
      a = reinforce.sample_removal(policy, state.params, x, mask, k, 5)
    else:
      a = reinforce.sample_shrink(policy, state.params, x, k, 5)
    state, metrics = update(state, x, mask, a, reward_fn(a))
    assert bool(metrics['finite'])
    rewards_seen.append(float(metrics['reward']))
  return state, rewards_seen


TARGET = jnp.array([1, 0, 1, 1, 0, 1])


@jax.jit
def removal_reward(a):  # fraction of removable sites where the action hits the target
  return jnp.sum(MASK & (a == TARGET), -1) / MASK.sum()


def test_reinforce_learns_a_removal_pattern(removal, removal_update):
  policy, params = removal
  opt, update = removal_update
  x = features(6)
  state, rewards = train(policy, params, update, opt, 'removal', removal_reward, x, MASK, 150)
  logits, _ = forward(policy, state.params, x)
  p_target = jax.nn.softmax(logits)[jnp.arange(6), TARGET]
  assert (p_target[np.asarray(MASK)] > 0.9).all(), p_target
  assert np.mean(rewards[-20:]) > np.mean(rewards[:20]) + 0.3


def test_actor_critic_learns_a_removal_pattern(removal):
  policy, params = removal
  opt = reinforce.make_optimizer(LR)
  update = reinforce.make_update(policy, opt, 'removal', method='actor_critic')
  x = features(6)
  state, rewards = train(policy, params, update, opt, 'removal', removal_reward, x, MASK, 150)
  logits, values = forward(policy, state.params, x)
  p_target = jax.nn.softmax(logits)[jnp.arange(6), TARGET]
  assert (p_target[np.asarray(MASK)] > 0.9).all(), p_target
  # The critic has learnt the value of the (now nearly certain) reward.
  np.testing.assert_allclose(values[np.asarray(MASK)], np.mean(rewards[-20:]), atol=0.15)


def test_reinforce_learns_shrink_factor_0_3(shrink):
  policy, params = shrink
  factors = jnp.asarray(policies.SHRINK_ACTIONS)
  opt = reinforce.make_optimizer(0.03)
  update = reinforce.make_update(policy, opt, 'shrink', baseline='running_mean')
  reward = jax.jit(lambda a: -jnp.mean(jnp.abs(factors[a] - 0.3), -1))
  x = features(3)
  state, rewards = train(policy, params, update, opt, 'shrink', reward, x, None, 150)
  logits, _ = forward(policy, state.params, x, jnp.full((5, 3), 2))
  assert (jax.nn.softmax(logits[0])[:, 2] > 0.9).all()
  assert np.mean(rewards[-20:]) > -0.02
