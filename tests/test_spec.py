"""Tests for n2n_jax.spec: JSON, shapes, counts, sites, features and the two
N2N transforms (remove, shrink), including property tests over every zoo
teacher. Small students are also built and run through models.SpecNet."""

import json
import math

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from n2n_jax import models
from n2n_jax import spec as S
from n2n_jax import zoo
from n2n_jax.spec import AvgPool
from n2n_jax.spec import BatchNorm
from n2n_jax.spec import Concat
from n2n_jax.spec import Conv
from n2n_jax.spec import Dense
from n2n_jax.spec import Dropout
from n2n_jax.spec import Flatten
from n2n_jax.spec import GlobalAvgPool
from n2n_jax.spec import MaxPool
from n2n_jax.spec import NetSpec
from n2n_jax.spec import ReLU
from n2n_jax.spec import Residual

# Input shapes on which each zoo architecture is meant to run.
ZOO_SHAPES = {
  'conv4': (28, 28, 1),
  'digits_cnn': (8, 8, 1),
  'digits_cnn_deep': (8, 8, 1),
  'resnet18_imagenet': (224, 224, 3),
  'resnet34_imagenet': (224, 224, 3),
}
SMALL_TEACHER_NAMES = ('digits_cnn', 'conv4')
SHRINK_ACTIONS = tuple(round(0.1 * k, 1) for k in range(1, 11))


def zoo_spec(name, classes=10):
  return zoo.get(name, ZOO_SHAPES.get(name, (32, 32, 3)), classes)


def small_resnet():
  """A narrow ResNet: stem, an identity block, a projection (stride 2) block,
  another identity block, global pool, classifier."""

  def block(width, stride, in_width):
    short = ()
    if stride != 1 or in_width != width:
      short = (Conv(width, 1, stride, 0, use_bias=False), BatchNorm())
    main = (
      Conv(width, 3, stride, 1, use_bias=False),
      BatchNorm(),
      ReLU(),
      Conv(width, 3, 1, 1, use_bias=False),
      BatchNorm(),
    )
    return (Residual(main, short), ReLU())

  layers = (
    (Conv(8, 3, 1, 1, use_bias=False), BatchNorm(), ReLU())
    + block(8, 1, 8)
    + block(16, 2, 8)
    + block(16, 1, 16)
    + (GlobalAvgPool(), Flatten(), Dense(5))
  )
  return NetSpec('small_resnet', (8, 8, 3), layers)


def small_squeezenet():
  def fire(squeeze, expand):
    return (
      Conv(squeeze, 1),
      ReLU(),
      Concat(((Conv(expand, 1), ReLU()), (Conv(expand, 3, 1, 1), ReLU()))),
    )

  layers = (
    (Conv(8, 3, 2, 0), ReLU(), MaxPool(3, 2))
    + fire(4, 8)
    + fire(4, 8)
    + (MaxPool(3, 2),)
    + fire(6, 12)
    + (Dropout(0.5), GlobalAvgPool(), Flatten(), Dense(5))
  )
  return NetSpec('small_squeezenet', (16, 16, 3), layers)


SMALL_TEACHERS = {
  'digits_cnn': lambda: zoo_spec('digits_cnn'),
  'conv4': lambda: zoo_spec('conv4'),
  'small_resnet': small_resnet,
  'small_squeezenet': small_squeezenet,
}


# --------------------------------------------------------------------------
# Independent helpers (deliberately not using spec's own path machinery)


def delete_paths(layers, paths, prefix=()):
  """`layers` with the layers at `paths` (site paths) deleted."""
  out = []
  for i, layer in enumerate(layers):
    path = prefix + (i,)
    if path in paths:
      continue
    if isinstance(layer, Residual):
      layer = Residual(
        delete_paths(layer.main, paths, path + ('main',)),
        delete_paths(layer.shortcut, paths, path + ('shortcut',)),
      )
    elif isinstance(layer, Concat):
      layer = Concat(
        tuple(delete_paths(b, paths, path + ('branches', j)) for j, b in enumerate(layer.branches))
      )
    out.append(layer)
  return tuple(out)


def leaf_layers(layers):
  return [l for l in S.iter_layers(layers) if not isinstance(l, (Residual, Concat))]


def parallel_leaves(a, b):
  """Pairs of corresponding leaf layers of two structurally identical specs."""
  la, lb = list(S.iter_layers(a)), list(S.iter_layers(b))
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    assert type(x) is type(y)
  return [(x, y) for x, y in zip(la, lb) if not isinstance(x, (Residual, Concat))]


def dense_inputs(spec):
  return [
    st.in_shape[0]
    for layer, st in zip(spec.layers, S.layer_stats(spec))
    if isinstance(layer, Dense)
  ]


def check_verdict(result, expected_student, teacher):
  """`result` is what remove/shrink returned; `expected_student` the spec the
  transform should have produced. Checks a NetSpec result is exactly it and
  that a Degenerate verdict is justified."""
  teacher_params = S.param_count(teacher)
  if isinstance(result, S.Degenerate):
    assert result.kind in S.DEGENERATE_KINDS
    assert isinstance(result.reason, str) and result.reason
    if result.kind == 'invalid_shape':
      try:
        S.validate(expected_student)
      except S.SpecError:
        pass
      else:
        assert S.output_shape(expected_student) != S.output_shape(teacher)
    elif result.kind == 'dense_input_too_large':
      assert max(dense_inputs(expected_student)) > S.DEFAULT_MAX_DENSE_INPUTS
    elif result.kind == 'not_smaller':
      S.validate(expected_student)
      assert S.param_count(expected_student) >= teacher_params
    elif result.kind == 'empty':
      assert not any(isinstance(l, (Conv, Dense)) for l in S.iter_layers(expected_student.layers))
    return None
  assert isinstance(result, NetSpec)
  assert result == expected_student
  S.validate(result)
  assert S.param_count(result) < teacher_params
  assert S.output_shape(result) == S.output_shape(teacher)
  assert max(dense_inputs(result), default=0) <= S.DEFAULT_MAX_DENSE_INPUTS
  return result


