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

`embedding` says where each of the student's variables sits inside the wide
network's; `pad` and `unpad` move variables between the two.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

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
      if isinstance(a, S.Conv):
        a = dataclasses.replace(a, filters=max(a.filters, b.filters))
      elif isinstance(a, S.Dense):
        a = dataclasses.replace(a, features=max(a.features, b.features))
      elif isinstance(a, S.Residual):
        a = S.Residual(walk(a.main, b.main, f'{here}.main'),
                       walk(a.shortcut, b.shortcut, f'{here}.shortcut'))
      elif isinstance(a, S.Concat):
        if len(a.branches) != len(b.branches):
          raise NotEmbeddable(f'{here}: {len(a.branches)} branches against {len(b.branches)}')
        a = S.Concat(tuple(walk(x, y, f'{here}.branches[{j}]')
                           for j, (x, y) in enumerate(zip(a.branches, b.branches))))
      elif a != b:
        raise NotEmbeddable(f'{here}: {a} against {b}')
      out.append(a)
    return tuple(out)

  return S.NetSpec(student.name, student.input_shape, walk(student.layers, source.layers, 'layers'))


def embedding(student: S.NetSpec, wide: S.NetSpec) -> dict:
  """{variable path: one index array per axis}: where each of `student`'s
  variables sits in `wide`'s (as from `widen`). Paths are key tuples such as
  ('params', '3_Conv', 'kernel'), as models.SpecNet names its variables.

  A layer's input channels follow the activation it reads: the first
  channels of each conv or dense output, wherever a Concat or Flatten has put
  them. Raises NotEmbeddable where a Residual would add channels that do not
  line up."""
  out = {}

  def walk(mine, theirs, shape, wide_shape, channels, prefix):
    for i, (a, b) in enumerate(zip(mine, theirs)):
      scope = f'{prefix}{i}_{type(a).__name__}'
      if isinstance(a, S.Conv):
        k = np.arange(a.kernel)
        out[('params', scope, 'kernel')] = (k, k, channels, np.arange(a.filters))
        channels = np.arange(a.filters)
      elif isinstance(a, S.Dense):
        out[('params', scope, 'kernel')] = (channels, np.arange(a.features))
        channels = np.arange(a.features)
      elif isinstance(a, S.BatchNorm):
        for collection, names in (('params', ('scale', 'bias')), ('batch_stats', ('mean', 'var'))):
          for name in names:
            out[(collection, scope, name)] = (channels,)
      elif isinstance(a, S.Flatten) and len(shape) == 3:
        h, w, _ = shape
        channels = np.add.outer(np.arange(h * w) * wide_shape[-1], channels).ravel()
      elif isinstance(a, S.Residual):
        main = walk(a.main, b.main, shape, wide_shape, channels, f'{prefix}{i}_main_')
        short = walk(a.shortcut, b.shortcut, shape, wide_shape, channels,
                     f'{prefix}{i}_shortcut_')
        if not np.array_equal(main, short):
          raise NotEmbeddable(f'{scope}: main path and shortcut channels do not line up')
        channels = main
      elif isinstance(a, S.Concat):
        parts, offset = [], 0
        for j, (x, y) in enumerate(zip(a.branches, b.branches)):
          part = walk(x, y, shape, wide_shape, channels, f'{prefix}{i}_branches_{j}_')
          parts.append(part + offset)
          offset += S.sequence_output_shape(y, wide_shape)[-1]
        channels = np.concatenate(parts)
      if isinstance(a, (S.Conv, S.Dense)) and a.use_bias:
        out[('params', scope, 'bias')] = (channels,)
      shape = S.sequence_output_shape((a,), shape)
      wide_shape = S.sequence_output_shape((b,), wide_shape)
    return channels

  walk(student.layers, wide.layers, student.input_shape, wide.input_shape,
       np.arange(student.input_shape[-1]), '')
  return out


def _get(tree: dict, path: tuple):
  for key in path:
    tree = tree[key]
  return tree


def student_shapes(places: dict) -> dict:
  """The student's variable tree as ShapeDtypeStructs, from its embedding
  (models.variable_shapes without tracing the student)."""
  tree = {'params': {}, 'batch_stats': {}}
  for (collection, scope, name), index in places.items():
    shape = tuple(len(i) for i in index)
    tree[collection].setdefault(scope, {})[name] = jax.ShapeDtypeStruct(shape, np.float32)
  return tree


def pad(variables: dict, places: dict, wide_shapes: dict) -> dict:
  """The student's `variables` placed in zero arrays of `wide_shapes` (host arrays)."""
  def place(key_path, leaf):
    wide = np.zeros(leaf.shape, leaf.dtype)
    path = tuple(k.key for k in key_path)
    index = places.get(path)
    if index is None:
      raise NotEmbeddable(f'no student variable for {"/".join(path)}')
    wide[np.ix_(*index)] = np.asarray(_get(variables, path))
    return wide
  return jax.tree_util.tree_map_with_path(place, dict(wide_shapes))


def unpad(wide_variables: dict, places: dict) -> dict:
  """The student's variables cut out of the wide network's (host arrays)."""
  tree = {'params': {}, 'batch_stats': {}}
  for path, index in places.items():
    collection, scope, name = path
    tree[collection].setdefault(scope, {})[name] = np.asarray(_get(wide_variables, path))[
        np.ix_(*index)]
  return tree
