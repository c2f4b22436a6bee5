"""Tests for n2n_jax.zoo: the named architectures, their exact parameter
counts (the paper's and the authors' code's numbers) and their structure."""

import pytest

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

ZOO_SHAPES = {
  'conv4': (28, 28, 1),
  'digits_cnn': (8, 8, 1),
  'digits_cnn_deep': (8, 8, 1),
  'resnet18_imagenet': (224, 224, 3),
  'resnet34_imagenet': (224, 224, 3),
}


def shape_for(name):
  return ZOO_SHAPES.get(name, (32, 32, 3))


def count(spec, kind):
  return sum(isinstance(l, kind) for l in S.iter_layers(spec.layers))


@pytest.mark.parametrize(
  'name, shape, classes, params',
  [
    ('vgg13', (28, 28, 1), 10, 9_414_858),  # MNIST VGG-13 (paper: 9.4M)
    ('vgg19', (32, 32, 3), 10, 20_040_522),  # CIFAR-10 VGG-19
    ('resnet18', (32, 32, 3), 10, 11_173_962),  # CIFAR-10 ResNet-18
    ('resnet34', (32, 32, 3), 10, 21_282_122),  # CIFAR-10 ResNet-34
    ('resnet18', (32, 32, 3), 100, 11_220_132),  # CIFAR-100 ResNet-18
    ('resnet34', (32, 32, 3), 100, 21_328_292),  # CIFAR-100 ResNet-34
    ('resnet18_imagenet', (224, 224, 3), 256, 11_307_840),  # Caltech-256 (paper: 11.31M)
    ('squeezenet1_1', (32, 32, 3), 10, 727_626),  # paper: 727K
    ('digits_cnn', (8, 8, 1), 10, 140_778),  # the bundled digits' teacher
    ('digits_cnn_deep', (8, 8, 1), 10, 325_674),  # its deeper Table-5 partner
  ],
)
def test_exact_parameter_counts(name, shape, classes, params):
  spec = zoo.get(name, shape, classes)
  S.validate(spec)
  assert S.param_count(spec) == params
  assert S.output_shape(spec) == (classes,)


def test_parameter_counts_do_not_depend_on_input_size_where_pooled_globally():
  # Global pooling makes these independent of the image size.
  for name in ('resnet18', 'squeezenet1_1'):
    assert S.param_count(zoo.get(name, (32, 32, 3), 10)) == S.param_count(
      zoo.get(name, (224, 224, 3), 10)
    )
  assert S.param_count(zoo.get('resnet18_imagenet', (224, 224, 3), 1000)) == 11_689_512
  # VGG-19 on 224x224: five pools to 7x7, then a global pool, same Linear(512).
  big = zoo.get('vgg19', (224, 224, 3), 10)
  assert isinstance(big.layers[-3], GlobalAvgPool)
  assert S.param_count(big) == 20_040_522


@pytest.mark.parametrize('name', zoo.NAMES)
def test_every_name_builds_a_valid_spec(name):
  spec = zoo.get(name, shape_for(name), 7)
  assert isinstance(spec, NetSpec)
  assert spec.name == name
  assert spec.input_shape == shape_for(name)
  S.validate(spec)
  assert S.output_shape(spec) == (7,)
  assert S.num_classes(spec) == 7
  assert spec.layers[-1] == Dense(7)
  # Pure: the same arguments give an equal, equally hashed spec.
  again = zoo.get(name, list(shape_for(name)), 7)
  assert again == spec and hash(again) == hash(spec)
  assert S.param_count(spec) < S.param_count(zoo.get(name, shape_for(name), 70))
  # The policies need something to act on.
  assert S.removable_count(spec) > 0
  assert len(S.shrink_vars(spec)) > 0


