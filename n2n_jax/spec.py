"""Architecture specs: the single, pure-Python description of a network.

A `NetSpec` is a frozen, hashable tuple of layers. Models, parameter and FLOP
counts, the policies' layer features and the two N2N transforms (`remove`,
`shrink`) all derive from it. Nothing here touches JAX, so specs are cheap to
create, compare, hash (as cache keys) and serialise.

Channel counts are never stored as inputs: every layer infers its input width
from whatever precedes it, exactly as a Flax module does. That is what makes
layer removal a plain deletion: "the next kept conv takes the previous channel
count as its input width" falls out for free.

Each layer type is one class in the 'Layers' section, which holds everything
the rest of the code knows about it: shapes, parameters and FLOPs, its Flax
computation, removability, policy features and channel behaviour. Adding a
layer type is adding one such class.

Branching is expressed by two container layers:
  * `Residual(main, shortcut)`: out = main(x) + shortcut(x); an empty shortcut
    is the identity. A ResNet BasicBlock is a Residual followed by a top-level
    ReLU (see `zoo.basic_block`).
  * `Concat(branches)`: channel-wise concatenation of parallel branches
    (SqueezeNet's Fire module).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import reprlib
import sys
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any
from typing import Union

# --------------------------------------------------------------------------
# Layers: one entry per layer type
#
# Each layer type is one dataclass below, registered with `register`: the
# class holds all that the rest of the code knows about the type, so a new
# type is one class here plus its tests. Its fields are its spec (and JSON)
# form; its methods and class attributes say
#   * stats(shape, where): output shape, parameters and FLOPs (SpecError if it
#     cannot take `shape`);
#   * flax(net, x, train, path): its Flax computation inside models.SpecNet,
#     with its variables under scope_name(path, self); it imports JAX and Flax
#     itself, so that this module stays free of them;
#   * removable(): whether stage 1 may remove it;
#   * feature_slot and policy_features(): what the policies read of it (site_features);
#   * short(): its token in short_text;
#   * its channel behaviour (padding.py and pruning.py): `channels` (one of
#     the roles below), `width_field` (the field that sets its output width),
#     `per_channel_variables`, variable_channels(), output_channels(),
#     switchable() and `omit_when_removed`;
#   * for the blocks (Residual, Concat): children(), with_children(),
#     site_children(), `combine`, and their JSON form (to_dict, from_fields).
# Class attributes are left unannotated, so they never become dataclass
# fields: fields alone make the JSON form, equality and hash.

# Channel roles, as padding.py and pruning.py see a layer's channels:
SETS = 'sets'  # its output channels are its own (width_field); it reads its input's
TRANSFORMS = 'transforms'  # maps each channel on its own, in place (batch norm, ReLU)
KEEPS = 'keeps'  # passes channels on unchanged in number and order; zero stays zero
FLATTENS = 'flattens'  # lays an (H, W, C) map out position by position
BLOCK = 'block'  # a Residual or Concat block: its children's channels, combined
CHANNEL_ROLES = (SETS, TRANSFORMS, KEEPS, FLATTENS, BLOCK)


class LayerType:
  """The base of every layer type (see the section comment above)."""

  feature_slot = None  # its column in the policies' type one-hot (LAYER_TYPES), or None
  channels = None  # one of CHANNEL_ROLES; no default, as a wrong one would go unnoticed
  width_field = None  # 'filters', 'features': the field setting its output width
  per_channel_variables = {}  # {collection: variable names}, one value per channel
  omit_when_removed = False  # see padding.with_switches
  combine = None  # for blocks: 'add' or 'concat'

  def stats(self, shape: tuple, where: str) -> LayerStats:
    raise NotImplementedError

  def flax(self, net, x, train: bool, path: tuple):
    raise NotImplementedError

  def removable(self) -> bool:
    """Whether stage 1 may remove it. The original code's rule: convs of
    stride 1, batch norms, ReLUs, max pools and dropout; never dense layers,
    average pools or flatten. `sites` also keeps the first, last and class layer."""
    return False

  def policy_features(self) -> tuple:
    """(kernel, stride, padding) as the policies read them; zeros if it has none."""
    return (0, 0, 0)

  def short(self) -> str:
    raise NotImplementedError

  def switchable(self, shape: tuple) -> bool:
    """Whether, on inputs of `shape`, it can be switched off (padding.py):
    replaced by its input with zero channels appended up to its output width."""
    return False

  def output_channels(self, channels, shape: tuple, wide_shape: tuple):
    """Where its output channels sit in a wider network's activation
    (padding.embedding), given where its input's (`channels`, an index array)."""
    if self.width_field is None:
      return channels
    import numpy as np  # pylint: disable=import-outside-toplevel

    return np.arange(getattr(self, self.width_field))

  def variable_channels(self, inputs, outputs) -> dict:
    """{(collection, variable name): one index array per axis}: the part of
    each of its variables that reads input channels `inputs` and writes
    output channels `outputs` (padding.embedding)."""
    return {
      (collection, name): (outputs,)
      for collection, names in self.per_channel_variables.items()
      for name in names
    }

  def children(self) -> tuple:
    """For a block: ((path suffix, layers), ...), e.g. (('main',), main)."""
    return ()

  def site_children(self) -> tuple:
    """The children whose layers are policy sites (`sites`)."""
    return self.children()

  def to_dict(self) -> dict:
    return {'type': type(self).__name__, **dataclasses.asdict(self)}


# Every layer type by its JSON "type" name.
REGISTRY = {}


def register(cls):
  """Class decorator entering a layer type into REGISTRY, after checking that
  it says what every layer type must."""
  name = cls.__name__
  if name in REGISTRY:
    raise ValueError(f'layer type {name} is registered twice')
  if not (
    isinstance(cls, type)
    and issubclass(cls, LayerType)
    and dataclasses.is_dataclass(cls)
    and cls.__dataclass_params__.frozen
  ):
    raise TypeError(f'layer type {name} must be a frozen dataclass deriving from LayerType')
  if cls.channels not in CHANNEL_ROLES:
    raise TypeError(
      f'layer type {name}: channels must be one of {CHANNEL_ROLES}, got {cls.channels!r}'
    )
  if (cls.channels == SETS) != (cls.width_field is not None):
    raise TypeError(f'layer type {name}: a width_field goes with channels = SETS, and only it')
  if (cls.channels == BLOCK) != (cls.combine in ('add', 'concat')):
    raise TypeError(
      f"layer type {name}: a block combines its children by 'add' or "
      "'concat', and only a block does"
    )
  missing = [m for m in ('stats', 'flax', 'short') if getattr(cls, m) is getattr(LayerType, m)]
  if missing:
    raise TypeError(f'layer type {name} does not define {", ".join(missing)}')
  REGISTRY[name] = cls
  return cls