def expected_removal(spec, keep):
  removable = [s for s in S.sites(spec) if s.removable]
  gone = {s.path for s, k in zip(removable, keep) if not k}
  return NetSpec(spec.name, spec.input_shape, delete_paths(spec.layers, gone))


def check_shrunk(student, teacher, round_to, kernels):
  """Structure kept; widths within [1, original] and on the round_to grid;
  kernels odd or unchanged; class layer untouched; residual adds aligned."""
  pairs = parallel_leaves(teacher.layers, student.layers)
  for old, new in pairs:
    if isinstance(old, Conv):
      assert 1 <= new.filters <= old.filters
      assert new.filters % round_to == 0 or new.filters == old.filters
      assert new.stride == old.stride and new.use_bias == old.use_bias
      assert 1 <= new.kernel <= old.kernel
      if not kernels:
        assert (new.kernel, new.padding) == (old.kernel, old.padding)
      elif new.kernel != old.kernel:
        assert new.kernel % 2 == 1
        if old.padding == old.kernel // 2:
          assert new.padding == new.kernel // 2  # 'same' convs stay 'same'
    elif isinstance(old, Dense):
      assert 1 <= new.features <= old.features
      assert new.features % round_to == 0 or new.features == old.features
    else:
      assert new == old
  assert student.layers[-1] == teacher.layers[-1]  # the class layer
  check_residuals_aligned(student)


def check_residuals_aligned(spec):
  shape = spec.input_shape
  for layer, stats in zip(spec.layers, S.layer_stats(spec)):
    if isinstance(layer, Residual):
      main = S.layer_stats(NetSpec('m', shape, layer.main)) if layer.main else []
      short = S.layer_stats(NetSpec('s', shape, layer.shortcut)) if layer.shortcut else []
      main_out = main[-1].out_shape if main else shape
      short_out = short[-1].out_shape if short else shape
      assert main_out == short_out == stats.out_shape
    shape = stats.out_shape


def check_model(student, run_forward):
  """Build the student; forward pass (small specs) or eval_shape (big ones)."""
  model = models.build(student)
  if run_forward:
    variables = models.init_variables(model, 0, student.input_shape)
    x = np.random.default_rng(0).standard_normal((2,) + student.input_shape).astype(np.float32)
    # Jitted: eager dispatch compiles every op for every new shape (slower).
    y = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert y.shape == (2,) + S.output_shape(student)
    assert np.all(np.isfinite(np.asarray(y)))
    assert models.count_params(variables['params']) == S.param_count(student)
  else:
    shapes = models.variable_shapes(model, student.input_shape)
    assert models.count_params(shapes['params']) == S.param_count(student)


# --------------------------------------------------------------------------
# FLOPs and parameters by hand


def test_flops_and_params_of_tiny_spec_by_hand():
  spec = NetSpec(
    'tiny', (4, 4, 1), (Conv(2, 3, 1, 1), BatchNorm(), ReLU(), MaxPool(2, 2), Flatten(), Dense(3))
  )
  # conv: 4x4x2 outputs, each 3*3*1 multiply-adds -> 2*9*32 = 576; 9*2 + 2 params
  # BN: 2 per element of 4x4x2 -> 64; 2*2 params
  # ReLU: 32; MaxPool 2x2: 4 per output of 2x2x2 -> 32
  # Dense: 8 inputs -> 3 outputs: 2*8*3 = 48 flops, 8*3 + 3 params
  assert S.flops(spec) == 576 + 64 + 32 + 32 + 48
  assert S.param_count(spec) == 20 + 4 + 27
  assert [st.out_shape for st in S.layer_stats(spec)] == [
    (4, 4, 2),
    (4, 4, 2),
    (4, 4, 2),
    (2, 2, 2),
    (8,),
    (3,),
  ]
  assert [st.params for st in S.layer_stats(spec)] == [20, 4, 0, 0, 0, 27]


def test_flops_of_residual_and_no_bias_by_hand():
  spec = NetSpec(
    'res',
    (2, 2, 1),
    (Residual((Conv(1, 1, 1, 0, use_bias=False),), ()), Flatten(), Dense(1, use_bias=False)),
  )
  # conv: 4 outputs x 1 MAC -> 8, the add -> 4; dense: 2*4*1 = 8
  assert S.flops(spec) == 8 + 4 + 8
  assert S.param_count(spec) == 1 + 4


def test_flops_scale_with_input_shape():
  spec = NetSpec(
    'c', (8, 8, 3), (Conv(4, 3, 1, 1, use_bias=False), GlobalAvgPool(), Flatten(), Dense(2))
  )
  small = S.flops(spec)
  big = S.flops(spec, (16, 16, 3))
  # conv and pooling scale with the area (x4), the dense layer does not.
  assert small == 2 * 27 * 4 * 64 + 64 * 4 + 2 * 4 * 2
  assert big == 2 * 27 * 4 * 256 + 256 * 4 + 2 * 4 * 2


# --------------------------------------------------------------------------
# JSON


@pytest.mark.parametrize('name', zoo.NAMES)
def test_json_round_trip_zoo(name):
  spec = zoo_spec(name)
  text = S.to_json(spec)
  back = S.from_json(text)
  assert back == spec
  assert hash(back) == hash(spec)
  assert S.to_json(back) == text
  json.loads(text)  # plain JSON


