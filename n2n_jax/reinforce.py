"""Policy-gradient training of the search policies (paper section 3.4,
appendix 6): sampling, log-probabilities, baselines and one jitted update.

An iteration of the search is

    actions = sample_removal(policy, state.params, features, mask, key, m)
    rewards = <build, train and score the m students>          (host side)
    state, metrics = update(state, features, mask, actions, rewards)

with `update = make_update(policy, make_optimizer(lr), 'removal')`. Sampling
and the update are each one compiled call; everything is a pure function of
its inputs and an explicit PRNG key.

Where we follow the paper rather than the authors' code (see
shared/reference/original-code-facts.md): the advantage is per rollout,
R_k - b, and an iteration is one optimiser step over all m rollouts; the
code's single batch-mean advantage and m separate steps are not reproduced.
Its running-mean baseline is available as baseline='running_mean'.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from n2n_jax import policies

KINDS = ('removal', 'shrink')

# ---- state


class PolicyState(flax.struct.PyTreeNode):
  """Everything an iteration boundary needs to resume the policy's training;
  a pytree of arrays, so orbax can checkpoint it as is."""

  params: Any
  opt_state: Any
  baseline: jax.Array  # float32 scalar: b for the next update
  num_updates: jax.Array  # int32 scalar: updates applied so far

  @classmethod
  def create(
    cls, params, optimizer: optax.GradientTransformation, baseline: float = 0.0
  ) -> PolicyState:
    return cls(
      params, optimizer.init(params), jnp.asarray(baseline, jnp.float32), jnp.zeros((), jnp.int32)
    )


def make_optimizer(learning_rate: float) -> optax.GradientTransformation:
  """Adam, as in the paper (appendix 7, 10.1: 0.003 for removal; shrinkage
  0.01 in section 3.4's text, 0.1 in appendix 10.1 and the code)."""
  return optax.adam(learning_rate)


# ---- baselines: (baseline, num_updates, rewards, decay) -> new baseline
# num_updates counts the updates before this one, so it is 0 on the first.


def ema_baseline(baseline, num_updates, rewards, decay):
  """The paper's exponential moving average of past batch-mean rewards. The
  first update sets b to the batch mean rather than decaying from 0, which
  would bias b towards 0 for ~1 / (1 - decay) iterations."""
  mean = jnp.mean(rewards)
  return jnp.where(num_updates == 0, mean, decay * baseline + (1.0 - decay) * mean)


def running_mean_baseline(baseline, num_updates, rewards, decay):
  """The authors' code: b_e = sum_{i<e} mean(R_i) / (e + 1), the mean of past
  batch means shrunk towards 0 (b_0 = 0). `decay` is unused."""
  del decay
  e = num_updates.astype(jnp.float32)
  return (baseline * (e + 1.0) + jnp.mean(rewards)) / (e + 2.0)


BASELINES = {'ema': ema_baseline, 'running_mean': running_mean_baseline}


def get_baseline(kind: str) -> Callable:
  if kind not in BASELINES:
    raise ValueError(f'unknown baseline {kind!r}; valid baselines: {", ".join(BASELINES)}')
  return BASELINES[kind]


# The policy-gradient terms by method: (policy loss, value loss, mean advantage)
# from the rewards (m,), the moving baseline, the critic's values (m, T), the
# per-step log-probabilities (m, T), the decision-step weights (m, T), m and
# the number of decision steps.
def _reinforce_terms(rewards, b, values, step_logp, weights, m, decisions):
  del values, weights, m, decisions
  advantage = rewards - b
  return (-jnp.mean(advantage * step_logp.sum(-1)), jnp.zeros((), jnp.float32), jnp.mean(advantage))


def _actor_critic_terms(rewards, b, values, step_logp, weights, m, decisions):
  del b
  advantage = rewards[:, None] - values  # (m, T)
  return (
    -jnp.sum(jax.lax.stop_gradient(advantage) * step_logp) / m,
    jnp.sum(weights * jnp.square(advantage)) / (m * decisions),
    jnp.sum(weights * advantage) / (m * decisions),
  )


_METHODS = {'reinforce': _reinforce_terms, 'actor_critic': _actor_critic_terms}
METHODS = tuple(_METHODS)


def update_baseline(kind: str, baseline, num_updates, rewards, decay: float = 0.9):
  """b after seeing this iteration's rewards (float32 scalar)."""
  rewards = jnp.asarray(rewards, jnp.float32)
  num_updates = jnp.asarray(num_updates, jnp.int32)
  return get_baseline(kind)(
    jnp.asarray(baseline, jnp.float32), num_updates, rewards, jnp.float32(decay)
  ).astype(jnp.float32)


# ---- sampling: m rollouts in one compiled call


@functools.partial(jax.jit, static_argnames=('policy', 'm'))
def sample_removal(
  policy: policies.RemovalPolicy, params, features, mask, key, m: int, temperature=1.0
) -> jax.Array:
  """(m, T) int32 keep (1) / remove (0) actions. Sites where mask is False
  (not removable) are always kept. The bidirectional policy does not read its
  own actions, so one forward pass serves all m rollouts."""
  logits, _ = policy.apply(params, jnp.asarray(features, jnp.float32))
  actions = jax.random.categorical(key, logits / temperature, shape=(m,) + logits.shape[:1])
  return jnp.where(jnp.asarray(mask, bool), actions, policies.KEEP).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('policy', 'm'))
