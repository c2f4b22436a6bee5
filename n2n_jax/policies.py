"""The two LSTM policies of the search (paper section 3.2, appendix 10.1).

Both read one feature row per step (`spec.layer_features`, or the rows of the
sites `spec.shrink_vars` names) and work for any sequence length, so a policy
trained on one teacher can start the search on another (paper section 4.6).

- `RemovalPolicy`: a bidirectional LSTM over the layers, one keep/remove
  decision per layer. Its actions do not feed back into it, so all rollouts of
  an iteration share one forward pass.
- `ShrinkPolicy`: an autoregressive LSTM that sees the previous action with
  each step's features; it samples step by step (`sample`) and scores given
  actions by teacher forcing (`score`).

With `critic=True` each also has a Dense(1) value head on the LSTM state
(appendix 6). Parameters are ordinary Linen variables: `init_policy` makes
them and `policy.apply(params, ...)` uses them.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

REMOVE, KEEP = 0, 1
# Paper section 3.2.2's action set: the factor each configurable variable is
# scaled by. A policy with num_actions=len(f) can use any other set f.
SHRINK_ACTIONS = tuple(round(0.1 * i, 1) for i in range(1, 11))


class RemovalPolicy(nn.Module):
  """pi_remove(a_t | h_{t-1}, h_{t+1}, x_t): a stacked bidirectional LSTM and
  a Dense(2) per step. Action KEEP (1) keeps the layer, REMOVE (0) drops it.

  __call__(features (T, F)) -> (logits (T, 2), values (T,) or None).
  """

  hidden: int = 30
  num_layers: int = 2
  critic: bool = False

  @nn.compact
  def __call__(self, features):
    x = jnp.asarray(features, jnp.float32)
    for i in range(self.num_layers):
      # The second layer reads both directions of the first, as a PyTorch
      # nn.LSTM(bidirectional=True, num_layers=2) does.
      # parent=None hands the RNNs and cells to the Bidirectional, so the
      # parameters read bilstm_i/forward_rnn/cell rather than being named by
      # creation order at this module's top level.
      rnns = [nn.RNN(nn.OptimizedLSTMCell(self.hidden, parent=None), parent=None) for _ in range(2)]
      x = nn.Bidirectional(*rnns, name=f'bilstm_{i}')(x)
    logits = nn.Dense(2, name='logits')(x)
    values = nn.Dense(1, name='value')(x)[:, 0] if self.critic else None
    return logits, values


class ShrinkPolicy(nn.Module):
  """pi_shrink(a_t | a_{t-1}, h_{t-1}, x_t): stacked LSTM cells whose input at
  step t is x_t joined with a one-hot of a_{t-1} (zeros at t = 0), then a
  Dense(num_actions). Actions are indices into the caller's factor tuple
  (SHRINK_ACTIONS by default).

  sample(features, key, temperature) -> (actions (T,), logp (T,), values)
  score(features, actions) -> (logits (T, A), values); also __call__.
  values is (T,) with critic=True, else None. The value at step t is read from
  the state before a_t is drawn, so it is a valid baseline for a_t.
  """

  num_actions: int = 10
  hidden: int = 50
  num_layers: int = 2
  critic: bool = False

  def setup(self):
    self.cells = [nn.OptimizedLSTMCell(self.hidden) for _ in range(self.num_layers)]
    self.head = nn.Dense(self.num_actions)
    if self.critic:
      self.value_head = nn.Dense(1)

  def step(self, carry, x):
    """One step: (carry, input row) -> (carry, logits (A,), value or None)."""
    new_carry = []
    h = x
    for cell, c in zip(self.cells, carry):
      c, h = cell(c, h)
      new_carry.append(c)
    value = self.value_head(h)[0] if self.critic else None
    return tuple(new_carry), self.head(h), value

  def _initial_carry(self):
    zeros = jnp.zeros((self.hidden,), jnp.float32)
    return tuple((zeros, zeros) for _ in range(self.num_layers))

  def _scan(self, body):
    # Parameters are shared by every step, not stacked per step.
    return nn.scan(body, variable_broadcast='params', split_rngs={'params': False})

  def score(self, features, actions):
    features = jnp.asarray(features, jnp.float32)
    actions = jnp.asarray(actions, jnp.int32)
    # Teacher forcing: the previous actions are known, so the inputs are too.
    prev = jax.nn.one_hot(actions[:-1], self.num_actions, dtype=jnp.float32)
    prev = jnp.concatenate([jnp.zeros((1, self.num_actions), jnp.float32), prev], 0)
    xs = jnp.concatenate([features, prev], -1)

    def body(module, carry, x):
      carry, logits, value = module.step(carry, x)
      return carry, (logits, value)

    _, (logits, values) = self._scan(body)(self, self._initial_carry(), xs)
    return logits, values

  def __call__(self, features, actions):
    return self.score(features, actions)

  def sample(self, features, key, temperature=1.0):
    """Draws a_t from softmax(logits / temperature) and feeds it back. logp is
    under that (tempered) distribution."""
    features = jnp.asarray(features, jnp.float32)
    keys = jax.random.split(key, features.shape[0])

    def body(module, carry, xs):
      lstm, prev = carry
      x, k = xs
      lstm, logits, value = module.step(lstm, jnp.concatenate([x, prev]))
      logp_all = jax.nn.log_softmax(logits / temperature)
      action = jax.random.categorical(k, logp_all)
      prev = jax.nn.one_hot(action, self.num_actions, dtype=jnp.float32)
      return (lstm, prev), (action.astype(jnp.int32), logp_all[action], value)

    carry = (self._initial_carry(), jnp.zeros((self.num_actions,), jnp.float32))
    _, (actions, logp, values) = self._scan(body)(self, carry, (features, keys))
    return actions, logp, values


# The gate names of Flax's LSTM cells whose kernels act on the hidden state.
_RECURRENT_GATES = frozenset({'hi', 'hf', 'hg', 'ho'})


def init_policy(policy: nn.Module, key, num_features: int) -> dict:
  """The policy's variables ({'params': ...}), deterministic in `key`.

  Shapes come from `jax.eval_shape(policy.init, ...)` (traced, never
  compiled) and values are drawn on the host from Flax's default
  distributions for these layers: lecun-normal input and Dense kernels,
  orthogonal recurrent kernels, zero biases. Compiling `policy.init` instead
  compiles one truncated-normal or QR program per leaf, seconds on a CPU;
  this takes milliseconds. Nothing depends on the sequence length.
  """
  features = jnp.zeros((1, num_features), jnp.float32)
  if isinstance(policy, ShrinkPolicy):
    args = (features, jnp.zeros((1,), jnp.int32))
  elif isinstance(policy, RemovalPolicy):
    args = (features,)
  else:
    raise TypeError(
      f'not a policy: {type(policy).__name__}; expected RemovalPolicy or ShrinkPolicy'
    )
  shapes = jax.eval_shape(policy.init, key, *args)
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  rng = np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())

  def draw(path, leaf):
    names = [getattr(p, 'key', None) for p in path]
    if names[-1] == 'bias':
      value = np.zeros(leaf.shape)
    elif names[-1] == 'kernel' and names[-2] in _RECURRENT_GATES:
      value = _orthogonal(rng, leaf.shape)
    elif names[-1] == 'kernel':
      value = _lecun_normal(rng, leaf.shape)
    else:
      raise ValueError(f'init_policy has no initialiser for {"/".join(map(str, names))}')
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _lecun_normal(rng, shape):
  # Flax's lecun_normal: a normal truncated at two standard deviations, scaled
  # so the variance is 1 / fan_in (0.8796... is the truncated unit normal's std).
  std = np.sqrt(1.0 / shape[0]) / 0.87962566103423978
  x = rng.standard_normal(shape)
  while (bad := np.abs(x) > 2.0).any():
    x[bad] = rng.standard_normal(bad.sum())
  return x * std


def _orthogonal(rng, shape):
  rows, cols = shape
  a = rng.standard_normal((max(rows, cols), min(rows, cols)))
  q, r = np.linalg.qr(a)
  q = q * np.sign(np.diag(r))  # makes the draw uniform over orthogonal matrices
  return q if rows >= cols else q.T


def action_factors(actions, factors: Sequence[float] = SHRINK_ACTIONS) -> np.ndarray:
  """Shrink action indices (any shape) -> their factors, as a host array."""
  return np.asarray(factors, np.float64)[np.asarray(actions)]
