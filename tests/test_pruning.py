"""The Taylor pruning baseline (paper Table 2): the criterion against a
hand-written computation, filter surgery against zeroed channels, the
stopping rule, and a tiny end-to-end mode=prune run."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DIGITS_CNN_PARAMS
from conftest import tiny_search
from conftest import workdir_with_teacher

from n2n_jax import baselines
from n2n_jax import data as data_lib
from n2n_jax import experiment
from n2n_jax import export
from n2n_jax import models
from n2n_jax import pruning
from n2n_jax import spec as S
from n2n_jax import teacher as teacher_lib
from n2n_jax import train
from n2n_jax import zoo

# conv0 (4 filters, 6x6) - BN - ReLU - pool - conv4 (3 filters, 3x3) - ReLU - Flatten - Dense.
PLAIN = S.NetSpec(
  'plain',
  (6, 6, 2),
  (
    S.Conv(4, 3, 1, 1),
    S.BatchNorm(),
    S.ReLU(),
    S.MaxPool(2, 2),
    S.Conv(3, 3, 1, 1),
    S.ReLU(),
    S.Flatten(),
    S.Dense(3),
  ),
)
# A ResNet-style block: only the main path's first conv is free to shrink.
RESIDUAL = S.NetSpec(
  'residual',
  (4, 4, 2),
  (
    S.Conv(4, 3, 1, 1),
    S.BatchNorm(),
    S.ReLU(),
    S.Residual((S.Conv(3, 3, 1, 1), S.BatchNorm(), S.ReLU(), S.Conv(4, 3, 1, 1), S.BatchNorm())),
    S.ReLU(),
    S.GlobalAvgPool(),
    S.Flatten(),
    S.Dense(2),
  ),
)
LOSS = train.make_loss('hard_soft', 0.1)


def _variables(spec, seed=0):
  """Random weights with non-trivial BatchNorm parameters and statistics, so
  that a channel removed before a BatchNorm would not vanish unnoticed."""
  variables = models.init_variables(models.build(spec), seed, spec.input_shape)
  rng = np.random.default_rng(seed)
  tweak = lambda x, low, high: jnp.asarray(rng.uniform(low, high, x.shape), jnp.float32)
  params = {k: dict(v) for k, v in variables['params'].items()}
  stats = {k: dict(v) for k, v in variables['batch_stats'].items()}
  for name in stats:
    params[name] = {
      'scale': tweak(params[name]['scale'], 0.5, 2.0),
      'bias': tweak(params[name]['bias'], -0.5, 0.5),
    }
    stats[name] = {
      'mean': tweak(stats[name]['mean'], -0.5, 0.5),
      'var': tweak(stats[name]['var'], 0.5, 2.0),
    }
  for name in params:
    if 'bias' in params[name] and name.endswith(('Conv', 'Dense')):
      params[name]['bias'] = tweak(params[name]['bias'], -0.3, 0.3)
  return {'params': params, 'batch_stats': stats}


def _data(spec, n, seed=1):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  classes = S.num_classes(spec)
  return train.Data(
    jax.random.normal(k1, (n,) + spec.input_shape),
    jax.random.randint(k2, (n,), 0, classes),
    jax.random.normal(k3, (n, classes)),
  )


def test_prunable_convs_skip_tied_widths_concat_and_the_class_layer():
  assert [
    (u.path, u.tap, u.positions, u.consumer, u.flattened) for u in pruning.prunable_convs(PLAIN)
  ] == [((0,), '2', 36, '4_Conv', 0), ((4,), '5', 9, '7_Dense', 9)]
  assert [u.path for u in pruning.prunable_convs(RESIDUAL)] == [(3, 'main', 0)]
  resnet = zoo.get('resnet18', (32, 32, 3), 10)
  paths = [u.path for u in pruning.prunable_convs(resnet)]
  assert len(paths) == 8 and all(p[1:] == ('main', 0) for p in paths)
  # SqueezeNet: only the stem conv, whose one consumer is a squeeze conv.
  squeezenet = zoo.get('squeezenet1_1', (64, 64, 3), 10)
  assert [u.path for u in pruning.prunable_convs(squeezenet)] == [(0,)]
  assert len(pruning.prunable_convs(zoo.get('digits_cnn', (8, 8, 1), 10))) == 5


def _direct_scores(variables, data):
  """Molchanov's criterion written out: a hand-made forward pass of PLAIN,
  per-example gradients of the loss with respect to z, eval-mode BN."""
  p, s = variables['params'], variables['batch_stats']

  def conv(x, name):
    y = jax.lax.conv_general_dilated(
      x, p[name]['kernel'], (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )
    return y + p[name]['bias']

  def bn(x, name):
    return (x - s[name]['mean']) / jnp.sqrt(s[name]['var'] + models.BN_EPSILON) * p[name][
      'scale'
    ] + p[name]['bias']

  def z0_of(x):
    return jax.nn.relu(bn(conv(x, '0_Conv'), '1_BatchNorm'))

  def z1_of(z0):
    pooled = z0.reshape(z0.shape[0], 3, 2, 3, 2, 4).max(axis=(2, 4))
    return jax.nn.relu(conv(pooled, '4_Conv'))

  def logits_of(z1):
    return z1.reshape(z1.shape[0], -1) @ p['7_Dense']['kernel'] + p['7_Dense']['bias']

  @jax.jit
  def theta(images, labels, teacher_logits):
    """Per example (a batch of one): |mean over positions of dC/dz * z|."""
    out = []
    for z_of, rest in (
      (z0_of, lambda z: logits_of(z1_of(z))),
      (lambda x: z1_of(z0_of(x)), logits_of),
    ):
      z = z_of(images)
      g = jax.grad(lambda z: LOSS(rest(z), labels, teacher_logits))(z)
      out.append(jnp.abs(jnp.mean(g * z, axis=(0, 1, 2))))
    return out

  thetas = [
    theta(data.images[i : i + 1], data.labels[i : i + 1], data.teacher_logits[i : i + 1])
    for i in range(data.images.shape[0])
  ]
  scores = {}
  for path, per_example in zip(((0,), (4,)), zip(*thetas)):
    mean = np.mean(per_example, axis=0)
    scores[path] = mean / np.linalg.norm(mean)
  return scores


def test_taylor_scores_match_a_direct_computation():
  variables = _variables(PLAIN)
  data = _data(PLAIN, 6)
  # Two batches of three: per-example terms come from batch gradients.
  scores = pruning.taylor_scores(PLAIN, variables, data, jnp.arange(6).reshape(2, 3), LOSS)
  expected = _direct_scores(variables, data)
  assert set(scores) == {(0,), (4,)}
  for path in scores:
    assert scores[path].shape == (PLAIN.layers[path[0]].filters,)
    np.testing.assert_allclose(scores[path], expected[path], rtol=2e-4, atol=1e-6)
    assert np.linalg.norm(scores[path]) == pytest.approx(1.0)


def test_lowest_filters_is_global_and_keeps_one_filter_per_conv():
  scores = {(0,): np.array([0.1, 0.9, 0.2, 0.3]), (4,): np.array([0.05, 0.5, 0.01])}
  # ceil(0.3 * 7) = 3 lowest over both layers.
  assert pruning.lowest_filters(PLAIN, scores, 0.3) == {(0,): [0], (4,): [0, 2]}
  # Asked for everything, each conv keeps its best filter.
  assert pruning.lowest_filters(PLAIN, scores, 0.99) == {(0,): [0, 2, 3], (4,): [0, 2]}


def _logits(spec, variables, images):
  return np.asarray(train.predict(models.build(spec), variables, images))


def _with_kernel(variables, name, update):
  params = dict(variables['params'])
  params[name] = dict(params[name], kernel=update(np.array(params[name]['kernel'])))
  return {'params': params, 'batch_stats': variables['batch_stats']}


def test_pruned_network_equals_the_original_with_those_channels_zeroed():
  variables = _variables(PLAIN)
  images = _data(PLAIN, 5).images
  pruned, pruned_vars = pruning.prune(PLAIN, variables, {(0,): [1], (4,): [0, 2]})
  S.validate(pruned)
  assert S.short_text(pruned) == 'C3 B R M C1 R F L3'
  # Before: conv0 2*9*4+4, BN 2*4, conv4 4*9*3+3, dense 27*3+3 = 279; after:
  # conv0 2*9*3+3, BN 2*3, conv4 3*9*1+1, dense 9*1*3+3 = 121.
  assert S.param_count(PLAIN) == 279
  assert S.param_count(pruned) == models.count_params(pruned_vars['params']) == 121

  def zero_conv_input(k):
    k[:, :, 1, :] = 0
    return k

  def zero_dense_rows(k):
    k[np.isin(np.arange(k.shape[0]) % 3, [0, 2])] = 0  # Flatten: position-major, channel last
    return k

  zeroed = _with_kernel(
    _with_kernel(variables, '4_Conv', zero_conv_input), '7_Dense', zero_dense_rows
  )
  np.testing.assert_allclose(
    _logits(pruned, pruned_vars, images), _logits(PLAIN, zeroed, images), rtol=1e-5, atol=1e-5
  )
  # The check has teeth: the channels did matter.
  assert not np.allclose(
    _logits(PLAIN, variables, images), _logits(PLAIN, zeroed, images), atol=1e-3
  )


@pytest.mark.slow
def test_pruning_inside_a_residual_main_path():
  variables = _variables(RESIDUAL)
  images = _data(RESIDUAL, 5).images
  pruned, pruned_vars = pruning.prune(RESIDUAL, variables, {(3, 'main', 0): [2]})
  # One filter: its 3x3x4 weights and bias, BatchNorm's scale and bias, and the
  # next conv's 3x3 weights from that channel to each of its 4 filters.
  assert S.param_count(RESIDUAL) - S.param_count(pruned) == 9 * 4 + 1 + 2 + 9 * 4
  assert models.count_params(pruned_vars['params']) == S.param_count(pruned)

  def zero_input(k):
    k[:, :, 2, :] = 0
    return k

  zeroed = _with_kernel(variables, '3_main_3_Conv', zero_input)
  np.testing.assert_allclose(
    _logits(pruned, pruned_vars, images), _logits(RESIDUAL, zeroed, images), rtol=1e-5, atol=1e-5
  )
  # The criterion reaches inside the block: its gate is applied there.
  scores = pruning.taylor_scores(
    RESIDUAL, variables, _data(RESIDUAL, 4), jnp.arange(4).reshape(1, 4), LOSS
  )
  assert list(scores) == [(3, 'main', 0)]
  assert np.linalg.norm(scores[(3, 'main', 0)]) == pytest.approx(1.0)
  with pytest.raises(ValueError, match='not a prunable conv'):
    pruning.prune(RESIDUAL, variables, {(3, 'main', 3): [0]})  # tied to the shortcut
  with pytest.raises(ValueError, match='every filter'):
    pruning.prune(RESIDUAL, variables, {(3, 'main', 0): [0, 1, 2]})


def test_stop_reason():
  limits = pruning.Limits(params=1000, val_accuracy=0.90, reference={})
  assert pruning.stop_reason(1500, 0.95, limits) is None
  assert pruning.stop_reason(1000, 0.90, limits) is None  # at the limits is still fine
  assert pruning.stop_reason(1500, 0.8999, limits) == 'accuracy_below_limit'
  assert pruning.stop_reason(999, 0.95, limits) == 'params_below_limit'
  assert pruning.stop_reason(999, 0.5, limits) == 'accuracy_below_limit'


def _prune_config(config_factory):
  config = tiny_search(config_factory('digits'))  # the data the teacher fixture was trained on
  config.mode = 'prune'
  p = config.pruning
  p.repeats, p.fraction_per_step, p.max_steps = 2, 0.3, 1
  # 8 batches of 32 are all 256 training examples: every repeat scores the
  # same examples (in another order), so both prune the same filters and the
  # second reuses the first one's compiled programs.
  p.score_batches, p.batch_size, p.finetune_steps = 8, 32, 5
  config.final.epochs = 1
  return config


@pytest.mark.slow
def test_prune_end_to_end_meets_the_stopping_rule(config_factory, teacher_dir, tmp_path):
  config = _prune_config(config_factory)
  workdir = workdir_with_teacher(teacher_dir, tmp_path / 'run')
  teacher_params = DIGITS_CNN_PARAMS
  # A reference N2N student at under half the teacher's size whose accuracy
  # does not bind (30 % of the filters leave ~70k parameters).
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump(
      {
        'teacher': {'params': teacher_params},
        'student': {'params': 60_000, 'val_accuracy': 0.0, 'test_accuracy': 0.0},
      },
      f,
    )
  summary = experiment.run(config, workdir, out=open(os.devnull, 'w'))

  assert summary['method'] == 'pruning' and summary['name'] == 'taylor_pruning'
  assert summary['reference']['params'] == 60_000
  assert len(summary['repeats']) == 2
  for r in summary['repeats']:
    assert (r['steps'], r['stopped_because']) == (1, 'max_steps')
    assert 60_000 <= r['params'] < teacher_params
  best = max(summary['repeats'], key=lambda r: (r['val_accuracy'], -r['params']))
  assert summary['student']['params'] == best['params']
  assert summary['student']['val_accuracy'] == best['val_accuracy']
  assert summary['compression'] == pytest.approx(teacher_params / best['params'])

  folder = os.path.join(workdir, 'baselines', 'taylor_pruning')
  assert json.load(open(os.path.join(folder, 'summary.json'))) == json.loads(json.dumps(summary))
  model, variables = export.load_student(os.path.join(folder, 'student'))
  assert S.param_count(model.spec) == summary['student']['params']
  # One step removed ceil(0.3 * 320) = 96 of the teacher's 32+32+64+64+128
  # prunable filters (the classifier is not prunable).
  assert sum(l.filters for l in model.spec.layers if isinstance(l, S.Conv)) == 320 - 96
  ds = data_lib.load(config.data)
  accuracy = train.accuracy(model, variables, ds.test_images, ds.test_labels)
  assert accuracy == pytest.approx(summary['student']['test_accuracy'], abs=1e-6)

  # The same first step (repeat 0's key) against limits it fails: it
  # reproduces repeat 0's network exactly, and the unpruned teacher is kept.
  teacher = teacher_lib.load(workdir)
  data = train.Data(
    ds.train_images,
    ds.train_labels,
    train.predict(teacher.model, teacher.variables, ds.train_images),
  )
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), 4), 0)
  first = summary['repeats'][0]
  for limits, reason in (
    (pruning.Limits(first['params'] + 1, 0.0, {}), 'params_below_limit'),
    (pruning.Limits(0, 1.01, {}), 'accuracy_below_limit'),
  ):
    steps = []
    kept = pruning.prune_until_stop(
      config,
      teacher.spec,
      teacher.variables,
      0.5,
      data,
      ds,
      limits,
      key,
      log=lambda *a: steps.append(a),
    )
    assert (kept.steps, kept.stopped_because) == (0, reason)
    assert kept.spec == teacher.spec and kept.variables is teacher.variables
    assert steps == [(1, steps[0][1], first['params'], first['pruned_val_accuracy'], reason)]


def test_missing_reference_is_a_clear_error(config_factory, teacher_dir, tmp_path):
  config = _prune_config(config_factory)
  workdir = workdir_with_teacher(teacher_dir, tmp_path / 'run')
  with pytest.raises(baselines.BaselineError, match=r'mode=compress.*pruning\.min_params'):
    experiment.run(config, workdir)
  config.pruning.reference = str(tmp_path / 'nowhere')
  with pytest.raises(baselines.BaselineError, match='nowhere'):
    experiment.run(config, workdir)
  # A reference compressed from another teacher cannot set the limits.
  config.pruning.reference = ''
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump({'teacher': {'params': 123}, 'student': {'params': 50, 'val_accuracy': 0.9}}, f)
  with pytest.raises(baselines.BaselineError, match='same teacher'):
    experiment.run(config, workdir)
  # Limits set by hand win over this workdir's student (a Pareto student's size).
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump({'teacher': {'params': 123}, 'student': {'params': 50, 'val_accuracy': 0.9}}, f)
  config.pruning.min_params = 777
  limits = pruning.stopping_limits(config, workdir, teacher_lib.load(workdir))
  assert (limits.params, limits.val_accuracy) == (777, 0.0)
  assert limits.reference['workdir'] is None