def sample_shrink(
  policy: policies.ShrinkPolicy, params, features, key, m: int, temperature=1.0
) -> jax.Array:
  """(m, T) int32 indices into the policy's factor tuple, each rollout drawn
  autoregressively from its own key."""
  features = jnp.asarray(features, jnp.float32)

  def one(k):
    actions, _, _ = policy.apply(params, features, k, temperature, method='sample')
    return actions

  return jax.vmap(one)(jax.random.split(key, m))


# ---- per-step terms and log-probabilities


def _step_terms(kind, policy, params, features, mask, actions):
  """Per-step log pi(a_t), entropy and value (each (m, T); values None without
  a critic) and the step weights (T,): 1 where the step is a decision."""
  features = jnp.asarray(features, jnp.float32)
  actions = jnp.asarray(actions, jnp.int32)
  if kind == 'removal':
    logits, values = policy.apply(params, features)  # shared by all rollouts
    logits = jnp.broadcast_to(logits, actions.shape + logits.shape[-1:])
    if values is not None:
      values = jnp.broadcast_to(values, actions.shape)
  else:
    logits, values = jax.vmap(lambda a: policy.apply(params, features, a, method='score'))(actions)
  log_pi = jax.nn.log_softmax(logits)
  step_logp = jnp.sum(jax.nn.one_hot(actions, logits.shape[-1]) * log_pi, -1)
  entropy = -jnp.sum(jnp.exp(log_pi) * log_pi, -1)
  if mask is None:
    weights = jnp.ones(actions.shape[-1:], jnp.float32)
  else:
    weights = jnp.asarray(mask, bool).astype(jnp.float32)
  # where, not multiply: a forced keep may have log-prob -inf, and 0 * -inf is nan.
  step_logp = jnp.where(weights > 0, step_logp, 0.0)
  return step_logp, entropy, values, weights


@functools.partial(jax.jit, static_argnames='policy')
def removal_log_probs(policy: policies.RemovalPolicy, params, features, mask, actions) -> jax.Array:
  """log P(a_{1:T}) per rollout, (m,): summed over removable sites only (the
  others were forced, not chosen)."""
  return _step_terms('removal', policy, params, features, mask, actions)[0].sum(-1)


@functools.partial(jax.jit, static_argnames='policy')
def shrink_log_probs(
  policy: policies.ShrinkPolicy, params, features, actions, mask=None
) -> jax.Array:
  """log P(a_{1:T}) per rollout, (m,), by teacher forcing; mask (T,) bool, if
  given, leaves steps out of the sum (they still feed the next step)."""
  return _step_terms('shrink', policy, params, features, mask, actions)[0].sum(-1)


