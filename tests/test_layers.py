"""Tests for the layer-type registry in n2n_jax.spec: every layer type is one
registered class, variable names come from spec.scope_name alone and are
those saved variables hold, the policies' feature layout is fixed, and a new
layer type needs nothing beyond its class."""

import dataclasses

import jax
import numpy as np
import pytest

from n2n_jax import models
from n2n_jax import padding as P
from n2n_jax import pruning
from n2n_jax import spec as S
from n2n_jax.spec import BatchNorm
from n2n_jax.spec import Concat
from n2n_jax.spec import Conv
from n2n_jax.spec import Dense
from n2n_jax.spec import Flatten
from n2n_jax.spec import GlobalAvgPool
from n2n_jax.spec import MaxPool
from n2n_jax.spec import NetSpec
from n2n_jax.spec import ReLU
from n2n_jax.spec import Residual


def test_the_registry_holds_every_layer_type():
  assert sorted(S.REGISTRY) == [
    'AvgPool',
    'BatchNorm',
    'Concat',
    'Conv',
    'Dense',
    'Dropout',
    'Flatten',
    'GlobalAvgPool',
    'MaxPool',
    'ReLU',
    'Residual',
  ]
  for name, cls in S.REGISTRY.items():
    assert cls.__name__ == name and issubclass(cls, S.LayerType)
    assert cls.channels in S.CHANNEL_ROLES


def test_the_policies_feature_layout_is_fixed():
  # Trained policies read exactly these columns, in this order.
  assert S.FEATURE_NAMES == (
    'type_Conv',
    'type_BatchNorm',
    'type_ReLU',
    'type_MaxPool',
    'type_AvgPool',
    'type_GlobalAvgPool',
    'type_Dropout',
    'type_Flatten',
    'type_Dense',
    'kernel',
    'stride',
    'padding',
    'outputs',
    'skip_start',
    'skip_end',
  )


def test_scope_names_are_the_saved_ones():
  assert S.scope_name((3,)) == '3'
  assert S.scope_name((5, 'main', 1)) == '5_main_1'
  assert S.scope_name((9, 'branches', 1, 0), Conv(4)) == '9_branches_1_0_Conv'
  spec = NetSpec(
    'names',
    (8, 8, 3),
    (
      Conv(4, 3, 1, 1),
      BatchNorm(),
      ReLU(),
      Residual((Conv(4, 3, 1, 1), BatchNorm()), (Conv(4, 1),)),
      Concat(((Conv(2, 1),), (ReLU(),))),
      GlobalAvgPool(),
      Flatten(),
      Dense(3),
    ),
  )
  shapes = models.variable_shapes(models.build(spec), spec.input_shape)
  assert sorted(shapes['params']) == sorted(
    [
      '0_Conv',
      '1_BatchNorm',
      '3_main_0_Conv',
      '3_main_1_BatchNorm',
      '3_shortcut_0_Conv',
      '4_branches_0_0_Conv',
      '7_Dense',
    ]
  )
  assert sorted(shapes['batch_stats']) == ['1_BatchNorm', '3_main_1_BatchNorm']
  # Read back in one place too: path and type, and the network's order.
  for name in shapes['params']:
    path, kind = S.scope_parts(name)
    assert kind in S.REGISTRY and f'{S.scope_name(path)}_{kind}' == name
  assert S.scope_parts('3_main_1_BatchNorm') == ((3, 'main', 1), 'BatchNorm')
  assert S.scope_parts('4_branches_0_0') == ((4, 'branches', 0, 0), '')
  order = sorted(
    ['11_Dense', '3_shortcut_0_Conv', '3_main_1_BatchNorm', '3_main_0_Conv', '2_Conv'],
    key=models._network_order,
  )  # pylint: disable=protected-access
  assert order == ['2_Conv', '3_main_0_Conv', '3_main_1_BatchNorm', '3_shortcut_0_Conv', '11_Dense']