def scope_name(path: tuple, layer=None) -> str:
  """The name models.SpecNet gives the layer at spec path `path` ((3,),
  (5, 'main', 1), (9, 'branches', 1, 0)): '3', '5_main_1', '9_branches_1_0'
  (its `gated` names); with `layer`, the layer's Flax variable scope:
  '3_Conv', '5_main_1_BatchNorm'. Saved teachers, students, checkpoints and
  exports hold variables under these names, so they must never change."""
  name = '_'.join(str(p) for p in path)
  return name if layer is None else f'{name}_{type(layer).__name__}'


def scope_parts(name: str) -> tuple:
  """scope_name's inverse: '5_main_1_BatchNorm' -> ((5, 'main', 1), 'BatchNorm');
  a name without a layer type ('5_main_1') gives ((5, 'main', 1), '')."""
  parts = name.split('_')
  kind = parts.pop() if len(parts) > 1 and parts[-1] in REGISTRY else ''
  return tuple(int(p) if p.isdigit() else p for p in parts), kind


def _needs_map(layer, shape, where):
  if len(shape) != 3:
    raise SpecError(
      f'{where} ({type(layer).__name__}): needs an (H, W, C) input, got flat shape {shape}'
    )


def _window_out(layer, shape, where, window, stride, pad, ceil=False) -> tuple:
  h, w, _ = shape
  ho, wo = _out_size(h, window, stride, pad, ceil), _out_size(w, window, stride, pad, ceil)
  if ho < 1 or wo < 1:
    raise SpecError(
      f'{where} ({type(layer).__name__}): spatial size collapsed: '
      f'{h}x{w} input with window {window}, stride {stride}, padding {pad} '
      f'gives {ho}x{wo}'
    )
  return ho, wo


def _pool_by_reshape(x, window: int, reduce):
  """Non-overlapping pooling as reshape + reduce. On the CPU this is markedly
  faster than reduce_window (the team's DESIGN.md); rows/columns that do not fill a
  window are dropped, as floor-mode pooling does."""
  n, h, w, c = x.shape
  ho, wo = h // window, w // window
  x = x[:, : ho * window, : wo * window, :]
  return reduce(x.reshape(n, ho, window, wo, window, c), axis=(2, 4))


# PyTorch's batch-norm defaults, which the paper's teachers were trained with.
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5


@register
@dataclasses.dataclass(frozen=True)
class Conv(LayerType):
  filters: int
  kernel: int = 3
  stride: int = 1
  padding: int = 0
  use_bias: bool = True

  feature_slot = 0
  channels = SETS
  width_field = 'filters'

  def stats(self, shape, where):
    _needs_map(self, shape, where)
    _check_positive(self, where, 'filters', 'kernel', 'stride')
    if self.padding < 0:
      raise SpecError(f'{where} (Conv): padding must be >= 0, got {self.padding}')
    ho, wo = _window_out(self, shape, where, self.kernel, self.stride, self.padding)
    k2, c = self.kernel * self.kernel, shape[-1]
    params = k2 * c * self.filters + (self.filters if self.use_bias else 0)
    return LayerStats(shape, (ho, wo, self.filters), params, 2 * k2 * c * self.filters * ho * wo)

  def flax(self, net, x, train, path):
    import flax.linen as nn  # pylint: disable=import-outside-toplevel

    p = self.padding
    return nn.Conv(
      self.filters,
      (self.kernel, self.kernel),
      (self.stride, self.stride),
      padding=((p, p), (p, p)),
      use_bias=self.use_bias,
      name=scope_name(path, self),
    )(x)

  def removable(self):
    return self.stride == 1

  def policy_features(self):
    return (self.kernel, self.stride, self.padding)

  def short(self):
    return (
      f'C{self.filters}'
      + (f'k{self.kernel}' if self.kernel != 3 else '')
      + (f'/{self.stride}' if self.stride != 1 else '')
    )

  def switchable(self, shape):
    return (
      len(shape) == 3
      and self.stride == 1
      and 2 * self.padding == self.kernel - 1
      and shape[-1] <= self.filters
    )

  def variable_channels(self, inputs, outputs):
    import numpy as np  # pylint: disable=import-outside-toplevel

    k = np.arange(self.kernel)
    out = {('params', 'kernel'): (k, k, inputs, outputs)}
    if self.use_bias:
      out['params', 'bias'] = (outputs,)
    return out


@register
@dataclasses.dataclass(frozen=True)
class BatchNorm(LayerType):
  feature_slot = 1
  channels = TRANSFORMS
  per_channel_variables = {'params': ('scale', 'bias'), 'batch_stats': ('mean', 'var')}

  def stats(self, shape, where):
    _needs_map(self, shape, where)
    h, w, c = shape
    return LayerStats(shape, shape, 2 * c, 2 * h * w * c)

  def flax(self, net, x, train, path):
    import flax.linen as nn  # pylint: disable=import-outside-toplevel

    return nn.BatchNorm(
      use_running_average=not train,
      momentum=BN_MOMENTUM,
      epsilon=BN_EPSILON,
      name=scope_name(path, self),
    )(x)

  def removable(self):
    return True

  def short(self):
    return 'B'

  def switchable(self, shape):
    return True


@register
@dataclasses.dataclass(frozen=True)
class ReLU(LayerType):
  feature_slot = 2
  channels = TRANSFORMS

  def stats(self, shape, where):
    return LayerStats(shape, shape, 0, math.prod(shape))

  def flax(self, net, x, train, path):
    import flax.linen as nn  # pylint: disable=import-outside-toplevel

    return nn.relu(x)

  def removable(self):
    return True

  def short(self):
    return 'R'

  def switchable(self, shape):
    return True