ints = st.integers(1, 64)
leaf_layers_st = st.one_of(
  st.builds(Conv, ints, st.integers(1, 7), st.integers(1, 3), st.integers(0, 3), st.booleans()),
  st.just(BatchNorm()),
  st.just(ReLU()),
  st.builds(MaxPool, st.integers(1, 4), st.integers(1, 4), st.integers(0, 1), st.booleans()),
  st.builds(AvgPool, st.integers(1, 4), st.integers(1, 4)),
  st.just(GlobalAvgPool()),
  st.just(Flatten()),
  st.builds(Dropout, st.floats(0.0, 0.99, allow_nan=False)),
  st.builds(Dense, ints, st.booleans()),
)
layers_st = st.recursive(
  st.lists(leaf_layers_st, max_size=4).map(tuple),
  lambda inner: st.lists(
    st.one_of(
      leaf_layers_st,
      st.builds(Residual, inner, inner),
      st.builds(Concat, st.lists(inner, min_size=1, max_size=3).map(tuple)),
    ),
    max_size=5,
  ).map(tuple),
  max_leaves=20,
)
specs_st = st.builds(
  NetSpec, st.text(max_size=10), st.tuples(ints, ints, st.integers(1, 4)), layers_st
)


@settings(max_examples=150, deadline=None)
@given(specs_st)
def test_json_round_trip_random_specs(spec):
  back = S.from_json(S.to_json(spec))
  assert back == spec
  assert hash(back) == hash(spec)
  assert S.from_dict(json.loads(json.dumps(S.to_dict(spec)))) == spec


def test_netspec_accepts_lists_and_stays_hashable():
  a = NetSpec(
    'a',
    [8, 8, 1],
    [Conv(4), Residual([ReLU()], []), Concat([[ReLU()], [BatchNorm()]]), Flatten(), Dense(2)],
  )
  b = NetSpec(
    'a',
    (8, 8, 1),
    (Conv(4), Residual((ReLU(),), ()), Concat(((ReLU(),), (BatchNorm(),))), Flatten(), Dense(2)),
  )
  assert a == b and hash(a) == hash(b)
  assert {a: 1}[b] == 1


def _good_spec_dict():
  return {
    'name': 'g',
    'input_shape': [8, 8, 1],
    'layers': [
      {'type': 'Conv', 'filters': 8},
      {'type': 'Flatten'},
      {'type': 'Dense', 'features': 2},
    ],
  }


def test_from_dict_good_spec():
  spec = S.from_dict(_good_spec_dict())
  assert spec.layers == (Conv(8), Flatten(), Dense(2))
  assert S.output_shape(spec) == (2,)


@pytest.mark.parametrize(
  'mutate, match',
  [
    (
      lambda d: d['layers'].__setitem__(0, {'type': 'Conv2D', 'filters': 8}),
      r"layers\[0\]: unknown layer type 'Conv2D'; valid types: .*BatchNorm.*Conv.*Dense",
    ),
    (lambda d: d['layers'][0].update(channels=3), r'layers\[0\]: Conv has no field.*channels'),
    (lambda d: d['layers'][0].update(filters='8'), r'layers\[0\]: Conv\.filters must be int'),
    (lambda d: d['layers'][0].update(filters=8.0), r'layers\[0\]: Conv\.filters must be int'),
    (lambda d: d['layers'][0].update(use_bias='yes'), r'layers\[0\]: Conv\.use_bias must be bool'),
    (lambda d: d['layers'][2].update(features=True), r'layers\[2\]: Dense\.features must be int'),
    (lambda d: d['layers'][0].pop('filters'), r'layers\[0\]: .*filters'),
    (lambda d: d['layers'][1].pop('type'), r'layers\[1\]: expected an object with a "type"'),
    (lambda d: d['layers'].__setitem__(1, 'Flatten'), r'layers\[1\]: expected an object'),
    (lambda d: d.pop('input_shape'), r'missing field.*input_shape'),
    (lambda d: d.pop('layers'), r'missing field.*layers'),
    (lambda d: d.update(input_shape=[8, 8]), r'input_shape must be three positive integers'),
    (lambda d: d.update(input_shape=[8, 0, 1]), r'input_shape must be three positive integers'),
    (lambda d: d.update(input_shape=[8, '8', 1]), r'input_shape must be three positive integers'),
    (lambda d: d.update(layers={'type': 'Conv'}), r'layers must be a list'),
    (lambda d: d.update(layers='Conv'), r'layers must be a list'),
    (
      lambda d: d['layers'].insert(1, {'type': 'Residual', 'main': [{'type': 'Relu'}]}),
      r"layers\[1\]\.main\[0\]: unknown layer type 'Relu'",
    ),
    (
      lambda d: d['layers'].insert(1, {'type': 'Residual', 'main': [], 'skip': []}),
      r'layers\[1\]: Residual has no field.*skip',
    ),
    (
      lambda d: d['layers'].insert(1, {'type': 'Residual', 'main': 3}),
      r'layers\[1\]: Residual\.main must be a list',
    ),
    (
      lambda d: d['layers'].insert(1, {'type': 'Concat', 'branches': [{'type': 'ReLU'}]}),
      r'layers\[1\]: Concat\.branches must be a list of lists',
    ),
    (lambda d: d['layers'].insert(1, {'type': ['ReLU']}), r'layers\[1\]: unknown layer type'),
  ],
)
def test_malformed_specs_raise_spec_error(mutate, match):
  d = _good_spec_dict()
  mutate(d)
  with pytest.raises(S.SpecError, match=match):
    S.from_json(json.dumps(d))


def test_malformed_json_text_and_top_level():
  with pytest.raises(S.SpecError, match='not valid JSON'):
    S.from_json('{"name": ')
  with pytest.raises(S.SpecError, match='must be a JSON object'):
    S.from_json('[1, 2]')
  assert issubclass(S.SpecError, ValueError)


# --------------------------------------------------------------------------
# Shapes


