import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from n2n_jax import policies
from n2n_jax import spec
from n2n_jax import zoo

F = len(spec.FEATURE_NAMES)
LENGTHS = (1, 5, 33)


def features(t, seed=0):
  # numpy, not jax.random: an eager jax draw is one more compile per shape
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(t, F)), jnp.float32)


# Both policies with the critic, one set of parameters each; without it they
# differ only by the missing head (shapes checked with eval_shape below).
POLICIES = {
  'removal': policies.RemovalPolicy(hidden=6, critic=True),
  'shrink': policies.ShrinkPolicy(num_actions=10, hidden=6, critic=True),
}


@pytest.fixture(scope='module')
def run_all():
  """One compiled call runs both policies: removal on removal_x; shrink
  sampling on shrink_x (at `temperature`), scoring of the sampled actions and
  of the given `actions`. Compiling dominates these tests, and compiling the
  policies together costs ~40 % less than one by one; the tests below reuse
  three shapes only."""
  params = {k: policies.init_policy(p, jax.random.key(0), F) for k, p in POLICIES.items()}

  @jax.jit
  def run(removal_x, shrink_x, key, actions, temperature):
    out = {}
    for name, policy in POLICIES.items():
      p = params[name]
      if name.startswith('removal'):
        out[name] = policy.apply(p, removal_x)
      else:
        sampled = policy.apply(p, shrink_x, key, temperature, method='sample')
        out[name] = (
          sampled,
          policy.apply(p, shrink_x, sampled[0], method='score'),
          policy.apply(p, shrink_x, actions, method='score'),
        )
    return out

  # temperature always passed, so it is traced the same way on every call
  return lambda *args, temperature=1.0: run(*args, jnp.float32(temperature))


def check_removal(out, t, critic):
  logits, values = out
  assert logits.shape == (t, 2) and logits.dtype == jnp.float32
  assert np.isfinite(logits).all()
  if critic:
    assert values.shape == (t,) and np.isfinite(values).all()
  else:
    assert values is None


def check_shrink(out, t, critic, temperature=1.0):
  (actions, logp, values), (logits, score_values), _ = out
  assert actions.shape == (t,) and actions.dtype == jnp.int32
  assert ((actions >= 0) & (actions < 10)).all()
  assert logp.shape == (t,) and (logp < 0).all()
  assert logits.shape == (t, 10)
  # Teacher forcing on the sampled actions reproduces the sampler's steps.
  manual = jax.nn.log_softmax(logits / temperature)[jnp.arange(t), actions]
  np.testing.assert_allclose(manual, logp, rtol=1e-5, atol=1e-5)
  if critic:
    assert values.shape == (t,) and np.isfinite(values).all()
    np.testing.assert_allclose(values, score_values, rtol=1e-5, atol=1e-6)
  else:
    assert values is None and score_values is None


def check_all(out, removal_t, shrink_t, temperature=1.0):
  check_removal(out['removal'], removal_t, True)
  check_shrink(out['shrink'], shrink_t, True, temperature)


def test_policies_work_for_any_length(run_all):
  # One set of parameters serves every length: T = 1 and 5 here, 33 below.
  for t in (1, 5):
    check_all(run_all(features(t), features(t), jax.random.key(t), jnp.zeros(t, jnp.int32)), t, t)


def test_policies_without_critic_return_no_values():
  removal = policies.RemovalPolicy(hidden=6)
  shrink = policies.ShrinkPolicy(num_actions=10, hidden=6)
  removal_params = policies.init_policy(removal, jax.random.key(0), F)
  shrink_params = policies.init_policy(shrink, jax.random.key(0), F)
  for t in LENGTHS:  # shapes only: tracing, no compiling
    x = jax.ShapeDtypeStruct((t, F), jnp.float32)
    logits, values = jax.eval_shape(removal.apply, removal_params, x)
    assert logits.shape == (t, 2) and values is None
    actions, logp, values = jax.eval_shape(
      functools.partial(shrink.apply, method='sample'), shrink_params, x, jax.random.key(0)
    )
    assert actions.shape == logp.shape == (t,) and values is None
    logits, values = jax.eval_shape(shrink.apply, shrink_params, x, actions)
    assert logits.shape == (t, 10) and values is None


def test_one_policy_reads_several_teachers(run_all):
  # Paper section 4.6: a policy trained on one teacher starts the search on
  # another. vgg_small has 33 sites and resnet34 33 shrinkable widths, so this
  # is also the T = 33 case.
  vgg = zoo.get('vgg_small', (32, 32, 3), 10)
  resnet = zoo.get('resnet34', (32, 32, 3), 10)
  x = jnp.asarray(spec.layer_features(vgg), jnp.float32)
  resnet_x = np.asarray(spec.layer_features(resnet), np.float32)
  rows = jnp.asarray(resnet_x[[v.site_index for v in spec.shrink_vars(resnet)]])
  assert x.shape == rows.shape == (33, F)
  check_all(run_all(x, rows, jax.random.key(1), jnp.zeros(33, jnp.int32)), 33, 33)


