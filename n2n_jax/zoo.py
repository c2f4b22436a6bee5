"""Named architectures: the paper's teachers and hand-designed students.

Every builder is a pure function returning a `NetSpec` for a given input shape
and number of classes. `get(name, input_shape, num_classes)` is the lookup by
name; `NAMES` lists what it knows.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence

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


def conv_bn_relu(
  filters: int, kernel: int = 3, stride: int = 1, padding: int | None = None, use_bias: bool = True
) -> tuple:
  padding = kernel // 2 if padding is None else padding
  return (Conv(filters, kernel, stride, padding, use_bias), BatchNorm(), ReLU())


def classifier(num_classes: int) -> tuple:
  return (Flatten(), Dense(num_classes))


# ---- VGG (CIFAR style: conv3x3-BN-ReLU per width, 'M' = 2x2 max-pool, one Linear)

VGG_CONFIGS = {
  'vgg11': (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
  'vgg13': (64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
  'vgg16': (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'),
  'vgg19': (
    64,
    64,
    'M',
    128,
    128,
    'M',
    256,
    256,
    256,
    256,
    'M',
    512,
    512,
    512,
    512,
    'M',
    512,
    512,
    512,
    512,
    'M',
  ),
}


def vgg(config: Sequence, input_shape, num_classes: int, name: str = 'vgg') -> NetSpec:
  """A max-pool that would shrink the feature map below 1x1 is left out: on
  28x28 MNIST that drops VGG's fifth pool (28->14->7->3->1), as the paper's
  9.4M-parameter MNIST VGG-13 does."""
  layers, size = [], min(input_shape[:2])
  for item in config:
    if item == 'M':
      if size // 2 >= 1:
        layers.append(MaxPool(2, 2))
        size //= 2
    else:
      layers.extend(conv_bn_relu(item))
  if size > 1:
    layers.append(GlobalAvgPool())
  return NetSpec(name, tuple(input_shape), tuple(layers) + classifier(num_classes))


# ---- ResNet (BasicBlock)


def basic_block(filters: int, stride: int, in_filters: int) -> tuple:
  """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (1x1 conv + BN when the shape
  changes), then ReLU after the add."""
  shortcut = ()
  if stride != 1 or in_filters != filters:
    shortcut = (Conv(filters, 1, stride, 0, use_bias=False), BatchNorm())
  main = (
    Conv(filters, 3, stride, 1, use_bias=False),
    BatchNorm(),
    ReLU(),
    Conv(filters, 3, 1, 1, use_bias=False),
    BatchNorm(),
  )
  return (Residual(main, shortcut), ReLU())


RESNET_BLOCKS = {'resnet18': (2, 2, 2, 2), 'resnet34': (3, 4, 6, 3)}


def resnet(
  blocks: Sequence[int], input_shape, num_classes: int, stem: str = 'cifar', name: str = 'resnet'
) -> NetSpec:
  """stem='cifar': 3x3 conv, no pooling (32x32 inputs); stem='imagenet': 7x7/2
  conv and 3x3/2 max-pool (224x224 inputs). Global average pool, one Linear."""
  if stem == 'cifar':
    layers = list(conv_bn_relu(64, 3, 1, 1, use_bias=False))
  elif stem == 'imagenet':
    layers = list(conv_bn_relu(64, 7, 2, 3, use_bias=False)) + [MaxPool(3, 2, 1)]
  else:
    raise ValueError(f'unknown ResNet stem {stem!r}; valid: cifar, imagenet')
  in_filters = 64
  for stage, count in enumerate(blocks):
    filters = 64 * 2**stage
    for b in range(count):
      stride = 2 if stage > 0 and b == 0 else 1
      layers.extend(basic_block(filters, stride, in_filters))
      in_filters = filters
  layers.append(GlobalAvgPool())
  return NetSpec(name, tuple(input_shape), tuple(layers) + classifier(num_classes))


# ---- Small teachers


def conv4(input_shape, num_classes: int) -> NetSpec:
  """The paper's MNIST Conv4, laid out as in the authors' code: four convs
  (5x5/32, 3x3/64, 3x3/64, 3x3/128, padding 1), two 2x2 max-pools, a 6x6
  average pool, dropout 0.2 and one Linear. The authors' extra ReLU on the
  logits is left out (it would clip the logits students distil from)."""
  layers = (
    Conv(32, 5, 1, 1),
    MaxPool(2, 2),
    ReLU(),
    BatchNorm(),
    Conv(64, 3, 1, 1),
    ReLU(),
    BatchNorm(),
    Conv(64, 3, 1, 1),
    MaxPool(2, 2),
    ReLU(),
    BatchNorm(),
    Conv(128, 3, 1, 1),
    ReLU(),
    BatchNorm(),
    AvgPool(6, 6),
    Dropout(0.2),
  )
  return NetSpec('conv4', tuple(input_shape), layers + classifier(num_classes))


def digits_cnn(input_shape, num_classes: int) -> NetSpec:
  """A small VGG-style teacher for scikit-learn's 8x8 digits (140,778 params):
  big enough that removal and shrinkage have something to find, small enough
  to train in seconds on a CPU."""
  layers = (
    conv_bn_relu(32)
    + conv_bn_relu(32)
    + (MaxPool(2, 2),)
    + conv_bn_relu(64)
    + conv_bn_relu(64)
    + (MaxPool(2, 2),)
    + conv_bn_relu(128)
    + (MaxPool(2, 2), Dropout(0.2))
  )
  return NetSpec('digits_cnn', tuple(input_shape), layers + classifier(num_classes))


def digits_cnn_deep(input_shape, num_classes: int) -> NetSpec:
  """A deeper `digits_cnn` (7 convs: 32,32,M,64,64,64,M,128,128,M; 325,674
  params on the 8x8 digits), the other half of a CPU-sized transfer pair for the
  paper's Table 5 (section 4.6: policies trained on one teacher seed the search
  on a deeper or shallower one of the same family, as ResNet-18 <-> ResNet-34
  and VGG-11 -> VGG-19 there, which are too slow for a 2-core CPU). Same blocks,
  pools and classifier as `digits_cnn`, so the two differ only in depth."""
  layers = (
    conv_bn_relu(32)
    + conv_bn_relu(32)
    + (MaxPool(2, 2),)
    + conv_bn_relu(64)
    + conv_bn_relu(64)
    + conv_bn_relu(64)
    + (MaxPool(2, 2),)
    + conv_bn_relu(128)
    + conv_bn_relu(128)
    + (MaxPool(2, 2), Dropout(0.2))
  )
  return NetSpec('digits_cnn_deep', tuple(input_shape), layers + classifier(num_classes))


# ---- Hand-designed students (paper section 4.4.2)


def fitnet4(input_shape, num_classes: int) -> NetSpec:
  """FitNet-4 as in Mishkin & Matas (2015), with ReLU for maxout: 3x32, 2x48,
  pool, 5x80, pool, 5x128, global max-pool (8x8), FC-500, classifier; 17
  layers with weights. BatchNorm after each conv is our addition. 1,074,006
  parameters on CIFAR-10; the paper quotes 1.2M from Mishkin & Matas, whose
  exact layer widths we could not recover."""
  layers = []
  for widths in ((32, 32, 32, 48, 48), (80,) * 5, (128,) * 5):
    for w in widths:
      layers.extend(conv_bn_relu(w))
    layers.append(MaxPool(2, 2))
  layers[-1] = GlobalAvgPool() if min(input_shape[:2]) < 32 else MaxPool(8, 8)
  layers += [Flatten(), Dense(500), ReLU(), Dropout(0.2), Dense(num_classes)]
  return NetSpec('fitnet4', tuple(input_shape), tuple(layers))


def fire(squeeze: int, expand: int) -> tuple:
  """SqueezeNet's Fire module: 1x1 squeeze, then 1x1 and 3x3 expands concatenated."""
  return (
    Conv(squeeze, 1),
    ReLU(),
    Concat(((Conv(expand, 1), ReLU()), (Conv(expand, 3, 1, 1), ReLU()))),
  )