def test_output_shapes_inferred():
  spec = zoo_spec('conv4')
  shapes = [st.out_shape for st in S.layer_stats(spec)]
  # 28 -conv5p1-> 26 -pool-> 13 -> 13 -> 13 -pool-> 6 -> 6 -avg6-> 1
  assert shapes[0] == (26, 26, 32) and shapes[1] == (13, 13, 32)
  assert shapes[8] == (6, 6, 64) and shapes[11] == (6, 6, 128)
  assert shapes[14] == (1, 1, 128) and shapes[-2] == (128,) and shapes[-1] == (10,)
  assert S.output_shape(spec) == (10,)
  assert S.num_classes(zoo_spec('resnet18', 100)) == 100
  # imagenet stem: 224 -7x7/2-> 112 -maxpool 3/2 pad 1-> 56 ... 7 -> global pool
  r = zoo_spec('resnet18_imagenet')
  st_r = S.layer_stats(r)
  assert st_r[0].out_shape == (112, 112, 64) and st_r[3].out_shape == (56, 56, 64)
  assert st_r[-4].out_shape == (7, 7, 512) and st_r[-3].out_shape == (1, 1, 512)
  # Same spec, other input: output shape queries take an input shape.
  assert S.output_shape(zoo_spec('resnet18'), (64, 48, 3)) == (10,)
  assert S.layer_stats(zoo_spec('resnet18'), (64, 48, 3))[-4].out_shape == (8, 6, 512)
  concat = NetSpec('c', (5, 5, 2), (Concat(((Conv(3, 1),), (Conv(4, 3, 1, 1),), ())),))
  assert S.output_shape(concat) == (5, 5, 9)
  pools = NetSpec('p', (7, 7, 2), (MaxPool(3, 2, 1), AvgPool(3, 2)))
  assert [st.out_shape for st in S.layer_stats(pools)] == [(4, 4, 2), (1, 1, 2)]
  # Ceil mode, as PyTorch's: 6 -> 3 (floor: 2); never a window wholly in padding.
  ceil = NetSpec('c', (6, 6, 1), (MaxPool(3, 2, ceil=True), MaxPool(2, 2, ceil=True)))
  assert [st.out_shape for st in S.layer_stats(ceil)] == [(3, 3, 1), (2, 2, 1)]


def test_ceil_mode_is_in_the_json_only_when_set():
  # Specs written before ceil mode existed keep their exact JSON, and so their
  # students' init seeds and architecture keys.
  floor = NetSpec('f', (8, 8, 1), (MaxPool(3, 2), Flatten(), Dense(2)))
  assert '"ceil"' not in S.to_json(floor)
  ceil = NetSpec('c', (8, 8, 1), (MaxPool(3, 2, ceil=True), Flatten(), Dense(2)))
  assert S.from_json(S.to_json(ceil)) == ceil and '"ceil": true' in S.to_json(ceil)
  with pytest.raises(S.SpecError, match='ceil must be bool'):
    S.from_json(S.to_json(ceil).replace('"ceil": true', '"ceil": 1'))


def test_squeezenet_takes_mnist_sized_inputs_with_ceil_mode_pools():
  # torchvision's SqueezeNet 1.1 pools in ceil mode; with floor mode its last
  # pool collapsed a 28x28 input (Table 3 on Fashion-MNIST).
  mnist = zoo.get('squeezenet1_1', (28, 28, 1), 10)
  pools = [
    st.out_shape[:2]
    for st, layer in zip(S.layer_stats(mnist), mnist.layers)
    if isinstance(layer, MaxPool)
  ]
  assert pools == [(6, 6), (3, 3), (1, 1)]
  assert S.output_shape(mnist) == (10,)
  # On CIFAR-sized inputs ceil and floor mode agree: the paper's 727K parameters.
  assert S.param_count(zoo_spec('squeezenet1_1')) == 727_626


@pytest.mark.parametrize(
  'layers, input_shape, match',
  [
    (
      (Conv(4, 3), Conv(4, 3), Conv(4, 3), Conv(4, 3), Flatten(), Dense(2)),
      (8, 8, 1),
      r'layers\[3\] \(Conv\): spatial size collapsed',
    ),
    (
      (Conv(4, 3, 1, 1), MaxPool(2, 2), MaxPool(2, 2), MaxPool(2, 2), Flatten(), Dense(2)),
      (4, 4, 1),
      r'layers\[3\] \(MaxPool\): spatial size collapsed',
    ),
    ((Conv(4, 3, 1, 1), Dense(2)), (8, 8, 1), r'layers\[1\] \(Dense\): needs a flat input'),
    (
      (Conv(4, 3, 1, 1), Residual((Conv(8, 3, 1, 1),), ()), Flatten(), Dense(2)),
      (8, 8, 4),
      r'layers\[1\] \(Residual\): main path gives \(8, 8, 8\) but shortcut gives \(8, 8, 4\)',
    ),
    (
      (Conv(4, 3, 1, 1), Residual((Conv(4, 3, 2, 1),), (Conv(4, 1),)), Flatten(), Dense(2)),
      (8, 8, 4),
      r'layers\[1\] \(Residual\)',
    ),
    (
      (Conv(4, 3, 1, 1), Residual((Conv(4, 9),), ()), Flatten(), Dense(2)),
      (8, 8, 4),
      r'layers\[1\]\.main\[0\] \(Conv\): spatial size collapsed',
    ),
    (
      (Conv(4, 3, 1, 1), Concat(((Conv(4, 1),), (Conv(4, 3),))), Flatten(), Dense(2)),
      (8, 8, 4),
      r'layers\[1\] \(Concat\): branch outputs .* differ in spatial size',
    ),
    (
      (Conv(4, 3, 1, 1), Flatten(), Conv(4, 1)),
      (8, 8, 4),
      r'layers\[2\] \(Conv\): needs an \(H, W, C\)',
    ),
    ((Conv(0, 3), Flatten(), Dense(2)), (8, 8, 4), r'layers\[0\] \(Conv\): filters must be >= 1'),
    ((Conv(4, 3), Dropout(1.0), Flatten(), Dense(2)), (8, 8, 4), r'layers\[1\] \(Dropout\)'),
    (
      (Conv(4, 3, 1, 1), GlobalAvgPool()),
      (8, 8, 4),
      r'ends with shape \(1, 1, 4\), not class logits',
    ),
    ((), (8, 8, 4), 'has no layers'),
  ],
)
def test_impossible_shapes_name_the_layer(layers, input_shape, match):
  with pytest.raises(S.SpecError, match=match):
    S.validate(NetSpec('bad', input_shape, layers))
  with pytest.raises(S.SpecError):
    models.build(NetSpec('bad', input_shape, layers))


