"""Tests for n2n_jax.models: the Flax SpecNet against its spec (parameter
counts, shapes, layer semantics), train/eval modes and host-side init."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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

ZOO_SHAPES = {
  'conv4': (28, 28, 1),
  'digits_cnn': (8, 8, 1),
  'digits_cnn_deep': (8, 8, 1),
  'resnet18_imagenet': (224, 224, 3),
  'resnet34_imagenet': (224, 224, 3),
}


def bn_channels(spec):
  """Channels of every BatchNorm, from the spec's own shape inference."""
  total = 0

  def walk(layers, shape):
    nonlocal total
    for layer in layers:
      if len(shape) != 3:  # flat from here on: no BatchNorm possible
        return
      if isinstance(layer, BatchNorm):
        total += shape[-1]
      elif isinstance(layer, Residual):
        walk(layer.main, shape)
        walk(layer.shortcut, shape)
      elif isinstance(layer, Concat):
        for b in layer.branches:
          walk(b, shape)
      shape = S.output_shape(NetSpec('x', shape, (layer,)))

  walk(spec.layers, spec.input_shape)
  return total


@pytest.mark.parametrize('name', zoo.NAMES)
def test_flax_param_count_matches_spec_for_every_zoo_name(name):
  spec = zoo.get(name, ZOO_SHAPES.get(name, (32, 32, 3)), 10)
  shapes = models.variable_shapes(models.build(spec), spec.input_shape)
  assert models.count_params(shapes['params']) == S.param_count(spec)
  # batch_stats: mean and var per BatchNorm channel; not parameters.
  assert models.count_params(shapes.get('batch_stats', {})) == 2 * bn_channels(spec)


def test_param_names_follow_spec_paths():
  spec = NetSpec(
    'p',
    (8, 8, 3),
    (
      Conv(4, 3, 1, 1),
      BatchNorm(),
      ReLU(),
      Residual(
        (Conv(8, 3, 2, 1, use_bias=False), BatchNorm()),
        (Conv(8, 1, 2, 0, use_bias=False), BatchNorm()),
      ),
      Concat(((Conv(2, 1),), (Conv(3, 3, 1, 1), ReLU()))),
      GlobalAvgPool(),
      Flatten(),
      Dense(5),
    ),
  )
  shapes = models.variable_shapes(models.build(spec), spec.input_shape)
  params = jax.tree_util.tree_map(lambda x: x.shape, shapes['params'])
  assert params == {
    '0_Conv': {'kernel': (3, 3, 3, 4), 'bias': (4,)},
    '1_BatchNorm': {'scale': (4,), 'bias': (4,)},
    '3_main_0_Conv': {'kernel': (3, 3, 4, 8)},
    '3_main_1_BatchNorm': {'scale': (8,), 'bias': (8,)},
    '3_shortcut_0_Conv': {'kernel': (1, 1, 4, 8)},
    '3_shortcut_1_BatchNorm': {'scale': (8,), 'bias': (8,)},
    '4_branches_0_0_Conv': {'kernel': (1, 1, 8, 2), 'bias': (2,)},
    '4_branches_1_0_Conv': {'kernel': (3, 3, 8, 3), 'bias': (3,)},
    '7_Dense': {'kernel': (5, 5), 'bias': (5,)},
  }
  assert set(shapes['batch_stats']) == {
    '1_BatchNorm',
    '3_main_1_BatchNorm',
    '3_shortcut_1_BatchNorm',
  }


def test_build_rejects_invalid_specs():
  with pytest.raises(S.SpecError, match=r'layers\[1\] \(Dense\)'):
    models.build(NetSpec('bad', (4, 4, 1), (Conv(2), Dense(2))))


def _apply_with_identity_head(layers, x):
  """Run `layers` + Flatten + Dense(n, no bias) with an identity Dense kernel,
  so the output is the flattened feature map the layers produce."""
  shape = x.shape[1:]
  body = NetSpec('b', shape, tuple(layers) + (Flatten(),))
  n = S.output_shape(body)[0]
  spec = NetSpec('h', shape, tuple(layers) + (Flatten(), Dense(n, use_bias=False)))
  model = models.build(spec)
  variables = models.init_variables(model, 0, shape)
  head = f'{len(layers) + 1}_Dense'
  variables['params'][head]['kernel'] = jnp.eye(n)
  out = np.asarray(model.apply(variables, x))
  return out.reshape((x.shape[0],) + S.output_shape(NetSpec('b', shape, tuple(layers))))


