"""Pure training and evaluation steps, shared by teachers, students and final
training.

A step is `step(state, data, indices, key) -> (state, metrics)`: it gathers its
batch from arrays already on the device, so an epoch needs no host transfers.
An epoch runs either as one compiled `lax.scan` over its steps ('scan') or as
a Python loop over a jitted step ('loop'). On the CPU, XLA lowers the
backward convolutions inside a scanned body to slow naive loops (the team's DESIGN.md:
~25x slower), so 'auto' takes 'loop' there and 'scan' on GPUs/TPUs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

EPOCH_MODES = ('auto', 'scan', 'loop')


# ---- losses: (logits, labels, teacher_logits) -> scalar


def cross_entropy(logits, labels, teacher_logits=None):
  del teacher_logits
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def l2_logits(logits, labels, teacher_logits):
  """Ba & Caruana's logit matching (paper section 3.5): squared L2 distance to
  the teacher's logits, summed over classes, averaged over the batch."""
  del labels
  return jnp.sum(jnp.square(logits - teacher_logits), axis=-1).mean()


# Each loss by name, built from the weight of the soft (L2) term.
_LOSSES = {
  'ce': lambda soft_weight: cross_entropy,  # hard labels
  'l2': lambda soft_weight: l2_logits,  # distillation
  'hard_soft': lambda soft_weight: (
    lambda z, y, t: cross_entropy(z, y) + soft_weight * l2_logits(z, y, t)
  ),
}
LOSSES = tuple(_LOSSES)


def make_loss(kind: str, soft_weight: float = 1.0) -> Callable:
  """'ce' (hard labels), 'l2' (distillation), or 'hard_soft': ce + soft_weight * l2."""
  if kind not in _LOSSES:
    raise ValueError(f'unknown loss {kind!r}; valid losses: {", ".join(LOSSES)}')
  return _LOSSES[kind](soft_weight)


# ---- optimiser


# Each optimiser by name, from its schedule, momentum and weight decay. 'sgd'
# and 'adam' add weight decay to the gradient (PyTorch's coupled L2); 'adamw'
# decouples it.
def _coupled(opt, weight_decay):
  return optax.chain(optax.add_decayed_weights(weight_decay), opt) if weight_decay else opt


_OPTIMIZERS = {
  'sgd': lambda schedule, momentum, weight_decay: _coupled(
    optax.sgd(schedule, momentum=momentum or None), weight_decay
  ),
  'adam': lambda schedule, momentum, weight_decay: _coupled(optax.adam(schedule), weight_decay),
  'adamw': lambda schedule, momentum, weight_decay: optax.adamw(
    schedule, weight_decay=weight_decay
  ),
}
OPTIMIZERS = tuple(_OPTIMIZERS)


def make_optimizer(
  name: str,
  learning_rate: float,
  *,
  steps_per_epoch: int,
  decay_epochs=(),
  decay_factor: float = 0.1,
  momentum: float = 0.9,
  weight_decay: float = 0.0,
) -> optax.GradientTransformation:
  """An optimiser of OPTIMIZERS with a step schedule: the rate is multiplied by
  decay_factor at each epoch in decay_epochs (the paper's teacher schedules)."""
  if name not in _OPTIMIZERS:
    raise ValueError(f'unknown optimizer {name!r}; valid optimizers: {", ".join(OPTIMIZERS)}')
  schedule = optax.piecewise_constant_schedule(
    learning_rate, {int(e) * steps_per_epoch: decay_factor for e in decay_epochs}
  )
  return _OPTIMIZERS[name](schedule, momentum, weight_decay)


# ---- state


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  @classmethod
  def create(cls, variables: dict, tx: optax.GradientTransformation) -> TrainState:
    params = variables['params']
    return cls(jnp.zeros((), jnp.int32), params, variables.get('batch_stats', {}), tx.init(params))

  @property
  def variables(self) -> dict:
    return {'params': self.params, 'batch_stats': self.batch_stats}


