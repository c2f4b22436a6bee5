"""The one Flax module that turns any valid `NetSpec` into a network.

Parameter names follow the spec's layer paths ("3_Conv", "5_main_0_Conv",
"9_branches_1_0_Conv", from spec.scope_name), so a parameter tree can be read
against its spec and weights can be matched between a teacher and its students.
What each layer computes is its layer type's own (the `flax` method of its
class in spec.py); this module runs the sequence.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from n2n_jax import spec as S

BN_MOMENTUM, BN_EPSILON = S.BN_MOMENTUM, S.BN_EPSILON

# The batch_stats entry of a network with switched layers (NetSpec.switched).
SWITCHES = 'switches'


def _pass_through(x, shape):
  """A switched-off layer: its input, with zero channels appended up to the
  layer's output width."""
  extra = shape[-1] - x.shape[-1]
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)]) if extra else x


class SpecNet(nn.Module):
  """A network interpreting `spec`. Call with (images NHWC, train: bool);
  train=True needs mutable=['batch_stats'] and, with dropout, a 'dropout' rng."""

  spec: S.NetSpec
  # Names of layers ('3', '5_main_1') whose outputs z are multiplied by
  # (1 + g), with g read from the 'gates' collection, one value per example
  # and channel. Gates of zero change nothing; the loss's gradient with
  # respect to g is the sum over positions of dC/dz * z, the Taylor pruning
  # criterion (pruning.py). Empty by default: no gates, the plain network.
  gated: tuple = ()

  @nn.compact
  def __call__(self, x, train: bool = False):
    return self.sequence(self.spec.layers, x, train, ())

  def sequence(self, layers, x, train, prefix: tuple):
    """`layers` applied to x, the layers at spec paths prefix + (i,)."""
    switched = self.spec.switched if not prefix else ()
    if switched:
      # 1 runs the layer, 0 passes its input on (see padding.py); kept with the
      # batch-norm statistics, which training carries along unchanged.
      on = self.variable('batch_stats', SWITCHES, jnp.ones, (len(layers),), jnp.float32).value
    for i, layer in enumerate(layers):
      path = prefix + (i,)
      name = S.scope_name(path)
      if not isinstance(layer, S.LayerType):
        raise S.SpecError(f'{name}: cannot build layer {layer!r:.80}')
      y = layer.flax(self, x, train, path)
      x = jnp.where(on[i] > 0, y, _pass_through(x, y.shape)) if i in switched else y
      if name in self.gated:
        g = self.get_variable('gates', name)
        x = x * (1 + g.reshape(g.shape[:1] + (1,) * (x.ndim - 2) + g.shape[1:]))
    return x


def build(spec: S.NetSpec) -> SpecNet:
  """Validate `spec` (SpecError names the layer that cannot be built) and wrap it."""
  S.validate(spec)
  return SpecNet(spec)


def count_params(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))


def variable_shapes(model: SpecNet, input_shape) -> Any:
  """The variable tree as ShapeDtypeStructs, traced but never compiled: the
  tree init_variables gives, so it can be the target that restores one."""
  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
  shapes = dict(jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.key(0), x))
  # A net without BatchNorm has none; init_variables adds an empty one, and
  # orbax refuses to restore a saved tree into one that lacks it.
  shapes.setdefault('batch_stats', {})
  return shapes


def _host_init(path, leaf, seed: int) -> np.ndarray:
  """Flax's default initialisers, computed with numpy: lecun-normal (truncated
  at 2 sd, variance 1/fan_in) kernels, zero biases, unit BN scales, BN
  running statistics mean 0 / variance 1, and every switch on."""
  name = path[-1].key
  shape = leaf.shape
  if name == 'kernel':
    fan_in = math.prod(shape[:-1])
    # Standard deviation of a unit normal truncated to [-2, 2].
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    # One stream per variable, keyed by its name ("['params']['3_Conv']..."),
    # so its values depend on the seed and its own name only, not on how many
    # numbers other variables drew before it.
    rng = np.random.default_rng([seed, zlib.crc32(jax.tree_util.keystr(path).encode())])
    z = rng.standard_normal(shape, dtype=np.float32)
    bad = np.abs(z) > 2
    while bad.any():
      z[bad] = rng.standard_normal(int(bad.sum()), dtype=np.float32)
      bad = np.abs(z) > 2
    return z * np.float32(std)
  if name in ('scale', 'var', SWITCHES):
    return np.ones(shape, np.float32)
  if name in ('bias', 'mean'):
    return np.zeros(shape, np.float32)
  raise ValueError(f'no initialiser for variable {jax.tree_util.keystr(path)}')


def init_variables(model: SpecNet, seed: int, input_shape, shapes=None) -> dict:
  """Initial {'params', 'batch_stats'} for `model`, built on the host from
  `jax.eval_shape` shapes. Compiling `model.init` instead costs seconds per
  new architecture (the team's DESIGN.md; 2-11 s measured here), which a search that
  builds hundreds of students cannot afford. `shapes`: variable_shapes(model,
  input_shape) if the caller has them (tracing the model for them takes
  0.2-0.3 s for a VGG-13 student)."""
  shapes = shapes if shapes is not None else variable_shapes(model, input_shape)
  host = jax.tree_util.tree_map_with_path(lambda p, l: _host_init(p, l, seed), shapes)
  variables = jax.device_put(host)
  variables.setdefault('batch_stats', {})
  return dict(variables)