# --------------------------------------------------------------------------
# Sites and removability


def test_removability_rules():
  spec = NetSpec(
    'all',
    (16, 16, 3),
    (
      Conv(8, 3, 1, 1),  # 0 first layer: fixed
      BatchNorm(),  # 1 yes
      ReLU(),  # 2 yes
      Conv(8, 3, 2, 1),  # 3 strided: no
      Conv(8, 3, 1, 1),  # 4 yes
      MaxPool(2, 2),  # 5 yes
      Dropout(0.3),  # 6 yes
      AvgPool(2, 2),  # 7 no
      Conv(8, 1),  # 8 yes
      Residual(
        (Conv(8, 3, 1, 1), BatchNorm(), ReLU(), Conv(8, 3, 2, 1), MaxPool(1, 1)), (Conv(8, 1, 2),)
      ),  # 9: inner 1 1 1 0 1; shortcut not a site
      GlobalAvgPool(),  # 10 no
      Flatten(),  # 11 no
      Dense(16),  # 12 no
      ReLU(),  # 13 yes
      Dropout(0.1),  # 14 yes
      Dense(4),  # 15 last: no
    ),
  )
  sites = S.sites(spec)
  got = {s.path: s.removable for s in sites}
  assert got == {
    (0,): False,
    (1,): True,
    (2,): True,
    (3,): False,
    (4,): True,
    (5,): True,
    (6,): True,
    (7,): False,
    (8,): True,
    (9, 'main', 0): True,
    (9, 'main', 1): True,
    (9, 'main', 2): True,
    (9, 'main', 3): False,
    (9, 'main', 4): True,
    (10,): False,
    (11,): False,
    (12,): False,
    (13,): True,
    (14,): True,
    (15,): False,
  }
  assert [s.path for s in sites] == list(got)  # policy order is layer order
  assert S.removable_count(spec) == 6 + 4 + 2 == 12
  inner = [s for s in sites if len(s.path) > 1]
  assert [(s.skip_start, s.skip_end) for s in inner] == [(1, 5), (2, 4), (3, 3), (4, 2), (5, 1)]
  assert all(s.skip_start == s.skip_end == 0 for s in sites if len(s.path) == 1)
  # First and last layers are fixed whatever their type.
  edge = NetSpec('edge', (4, 4, 1), (BatchNorm(), Conv(2, 1), Flatten(), Dense(2), ReLU()))
  assert [s.removable for s in S.sites(edge)] == [False, True, False, False, False]


def test_resnet18_sites_and_counts():
  spec = zoo_spec('resnet18')
  sites = S.sites(spec)
  # 3 stem layers, 8 blocks x (5 main layers + top-level ReLU), pool, flatten, dense.
  assert len(sites) == 3 + 8 * 6 + 3 == 54
  # Removable: stem BN + ReLU, 8 block ReLUs, 5 per block main path except the
  # strided first conv in the 3 downsampling blocks.
  assert S.removable_count(spec) == 2 + 8 + 8 * 5 - 3 == 47
  assert sum(s.removable for s in sites) == 47
  assert len(S.layer_features(spec)) == len(sites)
  assert not any('shortcut' in s.path for s in sites)
  n_shortcut = sum(len(l.shortcut) for l in spec.layers if isinstance(l, Residual))
  assert n_shortcut == 6
  assert len(sites) + n_shortcut == len(leaf_layers(spec.layers))
  with pytest.raises(ValueError, match='47 removable'):
    S.remove(spec, [True] * 46)
  with pytest.raises(ValueError):
    S.remove(spec, [True] * 48)


def test_resnet18_each_removal_removes_exactly_that_layer():
  spec = zoo_spec('resnet18')
  removable = [s for s in S.sites(spec) if s.removable]
  limit = S.param_count(spec) + 1  # removing a ReLU does not shrink the net
  n_leaves = len(leaf_layers(spec.layers))
  for i, site in enumerate(removable):
    keep = [True] * len(removable)
    keep[i] = False
    student = S.remove(spec, keep, max_params=limit)
    assert isinstance(student, NetSpec), (i, site.path, student)
    assert student == NetSpec(spec.name, spec.input_shape, delete_paths(spec.layers, {site.path}))
    assert len(leaf_layers(student.layers)) == n_leaves - 1
    alone = NetSpec('one', site.in_shape, (site.layer,))
    assert S.param_count(student) == S.param_count(spec) - S.param_count(alone)
    assert len(S.sites(student)) == len(S.sites(spec)) - 1
    assert S.removable_count(student) == len(removable) - 1


def test_resnet18_emptying_a_block_main_path():
  spec = zoo_spec('resnet18')
  sites = S.sites(spec)
  removable = [s for s in sites if s.removable]
  blocks = [i for i, l in enumerate(spec.layers) if isinstance(l, Residual)]
  assert len(blocks) == 8
  for b in blocks:
    keep = [not (s.path[0] == b and s.path[1] == 'main') for s in removable]
    student = S.remove(spec, keep)
    assert isinstance(student, NetSpec), (b, student)
    block = student.layers[b]
    original = spec.layers[b]
    if original.shortcut:  # downsampling block: only the strided conv is left
      assert block.main == (original.main[0],) and original.main[0].stride == 2
      assert block.shortcut == original.shortcut
    else:  # identity block: out = x + x
      assert block == Residual((), ())
    S.validate(student)
    check_residuals_aligned(student)


def test_keep_all_is_not_smaller_and_wrong_lengths_raise():
  for name in ('vgg13', 'resnet18', 'squeezenet1_1'):
    spec = zoo_spec(name)
    n = S.removable_count(spec)
    verdict = S.remove(spec, [True] * n)
    assert isinstance(verdict, S.Degenerate) and verdict.kind == 'not_smaller'
    assert S.is_degenerate(verdict)
    assert S.remove(spec, [True] * n, max_params=S.param_count(spec) + 1) == spec
    with pytest.raises(ValueError):
      S.remove(spec, [True] * (n + 1))
    with pytest.raises(ValueError):
      S.shrink(spec, [1.0] * (len(S.shrink_vars(spec)) + 1))
    with pytest.raises(ValueError):
      S.shrink(spec, [1.0] * len(S.shrink_vars(spec)), kernels=True)