class Data(NamedTuple):
  """Arrays a step gathers its batches from; teacher_logits may be None."""

  images: jax.Array
  labels: jax.Array
  teacher_logits: Any = None


def _batch(data: Data, idx):
  t = None if data.teacher_logits is None else data.teacher_logits[idx]
  return data.images[idx], data.labels[idx], t


def make_step(
  model,
  tx: optax.GradientTransformation,
  loss_fn: Callable,
  augment: Callable | None = None,
  mesh=None,
) -> Callable:
  """The un-jitted train step (state, data, idx, key) -> (state, metrics).
  With `mesh` (see data_parallel_mesh) the batch is split over its devices
  and XLA sums the gradients across them: state and data are replicated."""

  def step(state: TrainState, data: Data, idx, key):
    images, labels, teacher = _batch(data, idx)
    if mesh is not None:
      images = jax.lax.with_sharding_constraint(images, batch_sharding(mesh, images.ndim))
    aug_key, dropout_key = jax.random.split(key)
    if augment is not None:
      images = augment(aug_key, images)

    def loss_of(params):
      logits, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats},
        images,
        train=True,
        mutable=['batch_stats'],
        rngs={'dropout': dropout_key},
      )
      return loss_fn(logits, labels, teacher), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    changes, opt_state = tx.update(grads, state.opt_state, state.params)
    state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, changes),
      batch_stats=updates.get('batch_stats', state.batch_stats),
      opt_state=opt_state,
    )
    correct = jnp.sum(jnp.argmax(logits, -1) == labels)
    return state, {'loss': loss, 'correct': correct}

  return step


def resolve_epoch_mode(mode: str) -> str:
  if mode not in EPOCH_MODES:
    raise ValueError(f'unknown epoch mode {mode!r}; valid modes: {", ".join(EPOCH_MODES)}')
  if mode == 'auto':
    return 'loop' if jax.default_backend() == 'cpu' else 'scan'
  return mode


def epoch_indices(key, num_examples: int, batch_size: int) -> jax.Array:
  """A fresh permutation cut into full batches, shape (steps, batch). A set
  smaller than one batch gives one batch of all of it."""
  batch_size = min(batch_size, num_examples)
  steps = num_examples // batch_size
  perm = jax.random.permutation(key, num_examples)
  return perm[: steps * batch_size].reshape(steps, batch_size)


# ---- data parallelism: one model, its batch split over several devices


def data_parallel_mesh(devices, batch_size: int):
  """A 1-D mesh named 'batch' over as many of `devices` as divide
  `batch_size` evenly; None when that is only one."""
  count = max(n for n in range(1, len(devices) + 1) if batch_size % n == 0)
  if count == 1:
    return None
  return jax.sharding.Mesh(np.asarray(devices[:count]), ('batch',))


def batch_sharding(mesh, ndim: int):
  """Leading axis split over the mesh, the rest whole."""
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('batch', *[None] * (ndim - 1)))


def replicate(tree, mesh):
  """Every array of `tree` whole on every device of `mesh` (no-op without one)."""
  if mesh is None:
    return tree
  return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