def _pool_ref(x, window, stride, pad, reduce, fill):
  n, h, w, c = x.shape
  xp = np.full((n, h + 2 * pad, w + 2 * pad, c), fill, x.dtype)
  xp[:, pad : pad + h, pad : pad + w] = x
  ho, wo = (h + 2 * pad - window) // stride + 1, (w + 2 * pad - window) // stride + 1
  out = np.empty((n, ho, wo, c), x.dtype)
  for i in range(ho):
    for j in range(wo):
      out[:, i, j] = reduce(
        xp[:, i * stride : i * stride + window, j * stride : j * stride + window], axis=(1, 2)
      )
  return out


@pytest.mark.parametrize(
  'layer',
  [MaxPool(2, 2), MaxPool(3, 2, 1), MaxPool(3, 1, 1), AvgPool(2, 2), AvgPool(3, 2), AvgPool(5, 5)],
)
def test_pooling_matches_floor_mode_reference(layer):
  x = np.random.default_rng(1).standard_normal((2, 7, 5, 3)).astype(np.float32)
  got = _apply_with_identity_head((layer,), x)
  if isinstance(layer, MaxPool):
    want = _pool_ref(x, layer.window, layer.stride, layer.padding, np.max, -np.inf)
  else:
    want = _pool_ref(x, layer.window, layer.stride, 0, np.mean, 0.0)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  'layer',
  [
    MaxPool(3, 2, ceil=True),
    MaxPool(2, 2, ceil=True),
    MaxPool(3, 2, 1, ceil=True),
    MaxPool(4, 3, 1, ceil=True),
  ],
)
def test_ceil_mode_max_pool_keeps_the_partial_last_window(layer):
  x = np.random.default_rng(3).standard_normal((2, 7, 5, 3)).astype(np.float32)
  got = _apply_with_identity_head((layer,), x)
  # Output sizes PyTorch's MaxPool2d(ceil_mode=True) gives for 7x5 inputs.
  torch_sizes = {(3, 2, 0): (3, 2), (2, 2, 0): (4, 3), (3, 2, 1): (4, 3), (4, 3, 1): (3, 2)}
  assert got.shape[1:3] == torch_sizes[(layer.window, layer.stride, layer.padding)]
  # Each output is the max over its window clipped to the input.
  for i in range(got.shape[1]):
    for j in range(got.shape[2]):
      r0, c0 = i * layer.stride - layer.padding, j * layer.stride - layer.padding
      window = x[:, max(r0, 0) : r0 + layer.window, max(c0, 0) : c0 + layer.window]
      np.testing.assert_allclose(got[:, i, j], window.max(axis=(1, 2)), rtol=1e-6)


def test_residual_concat_and_global_pool_semantics():
  x = np.random.default_rng(2).standard_normal((2, 4, 4, 3)).astype(np.float32)
  # Empty main path and identity shortcut: x + x.
  np.testing.assert_allclose(_apply_with_identity_head((Residual((), ()),), x), 2 * x, rtol=1e-6)
  # ReLU main path: relu(x) + x.
  np.testing.assert_allclose(
    _apply_with_identity_head((Residual((ReLU(),), ()),), x), np.maximum(x, 0) + x, rtol=1e-6
  )
  # Concat: branch order is channel order; an empty branch is the identity.
  got = _apply_with_identity_head((Concat(((ReLU(),), ())),), x)
  np.testing.assert_allclose(got, np.concatenate([np.maximum(x, 0), x], -1), rtol=1e-6)
  got = _apply_with_identity_head((GlobalAvgPool(),), x)
  np.testing.assert_allclose(got, x.mean(axis=(1, 2), keepdims=True), rtol=1e-5, atol=1e-6)


def test_conv_padding_and_stride_match_spec():
  x = np.random.default_rng(3).standard_normal((1, 7, 7, 2)).astype(np.float32)
  for conv in (Conv(3, 3, 2, 1), Conv(3, 5, 1, 0), Conv(3, 1, 3, 0), Conv(3, 3, 1, 2)):
    spec = NetSpec('c', (7, 7, 2), (conv, Flatten(), Dense(1)))
    model = models.build(spec)
    variables = models.init_variables(model, 0, spec.input_shape)
    assert model.apply(variables, x).shape == (1, 1)
    k = np.asarray(variables['params']['0_Conv']['kernel'])
    # Reference convolution (cross-correlation) with explicit zero padding.
    p, s, kk = conv.padding, conv.stride, conv.kernel
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    ho = (7 + 2 * p - kk) // s + 1
    ref = np.zeros((1, ho, ho, 3), np.float32)
    for i in range(ho):
      for j in range(ho):
        ref[:, i, j] = np.einsum('nhwc,hwcf->nf', xp[:, i * s : i * s + kk, j * s : j * s + kk], k)
    y = models.SpecNet(NetSpec('c', (7, 7, 2), (conv,))).apply(
      {'params': {'0_Conv': variables['params']['0_Conv']}}, x
    )
    assert y.shape == (1, ho, ho, 3) == (1,) + S.output_shape(NetSpec('c', (7, 7, 2), (conv,)))
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-4)