def test_register_refuses_a_type_that_does_not_say_what_it_is():

  def define(**attributes):
    body = {
      'stats': lambda self, shape, where: None,
      'flax': lambda self, *a: None,
      'short': lambda self: 'X',
      '__annotations__': {},
      **attributes,
    }
    return dataclasses.dataclass(frozen=True)(type('Toy', (S.LayerType,), body))

  with pytest.raises(TypeError, match='channels must be one of'):
    S.register(define())
  with pytest.raises(TypeError, match='width_field'):
    S.register(define(channels=S.SETS))
  with pytest.raises(TypeError, match="'add' or 'concat'"):
    S.register(define(channels=S.BLOCK))
  with pytest.raises(TypeError, match='does not define stats'):
    S.register(define(channels=S.KEEPS, stats=S.LayerType.stats))
  with pytest.raises(ValueError, match='registered twice'):
    S.register(S.Conv)
  assert 'Toy' not in S.REGISTRY


# ---- a new layer type is its class alone


@dataclasses.dataclass(frozen=True)
class Identity(S.LayerType):
  """A toy layer type: no parameters, passes its input on, removable."""

  channels = S.KEEPS

  def stats(self, shape, where):
    return S.LayerStats(shape, shape, 0, 0)

  def flax(self, net, x, train, path):
    return x

  def removable(self):
    return True

  def short(self):
    return 'I'

  def switchable(self, shape):
    return True


@pytest.fixture
def identity():
  S.register(Identity)
  yield Identity
  del S.REGISTRY['Identity']


def test_a_new_layer_type_is_one_class(identity):
  spec = NetSpec(
    'toy',
    (6, 6, 2),
    (
      Conv(4, 3, 1, 1),
      identity(),
      ReLU(),
      Conv(5, 3, 1, 1),
      identity(),
      MaxPool(2, 2),
      Flatten(),
      Dense(3),
    ),
  )
  plain = NetSpec('toy', (6, 6, 2), tuple(l for l in spec.layers if not isinstance(l, identity)))
  assert S.param_count(spec) == S.param_count(plain)
  assert S.flops(spec) == S.flops(plain)
  assert S.from_json(S.to_json(spec)) == spec
  assert S.short_text(spec) == 'C4 I R C5 I M F L3'
  # Removable, and seen by the policies with no type column of its own.
  sites = S.sites(spec)
  assert [s.removable for s in sites if isinstance(s.layer, identity)] == [True, True]
  features = np.asarray(S.layer_features(spec))
  assert features.shape == (len(spec.layers), len(S.FEATURE_NAMES))
  assert not features[1, : len(S.LAYER_TYPES)].any()
  assert (
    S.remove(spec, [i != 0 for i in range(S.removable_count(spec))], max_params=10**9).layers[1]
    == ReLU()
  )

  # Built and run, it is the network without it.
  x = np.random.default_rng(0).standard_normal((2, 6, 6, 2)).astype(np.float32)
  model = models.build(spec)
  variables = models.init_variables(model, 0, spec.input_shape)
  logits = model.apply(variables, x)
  assert sorted(variables['params']) == ['0_Conv', '3_Conv', '7_Dense']
  renamed = {
    'params': {
      '0_Conv': variables['params']['0_Conv'],
      '2_Conv': variables['params']['3_Conv'],
      '5_Dense': variables['params']['7_Dense'],
    },
    'batch_stats': {},
  }
  np.testing.assert_allclose(models.build(plain).apply(renamed, x), logits, rtol=1e-6)

  # Padding: removed, it is switched off inside its source's program.
  student = S.remove(
    spec, [not isinstance(s.layer, identity) for s in sites if s.removable], max_params=10**9
  )
  wide, on = P.with_switches(student, spec)
  assert [i for i, o in enumerate(on) if not o] == [1, 4]
  places = P.embedding(student, wide, on)
  wide_shapes = models.variable_shapes(models.build(wide), wide.input_shape)
  student_vars = models.init_variables(models.build(student), 1, student.input_shape)
  padded = P.pad(jax.device_get(student_vars), places, wide_shapes, on)
  np.testing.assert_allclose(
    models.build(wide).apply(padded, x),
    models.build(student).apply(student_vars, x),
    rtol=1e-5,
    atol=1e-6,
  )

  # Pruning: the first conv's channels pass through it to the second conv.
  units = pruning.prunable_convs(spec)
  assert [(u.path, u.tap, u.consumer) for u in units] == [
    ((0,), '2', '3_Conv'),
    ((3,), '3', '7_Dense'),
  ]
  pruned, _ = pruning.prune(spec, variables, {(0,): [1]})
  assert pruned.layers[0].filters == 3