# ---- the update


def make_update(
  policy,
  optimizer: optax.GradientTransformation,
  kind: str,
  method: str = 'reinforce',
  baseline: str = 'ema',
  baseline_decay: float = 0.9,
  value_weight: float = 0.5,
) -> Callable:
  """One jitted `update(state, features, mask, actions, rewards) -> (state,
  metrics)`: a single optimiser step on this iteration's m rollouts.

  features (T, F) float32; mask (T,) bool or None (all steps count; shrink
  usually passes None); actions (m, T) int32; rewards (m,) float32. One
  compile per (T, m).

  'reinforce' (paper eq. 2): loss = -(1/m) sum_k (R_k - b) log P(a^k), with b
  the baseline from before this iteration's rewards; b then absorbs them.

  'actor_critic' (appendix 6): b is replaced by the critic's value. The reward
  is terminal and undiscounted, so each step's value V_{k,t} (read from the
  state before a_t is chosen) estimates R_k itself; we keep one value per step
  rather than collapsing them to one V_k: advantage_{k,t} = R_k - V_{k,t}
  (gradient stopped), policy loss -(1/m) sum_k sum_t adv_{k,t} log pi(a_t^k),
  plus value_weight * mean_{k,t} (R_k - V_{k,t})^2 over the decision steps.
  The moving baseline is still tracked for reports.

  If the loss or gradient is not finite (e.g. a NaN reward), the state comes
  back unchanged and metrics['finite'] is False, so the caller can stop with
  a clear message and still checkpoint the last good state.
  """
  if kind not in KINDS:
    raise ValueError(f'unknown policy kind {kind!r}; valid kinds: {", ".join(KINDS)}')
  if method not in METHODS:
    raise ValueError(f'unknown method {method!r}; valid methods: {", ".join(METHODS)}')
  baseline_fn = get_baseline(baseline)
  expected = policies.RemovalPolicy if kind == 'removal' else policies.ShrinkPolicy
  if not isinstance(policy, expected):
    raise ValueError(f'kind {kind!r} needs a {expected.__name__}, got {type(policy).__name__}')
  if method == 'actor_critic' and not policy.critic:
    raise ValueError("method 'actor_critic' needs a policy built with critic=True")

  def loss_fn(params, b, features, mask, actions, rewards):
    step_logp, entropy, values, weights = _step_terms(kind, policy, params, features, mask, actions)
    m = rewards.shape[0]
    decisions = jnp.maximum(weights.sum(), 1.0)  # 1 if no step is a decision
    policy_loss, value_loss, mean_advantage = _METHODS[method](
      rewards, b, values, step_logp, weights, m, decisions
    )
    loss = policy_loss + value_weight * value_loss
    aux = {
      'policy_loss': policy_loss,
      'value_loss': value_loss,
      'advantage': mean_advantage,
      'entropy': jnp.sum(weights * entropy) / (m * decisions),
    }
    return loss, aux

  @jax.jit
  def update(state: PolicyState, features, mask, actions, rewards):
    features = jnp.asarray(features, jnp.float32)
    actions = jnp.asarray(actions, jnp.int32)
    rewards = jnp.asarray(rewards, jnp.float32)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, state.baseline, features, mask, actions, rewards
    )
    changes, opt_state = optimizer.update(grads, state.opt_state, state.params)
    grad_norm = optax.tree.norm(grads)
    new = PolicyState(
      params=optax.apply_updates(state.params, changes),
      opt_state=opt_state,
      baseline=baseline_fn(
        state.baseline, state.num_updates, rewards, jnp.float32(baseline_decay)
      ).astype(jnp.float32),
      num_updates=state.num_updates + 1,
    )
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, state)
    metrics = dict(
      aux,
      loss=loss,
      grad_norm=grad_norm,
      baseline=state.baseline,
      reward=jnp.mean(rewards),
      finite=finite,
    )
    return new, metrics

  return update