def test_vgg_removing_a_conv_passes_the_previous_width_on():
  spec = zoo.get('vgg13', (28, 28, 1), 10)
  removable = [s for s in S.sites(spec) if s.removable]
  # layers: 0 conv64 1 BN 2 ReLU 3 conv64 4 BN 5 ReLU 6 M 7 conv128 8 BN 9 ReLU 10 conv128
  assert spec.layers[7] == Conv(128, 3, 1, 1) and spec.layers[10] == Conv(128, 3, 1, 1)
  keep = [s.path not in {(7,), (8,)} for s in removable]
  student = S.remove(spec, keep)
  assert isinstance(student, NetSpec)
  stats = S.layer_stats(student)
  # The old layer 10 is now layer 8 and reads the 64 channels of the first block.
  assert student.layers[8] == Conv(128, 3, 1, 1)
  assert stats[8].in_shape == (14, 14, 64) and stats[8].out_shape == (14, 14, 128)
  assert stats[8].params == 9 * 64 * 128 + 128
  assert S.param_count(spec) - S.param_count(student) == (
    (9 * 64 * 128 + 128) + 2 * 128 + (9 * 128 * 128 + 128) - (9 * 64 * 128 + 128)
  )


def test_vgg13_removing_all_maxpools_is_degenerate():
  spec = zoo.get('vgg13', (28, 28, 1), 10)
  assert sum(isinstance(l, MaxPool) for l in spec.layers) == 4
  keep = [not isinstance(s.layer, MaxPool) for s in S.sites(spec) if s.removable]
  verdict = S.remove(spec, keep)
  assert isinstance(verdict, S.Degenerate)
  assert verdict.kind in ('dense_input_too_large', 'invalid_shape')
  # 28x28x512 flattened is over the 50,000-input limit.
  assert verdict.kind == 'dense_input_too_large' and '401,408' in verdict.reason
  # Raising the limits lets it through.
  assert isinstance(S.remove(spec, keep, max_dense_inputs=10**6, max_params=10**9), NetSpec)


def test_removal_breaking_a_residual_add_is_invalid_shape():
  # A stride-1 width-changing conv just before an identity block.
  spec = NetSpec(
    'r',
    (8, 8, 3),
    (
      Conv(4, 3, 1, 1),
      Conv(8, 3, 1, 1),
      Residual((Conv(8, 3, 1, 1),), ()),
      GlobalAvgPool(),
      Flatten(),
      Dense(2),
    ),
  )
  removable = [s for s in S.sites(spec) if s.removable]
  assert [s.path for s in removable] == [(1,), (2, 'main', 0)]
  verdict = S.remove(spec, [False, True])
  assert isinstance(verdict, S.Degenerate) and verdict.kind == 'invalid_shape'
  assert 'layers[1] (Residual)' in verdict.reason


def test_layer_features_one_row_per_site_in_unit_range():
  for name in zoo.NAMES:
    spec = zoo_spec(name)
    feats = np.asarray(S.layer_features(spec), dtype=np.float64)
    sites = S.sites(spec)
    assert feats.shape == (len(sites), len(S.FEATURE_NAMES)), name
    assert np.all(np.isfinite(feats)), name
    assert feats.min() >= 0.0 and feats.max() <= 1.0, (name, feats.max(axis=0))
    n_types = len(S.LAYER_TYPES)
    np.testing.assert_array_equal(feats[:, :n_types].sum(axis=1), 1.0)
    for row, site in zip(feats, sites):
      assert S.LAYER_TYPES[int(np.argmax(row[:n_types]))] is type(site.layer)
  feats = S.layer_features(zoo_spec('conv4'))
  names = S.FEATURE_NAMES
  # AvgPool(6, 6) and MaxPool(2, 2) must not look alike.
  avg = [r for r, s in zip(feats, S.sites(zoo_spec('conv4'))) if isinstance(s.layer, AvgPool)][0]
  mp = [r for r, s in zip(feats, S.sites(zoo_spec('conv4'))) if isinstance(s.layer, MaxPool)][0]
  assert avg[names.index('stride')] > mp[names.index('stride')]
  assert avg[names.index('kernel')] > mp[names.index('kernel')]


def test_layer_features_of_out_of_range_custom_spec_stay_in_unit_range():
  spec = NetSpec(
    'wide',
    (64, 64, 3),
    (
      Conv(8, 11, 1, 5),
      Residual(tuple([ReLU()] * 12), ()),
      MaxPool(16, 16),
      Flatten(),
      Dense(10000),
      ReLU(),
      Dense(3),
    ),
  )
  feats = np.asarray(S.layer_features(spec))
  assert np.all(np.isfinite(feats)) and feats.min() >= 0 and feats.max() <= 1


# --------------------------------------------------------------------------
# Shrink semantics


def test_shrink_all_ones_reproduces_the_spec():
  for name in zoo.NAMES:
    spec = zoo_spec(name)
    for kernels in (False, True):
      n = len(S.shrink_vars(spec, kernels))
      verdict = S.shrink(spec, [1.0] * n, kernels=kernels)
      assert isinstance(verdict, S.Degenerate) and verdict.kind == 'not_smaller', name
      same = S.shrink(spec, [1.0] * n, kernels=kernels, max_params=S.param_count(spec) + 1)
      assert same == spec, name
  # Even kernels too.
  spec = NetSpec('even', (8, 8, 1), (Conv(4, 2), Conv(4, 4, 1, 2), Flatten(), Dense(2)))
  n = len(S.shrink_vars(spec, True))
  assert S.shrink(spec, [1.0] * n, kernels=True, max_params=10**9) == spec


