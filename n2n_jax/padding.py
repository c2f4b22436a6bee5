"""Training a student inside a wider network's program.

Stage 2 samples students that differ from their source (the best stage-1
student) only in layer widths, and each new set of widths is a new program to
compile: seconds per student, which on a GPU is most of a search
(docs/performance.md). A student can instead run as its source's
architecture with the channels it lacks held at zero: every weight that reads
from or writes to a missing channel starts at zero, so those channels carry
zeros forward, receive zero gradients, and stay zero under Adam and weight
decay (batch norm maps an all-zero channel to its bias, which is zero and gets
no gradient either). The wide network then computes the student's function,
up to floating-point rounding, and all of stage 2 shares one program.

Stage 1's students are the teacher with layers removed. Each can run as the
teacher with those layers switched off at run time (`with_switches`): a
switched-off conv, batch norm, ReLU or dropout layer (the kinds stage 1
removes; dense layers too, where they do not narrow) passes its input on,
zero-padded to the layer's width. A removed pool changes every later
shape, so it is left out of the wide network instead, and students that keep
the same pools share one program.

`embedding` says where each of the student's variables sits inside the wide
network's; `pad` and `unpad` move variables between the two.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from n2n_jax import models
from n2n_jax import spec as S


class NotEmbeddable(ValueError):
  """The student cannot run inside the wide network (different layers, or
  channels that would not line up)."""


def widen(student: S.NetSpec, source: S.NetSpec) -> S.NetSpec:
  """`student` with every conv and dense layer as wide as the layer at the same
  place in `source` (or its own width, if wider); kernels, strides and all
  other layers stay the student's. Raises NotEmbeddable unless the two have
  the same layers in the same places."""

  def walk(mine, theirs, where):
    if len(mine) != len(theirs):
      raise NotEmbeddable(f'{where}: {len(mine)} layers against {len(theirs)}')
    out = []
    for i, (a, b) in enumerate(zip(mine, theirs)):
      here = f'{where}[{i}]'
      if type(a) is not type(b):
        raise NotEmbeddable(f'{here}: {type(a).__name__} against {type(b).__name__}')
      if a.width_field is not None:
        width = a.width_field
        a = dataclasses.replace(a, **{width: max(getattr(a, width), getattr(b, width))})
      elif a.channels == S.BLOCK:
        mine, theirs = a.children(), b.children()
        if len(mine) != len(theirs):
          raise NotEmbeddable(f'{here}: {len(mine)} branches against {len(theirs)}')
        a = a.with_children(
          [
            walk(x, y, here + ''.join(_where(k) for k in key))
            for (key, x), (_, y) in zip(mine, theirs)
          ]
        )
      elif a != b:
        raise NotEmbeddable(f'{here}: {a} against {b}')
      out.append(a)
    return tuple(out)

  return S.NetSpec(student.name, student.input_shape, walk(student.layers, source.layers, 'layers'))


def _where(key) -> str:
  """A path-suffix element as layer messages write it: '.main', '[1]'."""
  return f'[{key}]' if isinstance(key, int) else f'.{key}'


def with_switches(student: S.NetSpec, source: S.NetSpec) -> tuple:
  """(wide, on) for a stage-1 student (`source` with layers removed): `wide`
  is `source` without the pooling layers the student lacks (a removed pool
  changes every later shape), with each layer that can be switched off (its
  type's `switchable`, spec.py) in wide.switched; `on` (1 or 0 per wide
  layer) switches it to the student's function. Every student with the same pools shares `wide`,
  so one program serves them all. The student's layers are matched to the
  source's in order, earliest first. Raises NotEmbeddable for a student that
  is not `source` with layers removed, or that removed a layer that cannot be
  switched off."""
  mine, layers, on, matched = student.layers, [], [], 0
  for layer in source.layers:
    running = matched < len(mine) and mine[matched] == layer
    if running or not layer.omit_when_removed:
      layers.append(layer)
      on.append(float(running))
      matched += running
  if matched < len(mine):
    raise NotEmbeddable(
      f'layers[{matched}] ({type(mine[matched]).__name__}) is not the '
      "source's next layer: the student is not the source with layers removed"
    )
  switched, shape = [], tuple(student.input_shape)
  for j, layer in enumerate(layers):
    if layer.switchable(shape):
      switched.append(j)
    elif not on[j]:
      raise NotEmbeddable(
        f'removed layer {type(layer).__name__} cannot be switched off on inputs of shape {shape}'
      )
    shape = S.sequence_output_shape((layer,), shape)
  wide = S.NetSpec(source.name, source.input_shape, tuple(layers), tuple(switched))
  return wide, np.asarray(on, np.float32)


def embedding(student: S.NetSpec, wide: S.NetSpec, on=None) -> dict:
  """{student variable path: (wide variable path, one index array per
  axis)}: where each of `student`'s variables sits in `wide`'s. Paths are key
  tuples such as ('params', '3_Conv', 'kernel'), as models.SpecNet names its
  variables. `wide` comes from `widen` (the same layers, wider), or from
  `with_switches` with its `on`: the student's layers are then the wide
  layers switched on, in order, and a switched-off layer passes its input's
  channels on where they were.

  A layer's input channels follow the activation it reads: the first
  channels of each conv or dense output, wherever a Concat or Flatten has put
  them. Raises NotEmbeddable where a Residual would add channels that do not
  line up."""
  out = {}

  def pairs(mine, theirs, prefix, wide_prefix):
    return [(a, b, prefix + (i,), wide_prefix + (i,)) for i, (a, b) in enumerate(zip(mine, theirs))]

  def put(collection, scope, wide_scope, name, index):
    out[(collection, scope, name)] = ((collection, wide_scope, name), index)

  def walk(layers, shape, wide_shape, channels):
    for a, b, here, there in layers:
      if a is None:  # switched off
        wide_shape = S.sequence_output_shape((b,), wide_shape)
        continue
      scope, wide_scope = S.scope_name(here, a), S.scope_name(there, b)
      if a.channels == S.BLOCK:
        parts = [
          (walk(pairs(x, y, here + key, there + key), shape, wide_shape, channels), y)
          for (key, x), (_, y) in zip(a.children(), b.children())
        ]
        if a.combine == 'add':
          if not all(np.array_equal(parts[0][0], part) for part, _ in parts[1:]):
            raise NotEmbeddable(f'{scope}: main path and shortcut channels do not line up')
          channels = parts[0][0]
        else:
          offsets = np.cumsum(
            [0] + [S.sequence_output_shape(y, wide_shape)[-1] for _, y in parts[:-1]]
          )
          channels = np.concatenate([part + int(o) for (part, _), o in zip(parts, offsets)])
      else:
        outputs = a.output_channels(channels, shape, wide_shape)
        for (collection, name), index in a.variable_channels(channels, outputs).items():
          put(collection, scope, wide_scope, name, index)
        channels = outputs
      shape = S.sequence_output_shape((a,), shape)
      wide_shape = S.sequence_output_shape((b,), wide_shape)
    return channels

  if on is None:
    top = pairs(student.layers, wide.layers, (), ())
  else:
    mine, top = iter(enumerate(student.layers)), []
    for j, (b, running) in enumerate(zip(wide.layers, on)):
      i, a = next(mine) if running else (None, None)
      top.append((a, b, (i,), (j,)))
  walk(top, student.input_shape, wide.input_shape, np.arange(student.input_shape[-1]))
  return out


def _get(tree: dict, path: tuple):
  for key in path:
    tree = tree[key]
  return tree


def student_shapes(places: dict) -> dict:
  """The student's variable tree as ShapeDtypeStructs, from its embedding
  (models.variable_shapes without tracing the student)."""
  tree = {'params': {}, 'batch_stats': {}}
  for (collection, scope, name), (_, index) in places.items():
    shape = tuple(len(i) for i in index)
    tree[collection].setdefault(scope, {})[name] = jax.ShapeDtypeStruct(shape, np.float32)
  return tree


def pad(variables: dict, places: dict, wide_shapes: dict, on=None) -> dict:
  """The student's `variables` placed in zero arrays of `wide_shapes` (host
  arrays), with the switches `on` (from with_switches) where wide has them."""
  where = {wide_path: (path, index) for path, (wide_path, index) in places.items()}

  def place(key_path, leaf):
    wide = np.zeros(leaf.shape, leaf.dtype)
    wide_path = tuple(k.key for k in key_path)
    if wide_path == ('batch_stats', models.SWITCHES) and on is not None:
      return np.asarray(on, leaf.dtype)
    if wide_path not in where:
      if on is not None and not on[S.scope_parts(wide_path[1])[0][0]]:
        return wide  # a switched-off layer's: its output is discarded
      raise NotEmbeddable(f'no student variable for {"/".join(wide_path)}')
    path, index = where[wide_path]
    wide[np.ix_(*index)] = np.asarray(_get(variables, path))
    return wide

  return jax.tree_util.tree_map_with_path(place, dict(wide_shapes))


def unpad(wide_variables: dict, places: dict) -> dict:
  """The student's variables cut out of the wide network's (host arrays)."""
  tree = {'params': {}, 'batch_stats': {}}
  for (collection, scope, name), (wide_path, index) in places.items():
    tree[collection].setdefault(scope, {})[name] = np.asarray(_get(wide_variables, wide_path))[
      np.ix_(*index)
    ]
  return tree
