"""Architecture specs: the single, pure-Python description of a network.

A `NetSpec` is a frozen, hashable tuple of layers. Models, parameter and FLOP
counts, the policies' layer features and the two N2N transforms (`remove`,
`shrink`) all derive from it. Nothing here touches JAX, so specs are cheap to
create, compare, hash (as cache keys) and serialise.

Channel counts are never stored as inputs: every layer infers its input width
from whatever precedes it, exactly as a Flax module does. That is what makes
layer removal a plain deletion: "the next kept conv takes the previous channel
count as its input width" falls out for free.

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
from typing import Any, Iterator, Sequence, Union

# --------------------------------------------------------------------------
# Layers


@dataclasses.dataclass(frozen=True)
class Conv:
  filters: int
  kernel: int = 3
  stride: int = 1
  padding: int = 0
  use_bias: bool = True


@dataclasses.dataclass(frozen=True)
class BatchNorm:
  pass


@dataclasses.dataclass(frozen=True)
class ReLU:
  pass


@dataclasses.dataclass(frozen=True)
class MaxPool:
  window: int = 2
  stride: int = 2
  padding: int = 0
  # Round the output size up, as PyTorch's ceil_mode (torchvision's
  # SqueezeNet): a last, partial window at the bottom/right edge is kept.
  ceil: bool = False


@dataclasses.dataclass(frozen=True)
class AvgPool:
  window: int = 2
  stride: int = 2


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool:
  pass


@dataclasses.dataclass(frozen=True)
class Dropout:
  rate: float = 0.5


@dataclasses.dataclass(frozen=True)
class Flatten:
  pass


@dataclasses.dataclass(frozen=True)
class Dense:
  features: int
  use_bias: bool = True


@dataclasses.dataclass(frozen=True)
class Residual:
  main: tuple  # tuple of layers
  shortcut: tuple = ()  # () is the identity


@dataclasses.dataclass(frozen=True)
class Concat:
  branches: tuple  # tuple of tuples of layers


Layer = Union[Conv, BatchNorm, ReLU, MaxPool, AvgPool, GlobalAvgPool, Dropout,
              Flatten, Dense, Residual, Concat]

# Order fixes the one-hot layer-type feature: append, never reorder.
LAYER_TYPES = (Conv, BatchNorm, ReLU, MaxPool, AvgPool, GlobalAvgPool, Dropout,
               Flatten, Dense)
_CONTAINERS = (Residual, Concat)
_BY_NAME = {cls.__name__: cls for cls in LAYER_TYPES + _CONTAINERS}


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
    if isinstance(layer, Residual):
      layer = Residual(_freeze(layer.main), _freeze(layer.shortcut))
    elif isinstance(layer, Concat):
      layer = Concat(tuple(_freeze(b) for b in layer.branches))
    out.append(layer)
  return tuple(out)


class SpecError(ValueError):
  """A spec that cannot be built; the message names the layer and the reason."""


# --------------------------------------------------------------------------
# JSON


def layer_to_dict(layer) -> dict:
  d = {'type': type(layer).__name__}
  if isinstance(layer, Residual):
    d['main'] = [layer_to_dict(l) for l in layer.main]
    d['shortcut'] = [layer_to_dict(l) for l in layer.shortcut]
  elif isinstance(layer, Concat):
    d['branches'] = [[layer_to_dict(l) for l in b] for b in layer.branches]
  else:
    d.update(dataclasses.asdict(layer))
    if isinstance(layer, MaxPool) and not layer.ceil:
      # Specs written before ceil mode existed keep their exact JSON (and
      # with it their students' init seeds and architecture keys).
      del d['ceil']
  return d


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
      raise SpecError(f'{where}: the spec has more than {MAX_LAYERS:,} layers; '
                      'that is no real network')


def layer_from_dict(d: dict, where: str = 'layer', *, _depth: int = 0, _budget=None):
  budget = _Budget() if _budget is None else _budget
  budget.take(where)
  if not isinstance(d, dict) or 'type' not in d:
    raise SpecError(f'{where}: expected an object with a "type" field, got {_short(d)}')
  kind = d['type']
  if not isinstance(kind, str) or kind not in _BY_NAME:
    raise SpecError(f'{where}: unknown layer type {_short(kind)}; valid types: '
                    f'{", ".join(sorted(_BY_NAME))}')
  cls = _BY_NAME[kind]
  fields = {k: v for k, v in d.items() if k != 'type'}
  known = {f.name: f for f in dataclasses.fields(cls)}
  unknown = set(fields) - set(known)
  if unknown:
    # key=repr: keys of a Python dict need not be strings, nor comparable.
    names = ', '.join(_short(k) for k in sorted(unknown, key=repr)[:10])
    raise SpecError(f'{where}: {kind} has no field(s) [{names}]; '
                    f'valid fields: {sorted(known)}')
  if cls in _CONTAINERS and _depth >= MAX_DEPTH:
    raise SpecError(f'{where}: {kind} blocks are nested more than {MAX_DEPTH} deep')
  sub = dict(_depth=_depth + 1, _budget=budget)
  if cls is Residual:
    return Residual(*(
        tuple(layer_from_dict(l, f'{where}.{part}[{i}]', **sub)
              for i, l in enumerate(_json_list(fields.get(part, []), f'{where}: Residual.{part}')))
        for part in ('main', 'shortcut')))
  if cls is Concat:
    branches = _json_list(fields.get('branches', []), f'{where}: Concat.branches')
    if not all(isinstance(b, list) for b in branches):
      raise SpecError(f'{where}: Concat.branches must be a list of lists of layers, '
                      f'got {_short(branches)}')
    return Concat(tuple(
        tuple(layer_from_dict(l, f'{where}.branches[{b}][{i}]', **sub)
              for i, l in enumerate(branch))
        for b, branch in enumerate(branches)))
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
        raise SpecError(f'{where}: {type(layer).__name__}.{f.name} is {_short(value)}, '
                        f'beyond the limit of {MAX_SIZE:,}')
    elif f.type in ('bool', bool):
      ok = isinstance(value, bool)
    elif f.type in ('float', float):
      ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
      ok = True
    if not ok:
      raise SpecError(f'{where}: {type(layer).__name__}.{f.name} must be '
                      f'{f.type}, got {_short(value)}')


def _check_input_shape(shape, what):
  if (not isinstance(shape, (list, tuple)) or len(shape) != 3
      or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool)
                 and 0 < s <= MAX_SIZE for s in shape)):
    raise SpecError(f'{what} must be three positive integers (H, W, C) of at most '
                    f'{MAX_SIZE:,}, got {_short(shape)}')


def to_dict(spec: NetSpec) -> dict:
  return {'name': spec.name, 'input_shape': list(spec.input_shape),
          'layers': [layer_to_dict(l) for l in spec.layers]}


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
    raise SpecError(f'spec has unknown field(s) [{names}]; valid fields: '
                    "['input_shape', 'layers', 'name']")
  name = d.get('name', 'custom')
  if not isinstance(name, str):
    raise SpecError(f'name must be a string, got {type(name).__name__}')
  _check_input_shape(d['input_shape'], 'input_shape')
  if not isinstance(d['layers'], list):
    raise SpecError(f'layers must be a list, got {type(d["layers"]).__name__}')
  budget = _Budget()
  layers = tuple(layer_from_dict(l, f'layers[{i}]', _budget=budget)
                 for i, l in enumerate(d['layers']))
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
    raise SpecError('spec is not usable JSON: it holds an integer of more than '
                    f'{sys.get_int_max_str_digits():,} digits') from None
  except RecursionError:
    raise SpecError('spec is not usable JSON: its arrays and objects are nested too deeply '
                    f'to parse (a spec nests at most {MAX_DEPTH} blocks)') from None
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


def pool_extra_padding(size: int, layer: 'MaxPool') -> int:
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
      raise SpecError(f'{where} ({type(layer).__name__}): {n} is {_short(v)}, beyond the '
                      f'limit of {MAX_SIZE:,}')


def _layer_stats(layer, shape: tuple, where: str) -> LayerStats:
  """Output shape, parameters and forward FLOPs (per image) of one layer."""
  if isinstance(layer, Residual):
    main = _sequence_stats(layer.main, shape, f'{where}.main')
    short = _sequence_stats(layer.shortcut, shape, f'{where}.shortcut')
    m_out = main[-1].out_shape if main else shape
    s_out = short[-1].out_shape if short else shape
    if m_out != s_out:
      raise SpecError(f'{where} (Residual): main path gives {m_out} but shortcut '
                      f'gives {s_out}; they must match to be added')
    params = sum(s.params for s in main + short)
    flops = sum(s.flops for s in main + short) + math.prod(m_out)
    return LayerStats(shape, m_out, params, flops)
  if isinstance(layer, Concat):
    if not layer.branches:
      raise SpecError(f'{where} (Concat): needs at least one branch')
    outs, params, flops = [], 0, 0
    for b, branch in enumerate(layer.branches):
      stats = _sequence_stats(branch, shape, f'{where}.branches[{b}]')
      outs.append(stats[-1].out_shape if stats else shape)
      params += sum(s.params for s in stats)
      flops += sum(s.flops for s in stats)
    if len({o[:-1] for o in outs}) != 1 or any(len(o) != 3 for o in outs):
      raise SpecError(f'{where} (Concat): branch outputs {outs} differ in spatial size')
    return LayerStats(shape, outs[0][:-1] + (sum(o[-1] for o in outs),), params, flops)

  if isinstance(layer, Dense):
    _check_positive(layer, where, 'features')
    if len(shape) != 1:
      raise SpecError(f'{where} (Dense): needs a flat input, got shape {shape}; '
                      'put Flatten or GlobalAvgPool + Flatten before it')
    n_in = shape[0]
    params = n_in * layer.features + (layer.features if layer.use_bias else 0)
    return LayerStats(shape, (layer.features,), params, 2 * n_in * layer.features)
  if isinstance(layer, Flatten):
    return LayerStats(shape, (math.prod(shape),), 0, 0)
  if isinstance(layer, Dropout):
    if not 0.0 <= layer.rate < 1.0:
      raise SpecError(f'{where} (Dropout): rate must be in [0, 1), got {layer.rate}')
    return LayerStats(shape, shape, 0, 0)
  if isinstance(layer, ReLU):
    return LayerStats(shape, shape, 0, math.prod(shape))

  if len(shape) != 3:
    raise SpecError(f'{where} ({type(layer).__name__}): needs an (H, W, C) input, '
                    f'got flat shape {shape}')
  h, w, c = shape
  if isinstance(layer, BatchNorm):
    return LayerStats(shape, shape, 2 * c, 2 * h * w * c)
  if isinstance(layer, GlobalAvgPool):
    return LayerStats(shape, (1, 1, c), 0, h * w * c)
  if isinstance(layer, Conv):
    _check_positive(layer, where, 'filters', 'kernel', 'stride')
    if layer.padding < 0:
      raise SpecError(f'{where} (Conv): padding must be >= 0, got {layer.padding}')
    window, stride, pad = layer.kernel, layer.stride, layer.padding
  elif isinstance(layer, MaxPool):
    _check_positive(layer, where, 'window', 'stride')
    if not 0 <= layer.padding < layer.window:
      raise SpecError(f'{where} (MaxPool): padding must be in [0, window), got {layer.padding}')
    window, stride, pad = layer.window, layer.stride, layer.padding
  elif isinstance(layer, AvgPool):
    _check_positive(layer, where, 'window', 'stride')
    window, stride, pad = layer.window, layer.stride, 0
  else:
    raise SpecError(f'{where}: not a layer: {layer!r:.80}')
  ceil = isinstance(layer, MaxPool) and layer.ceil
  ho, wo = _out_size(h, window, stride, pad, ceil), _out_size(w, window, stride, pad, ceil)
  if ho < 1 or wo < 1:
    raise SpecError(f'{where} ({type(layer).__name__}): spatial size collapsed: '
                    f'{h}x{w} input with window {window}, stride {stride}, padding {pad} '
                    f'gives {ho}x{wo}')
  if isinstance(layer, Conv):
    k2 = layer.kernel * layer.kernel
    params = k2 * c * layer.filters + (layer.filters if layer.use_bias else 0)
    return LayerStats(shape, (ho, wo, layer.filters), params,
                      2 * k2 * c * layer.filters * ho * wo)
  return LayerStats(shape, (ho, wo, c), 0, window * window * ho * wo * c)


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
    raise SpecError(f'spec {spec.name!r} switches layers {list(spec.switched)}, but it has '
                    f'{len(spec.layers)} layers')
  out = output_shape(spec, input_shape)
  if len(out) != 1:
    raise SpecError(f'spec {spec.name!r} ends with shape {out}, not class logits; '
                    'end it with Flatten + Dense(num_classes)')


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
    if isinstance(layer, (Residual, Concat)):
      paths = ([((i, 'main'), layer.main)] if isinstance(layer, Residual) else
               [((i, 'branches', b), br) for b, br in enumerate(layer.branches)])
      inner = []
      for prefix, seq in paths:
        s = shape
        for j, sub in enumerate(seq):
          st = _layer_stats(sub, s, str(prefix + (j,)))
          inner.append((prefix + (j,), sub, s, st.out_shape))
          s = st.out_shape
      n = len(inner)
      for k, (path, sub, s_in, s_out) in enumerate(inner):
        out.append(Site(path, sub, s_in, s_out, _removable(sub), k + 1, n - k))
    else:
      fixed = i in (0, len(top) - 1, class_layer)
      out.append(Site((i,), layer, shape, stats.out_shape,
                      _removable(layer) and not fixed))
    shape = stats.out_shape
  return out


def class_layer_index(spec: NetSpec) -> int | None:
  """Index of the top-level conv or dense layer whose width is the number of
  classes (the last width-setting layer), or None if a block comes last."""
  for i in range(len(spec.layers) - 1, -1, -1):
    layer = spec.layers[i]
    if isinstance(layer, (Conv, Dense)):
      return i
    if isinstance(layer, (Residual, Concat)):
      return None
  return None


def _removable(layer) -> bool:
  # The original code's rule: never strided convs, dense, average pools,
  # flatten; the first and last layer are excluded by the caller.
  if isinstance(layer, Conv):
    return layer.stride == 1
  return isinstance(layer, (BatchNorm, ReLU, MaxPool, Dropout))


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
    'kernel', 'stride', 'padding', 'outputs', 'skip_start', 'skip_end')


def site_features(site: Site) -> tuple:
  """x_t = (type one-hot, k, s, p, n, skip_start, skip_end), normalised to ~[0, 1]."""
  layer = site.layer
  one_hot = tuple(1.0 if isinstance(layer, c) else 0.0 for c in LAYER_TYPES)
  k = s = p = 0
  if isinstance(layer, Conv):
    k, s, p = layer.kernel, layer.stride, layer.padding
  elif isinstance(layer, MaxPool):
    k, s, p = layer.window, layer.stride, layer.padding
  elif isinstance(layer, AvgPool):
    k, s = layer.window, layer.stride
  n = site.out_shape[-1]
  scaled = (k / _KERNEL_NORM, s / _STRIDE_NORM, p / _PADDING_NORM,
            math.log2(1 + n) / _WIDTH_LOG_NORM,
            site.skip_start / _SKIP_NORM, site.skip_end / _SKIP_NORM)
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
    if isinstance(layer, Residual):
      layer = Residual(_rebuild(layer.main, replace, path + ('main',)),
                       _rebuild(layer.shortcut, replace, path + ('shortcut',)))
    elif isinstance(layer, Concat):
      layer = Concat(tuple(_rebuild(b, replace, path + ('branches', j))
                           for j, b in enumerate(layer.branches)))
    out.append(layer)
  return tuple(out)


def check_student(student: NetSpec, reference: NetSpec, max_params: int | None = None,
                  max_dense_inputs: int = DEFAULT_MAX_DENSE_INPUTS):
  """The student itself, or a Degenerate verdict saying why it is unusable
  in place of `reference` (same input, same classes, fewer parameters)."""
  if not any(isinstance(l, (Conv, Dense, Residual, Concat)) for l in student.layers):
    return Degenerate('empty', 'the student has no conv or dense layer left')
  try:
    validate(student)
    params = param_count(student)
  except SpecError as e:
    return Degenerate('invalid_shape', str(e))
  if output_shape(student) != output_shape(reference):
    return Degenerate('invalid_shape', f'the student outputs {output_shape(student)}, '
                      f'not {output_shape(reference)} like its reference')
  for s in _dense_inputs(student):
    if s[1] > max_dense_inputs:
      return Degenerate('dense_input_too_large',
                        f'{s[0]} (Dense) gets {s[1]:,} inputs, over the limit of '
                        f'{max_dense_inputs:,}')
  if max_params is not None and params >= max_params:
    return Degenerate('not_smaller', f'the student has {params:,} parameters, '
                      f'not fewer than the reference {max_params:,}')
  return student


def _dense_inputs(spec):
  for i, st in enumerate(layer_stats(spec)):
    if isinstance(spec.layers[i], Dense):
      yield f'layers[{i}]', st.in_shape[0]


def remove(spec: NetSpec, keep: Sequence[bool], *, max_params: int | None = None,
           max_dense_inputs: int = DEFAULT_MAX_DENSE_INPUTS):
  """Stage-1 transform: drop the removable layers whose `keep` entry is False.

  `keep` has one entry per removable site, in `sites(spec)` order. Returns the
  student NetSpec or a Degenerate verdict; `max_params` defaults to the
  parameter count of `spec` (the student must be strictly smaller).
  """
  all_sites = sites(spec)
  removable = [s for s in all_sites if s.removable]
  if len(keep) != len(removable):
    raise ValueError(f'keep has {len(keep)} entries but {spec.name!r} has '
                     f'{len(removable)} removable layers')
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
  return [(i, s) for i, s in enumerate(sites(spec))
          if isinstance(s.layer, (Conv, Dense)) and s.path != (class_layer,)]


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
      if isinstance(layer, (Conv, Dense)):
        groups.find(path)
        src = path
      elif isinstance(layer, Residual):
        main = walk(layer.main, path + ('main',), src)
        short = walk(layer.shortcut, path + ('shortcut',), src)
        groups.union(settle(main), settle(short))
        src = main
      elif isinstance(layer, Concat):
        members = [walk(b, path + ('branches', j), src) for j, b in enumerate(layer.branches)]
        src = ('concat', path, tuple(members))
    return src

  walk(spec.layers, (), 'input')
  return {p: groups.find(p) for p in list(groups.parent)
          if isinstance(p, tuple) and p and isinstance(p[0], int)}


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


def shrink(spec: NetSpec, factors: Sequence[float], *, kernels: bool = False,
           round_to: int = 1, max_params: int | None = None,
           max_dense_inputs: int = DEFAULT_MAX_DENSE_INPUTS):
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
    raise ValueError(f'factors has {len(factors)} entries but {spec.name!r} has '
                     f'{len(variables)} shrinkable variables (kernels={kernels})')
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
    if isinstance(layer, Conv):
      layer = dataclasses.replace(layer, filters=_shrunk_width(layer.filters, factor, round_to))
      if path in kernel_factor:
        layer = _with_kernel(layer, kernel_factor[path])
    else:
      layer = dataclasses.replace(layer, features=_shrunk_width(layer.features, factor, round_to))
    replace[path] = layer
  student = NetSpec(spec.name, spec.input_shape, _rebuild(spec.layers, replace))
  return check_student(student, spec, max_params, max_dense_inputs)


def _with_kernel(conv: Conv, factor: float) -> Conv:
  k = _shrunk_kernel(conv.kernel, factor)
  # Keep 'same' convs 'same'; otherwise scale padding with the kernel.
  p = k // 2 if conv.padding == conv.kernel // 2 else int(round(conv.padding * k / conv.kernel))
  return dataclasses.replace(conv, kernel=k, padding=p)


def _get_any(layers, path):
  """Like _get but also follows 'shortcut' paths."""
  node = layers[path[0]]
  rest = path[1:]
  while rest:
    if rest[0] in ('main', 'shortcut'):
      node, rest = getattr(node, rest[0])[rest[1]], rest[2:]
    else:
      node, rest = node.branches[rest[1]][rest[2]], rest[3:]
  return node


def iter_layers(layers) -> Iterator:
  """Every layer, containers first and then their contents, depth first."""
  for layer in layers:
    yield layer
    if isinstance(layer, Residual):
      yield from iter_layers(layer.main)
      yield from iter_layers(layer.shortcut)
    elif isinstance(layer, Concat):
      for b in layer.branches:
        yield from iter_layers(b)


def short_text(layers) -> str:
  """A compact one-line picture of a layer sequence for logs and metrics, e.g.
  'C32 B R M C64 B R M F L10' (C conv width, /2 stride, k5 kernel; B batch-norm;
  R ReLU; M/A max/avg pool; G global pool; D dropout; F flatten; L dense;
  Res[main|shortcut]; Cat[branch|branch])."""
  if isinstance(layers, NetSpec):
    layers = layers.layers
  out = []
  for l in layers:
    if isinstance(l, Conv):
      out.append(f'C{l.filters}' + (f'k{l.kernel}' if l.kernel != 3 else '')
                 + (f'/{l.stride}' if l.stride != 1 else ''))
    elif isinstance(l, Dense):
      out.append(f'L{l.features}')
    elif isinstance(l, Residual):
      out.append(f'Res[{short_text(l.main)}|{short_text(l.shortcut)}]')
    elif isinstance(l, Concat):
      out.append('Cat[' + '|'.join(short_text(b) for b in l.branches) + ']')
    else:
      out.append({BatchNorm: 'B', ReLU: 'R', MaxPool: 'M', AvgPool: 'A', GlobalAvgPool: 'G',
                  Dropout: 'D', Flatten: 'F'}[type(l)])
  return ' '.join(out)