def test_shrink_vars_cover_every_conv_and_dense_but_the_class_layer():
  spec = zoo_spec('fitnet4')
  widths = S.shrink_vars(spec)
  assert len(widths) == 15 + 1  # 15 convs and the hidden Dense(500)
  assert all(v.variable == 'width' for v in widths)
  with_k = S.shrink_vars(spec, kernels=True)
  assert [v for v in with_k if v.variable == 'width'] == widths
  assert sum(v.variable == 'kernel' for v in with_k) == 15
  r = zoo_spec('resnet18')
  paths = [v.path for v in S.shrink_vars(r)]
  assert len(paths) == 1 + 8 * 2  # stem + two convs per block; shortcuts follow
  assert not any('shortcut' in p for p in paths)
  sq = zoo_spec('squeezenet1_1')
  assert len(S.shrink_vars(sq)) == 1 + 8 * 3
  # squeezenet: 1x1 convs have no kernel variable.
  assert sum(v.variable == 'kernel' for v in S.shrink_vars(sq, True)) == 1 + 8


def test_shrink_floor_and_rounding_exact():
  spec = NetSpec(
    'n',
    (8, 8, 1),
    (Conv(3, 3, 1, 1), Conv(20, 3, 1, 1), Conv(64, 3, 1, 1), Flatten(), Dense(50), Dense(2)),
  )
  s = S.shrink(spec, [0.1, 0.1, 0.5, 0.3])
  assert isinstance(s, NetSpec)
  assert [s.layers[i].filters for i in range(3)] == [1, 2, 32]  # floor of one channel
  assert s.layers[4].features == 15 and s.layers[5] == Dense(2)
  s8 = S.shrink(spec, [0.1, 0.5, 0.3, 0.7], round_to=8)
  # 3 < 8 stays <= original; 10 -> 8; round(19.2 / 8) * 8 = 16; 35 -> 32
  assert [s8.layers[i].filters for i in range(3)] == [3, 8, 16]
  assert s8.layers[4].features == 32
  with pytest.raises(ValueError, match=r'\(0, 1\]'):
    S.shrink(spec, [0.0, 0.5, 0.5, 0.5])
  with pytest.raises(ValueError):
    S.shrink(spec, [1.5, 0.5, 0.5, 0.5])
  # Halves round up (not to even), and factor 1.0 is the identity even with round_to.
  half = S.shrink(spec, [1.0, 1.0, 0.5, 1.0], round_to=8, max_params=10**9)
  assert half.layers[0].filters == 3 and half.layers[4] == Dense(50)
  assert (
    S.shrink(NetSpec('h', (8, 8, 1), (Conv(5, 3, 1, 1), Flatten(), Dense(2))), [0.5])
    .layers[0]
    .filters
    == 3
  )
  # numpy scalars, as a policy might hand them over, are accepted.
  s_np = S.shrink(spec, list(np.asarray([0.1, 0.1, 0.5, 0.3], np.float32)))
  assert s_np == s


def test_shrink_kernels_exact():
  spec = NetSpec(
    'k', (16, 16, 1), (Conv(8, 5, 1, 2), Conv(8, 7, 1, 1), Conv(8, 3, 2, 1), Flatten(), Dense(2))
  )
  vs = S.shrink_vars(spec, kernels=True)
  assert [(v.path, v.variable) for v in vs] == [
    ((0,), 'width'),
    ((0,), 'kernel'),
    ((1,), 'width'),
    ((1,), 'kernel'),
    ((2,), 'width'),
    ((2,), 'kernel'),
  ]
  s = S.shrink(spec, [1.0, 0.6, 1.0, 0.5, 1.0, 0.1], kernels=True)
  # 5*0.6 = 3, 'same' kept: pad 1; 7*0.5 = 3.5 -> 4 -> odd 3, pad scales 1*3/7 -> 0;
  # 3*0.1 -> 1, 'same' -> pad 0
  assert s.layers[0] == Conv(8, 3, 1, 1)
  assert s.layers[1] == Conv(8, 3, 1, 0)
  assert s.layers[2] == Conv(8, 1, 2, 0)


def resnet18_block_groups(spec):
  """Expected width groups of zoo ResNet-18, from its known layout: the stem
  and every stage's block outputs (and projection shortcuts) share a width."""
  blocks = [i for i, l in enumerate(spec.layers) if isinstance(l, Residual)]
  groups = {0: [(0,)]}
  for n, b in enumerate(blocks):
    stage = n // 2
    groups.setdefault(stage, []).append((b, 'main', 3))
  return blocks, groups


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_shrink_ties_resnet18_widths(data):
  spec = zoo_spec('resnet18')
  variables = S.shrink_vars(spec)
  factors = data.draw(
    st.lists(st.sampled_from(SHRINK_ACTIONS), min_size=len(variables), max_size=len(variables))
  )
  round_to = data.draw(st.sampled_from([1, 8]))
  student = S.shrink(spec, factors, round_to=round_to)
  by_path = dict(zip([v.path for v in variables], factors))
  blocks, groups = resnet18_block_groups(spec)

  def expected(width, f):
    if f >= 1.0:
      return width
    new = max(1, int(math.floor(width * f + 0.5)))
    if round_to > 1:
      new = min(width, max(round_to, int(math.floor(new / round_to + 0.5)) * round_to))
    return new

  if isinstance(student, S.Degenerate):
    assert student.kind == 'not_smaller'
    same = S.shrink(spec, factors, round_to=round_to, max_params=10**12)
    assert S.param_count(same) >= S.param_count(spec)
    return
  check_shrunk(student, spec, round_to, kernels=False)
  for stage, members in groups.items():
    width = 64 * 2**stage
    mean = sum(by_path[p] for p in members) / len(members)
    want = expected(width, mean)
    for p in members:
      layer = student.layers[p[0]] if len(p) == 1 else student.layers[p[0]].main[p[2]]
      assert layer.filters == want
    for n, b in enumerate(blocks):
      if n // 2 == stage and student.layers[b].shortcut:
        assert student.layers[b].shortcut[0].filters == want
  for b in blocks:  # free widths: the first conv of each block
    first = spec.layers[b].main[0]
    assert student.layers[b].main[0].filters == expected(first.filters, by_path[(b, 'main', 0)])
  for layer in student.layers:
    if isinstance(layer, Residual) and layer.shortcut:
      assert layer.main[3].filters == layer.shortcut[0].filters
  check_residuals_aligned(student)