def _bn_dropout_net():
  spec = NetSpec('t', (4, 4, 2), (BatchNorm(), Dropout(0.5), Flatten(), Dense(3)))
  model = models.build(spec)
  return spec, model, models.init_variables(model, 0, spec.input_shape)


def test_train_mode_updates_batch_stats_and_needs_a_dropout_rng():
  spec, model, variables = _bn_dropout_net()
  x = (np.random.default_rng(4).standard_normal((8, 4, 4, 2)) * 3 + 5).astype(np.float32)
  with pytest.raises(Exception, match='dropout'):
    model.apply(variables, x, train=True, mutable=['batch_stats'])
  train = jax.jit(
    lambda v, x, key: model.apply(v, x, train=True, mutable=['batch_stats'], rngs={'dropout': key})
  )
  y, updates = train(variables, x, jax.random.key(0))
  assert y.shape == (8, 3)
  stats = updates['batch_stats']['0_BatchNorm']
  # PyTorch-style momentum 0.1: running = 0.9 * running + 0.1 * batch.
  np.testing.assert_allclose(stats['mean'], 0.1 * x.mean(axis=(0, 1, 2)), rtol=1e-4)
  np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * x.var(axis=(0, 1, 2)), rtol=1e-3)
  # The input variables are untouched (functional update).
  np.testing.assert_array_equal(variables['batch_stats']['0_BatchNorm']['mean'], 0.0)
  # Different dropout keys give different outputs; the same key the same.
  y2, _ = train(variables, x, jax.random.key(1))
  y3, _ = train(variables, x, jax.random.key(0))
  assert not np.allclose(y, y2)
  np.testing.assert_array_equal(y, y3)


def test_train_mode_batch_norm_normalises_with_batch_statistics():
  spec = NetSpec('bn', (3, 3, 2), (BatchNorm(),))
  model = models.SpecNet(spec)
  variables = models.init_variables(model, 0, spec.input_shape)
  x = (np.random.default_rng(5).standard_normal((6, 3, 3, 2)) * 4 - 2).astype(np.float32)
  y, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(np.asarray(y).mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(y).std(axis=(0, 1, 2)), 1.0, atol=1e-3)
  # Eval mode uses the running statistics (mean 0, var 1 at init): ~identity.
  np.testing.assert_allclose(
    model.apply(variables, x), x / np.sqrt(1 + models.BN_EPSILON), rtol=1e-5
  )


def test_eval_mode_is_deterministic_and_per_example():
  spec = zoo.get('digits_cnn', (8, 8, 1), 10)
  model = models.build(spec)
  variables = models.init_variables(model, 0, spec.input_shape)
  x = np.random.default_rng(6).standard_normal((4, 8, 8, 1)).astype(np.float32)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  a, b = apply(variables, x), apply(variables, x)
  np.testing.assert_array_equal(a, b)
  # No batch statistics and no dropout: one example's output does not depend
  # on the rest of the batch.
  np.testing.assert_allclose(apply(variables, x[:1]), a[:1], rtol=1e-5, atol=1e-6)
  assert a.shape == (4, 10) and np.all(np.isfinite(np.asarray(a)))