@register
@dataclasses.dataclass(frozen=True)
class MaxPool(LayerType):
  window: int = 2
  stride: int = 2
  padding: int = 0
  # Round the output size up, as PyTorch's ceil_mode (torchvision's
  # SqueezeNet): a last, partial window at the bottom/right edge is kept.
  ceil: bool = False

  feature_slot = 3
  channels = KEEPS
  omit_when_removed = True

  def stats(self, shape, where):
    _needs_map(self, shape, where)
    _check_positive(self, where, 'window', 'stride')
    if not 0 <= self.padding < self.window:
      raise SpecError(f'{where} (MaxPool): padding must be in [0, window), got {self.padding}')
    ho, wo = _window_out(self, shape, where, self.window, self.stride, self.padding, self.ceil)
    return LayerStats(shape, (ho, wo, shape[-1]), 0, self.window**2 * ho * wo * shape[-1])

  def flax(self, net, x, train, path):
    import flax.linen as nn  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    if self.window == self.stride and self.padding == 0 and not self.ceil:
      return _pool_by_reshape(x, self.window, jnp.max)
    p = self.padding
    extra = [pool_extra_padding(n, self) for n in x.shape[1:3]]
    return nn.max_pool(
      x, (self.window,) * 2, (self.stride,) * 2, ((p, p + extra[0]), (p, p + extra[1]))
    )

  def removable(self):
    return True

  def policy_features(self):
    return (self.window, self.stride, self.padding)

  def short(self):
    return 'M'

  def to_dict(self):
    d = super().to_dict()
    if not self.ceil:
      # Specs written before ceil mode existed keep their exact JSON (and
      # with it their students' init seeds and architecture keys).
      del d['ceil']
    return d


@register
@dataclasses.dataclass(frozen=True)
class AvgPool(LayerType):
  window: int = 2
  stride: int = 2

  feature_slot = 4
  channels = KEEPS
  omit_when_removed = True

  def stats(self, shape, where):
    _needs_map(self, shape, where)
    _check_positive(self, where, 'window', 'stride')
    ho, wo = _window_out(self, shape, where, self.window, self.stride, 0)
    return LayerStats(shape, (ho, wo, shape[-1]), 0, self.window**2 * ho * wo * shape[-1])

  def flax(self, net, x, train, path):
    import flax.linen as nn  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    if self.window == self.stride:
      return _pool_by_reshape(x, self.window, jnp.mean)
    return nn.avg_pool(x, (self.window,) * 2, (self.stride,) * 2)

  def policy_features(self):
    return (self.window, self.stride, 0)

  def short(self):
    return 'A'


@register
@dataclasses.dataclass(frozen=True)
class GlobalAvgPool(LayerType):
  feature_slot = 5
  channels = KEEPS

  def stats(self, shape, where):
    _needs_map(self, shape, where)
    h, w, c = shape
    return LayerStats(shape, (1, 1, c), 0, h * w * c)

  def flax(self, net, x, train, path):
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    return jnp.mean(x, axis=(1, 2), keepdims=True)

  def short(self):
    return 'G'


@register
@dataclasses.dataclass(frozen=True)
class Dropout(LayerType):
  rate: float = 0.5

  feature_slot = 6
  channels = KEEPS

  def stats(self, shape, where):
    if not 0.0 <= self.rate < 1.0:
      raise SpecError(f'{where} (Dropout): rate must be in [0, 1), got {self.rate}')
    return LayerStats(shape, shape, 0, 0)

  def flax(self, net, x, train, path):
    import flax.linen as nn  # pylint: disable=import-outside-toplevel

    # Unnamed: Flax numbers it (Dropout_0, ...), and its random stream follows that name.
    return nn.Dropout(self.rate, deterministic=not train)(x) if self.rate > 0 else x

  def removable(self):
    return True

  def short(self):
    return 'D'

  def switchable(self, shape):
    return True


@register
@dataclasses.dataclass(frozen=True)
class Flatten(LayerType):
  feature_slot = 7
  channels = FLATTENS

  def stats(self, shape, where):
    return LayerStats(shape, (math.prod(shape),), 0, 0)

  def flax(self, net, x, train, path):
    return x.reshape(x.shape[0], -1)

  def short(self):
    return 'F'

  def output_channels(self, channels, shape, wide_shape):
    if len(shape) != 3:
      return channels
    import numpy as np  # pylint: disable=import-outside-toplevel

    h, w, _ = shape
    return np.add.outer(np.arange(h * w) * wide_shape[-1], channels).ravel()


@register
@dataclasses.dataclass(frozen=True)
class Dense(LayerType):
  features: int
  use_bias: bool = True

  feature_slot = 8
  channels = SETS
  width_field = 'features'

  def stats(self, shape, where):
    _check_positive(self, where, 'features')
    if len(shape) != 1:
      raise SpecError(
        f'{where} (Dense): needs a flat input, got shape {shape}; '
        'put Flatten or GlobalAvgPool + Flatten before it'
      )
    n_in = shape[0]
    params = n_in * self.features + (self.features if self.use_bias else 0)
    return LayerStats(shape, (self.features,), params, 2 * n_in * self.features)

  def flax(self, net, x, train, path):
    import flax.linen as nn  # pylint: disable=import-outside-toplevel

    return nn.Dense(self.features, use_bias=self.use_bias, name=scope_name(path, self))(x)

  def short(self):
    return f'L{self.features}'

  def switchable(self, shape):
    return len(shape) == 1 and shape[0] <= self.features

  def variable_channels(self, inputs, outputs):
    out = {('params', 'kernel'): (inputs, outputs)}
    if self.use_bias:
      out['params', 'bias'] = (outputs,)
    return out