def test_names_registry():
  assert set(zoo.NAMES) == set(zoo.BUILDERS)
  for required in (
    'conv4',
    'vgg11',
    'vgg13',
    'vgg16',
    'vgg19',
    'resnet18',
    'resnet34',
    'resnet18_imagenet',
    'resnet34_imagenet',
    'fitnet4',
    'squeezenet1_1',
    'vgg_small',
    'digits_cnn',
    'digits_cnn_deep',
  ):
    assert required in zoo.NAMES
  with pytest.raises(KeyError, match=r"unknown architecture 'vgg20'; valid names: .*vgg19"):
    zoo.get('vgg20', (32, 32, 3), 10)
  with pytest.raises(ValueError, match='unknown ResNet stem'):
    zoo.resnet((2, 2, 2, 2), (32, 32, 3), 10, stem='tiny')


@pytest.mark.parametrize('name, convs', [('vgg11', 8), ('vgg13', 10), ('vgg16', 13), ('vgg19', 16)])
def test_vgg_structure(name, convs):
  spec = zoo.get(name, (32, 32, 3), 10)
  assert count(spec, Conv) == convs == count(spec, BatchNorm)
  assert count(spec, MaxPool) == 5
  assert count(spec, Dense) == 1
  assert all(
    c.kernel == 3 and c.padding == 1 and c.stride == 1 and c.use_bias
    for c in spec.layers
    if isinstance(c, Conv)
  )
  # conv -> BN -> ReLU triples.
  for i, layer in enumerate(spec.layers):
    if isinstance(layer, Conv):
      assert isinstance(spec.layers[i + 1], BatchNorm) and isinstance(spec.layers[i + 2], ReLU)
  assert spec.layers[-2:] == (Flatten(), Dense(10))
  assert S.layer_stats(spec)[-2].in_shape == (1, 1, 512)


def test_mnist_vgg13_drops_the_fifth_pool():
  spec = zoo.get('vgg13', (28, 28, 1), 10)
  pools = [
    st.out_shape for l, st in zip(spec.layers, S.layer_stats(spec)) if isinstance(l, MaxPool)
  ]
  assert pools == [(14, 14, 64), (7, 7, 128), (3, 3, 256), (1, 1, 512)]
  assert not any(isinstance(l, GlobalAvgPool) for l in spec.layers)
  assert S.layer_stats(spec)[0].in_shape == (28, 28, 1)


@pytest.mark.parametrize('name, blocks', [('resnet18', (2, 2, 2, 2)), ('resnet34', (3, 4, 6, 3))])
def test_resnet_structure(name, blocks):
  spec = zoo.get(name, (32, 32, 3), 10)
  residuals = [l for l in spec.layers if isinstance(l, Residual)]
  assert len(residuals) == sum(blocks)
  # Projection shortcuts (1x1 conv + BN) only where a stage begins, after the first.
  projections = [r for r in residuals if r.shortcut]
  assert len(projections) == 3
  for r in projections:
    assert r.shortcut[0].kernel == 1 and r.shortcut[0].stride == 2
    assert isinstance(r.shortcut[1], BatchNorm) and len(r.shortcut) == 2
    assert r.main[0].stride == 2
  # Every block is followed by a top-level ReLU (after the add).
  for i, layer in enumerate(spec.layers):
    if isinstance(layer, Residual):
      assert spec.layers[i + 1] == ReLU()
      assert [type(l) for l in layer.main] == [Conv, BatchNorm, ReLU, Conv, BatchNorm]
  # Layers with weights: stem, two per block, the Linear: 18 or 34.
  depth = 1 + 2 * sum(blocks) + 1
  assert depth == int(name[len('resnet') :])
  assert all(not c.use_bias for c in S.iter_layers(spec.layers) if isinstance(c, Conv))
  assert spec.layers[0] == Conv(64, 3, 1, 1, use_bias=False)
  stats = S.layer_stats(spec)
  assert stats[-3].in_shape == (4, 4, 512)  # kuangliu's avgpool(4) on 4x4
  assert spec.layers[-3:] == (GlobalAvgPool(), Flatten(), Dense(10))


def test_resnet_imagenet_stem():
  spec = zoo.get('resnet18_imagenet', (224, 224, 3), 256)
  assert spec.layers[:4] == (
    Conv(64, 7, 2, 3, use_bias=False),
    BatchNorm(),
    ReLU(),
    MaxPool(3, 2, 1),
  )
  assert S.layer_stats(spec)[3].out_shape == (56, 56, 64)


