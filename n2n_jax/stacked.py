"""Several students trained in one compiled call.

Students that run inside one wide network (padding.py: stage 2's shrinks
inside their source, stage 1's removals inside the teacher with layers
switched off) differ only in their variables: the zeros of the channels they
lack, the switches of the layers they removed. K of them can then be stacked
on a leading axis, each with its own parameters, optimiser state, switches and
data order, and trained by one program: one dispatch per step (or per epoch)
for all K, and on an accelerator K students' arithmetic in flight at once
instead of one small network leaving most of the chip idle.

Two lowerings of "K students in one program":

* 'vmap': the step vectorised over the students. XLA turns the K
  convolutions into one grouped convolution (batched matmuls for dense
  layers): the most parallel work per kernel, but the backward pass of grouped
  convolutions is reported slow on CUDA (jax-ml/jax#13800).
* 'map': a loop over the students inside the program (lax.map): plain
  convolutions, one student after another, still one dispatch for all.

Either way each student's numbers are its own: nothing is reduced across
the stacked axis, so a student whose loss turns non-finite spoils only its
own lane. K is fixed per search (the caller pads a short group with inert
copies whose results it drops), so a changing number of students never
compiles a new program.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from n2n_jax import train as train_lib

LOWERINGS = ('vmap', 'map')


def stack(trees) -> object:
  """One tree of arrays with a leading axis, from a list of like trees."""
  return jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def over_students(fn: Callable, lowering: str, shared: tuple = ()) -> Callable:
  """`fn(*per_student, *shared_args)` run for K students at once: the
  arguments before the last len(shared) carry a leading student axis, the
  last ones (e.g. the training data) are shared; outputs gain the axis."""
  if lowering not in LOWERINGS:
    raise ValueError(f'unknown lowering {lowering!r}; valid: {", ".join(LOWERINGS)}')
  n_shared = len(shared)

  def batched(*args):
    mine, common = args[: len(args) - n_shared], args[len(args) - n_shared :]
    if lowering == 'vmap':
      axes = (0,) * len(mine) + (None,) * n_shared
      return jax.vmap(fn, in_axes=axes)(*args)
    return jax.lax.map(lambda xs: fn(*xs, *common), tuple(mine))

  return batched


def epoch_plan(key, num_examples: int, batch_size: int) -> tuple:
  """(batch indices (steps, batch), step keys (steps,)) of one student's
  epoch with `key`: exactly what train.EpochRunner.run draws for it, so a
  student sees the same batches and dropout keys stacked as alone."""
  perm_key, step_key = jax.random.split(key)
  indices = train_lib.epoch_indices(perm_key, num_examples, batch_size)
  return indices, jax.random.split(step_key, indices.shape[0])


class StackedRunner:
  """train.EpochRunner for K stacked students: `step` is one student's
  train step (train.make_step); epochs run in `mode` ('loop' or 'scan',
  train.resolve_epoch_mode) with the students `lowering`-ed."""

  def __init__(self, step: Callable, mode: str, lowering: str, students: int):
    self.mode = train_lib.resolve_epoch_mode(mode)
    self.students = students
    # (states, indices, keys, data): per-student state, batch and key.
    self._one = over_students(lambda s, i, k, d: step(s, d, i, k), lowering, shared=(None,))
    self._jit_step = jax.jit(self._step, donate_argnums=0)
    self._jit_scan = jax.jit(self._scan_epoch, donate_argnums=0)
    self._plan = jax.jit(jax.vmap(epoch_plan, in_axes=(0, None, None)), static_argnums=(1, 2))

  def _step(self, states, data, indices, keys):
    return self._one(states, indices, keys, data)

  def _scan_epoch(self, states, data, indices, keys):
    # indices (steps, K, batch), keys (steps, K)
    def body(states, xs):
      return self._step(states, data, *xs)

    states, metrics = jax.lax.scan(body, states, (indices, keys))
    return states, jax.tree_util.tree_map(lambda m: jnp.sum(m, axis=0), metrics)

  def lower(self, states, data: train_lib.Data, batch_size: int):
    """The epoch program for stacked states and data shaped like these
    (arrays or ShapeDtypeStructs), lowered (see train.EpochRunner.lower)."""
    keys = jax.random.split(jax.random.key(0), self.students)
    indices, step_keys = self._plan(keys, data.images.shape[0], batch_size)
    if self.mode == 'scan':
      return self._jit_scan.lower(
        states, data, jnp.swapaxes(indices, 0, 1), jnp.swapaxes(step_keys, 0, 1)
      )
    return self._jit_step.lower(states, data, indices[:, 0], step_keys[:, 0])

  def install(self, compiled) -> None:
    if self.mode == 'scan':
      self._jit_scan = compiled
    else:
      self._jit_step = compiled

  def run(self, states, data: train_lib.Data, keys, batch_size: int) -> tuple:
    """One epoch of every student, student i drawing its batches and dropout
    from keys[i] as EpochRunner.run does; returns (states, {'loss': (K,)
    mean losses, 'accuracy': (K,) train accuracies}) as host arrays."""
    indices, step_keys = self._plan(keys, data.images.shape[0], batch_size)
    steps, size = indices.shape[1:]
    if self.mode == 'scan':
      states, sums = self._jit_scan(
        states, data, jnp.swapaxes(indices, 0, 1), jnp.swapaxes(step_keys, 0, 1)
      )
    else:
      sums = None
      for i in range(steps):
        states, m = self._jit_step(states, data, indices[:, i], step_keys[:, i])
        sums = m if sums is None else jax.tree_util.tree_map(jnp.add, sums, m)
    sums = jax.device_get(sums)
    return states, {
      'loss': np.asarray(sums['loss'], np.float64) / steps,
      'accuracy': np.asarray(sums['correct'], np.float64) / (steps * size),
    }


def lower_predict(model, lowering: str, stacked_variables, images, batch_size: int = 1000):
  """The per-chunk validation program of K stacked students (variables with
  a leading student axis, one chunk of images shared), lowered: what
  train.predict's `compiled` takes; its logits carry the student axis."""
  chunk = jax.ShapeDtypeStruct((min(batch_size, images.shape[0]),) + images.shape[1:], images.dtype)
  apply = over_students(lambda v, x: model.apply(v, x, train=False), lowering, shared=(None,))
  return jax.jit(apply).lower(stacked_variables, chunk)


def accuracies(logits, labels) -> np.ndarray:
  """Per-student accuracy from stacked logits (K, n, classes)."""
  return np.asarray(jnp.mean(jnp.argmax(logits, -1) == labels, axis=-1), np.float64)


def finite(logits) -> np.ndarray:
  """Per student: whether all its stacked logits are finite."""
  return np.asarray(jnp.all(jnp.isfinite(logits.reshape(logits.shape[0], -1)), axis=-1))