@register
@dataclasses.dataclass(frozen=True)
class Residual(LayerType):
  """out = main(x) + shortcut(x); an empty shortcut is the identity."""

  main: tuple  # tuple of layers
  shortcut: tuple = ()  # () is the identity

  channels = BLOCK
  combine = 'add'

  def stats(self, shape, where):
    main = _sequence_stats(self.main, shape, f'{where}.main')
    short = _sequence_stats(self.shortcut, shape, f'{where}.shortcut')
    m_out = main[-1].out_shape if main else shape
    s_out = short[-1].out_shape if short else shape
    if m_out != s_out:
      raise SpecError(
        f'{where} (Residual): main path gives {m_out} but shortcut '
        f'gives {s_out}; they must match to be added'
      )
    params = sum(s.params for s in main + short)
    flops = sum(s.flops for s in main + short) + math.prod(m_out)
    return LayerStats(shape, m_out, params, flops)

  def flax(self, net, x, train, path):
    main = net.sequence(self.main, x, train, path + ('main',))
    short = net.sequence(self.shortcut, x, train, path + ('shortcut',))
    return main + short

  def short(self):
    return f'Res[{short_text(self.main)}|{short_text(self.shortcut)}]'

  def children(self):
    return ((('main',), self.main), (('shortcut',), self.shortcut))

  def site_children(self):
    # Shortcut layers are not sites: their widths follow their group.
    return self.children()[:1]

  def with_children(self, layers):
    return Residual(*layers)

  def to_dict(self):
    return {
      'type': 'Residual',
      'main': [layer_to_dict(l) for l in self.main],
      'shortcut': [layer_to_dict(l) for l in self.shortcut],
    }

  @classmethod
  def from_fields(cls, fields, where, parse):
    return Residual(
      *(
        tuple(
          parse(l, f'{where}.{part}[{i}]')
          for i, l in enumerate(_json_list(fields.get(part, []), f'{where}: Residual.{part}'))
        )
        for part in ('main', 'shortcut')
      )
    )


@register
@dataclasses.dataclass(frozen=True)
class Concat(LayerType):
  """Channel-wise concatenation of parallel branches."""

  branches: tuple  # tuple of tuples of layers

  channels = BLOCK
  combine = 'concat'

  def stats(self, shape, where):
    if not self.branches:
      raise SpecError(f'{where} (Concat): needs at least one branch')
    outs, params, flops = [], 0, 0
    for b, branch in enumerate(self.branches):
      stats = _sequence_stats(branch, shape, f'{where}.branches[{b}]')
      outs.append(stats[-1].out_shape if stats else shape)
      params += sum(s.params for s in stats)
      flops += sum(s.flops for s in stats)
    if len({o[:-1] for o in outs}) != 1 or any(len(o) != 3 for o in outs):
      raise SpecError(f'{where} (Concat): branch outputs {outs} differ in spatial size')
    return LayerStats(shape, outs[0][:-1] + (sum(o[-1] for o in outs),), params, flops)

  def flax(self, net, x, train, path):
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    return jnp.concatenate(
      [net.sequence(b, x, train, path + ('branches', j)) for j, b in enumerate(self.branches)],
      axis=-1,
    )

  def short(self):
    return 'Cat[' + '|'.join(short_text(b) for b in self.branches) + ']'

  def children(self):
    return tuple((('branches', j), b) for j, b in enumerate(self.branches))

  def with_children(self, layers):
    return Concat(tuple(layers))

  def to_dict(self):
    return {'type': 'Concat', 'branches': [[layer_to_dict(l) for l in b] for b in self.branches]}

  @classmethod
  def from_fields(cls, fields, where, parse):
    branches = _json_list(fields.get('branches', []), f'{where}: Concat.branches')
    if not all(isinstance(b, list) for b in branches):
      raise SpecError(
        f'{where}: Concat.branches must be a list of lists of layers, got {_short(branches)}'
      )
    return Concat(
      tuple(
        tuple(parse(l, f'{where}.branches[{b}][{i}]') for i, l in enumerate(branch))
        for b, branch in enumerate(branches)
      )
    )


Layer = Union[tuple(REGISTRY.values())]  # noqa: UP007 (a union built from the registry)

# The policies' layer-type one-hot, one column per type with a feature_slot,
# in slot order. Trained policies read exactly these columns, so slots are
# never renumbered; a new type normally takes no slot (its one-hot is all
# zeros), as a new slot adds a policy input that trained policies lack.
LAYER_TYPES = tuple(
  sorted((c for c in REGISTRY.values() if c.feature_slot is not None), key=lambda c: c.feature_slot)
)
assert [c.feature_slot for c in LAYER_TYPES] == list(range(len(LAYER_TYPES)))


@dataclasses.dataclass(frozen=True)
class NetSpec:
  """A whole network: layers applied in order to an (H, W, C) image.

  `switched`: indices of top-level layers that a run-time switch can turn
  into an identity (a network that runs many stage-1 students in one
  program, see padding.py); () for a plain network, which is all that users
  write and JSON holds."""

  name: str
  input_shape: tuple  # (H, W, C)
  layers: tuple
  switched: tuple = ()

  def __post_init__(self):
    # Accept lists from users and JSON; store tuples so the spec stays hashable.
    object.__setattr__(self, 'input_shape', tuple(int(d) for d in self.input_shape))
    object.__setattr__(self, 'layers', _freeze(self.layers))
    object.__setattr__(self, 'switched', tuple(sorted({int(i) for i in self.switched})))


def _freeze(layers) -> tuple:
  out = []
  for layer in layers:
    if isinstance(layer, LayerType) and layer.children():
      layer = layer.with_children([_freeze(seq) for _, seq in layer.children()])
    out.append(layer)
  return tuple(out)


class SpecError(ValueError):
  """A spec that cannot be built; the message names the layer and the reason."""


# --------------------------------------------------------------------------
# JSON


def layer_to_dict(layer) -> dict:
  return layer.to_dict()


# Limits on what a spec may declare. They are far beyond any real network, and
# they keep a hostile or mistyped spec from reaching code that cannot cope:
# XLA indexes array dimensions with int32 (and the policies turn sizes into
# floats), a JSON text nested thousands deep would exhaust Python's stack, and a
# Python dict reused at every level of a nest would expand exponentially.
MAX_SIZE = 2**31 - 1  # any width, kernel, stride, padding or input dimension
MAX_DEPTH = 32  # Residual/Concat blocks nested in one another
MAX_LAYERS = 100_000  # layers in the whole spec, container contents included


# Error messages quote user values through this, so a huge or deeply nested value
# gives a short message instead of a megabyte of text (or a RecursionError).
class _ShortRepr(reprlib.Repr):
  def repr_int(self, x, level):
    # repr() itself refuses integers over 4,300 digits (ValueError).
    if x.bit_length() > 128:
      return f'<an integer of {int(x.bit_length() * math.log10(2)) + 1:,} digits>'
    return super().repr_int(x, level)


_SHORT = _ShortRepr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 60, 60
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 6


def _short(value) -> str:
  return _SHORT.repr(value)


class _Budget:
  """Counts the layers `from_dict` builds, against MAX_LAYERS."""

  def __init__(self):
    self.layers = 0

  def take(self, where):
    self.layers += 1
    if self.layers > MAX_LAYERS:
      raise SpecError(
        f'{where}: the spec has more than {MAX_LAYERS:,} layers; that is no real network'
      )