def test_small_teachers_and_hand_designed_students():
  conv4 = zoo.get('conv4', (28, 28, 1), 10)
  assert count(conv4, Conv) == 4 and count(conv4, MaxPool) == 2
  assert [c.kernel for c in conv4.layers if isinstance(c, Conv)] == [5, 3, 3, 3]
  assert [c.filters for c in conv4.layers if isinstance(c, Conv)] == [32, 64, 64, 128]
  assert AvgPool(6, 6) in conv4.layers and Dropout(0.2) in conv4.layers
  assert S.layer_stats(conv4)[-2].in_shape == (1, 1, 128)

  digits = zoo.get('digits_cnn', (8, 8, 1), 10)
  assert count(digits, Conv) == 5
  assert S.layer_stats(digits)[-2].in_shape == (1, 1, 128)

  # The deeper digits teacher: the same blocks with one more 64 and one more
  # 128 conv, so the pair differs in depth only (Table 5's transfer pair).
  deep = zoo.get('digits_cnn_deep', (8, 8, 1), 10)
  assert [c.filters for c in deep.layers if isinstance(c, Conv)] == [32, 32, 64, 64, 64, 128, 128]
  assert count(deep, MaxPool) == count(digits, MaxPool) == 3
  assert deep.layers[-4:] == digits.layers[-4:]  # MaxPool, Dropout, Flatten, Dense
  assert S.layer_stats(deep)[-2].in_shape == (1, 1, 128)
  assert S.removable_count(deep) == S.removable_count(digits) + 6  # two more conv-BN-ReLU
  assert len(S.shrink_vars(deep)) == len(S.shrink_vars(digits)) + 2

  fitnet = zoo.get('fitnet4', (32, 32, 3), 10)
  assert count(fitnet, Conv) + count(fitnet, Dense) == 17  # 17 layers with weights
  assert [c.filters for c in fitnet.layers if isinstance(c, Conv)] == (
    [32, 32, 32, 48, 48] + [80] * 5 + [128] * 5
  )
  assert MaxPool(8, 8) in fitnet.layers
  assert Dense(500) in fitnet.layers
  small = zoo.get('fitnet4', (28, 28, 1), 10)
  assert GlobalAvgPool() in small.layers and MaxPool(8, 8) not in small.layers
  S.validate(small)

  squeeze = zoo.get('squeezenet1_1', (32, 32, 3), 10)
  fires = [l for l in squeeze.layers if isinstance(l, Concat)]
  assert len(fires) == 8
  assert [f.branches[0][0].filters for f in fires] == [64, 64, 128, 128, 192, 192, 256, 256]
  for f in fires:
    (e1, _), (e3, _) = f.branches
    assert e1.kernel == 1 and e3.kernel == 3 and e3.padding == 1 and e1.filters == e3.filters
  assert S.layer_stats(squeeze)[-3].in_shape[-1] == 512

  vs = zoo.get('vgg_small', (32, 32, 3), 10)
  assert count(vs, Conv) + count(vs, Dense) == 10  # "contains 10 layers"
  assert count(vs, Dense) == 2


def test_building_blocks():
  assert zoo.conv_bn_relu(16) == (Conv(16, 3, 1, 1), BatchNorm(), ReLU())
  assert zoo.conv_bn_relu(16, 5, 2, 0, use_bias=False) == (
    Conv(16, 5, 2, 0, use_bias=False),
    BatchNorm(),
    ReLU(),
  )
  ident, relu = zoo.basic_block(64, 1, 64)
  assert relu == ReLU() and ident.shortcut == ()
  proj, _ = zoo.basic_block(128, 1, 64)  # a width change also needs a projection
  assert proj.shortcut == (Conv(128, 1, 1, 0, use_bias=False), BatchNorm())
  fire = zoo.fire(16, 64)
  assert fire[0] == Conv(16, 1) and isinstance(fire[2], Concat)
  spec = NetSpec('f', (8, 8, 32), fire + (GlobalAvgPool(), Flatten(), Dense(2)))
  assert S.layer_stats(spec)[2].out_shape == (8, 8, 128)