def squeezenet1_1(input_shape, num_classes: int) -> NetSpec:
  """SqueezeNet 1.1 (Iandola et al., 2016). The 1x1 classifier conv is written
  as global average pool + Dense, which is the same linear map with the same
  parameters (727,626 for 10 classes: the paper's 727K). Its pools round up
  (ceil mode) as torchvision's do, which lets it take 28x28 inputs (floor
  mode collapsed them to nothing at the last pool); on 32x32 both agree."""
  pool = MaxPool(3, 2, ceil=True)
  layers = (
    (Conv(64, 3, 2, 0), ReLU(), pool)
    + fire(16, 64)
    + fire(16, 64)
    + (pool,)
    + fire(32, 128)
    + fire(32, 128)
    + (pool,)
    + fire(48, 192)
    + fire(48, 192)
    + fire(64, 256)
    + fire(64, 256)
    + (Dropout(0.5), GlobalAvgPool())
  )
  return NetSpec('squeezenet1_1', tuple(input_shape), layers + classifier(num_classes))


def vgg_small(input_shape, num_classes: int) -> NetSpec:
  """A 10-layer VGG reduction (8 convs + 2 dense) with 1,012,778 parameters on
  CIFAR-10, near the paper's 1.06M (the paper does not give its layers)."""
  config = (32, 32, 'M', 64, 64, 'M', 128, 128, 'M', 256, 128, 'M')
  spec = vgg(config, input_shape, num_classes, 'vgg_small')
  # Flatten the last feature map (2x2x128 on CIFAR) rather than pooling it.
  body = tuple(l for l in spec.layers[:-2] if not isinstance(l, GlobalAvgPool))
  head = body + (Flatten(), Dense(256), ReLU(), Dropout(0.5), Dense(num_classes))
  return NetSpec('vgg_small', spec.input_shape, head)


# ---- Registry


def _vgg(key):
  return lambda shape, classes: vgg(VGG_CONFIGS[key], shape, classes, key)


def _resnet(key, stem):
  name = key if stem == 'cifar' else f'{key}_imagenet'
  return lambda shape, classes: resnet(RESNET_BLOCKS[key], shape, classes, stem, name)


BUILDERS: dict[str, Callable[..., NetSpec]] = {
  'conv4': conv4,
  'digits_cnn': digits_cnn,
  **{k: _vgg(k) for k in VGG_CONFIGS},
  'resnet18': _resnet('resnet18', 'cifar'),
  'resnet34': _resnet('resnet34', 'cifar'),
  'resnet18_imagenet': _resnet('resnet18', 'imagenet'),
  'resnet34_imagenet': _resnet('resnet34', 'imagenet'),
  'fitnet4': fitnet4,
  'squeezenet1_1': squeezenet1_1,
  'vgg_small': vgg_small,
  'digits_cnn_deep': digits_cnn_deep,  # Table 5's transfer pair with digits_cnn
}
NAMES = tuple(BUILDERS)


def get(name: str, input_shape: Sequence[int], num_classes: int) -> NetSpec:
  """The named architecture for this input shape and class count."""
  if name not in BUILDERS:
    raise KeyError(f'unknown architecture {name!r}; valid names: {", ".join(NAMES)}')
  return BUILDERS[name](tuple(input_shape), int(num_classes))