def layer_from_dict(d: dict, where: str = 'layer', *, _depth: int = 0, _budget=None):
  budget = _Budget() if _budget is None else _budget
  budget.take(where)
  if not isinstance(d, dict) or 'type' not in d:
    raise SpecError(f'{where}: expected an object with a "type" field, got {_short(d)}')
  kind = d['type']
  if not isinstance(kind, str) or kind not in REGISTRY:
    raise SpecError(
      f'{where}: unknown layer type {_short(kind)}; valid types: {", ".join(sorted(REGISTRY))}'
    )
  cls = REGISTRY[kind]
  fields = {k: v for k, v in d.items() if k != 'type'}
  known = {f.name: f for f in dataclasses.fields(cls)}
  unknown = set(fields) - set(known)
  if unknown:
    # key=repr: keys of a Python dict need not be strings, nor comparable.
    names = ', '.join(_short(k) for k in sorted(unknown, key=repr)[:10])
    raise SpecError(f'{where}: {kind} has no field(s) [{names}]; valid fields: {sorted(known)}')
  if cls.channels == BLOCK:
    if _depth >= MAX_DEPTH:
      raise SpecError(f'{where}: {kind} blocks are nested more than {MAX_DEPTH} deep')
    return cls.from_fields(
      fields, where, lambda l, here: layer_from_dict(l, here, _depth=_depth + 1, _budget=budget)
    )
  try:
    layer = cls(**fields)
  except TypeError as e:
    raise SpecError(f'{where}: {e}') from None
  _check_field_types(layer, where)
  return layer


def _json_list(value, what):
  if not isinstance(value, list):
    raise SpecError(f'{what} must be a list of layers, got {_short(value)}')
  return value


def _check_field_types(layer, where):
  for f in dataclasses.fields(layer):
    value = getattr(layer, f.name)
    if f.type in ('int', int):
      ok = isinstance(value, int) and not isinstance(value, bool)
      if ok and abs(value) > MAX_SIZE:
        raise SpecError(
          f'{where}: {type(layer).__name__}.{f.name} is {_short(value)}, '
          f'beyond the limit of {MAX_SIZE:,}'
        )
    elif f.type in ('bool', bool):
      ok = isinstance(value, bool)
    elif f.type in ('float', float):
      ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
      ok = True
    if not ok:
      raise SpecError(
        f'{where}: {type(layer).__name__}.{f.name} must be {f.type}, got {_short(value)}'
      )


def _check_input_shape(shape, what):
  if (
    not isinstance(shape, (list, tuple))
    or len(shape) != 3
    or not all(
      isinstance(s, numbers.Integral) and not isinstance(s, bool) and 0 < s <= MAX_SIZE
      for s in shape
    )
  ):
    raise SpecError(
      f'{what} must be three positive integers (H, W, C) of at most '
      f'{MAX_SIZE:,}, got {_short(shape)}'
    )


def to_dict(spec: NetSpec) -> dict:
  return {
    'name': spec.name,
    'input_shape': list(spec.input_shape),
    'layers': [layer_to_dict(l) for l in spec.layers],
  }


def from_dict(d: dict) -> NetSpec:
  if not isinstance(d, dict):
    raise SpecError(f'a spec must be a JSON object, got {type(d).__name__}')
  missing = {'input_shape', 'layers'} - set(d)
  if missing:
    raise SpecError(f'spec is missing field(s) {sorted(missing)}')
  unknown = set(d) - {'name', 'input_shape', 'layers'}
  if unknown:
    # A misspelt "layers" or "name" would otherwise be dropped without a word.
    names = ', '.join(_short(k) for k in sorted(unknown, key=repr)[:10])
    raise SpecError(
      f"spec has unknown field(s) [{names}]; valid fields: ['input_shape', 'layers', 'name']"
    )
  name = d.get('name', 'custom')
  if not isinstance(name, str):
    raise SpecError(f'name must be a string, got {type(name).__name__}')
  _check_input_shape(d['input_shape'], 'input_shape')
  if not isinstance(d['layers'], list):
    raise SpecError(f'layers must be a list, got {type(d["layers"]).__name__}')
  budget = _Budget()
  layers = tuple(
    layer_from_dict(l, f'layers[{i}]', _budget=budget) for i, l in enumerate(d['layers'])
  )
  return NetSpec(name, tuple(d['input_shape']), layers)


def to_json(spec: NetSpec, **kwargs) -> str:
  return json.dumps(to_dict(spec), **kwargs)


def from_json(text: str) -> NetSpec:
  if not isinstance(text, (str, bytes, bytearray)):
    raise SpecError(f'a spec must be JSON text, got {type(text).__name__}')
  try:
    d = json.loads(text)
  except json.JSONDecodeError as e:
    raise SpecError(f'spec is not valid JSON: {_short_text(e)}') from None
  except UnicodeDecodeError as e:
    raise SpecError(f'spec is not UTF-8 text: {_short_text(e)}') from None
  except ValueError:
    # The one other ValueError json.loads raises: an integer too long to convert.
    raise SpecError(
      'spec is not usable JSON: it holds an integer of more than '
      f'{sys.get_int_max_str_digits():,} digits'
    ) from None
  except RecursionError:
    raise SpecError(
      'spec is not usable JSON: its arrays and objects are nested too deeply '
      f'to parse (a spec nests at most {MAX_DEPTH} blocks)'
    ) from None
  return from_dict(d)


def _short_text(error) -> str:
  text = str(error)
  return text if len(text) <= 200 else text[:200] + '...'


# --------------------------------------------------------------------------
# Shapes, parameters, FLOPs