def test_init_variables_seeded_and_shaped_like_flax_init():
  spec = NetSpec(
    'i',
    (6, 6, 3),
    (
      Conv(4, 3, 1, 1),
      BatchNorm(),
      ReLU(),
      Residual((Conv(4, 3, 1, 1, use_bias=False),), ()),
      Flatten(),
      Dense(3),
    ),
  )
  model = models.build(spec)
  a = models.init_variables(model, 7, spec.input_shape)
  b = models.init_variables(model, 7, spec.input_shape)
  c = models.init_variables(model, 8, spec.input_shape)
  leaves_a = jax.tree_util.tree_leaves_with_path(a)
  for (_, x), y in zip(leaves_a, jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)
  kernels_differ = [
    not np.array_equal(x, y)
    for (path, x), y in zip(leaves_a, jax.tree_util.tree_leaves(c))
    if path[-1].key == 'kernel'
  ]
  assert len(kernels_differ) == 3 and all(kernels_differ)
  # Same tree, shapes and dtypes as Flax's own init (traced, not run: a real
  # init compile costs seconds).
  ref = jax.eval_shape(
    model.init, jax.random.key(0), jnp.zeros((1,) + spec.input_shape, jnp.float32)
  )
  assert jax.tree_util.tree_structure(ref) == jax.tree_util.tree_structure(a)
  for x, y in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(a)):
    assert x.shape == y.shape and x.dtype == y.dtype
  assert (
    models.count_params(a['params']) == S.param_count(spec) == models.count_params(ref['params'])
  )
  # Biases and BN shifts zero, BN scales one, running mean 0 / var 1.
  np.testing.assert_array_equal(a['params']['0_Conv']['bias'], 0.0)
  np.testing.assert_array_equal(a['params']['5_Dense']['bias'], 0.0)
  np.testing.assert_array_equal(a['params']['1_BatchNorm']['scale'], 1.0)
  np.testing.assert_array_equal(a['params']['1_BatchNorm']['bias'], 0.0)
  np.testing.assert_array_equal(a['batch_stats']['1_BatchNorm']['mean'], 0.0)
  np.testing.assert_array_equal(a['batch_stats']['1_BatchNorm']['var'], 1.0)
  # No BatchNorm: an empty batch_stats collection is still there for train steps.
  plain = models.build(NetSpec('p', (4, 4, 1), (Conv(2), Flatten(), Dense(2))))
  v = models.init_variables(plain, 0, (4, 4, 1))
  assert v['batch_stats'] == {}
  plain.apply(v, np.zeros((1, 4, 4, 1), np.float32), train=True, mutable=['batch_stats'])


@pytest.mark.parametrize(
  'layers, shape, fan_in',
  [
    ((Flatten(), Dense(1024)), (1, 1, 2048), 2048),
    ((Conv(256, 3, 1, 1), Flatten(), Dense(2)), (4, 4, 256), 9 * 256),
  ],
)
def test_kernel_init_std_is_one_over_sqrt_fan_in(layers, shape, fan_in):
  spec = NetSpec('big', shape, layers)
  variables = models.init_variables(models.build(spec), 3, shape)
  name = next(
    k for k in variables['params'] if k.endswith('_Dense' if len(layers) == 2 else '_Conv')
  )
  w = np.asarray(variables['params'][name]['kernel'], np.float64)
  assert w.size > 500_000
  std = 1 / math.sqrt(fan_in)
  assert abs(w.std() / std - 1) < 0.01
  assert abs(w.mean()) < 0.01 * std
  # Truncated at two standard deviations of the underlying normal.
  assert np.abs(w).max() <= 2 * std / 0.87962566103423978 * (1 + 1e-6)
  assert np.abs(w).max() > 1.9 * std / 0.87962566103423978


def test_small_resnet_trains_one_step_end_to_end():
  """Gradients flow through every parameter of a residual/concat network."""
  spec = NetSpec(
    'r',
    (6, 6, 3),
    (
      Conv(4, 3, 1, 1, use_bias=False),
      BatchNorm(),
      ReLU(),
      Residual(
        (
          Conv(4, 3, 1, 1, use_bias=False),
          BatchNorm(),
          ReLU(),
          Conv(4, 3, 1, 1, use_bias=False),
          BatchNorm(),
        ),
        (),
      ),
      ReLU(),
      Concat(((Conv(2, 1), ReLU()), (Conv(2, 3, 1, 1), ReLU()))),
      Dropout(0.2),
      GlobalAvgPool(),
      Flatten(),
      Dense(3),
    ),
  )
  model = models.build(spec)
  variables = models.init_variables(model, 0, spec.input_shape)
  x = np.random.default_rng(7).standard_normal((5, 6, 6, 3)).astype(np.float32)

  def loss(params):
    y, upd = model.apply(
      {'params': params, 'batch_stats': variables['batch_stats']},
      x,
      train=True,
      mutable=['batch_stats'],
      rngs={'dropout': jax.random.key(0)},
    )
    return jnp.sum(y**2), upd

  grads, upd = jax.jit(jax.grad(loss, has_aux=True))(variables['params'])
  norms = jax.tree_util.tree_map(lambda g: float(jnp.abs(g).sum()), grads)
  assert all(n > 0 for n in jax.tree_util.tree_leaves(norms)), norms
  assert set(upd['batch_stats']) == set(variables['batch_stats'])