def test_removal_policy_is_bidirectional(run_all):
  # Changing layer 3's features must move the decisions before and after it.
  x = features(5)
  y = x.at[3].set(1.0 - x[3])
  key, actions = jax.random.key(0), jnp.zeros(5, jnp.int32)
  a, _ = run_all(x, x, key, actions)['removal']
  b, _ = run_all(y, x, key, actions)['removal']
  diff = np.abs(np.asarray(a - b)).max(-1)
  assert (diff > 1e-6).all(), diff


def test_shrink_policy_is_autoregressive_and_causal(run_all):
  x = features(5)
  a = jnp.array([0, 1, 7, 3, 9])
  b = a.at[2].set(0)
  la, _ = run_all(x, x, jax.random.key(0), a)['shrink'][2]
  lb, _ = run_all(x, x, jax.random.key(0), b)['shrink'][2]
  # a_2 is fed to step 3 onwards: steps 0-2 cannot see it, steps 3-4 must.
  np.testing.assert_allclose(la[:3], lb[:3], rtol=1e-6)
  assert np.abs(np.asarray(la[3:] - lb[3:])).max(-1).min() > 1e-6


def test_shrink_sampling_temperature(run_all):
  x = features(5)
  hot = run_all(x, x, jax.random.key(2), jnp.zeros(5, jnp.int32), temperature=4.0)
  check_all(hot, 5, 5, temperature=4.0)  # logp is under softmax(logits / 4)


def _lstm_params(inputs, hidden):
  # Flax's LSTM cells: 4 input kernels, 4 recurrent kernels, 4 biases.
  return 4 * (inputs * hidden + hidden * hidden + hidden)


def test_parameter_counts_follow_the_paper_sizes():
  count = lambda p: sum(x.size for x in jax.tree_util.tree_leaves(p))
  removal = policies.RemovalPolicy()  # appendix 10.1: 2 layers of 30 units
  assert (removal.hidden, removal.num_layers) == (30, 2)
  expected = 2 * _lstm_params(F, 30) + 2 * _lstm_params(60, 30) + 60 * 2 + 2
  assert count(policies.init_policy(removal, jax.random.key(0), F)) == expected
  critic = policies.RemovalPolicy(critic=True)
  assert count(policies.init_policy(critic, jax.random.key(0), F)) == expected + 61

  shrink = policies.ShrinkPolicy()  # 2 layers of 50 units, 10 actions
  assert (shrink.hidden, shrink.num_layers, shrink.num_actions) == (50, 2, 10)
  expected = _lstm_params(F + 10, 50) + _lstm_params(50, 50) + 50 * 10 + 10
  assert count(policies.init_policy(shrink, jax.random.key(0), F)) == expected


@pytest.mark.parametrize(
  'policy',
  [
    policies.RemovalPolicy(hidden=7, critic=True),
    policies.ShrinkPolicy(num_actions=3, hidden=7, critic=True),
  ],
)
def test_init_policy_matches_flax_init_structure_and_distributions(policy):
  params = policies.init_policy(policy, jax.random.key(0), F)
  args = (
    (jnp.zeros((1, F)),)
    if isinstance(policy, policies.RemovalPolicy)
    else (jnp.zeros((1, F)), jnp.zeros((1,), jnp.int32))
  )
  reference = jax.eval_shape(policy.init, jax.random.key(0), *args)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(reference)
  for (path, leaf), ref in zip(
    jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(reference)
  ):
    assert leaf.shape == ref.shape and leaf.dtype == ref.dtype
    names = [p.key for p in path]
    if names[-1] == 'bias':
      assert not np.asarray(leaf).any()
    elif names[-2] in ('hi', 'hf', 'hg', 'ho'):  # recurrent: orthogonal
      np.testing.assert_allclose(leaf.T @ leaf, np.eye(leaf.shape[1]), atol=1e-5)
    else:  # lecun normal truncated at 2 std
      std = np.sqrt(1.0 / leaf.shape[0]) / 0.87962566103423978
      assert np.abs(np.asarray(leaf)).max() <= 2 * std + 1e-6

  same = policies.init_policy(policy, jax.random.key(0), F)
  other = policies.init_policy(policy, jax.random.key(1), F)
  legacy = policies.init_policy(policy, jax.random.PRNGKey(1), F)  # raw uint32 keys too
  leaves = lambda p: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(p)])
  np.testing.assert_array_equal(leaves(params), leaves(same))
  assert not np.allclose(leaves(params), leaves(other))
  assert np.isfinite(leaves(legacy)).all()


def test_init_policy_rejects_other_modules():
  import flax.linen as nn

  with pytest.raises(TypeError, match='RemovalPolicy or ShrinkPolicy'):
    policies.init_policy(nn.Dense(3), jax.random.key(0), F)


def test_shrink_actions_and_factors():
  assert policies.SHRINK_ACTIONS == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
  np.testing.assert_allclose(policies.action_factors([[0, 2], [9, 4]]), [[0.1, 0.3], [1.0, 0.5]])
  np.testing.assert_allclose(policies.action_factors(np.array([1, 0]), (0.25, 0.5)), [0.5, 0.25])