def _network_order(name: str) -> tuple:
  """Sort key putting variable names ('11_main_0_Conv') in network order."""
  path, kind = S.scope_parts(name)
  return tuple((0, p, '') if isinstance(p, int) else (1, 0, p) for p in path + (kind,) if p != '')


def inherit_variables(student: dict, teacher: dict) -> tuple:
  """The student's variables with every layer whose type and shapes match a
  teacher layer replaced by that layer's trained values; returns (variables,
  number of layers copied).

  Layers are matched in network order, each teacher layer at most once and
  never out of order, so after layer removal each kept layer finds the
  teacher layer it came from (or, where several in a row have the same
  shapes, one of them); shrunk layers keep their fresh values."""
  params, stats = dict(student['params']), dict(student.get('batch_stats', {}))
  t_params, t_stats = teacher['params'], teacher.get('batch_stats', {})
  teacher_names = sorted(t_params, key=_network_order)
  shapes = lambda tree: jax.tree_util.tree_map(np.shape, tree)
  next_teacher, copied = 0, 0
  for name in sorted(params, key=_network_order):
    kind = S.scope_parts(name)[1]
    for j in range(next_teacher, len(teacher_names)):
      t_name = teacher_names[j]
      if (
        S.scope_parts(t_name)[1] == kind
        and shapes(t_params[t_name]) == shapes(params[name])
        and shapes(t_stats.get(t_name)) == shapes(stats.get(name))
      ):
        params[name] = t_params[t_name]
        if name in stats:
          stats[name] = t_stats[t_name]
        next_teacher, copied = j + 1, copied + 1
        break
  return {'params': params, 'batch_stats': stats}, copied


def check_variables(spec: S.NetSpec, variables) -> dict:
  """`variables` as {'params', 'batch_stats'} if they fit `spec`'s network
  (same layer names and array shapes as init_variables gives), else
  ValueError naming the first that does not fit."""
  if not isinstance(variables, dict) or 'params' not in variables:
    raise ValueError(
      f"variables must be a dict with 'params' (and 'batch_stats' for batch "
      f'norms), got {type(variables).__name__}'
    )
  variables = dict(variables)
  variables.setdefault('batch_stats', {})
  expected = variable_shapes(build(spec), spec.input_shape)
  want = {
    jax.tree_util.keystr(p): l.shape for p, l in jax.tree_util.tree_leaves_with_path(expected)
  }
  have = {
    jax.tree_util.keystr(p): np.shape(l) for p, l in jax.tree_util.tree_leaves_with_path(variables)
  }
  for name in sorted(set(want) | set(have)):
    if want.get(name) != have.get(name):
      raise ValueError(
        f'variables do not fit {spec.name!r}: {name} is '
        f'{have.get(name, "missing")}, the spec needs '
        f'{want.get(name, "nothing there")} (layout: models.SpecNet; '
        "models.from_linen converts a Linen module's own)"
      )
  return variables


def from_linen(spec: S.NetSpec, variables) -> dict:
  """A Flax Linen module's variables in SpecNet's layout (names '3_Conv',
  '4_BatchNorm', ...), for a `spec` whose Conv, Dense and BatchNorm layers
  are the module's own in the order it calls them (top-level layers; a spec
  with Residual or Concat blocks needs its variables built by hand). The
  module's layers are found in its variable tree in creation order, by their
  contents: a 4-d 'kernel' is a Conv, a 2-d one a Dense, 'scale' or running
  statistics a BatchNorm. Raises ValueError when the two do not line up."""
  if any(l.channels == S.BLOCK for l in spec.layers):
    raise ValueError('from_linen handles specs without Residual or Concat blocks')
  params, stats = variables['params'], variables.get('batch_stats', {})

  def layers_of(tree, path=()):
    # Dicts keep insertion order: Flax adds modules in the order they are created.
    found = []
    for name, value in tree.items():
      if not isinstance(value, dict):
        continue
      if 'kernel' in value:
        found.append(('Conv' if np.ndim(value['kernel']) == 4 else 'Dense', path + (name,)))
      elif 'scale' in value or 'bias' in value:
        found.append(('BatchNorm', path + (name,)))
      else:
        found += layers_of(value, path + (name,))
    return found

  def get(tree, path):
    for name in path:
      tree = tree[name]
    return tree

  theirs = layers_of(params)
  ours = [
    (S.scope_name((i,), l), type(l).__name__)
    for i, l in enumerate(spec.layers)
    if l.width_field is not None or l.per_channel_variables
  ]
  kinds = lambda pairs: [k for k, _ in pairs]
  if [k for _, k in ours] != kinds(theirs):
    raise ValueError(
      f"the module's layers {kinds(theirs)} are not the spec's {[k for _, k in ours]} (in order)"
    )
  out = {'params': {}, 'batch_stats': {}}
  for (name, kind), (_, path) in zip(ours, theirs):
    out['params'][name] = dict(get(params, path))
    if kind == 'BatchNorm':
      out['batch_stats'][name] = dict(get(stats, path))
  return check_variables(spec, out)