@dataclasses.dataclass
class EpochRunner:
  """Runs whole epochs of `step` in the chosen mode; compiled once per
  (model, shapes) and reused for every epoch."""

  step: Callable
  mode: str = 'auto'
  mesh: Any = None  # the step's data-parallel mesh: batch indices are split over it

  def __post_init__(self):
    self.mode = resolve_epoch_mode(self.mode)
    self._jit_step = jax.jit(self.step, donate_argnums=0)
    self._jit_scan = jax.jit(self._scan_epoch, donate_argnums=0)

  def lower(self, state: TrainState, data: Data, batch_size: int):
    """The epoch program (a step, or a scanned epoch, as `mode` runs it) for
    arrays shaped like these (or ShapeDtypeStructs), lowered: its `compile()`
    gives what `install` takes. Compiling ahead lets callers tell compile time
    from training time."""
    n = data.images.shape[0]
    steps, size = epoch_indices(jax.random.key(0), n, batch_size).shape
    key = jax.random.key(0)
    if self.mode == 'scan':
      return self._jit_scan.lower(state, data, jnp.zeros((steps, size), jnp.int32), key)
    return self._jit_step.lower(state, data, jnp.zeros((size,), jnp.int32), key)

  def install(self, compiled) -> None:
    """Run epochs with `compiled`, the compiled `lower` program (possibly
    from another process, via serialization) of this runner's step and mode."""
    if self.mode == 'scan':
      self._jit_scan = compiled
    else:
      self._jit_step = compiled

  def _scan_epoch(self, state, data, indices, key):
    keys = jax.random.split(key, indices.shape[0])

    def body(state, xs):
      idx, k = xs
      return self.step(state, data, idx, k)

    state, metrics = jax.lax.scan(body, state, (indices, keys))
    return state, jax.tree_util.tree_map(jnp.sum, metrics)

  def run(self, state: TrainState, data: Data, key, batch_size: int):
    """One epoch; returns (state, {'loss': mean loss, 'accuracy': train accuracy})."""
    perm_key, step_key = jax.random.split(key)
    indices = epoch_indices(perm_key, data.images.shape[0], batch_size)
    if self.mesh is not None:
      indices = jax.device_put(
        indices, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(None, 'batch'))
      )
    if self.mode == 'scan':
      state, sums = self._jit_scan(state, data, indices, step_key)
    else:
      keys = jax.random.split(step_key, indices.shape[0])
      sums = {'loss': 0.0, 'correct': 0}
      for i in range(indices.shape[0]):
        state, m = self._jit_step(state, data, indices[i], keys[i])
        sums = jax.tree_util.tree_map(jnp.add, sums, m)
    steps, seen = indices.shape[0], indices.size
    return state, {'loss': float(sums['loss']) / steps, 'accuracy': float(sums['correct']) / seen}


# ---- evaluation


@functools.partial(jax.jit, static_argnums=0)
def _predict_chunk(model, variables, images):
  return model.apply(variables, images, train=False)


def _chunk_size(images, batch_size: int) -> int:
  return min(batch_size, images.shape[0])


def lower_predict(model, variables, images, batch_size: int = 1000):
  """`predict`'s per-chunk program for `model` and arrays shaped like
  `variables` and `images` (arrays or ShapeDtypeStructs), lowered."""
  chunk = jax.ShapeDtypeStruct((_chunk_size(images, batch_size),) + images.shape[1:], images.dtype)
  return _predict_chunk.lower(model, variables, chunk)


def predict(
  model, variables: dict, images: jax.Array, batch_size: int = 1000, compiled=None
) -> jax.Array:
  """Logits for all images, in fixed-size chunks (the last one padded) so one
  compiled program serves any dataset size; `compiled` is that program from
  lower_predict, compiled (else it is compiled on first use)."""
  n = images.shape[0]
  size = _chunk_size(images, batch_size)
  apply = compiled or functools.partial(_predict_chunk, model)
  out = []
  for start in range(0, n, size):
    chunk = images[start : start + size]
    short = size - chunk.shape[0]
    if short:
      chunk = jnp.concatenate([chunk, jnp.zeros((short,) + chunk.shape[1:], chunk.dtype)])
    # Logits are (..., examples, classes): stacked students (stacked.py) lead.
    out.append(apply(variables, chunk)[..., : size - short, :])
  return jnp.concatenate(out, axis=-2)


def accuracy(model, variables: dict, images, labels, batch_size: int = 1000) -> float:
  return accuracy_of(predict(model, variables, images, batch_size), labels)


def accuracy_of(logits: jax.Array, labels: jax.Array) -> float:
  return float(jnp.mean(jnp.argmax(logits, -1) == labels))


def is_finite(tree) -> bool:
  return all(bool(np.isfinite(np.asarray(x)).all()) for x in jax.tree_util.tree_leaves(tree))