def test_shrink_concat_then_residual_freezes_the_width():
  # A Residual whose main path ends in a concatenation cannot be shrunk (its
  # width is a sum); the layers feeding the add keep their widths.
  spec = NetSpec(
    'cr',
    (8, 8, 4),
    (
      Conv(4, 3, 1, 1),
      Residual((Concat(((Conv(2, 1),), (Conv(2, 3, 1, 1),))),), ()),
      Conv(6, 3, 1, 1),
      Flatten(),
      Dense(2),
    ),
  )
  # Convs nested two containers deep are not sites, so only layers 0 and 2
  # have width variables.
  n = len(S.shrink_vars(spec))
  assert n == 2
  s = S.shrink(spec, [0.5] * n)
  assert isinstance(s, NetSpec)
  assert s.layers[0].filters == 4 and s.layers[1] == spec.layers[1]
  assert s.layers[2].filters == 3


# --------------------------------------------------------------------------
# Property tests over every zoo teacher and small custom teachers


keep_masks = lambda n: st.lists(st.booleans(), min_size=n, max_size=n)
factor_lists = lambda n: st.lists(st.sampled_from(SHRINK_ACTIONS), min_size=n, max_size=n)


def random_remove(data, spec):
  n = S.removable_count(spec)
  # Mostly-keep masks as well as uniform ones, so that valid students are common.
  p_drop = data.draw(st.sampled_from([0.1, 0.5]))
  keep = data.draw(
    st.lists(st.floats(0, 1), min_size=n, max_size=n).map(lambda us: [u >= p_drop for u in us])
  )
  result = S.remove(spec, keep)
  return check_verdict(result, expected_removal(spec, keep), spec)


def random_shrink(data, spec):
  kernels = data.draw(st.booleans())
  round_to = data.draw(st.sampled_from([1, 8]))
  n = len(S.shrink_vars(spec, kernels))
  factors = data.draw(factor_lists(n))
  result = S.shrink(spec, factors, kernels=kernels, round_to=round_to)
  if isinstance(result, S.Degenerate):
    assert result.kind in S.DEGENERATE_KINDS
    if result.kind == 'not_smaller':  # rounding can undo small factors
      same = S.shrink(spec, factors, kernels=kernels, round_to=round_to, max_params=10**12)
      assert S.param_count(same) >= S.param_count(spec)
    return None
  S.validate(result)
  assert S.param_count(result) < S.param_count(spec)
  assert S.output_shape(result) == S.output_shape(spec)
  check_shrunk(result, spec, round_to, kernels)
  return result


@pytest.mark.parametrize('name', zoo.NAMES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_transforms_on_zoo_teachers_never_raise(name, data):
  spec = zoo_spec(name)
  random_remove(data, spec)
  random_shrink(data, spec)


BIG_NAMES = [n for n in zoo.NAMES if n not in SMALL_TEACHER_NAMES]


@pytest.mark.slow
@pytest.mark.parametrize('name', BIG_NAMES)
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_big_teacher_students_build_with_matching_counts(name, data):
  spec = zoo_spec(name)
  for student in (random_remove(data, spec), random_shrink(data, spec)):
    if student is not None:
      check_model(student, run_forward=False)


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(SMALL_TEACHERS))
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_small_teacher_students_run(name, data):
  spec = SMALL_TEACHERS[name]()
  S.validate(spec)
  for student in (random_remove(data, spec), random_shrink(data, spec)):
    if student is not None:
      check_model(student, run_forward=True)


def test_small_custom_teachers_are_what_they_claim():
  r = small_resnet()
  assert S.output_shape(r) == (5,)
  assert S.removable_count(r) == 2 + 3 + 5 + 4 + 5
  groups = S.width_groups(r)
  # stem and first block output tied; the projection block's output, its
  # shortcut and the last block's output tied.
  assert groups[(0,)] == groups[(3, 'main', 3)]
  assert groups[(5, 'main', 3)] == groups[(5, 'shortcut', 0)] == groups[(7, 'main', 3)]
  assert groups[(0,)] != groups[(5, 'main', 3)]
  assert len({groups[(3, 'main', 0)], groups[(5, 'main', 0)], groups[(7, 'main', 0)]}) == 3
  q = small_squeezenet()
  assert S.output_shape(q) == (5,)
  assert [st.out_shape for st in S.layer_stats(q)][2] == (3, 3, 8)
  assert S.layer_stats(q)[5].out_shape == (3, 3, 16)


def test_short_text_pictures_the_layers():
  assert S.short_text(zoo.get('digits_cnn', (8, 8, 1), 10)) == (
    'C32 B R C32 B R M C64 B R C64 B R M C128 B R M D F L10'
  )
  block = zoo.basic_block(128, 2, 64)[0]
  assert S.short_text((block,)) == 'Res[C128/2 B R C128 B|C128k1/2 B]'
  assert S.short_text(zoo.fire(16, 64)) == 'C16k1 R Cat[C64k1 R|C64 R]'


def test_switched_layers_are_normalised_and_checked():
  layers = (Conv(4, padding=1), ReLU(), Flatten(), Dense(10))
  spec = S.NetSpec('s', (8, 8, 1), layers, switched=[1, 0, 1])
  assert spec.switched == (0, 1) and spec == S.NetSpec('s', (8, 8, 1), layers, (0, 1))
  assert spec != S.NetSpec('s', (8, 8, 1), layers)  # a switched network is another program
  S.validate(spec)
  with pytest.raises(S.SpecError, match=r'switches layers \[1, 4\], but it has 4 layers'):
    S.validate(S.NetSpec('s', (8, 8, 1), layers, switched=(1, 4)))