def _out_size(size: int, window: int, stride: int, padding: int, ceil: bool = False) -> int:
  if not ceil:
    return (size + 2 * padding - window) // stride + 1
  out = -(-(size + 2 * padding - window) // stride) + 1
  # PyTorch's rule: the last window must start inside the input or the left
  # padding, never wholly in the right padding.
  return out - 1 if (out - 1) * stride >= size + padding else out


def pool_extra_padding(size: int, layer: MaxPool) -> int:
  """Padding a ceil-mode MaxPool adds at the bottom/right of a `size` input,
  beyond layer.padding, so that a floor-mode window covers its output."""
  out = _out_size(size, layer.window, layer.stride, layer.padding, layer.ceil)
  return max(0, (out - 1) * layer.stride + layer.window - size - 2 * layer.padding)


@dataclasses.dataclass(frozen=True)
class LayerStats:
  in_shape: tuple
  out_shape: tuple
  params: int
  flops: int


def _check_positive(layer, where, *names):
  for n in names:
    v = getattr(layer, n)
    if v < 1:
      raise SpecError(f'{where} ({type(layer).__name__}): {n} must be >= 1, got {_short(v)}')
    if v > MAX_SIZE:  # specs built in Python skip from_dict's check
      raise SpecError(
        f'{where} ({type(layer).__name__}): {n} is {_short(v)}, beyond the limit of {MAX_SIZE:,}'
      )


def _layer_stats(layer, shape: tuple, where: str) -> LayerStats:
  """Output shape, parameters and forward FLOPs (per image) of one layer."""
  if not isinstance(layer, LayerType):
    _needs_map(layer, shape, where)
    raise SpecError(f'{where}: not a layer: {layer!r:.80}')
  return layer.stats(shape, where)


def _sequence_stats(layers, shape, where) -> list:
  stats = []
  for i, layer in enumerate(layers):
    s = _layer_stats(layer, shape, f'{where}[{i}]')
    stats.append(s)
    shape = s.out_shape
  return stats


def layer_stats(spec: NetSpec, input_shape: Sequence[int] | None = None) -> list:
  """Per top-level layer: input/output shape, params and FLOPs. Raises SpecError."""
  shape = tuple(input_shape) if input_shape is not None else spec.input_shape
  _check_input_shape(shape, 'input shape')
  return _sequence_stats(spec.layers, shape, 'layers')


def output_shape(spec: NetSpec, input_shape: Sequence[int] | None = None) -> tuple:
  stats = layer_stats(spec, input_shape)
  return stats[-1].out_shape if stats else tuple(input_shape or spec.input_shape)


def sequence_output_shape(layers, shape: Sequence[int]) -> tuple:
  """Output shape of `layers` applied to an input of `shape` (any rank: the
  layers after a Flatten take flat inputs). Raises SpecError."""
  stats = _sequence_stats(layers, tuple(shape), 'layers')
  return stats[-1].out_shape if stats else tuple(shape)


def param_count(spec: NetSpec) -> int:
  """Trainable parameters (batch-norm running statistics are not parameters)."""
  return sum(s.params for s in layer_stats(spec))


def flops(spec: NetSpec, input_shape: Sequence[int] | None = None) -> int:
  """Forward-pass FLOPs for one image: 2 per multiply-add in convs and dense
  layers, plus one per element for batch-norm (2), ReLU, pooling and adds."""
  return sum(s.flops for s in layer_stats(spec, input_shape))


def num_classes(spec: NetSpec) -> int:
  out = output_shape(spec)
  return out[-1]


def validate(spec: NetSpec, input_shape: Sequence[int] | None = None) -> None:
  """Raise SpecError (naming the layer) unless the spec builds for input_shape."""
  if not spec.layers:
    raise SpecError(f'spec {spec.name!r} has no layers')
  if spec.switched and not 0 <= spec.switched[0] <= spec.switched[-1] < len(spec.layers):
    raise SpecError(
      f'spec {spec.name!r} switches layers {list(spec.switched)}, but it has '
      f'{len(spec.layers)} layers'
    )
  out = output_shape(spec, input_shape)
  if len(out) != 1:
    raise SpecError(
      f'spec {spec.name!r} ends with shape {out}, not class logits; '
      'end it with Flatten + Dense(num_classes)'
    )


# --------------------------------------------------------------------------
# Walking the layer sequence the policies see


@dataclasses.dataclass(frozen=True)
class Site:
  """One layer in the order the policies read them.

  path: index path into the nested layers, e.g. (5, 'main', 1) is
  spec.layers[5].main[1]; (7, 'branches', 1, 0) is spec.layers[7].branches[1][0].
  skip_start / skip_end: for layers inside a Residual or Concat block, the
  1-based position of this layer from the block's start and from its end,
  counting this layer (so a block's first layer has skip_start 1 and its last
  skip_end 1; branches of a Concat are counted one after another; paper
  section 3.2.1); 0 outside blocks, so inside and outside never look alike.
  """

  path: tuple
  layer: Any
  in_shape: tuple
  out_shape: tuple
  removable: bool
  skip_start: int = 0
  skip_end: int = 0


def sites(spec: NetSpec) -> list:
  """The flat sequence of layers (containers expanded, shortcut layers left
  out) with the removability rule applied. Raises SpecError on invalid specs."""
  out = []
  top = spec.layers
  shape = spec.input_shape
  class_layer = class_layer_index(spec)
  for i, layer in enumerate(top):
    stats = _layer_stats(layer, shape, f'layers[{i}]')
    if layer.channels == BLOCK:
      inner = []
      for key, seq in layer.site_children():
        prefix, s = (i,) + key, shape
        for j, sub in enumerate(seq):
          st = _layer_stats(sub, s, str(prefix + (j,)))
          inner.append((prefix + (j,), sub, s, st.out_shape))
          s = st.out_shape
      n = len(inner)
      for k, (path, sub, s_in, s_out) in enumerate(inner):
        out.append(Site(path, sub, s_in, s_out, sub.removable(), k + 1, n - k))
    else:
      fixed = i in (0, len(top) - 1, class_layer)
      out.append(Site((i,), layer, shape, stats.out_shape, layer.removable() and not fixed))
    shape = stats.out_shape
  return out


def class_layer_index(spec: NetSpec) -> int | None:
  """Index of the top-level conv or dense layer whose width is the number of
  classes (the last width-setting layer), or None if a block comes last."""
  for i in range(len(spec.layers) - 1, -1, -1):
    layer = spec.layers[i]
    if not isinstance(layer, LayerType):
      continue  # not a layer at all: sites and validate say so
    if layer.width_field is not None:
      return i
    if layer.channels == BLOCK:
      return None
  return None


def removable_count(spec: NetSpec) -> int:
  return sum(s.removable for s in sites(spec))


# Normalisers chosen from the widest values the zoo uses, fixed (not per
# teacher) so a policy trained on one teacher reads another's features the
# same way (paper section 4.6).
# fitnet4's 8x8 max-pool and conv4's 6x6 average pool are the widest windows
# and strides; values beyond the zoo's (custom specs) are clipped to 1.
_KERNEL_NORM, _STRIDE_NORM, _PADDING_NORM, _SKIP_NORM = 8.0, 8.0, 3.0, 8.0
_WIDTH_LOG_NORM = math.log2(4097.0)
FEATURE_NAMES = tuple(f'type_{c.__name__}' for c in LAYER_TYPES) + (
  'kernel',
  'stride',
  'padding',
  'outputs',
  'skip_start',
  'skip_end',
)


def site_features(site: Site) -> tuple:
  """x_t = (type one-hot, k, s, p, n, skip_start, skip_end), normalised to ~[0, 1]."""
  layer = site.layer
  one_hot = tuple(1.0 if layer.feature_slot == slot else 0.0 for slot in range(len(LAYER_TYPES)))
  k, s, p = layer.policy_features()
  n = site.out_shape[-1]
  scaled = (
    k / _KERNEL_NORM,
    s / _STRIDE_NORM,
    p / _PADDING_NORM,
    math.log2(1 + n) / _WIDTH_LOG_NORM,
    site.skip_start / _SKIP_NORM,
    site.skip_end / _SKIP_NORM,
  )
  return one_hot + tuple(min(1.0, v) for v in scaled)


def layer_features(spec: NetSpec) -> list:
  """One feature vector per site (see `sites`), as lists of floats."""
  return [list(site_features(s)) for s in sites(spec)]


# --------------------------------------------------------------------------
# Transforms


@dataclasses.dataclass(frozen=True)
class Degenerate:
  """Why a sampled student cannot be used (reward -1). `kind` is one of
  DEGENERATE_KINDS; `reason` is a readable sentence."""

  kind: str
  reason: str


DEGENERATE_KINDS = ('empty', 'dense_input_too_large', 'invalid_shape', 'not_smaller')
DEFAULT_MAX_DENSE_INPUTS = 50_000


def is_degenerate(x) -> bool:
  return isinstance(x, Degenerate)


def _rebuild(layers, replace: dict, prefix=()) -> tuple:
  """Copy of `layers` where replace[path] substitutes the layer at path
  (None deletes it). Containers are rebuilt bottom-up."""
  out = []
  for i, layer in enumerate(layers):
    path = prefix + (i,)
    if path in replace:
      if replace[path] is not None:
        out.append(replace[path])
      continue
    if isinstance(layer, LayerType) and layer.children():
      layer = layer.with_children(
        [_rebuild(seq, replace, path + key) for key, seq in layer.children()]
      )
    out.append(layer)
  return tuple(out)


def check_student(
  student: NetSpec,
  reference: NetSpec,
  max_params: int | None = None,
  max_dense_inputs: int = DEFAULT_MAX_DENSE_INPUTS,
):
  """The student itself, or a Degenerate verdict saying why it is unusable
  in place of `reference` (same input, same classes, fewer parameters)."""
  if not any(
    isinstance(l, LayerType) and (l.width_field is not None or l.channels == BLOCK)
    for l in student.layers
  ):
    return Degenerate('empty', 'the student has no conv or dense layer left')
  try:
    validate(student)
    params = param_count(student)
  except SpecError as e:
    return Degenerate('invalid_shape', str(e))
  if output_shape(student) != output_shape(reference):
    return Degenerate(
      'invalid_shape',
      f'the student outputs {output_shape(student)}, '
      f'not {output_shape(reference)} like its reference',
    )
  for s in _dense_inputs(student):
    if s[1] > max_dense_inputs:
      return Degenerate(
        'dense_input_too_large',
        f'{s[0]} (Dense) gets {s[1]:,} inputs, over the limit of {max_dense_inputs:,}',
      )
  if max_params is not None and params >= max_params:
    return Degenerate(
      'not_smaller',
      f'the student has {params:,} parameters, not fewer than the reference {max_params:,}',
    )
  return student


def _dense_inputs(spec):
  for i, st in enumerate(layer_stats(spec)):
    if isinstance(spec.layers[i], Dense):
      yield f'layers[{i}]', st.in_shape[0]


def remove(
  spec: NetSpec,
  keep: Sequence[bool],
  *,
  max_params: int | None = None,
  max_dense_inputs: int = DEFAULT_MAX_DENSE_INPUTS,
):
  """Stage-1 transform: drop the removable layers whose `keep` entry is False.

  `keep` has one entry per removable site, in `sites(spec)` order. Returns the
  student NetSpec or a Degenerate verdict; `max_params` defaults to the
  parameter count of `spec` (the student must be strictly smaller).
  """
  all_sites = sites(spec)
  removable = [s for s in all_sites if s.removable]
  if len(keep) != len(removable):
    raise ValueError(
      f'keep has {len(keep)} entries but {spec.name!r} has {len(removable)} removable layers'
    )
  if max_params is None:
    max_params = param_count(spec)
  dropped = {s.path: None for s, k in zip(removable, keep) if not bool(k)}
  student = NetSpec(spec.name, spec.input_shape, _rebuild(spec.layers, dropped))
  return check_student(student, spec, max_params, max_dense_inputs)


# ---- shrinkage


@dataclasses.dataclass(frozen=True)
class ShrinkVar:
  """One configurable variable the stage-2 policy sets: a layer's output
  width ('width') or its kernel size ('kernel')."""

  site_index: int  # index into sites(spec)
  path: tuple
  variable: str


def _width_layers(spec: NetSpec) -> list:
  """Sites whose output width can shrink: every conv and dense layer but the
  class layer. Shortcut convs are not sites; they follow their group."""
  class_layer = class_layer_index(spec)
  return [
    (i, s)
    for i, s in enumerate(sites(spec))
    if s.layer.width_field is not None and s.path != (class_layer,)
  ]


def shrink_vars(spec: NetSpec, kernels: bool = False) -> list:
  """The variables `shrink` takes one factor each for, in policy order."""
  out = []
  for i, s in _width_layers(spec):
    out.append(ShrinkVar(i, s.path, 'width'))
    if kernels and isinstance(s.layer, Conv) and s.layer.kernel > 1:
      out.append(ShrinkVar(i, s.path, 'kernel'))
  return out


class _Groups:
  """Union-find over width variables, keyed by layer path. 'input' stands for
  the network input's channels and 'fixed:*' for widths nothing may change."""

  def __init__(self):
    self.parent = {}

  def find(self, x):
    self.parent.setdefault(x, x)
    while self.parent[x] != x:
      self.parent[x] = self.parent[self.parent[x]]
      x = self.parent[x]
    return x

  def union(self, a, b):
    ra, rb = self.find(a), self.find(b)
    if ra != rb:
      # Keep a fixed/input root so the whole group stays fixed.
      if isinstance(rb, str):
        ra, rb = rb, ra
      self.parent[rb] = ra


def width_groups(spec: NetSpec) -> dict:
  """Map each width-setting layer path (convs and dense layers, shortcut convs
  included) to its group root. Layers whose outputs are added by a Residual
  share a root; a root that is a string ('input' or 'fixed:...') is a width
  that must not change."""
  groups = _Groups()

  def settle(src):
    # A concatenation's width is a sum, which cannot be tied to a single
    # layer's width: whatever a Residual adds it to is frozen.
    if isinstance(src, tuple) and src and src[0] == 'concat':
      root = f'fixed:{src[1]}'
      for member in src[2]:
        groups.union(root, settle(member))
      return root
    return src

  def walk(layers, prefix, src):
    for i, layer in enumerate(layers):
      path = prefix + (i,)
      if layer.width_field is not None:
        groups.find(path)
        src = path
      elif layer.channels == BLOCK:
        members = [walk(seq, path + key, src) for key, seq in layer.children()]
        if layer.combine == 'add':
          for other in members[1:]:
            groups.union(settle(members[0]), settle(other))
          src = members[0]
        else:
          src = ('concat', path, tuple(members))
    return src

  walk(spec.layers, (), 'input')
  return {
    p: groups.find(p)
    for p in list(groups.parent)
    if isinstance(p, tuple) and p and isinstance(p[0], int)
  }


def _round_half_up(x: float) -> int:
  return int(math.floor(x + 0.5))  # Python's round() sends halves to even: 2.5 -> 2


def _shrunk_width(width: int, factor: float, round_to: int) -> int:
  if factor >= 1.0:
    return width  # an unshrunk layer stays exactly as it was, whatever round_to
  new = max(1, _round_half_up(width * factor))
  if round_to > 1:
    new = min(width, max(round_to, _round_half_up(new / round_to) * round_to))
  return new


def _shrunk_kernel(kernel: int, factor: float) -> int:
  new = max(1, int(round(kernel * factor)))
  if new >= kernel:  # factor 1 (or rounding back up) leaves any kernel as it is
    return kernel
  return new if new % 2 == 1 else new - 1  # odd kernels keep 'same' padding exact


def shrink(
  spec: NetSpec,
  factors: Sequence[float],
  *,
  kernels: bool = False,
  round_to: int = 1,
  max_params: int | None = None,
  max_dense_inputs: int = DEFAULT_MAX_DENSE_INPUTS,
):
  """Stage-2 transform: scale each shrinkable layer's output width (and, with
  kernels=True, its kernel) by a factor in (0, 1].

  `factors` has one entry per `shrink_vars(spec, kernels)`. Widths joined by a
  skip connection form one group and take the mean of their members' factors,
  so every action counts and the add stays aligned. Widths have a floor of one
  channel; round_to > 1 rounds them to a multiple (never above the original).
  Returns the student NetSpec or a Degenerate verdict (`max_params` defaults
  to the parameter count of `spec`).
  """
  variables = shrink_vars(spec, kernels)
  if len(factors) != len(variables):
    raise ValueError(
      f'factors has {len(factors)} entries but {spec.name!r} has '
      f'{len(variables)} shrinkable variables (kernels={kernels})'
    )
  bad = [f for f in factors if not (isinstance(f, numbers.Real) and 0.0 < float(f) <= 1.0)]
  if bad:
    raise ValueError(f'shrink factors must be in (0, 1], got {bad[:5]}')
  if max_params is None:
    max_params = param_count(spec)
  groups = width_groups(spec)
  by_root: dict = {}
  kernel_factor = {}
  for var, f in zip(variables, factors):
    if var.variable == 'width':
      by_root.setdefault(groups[var.path], []).append(float(f))
    else:
      kernel_factor[var.path] = float(f)

  replace = {}
  for path, root in groups.items():
    layer = _get_any(spec.layers, path)
    fs = by_root.get(root)
    if isinstance(root, str) or not fs:
      if path in kernel_factor:
        replace[path] = _with_kernel(layer, kernel_factor[path])
      continue
    factor = sum(fs) / len(fs)
    width = layer.width_field
    layer = dataclasses.replace(
      layer, **{width: _shrunk_width(getattr(layer, width), factor, round_to)}
    )
    if path in kernel_factor:
      layer = _with_kernel(layer, kernel_factor[path])
    replace[path] = layer
  student = NetSpec(spec.name, spec.input_shape, _rebuild(spec.layers, replace))
  return check_student(student, spec, max_params, max_dense_inputs)


def _with_kernel(conv: Conv, factor: float) -> Conv:
  k = _shrunk_kernel(conv.kernel, factor)
  # Keep 'same' convs 'same'; otherwise scale padding with the kernel.
  p = k // 2 if conv.padding == conv.kernel // 2 else int(round(conv.padding * k / conv.kernel))
  return dataclasses.replace(conv, kernel=k, padding=p)


def _get_any(layers, path):
  """The layer at `path`, shortcut paths included."""
  node = layers[path[0]]
  rest = path[1:]
  while rest:
    key, seq = next((k, s) for k, s in node.children() if rest[: len(k)] == k)
    node, rest = seq[rest[len(key)]], rest[len(key) + 1 :]
  return node


def iter_layers(layers) -> Iterator:
  """Every layer, containers first and then their contents, depth first."""
  for layer in layers:
    yield layer
    if isinstance(layer, LayerType):
      for _, seq in layer.children():
        yield from iter_layers(seq)


def short_text(layers) -> str:
  """A compact one-line picture of a layer sequence for logs and metrics, e.g.
  'C32 B R M C64 B R M F L10' (C conv width, /2 stride, k5 kernel; B batch-norm;
  R ReLU; M/A max/avg pool; G global pool; D dropout; F flatten; L dense;
  Res[main|shortcut]; Cat[branch|branch])."""
  if isinstance(layers, NetSpec):
    layers = layers.layers
  return ' '.join(l.short() for l in layers)
