"""Baseline of paper Table 2 (section 4.4.1): filter pruning with the Taylor
criterion of Molchanov et al. (2016), run with --config.mode=prune.

Starting from the trained teacher, each step scores every prunable filter,
removes the lowest-scored share of them across the whole network, and
fine-tunes the result for a few steps. Pruning stops, keeping the last
network that passed, as soon as one falls more than pruning.max_accuracy_drop
below the N2N student's validation accuracy or has fewer parameters than it
(the paper's rule). The kept network is then trained to convergence like the
N2N student (config.final, hard + soft labels), the whole run is repeated
pruning.repeats times on different batches, and the best repeat (highest
validation accuracy) is reported.

The criterion of feature map k of a layer, with z its activation at the M
spatial positions and C the loss: per example |(1/M) sum_m dC/dz_m z_m|,
averaged over examples, then divided by the layer's L2 norm of these values
so that scores compare across layers. It is the first-order estimate of how
much the loss changes when feature map k is zeroed, which is what removing
its filter does.

What is pruned: the filters of a conv whose output reaches exactly one
consumer (the next Conv or Dense in the same layer sequence) through
channel-wise layers only (BatchNorm, ReLU, pooling, dropout, Flatten): convs
at the top level and inside a Residual's main path. Not pruned: a conv whose
output is added by a Residual (its width is tied to the block's other path
and output; see spec.width_groups) or feeds a Residual or Concat block, the
convs of a shortcut or a Concat branch, dense layers, and the class layer.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import auto as tqdm  # a text bar in a terminal, a widget in Jupyter

from n2n_jax import baselines
from n2n_jax import models
from n2n_jax import report
from n2n_jax import spec as spec_lib
from n2n_jax import train as train_lib

NAME = 'taylor_pruning'
_KEY_STREAM = 4  # keys of pruning repeat r: fold_in(fold_in(key(seed), 4), r)


# ---- what can be pruned


@dataclasses.dataclass(frozen=True)
class Prunable:
  """A conv whose filters can be removed, and the variables its width runs through."""

  path: tuple  # the conv's spec path
  layer: spec_lib.Conv
  # Variable scopes of the layers with per-channel variables (BatchNorms)
  # between the conv and its consumer.
  batch_norms: tuple
  tap: str  # name of the layer whose output is z (a SpecNet `gated` name)
  positions: int  # M: spatial positions of z
  consumer: str  # variable name of the Conv or Dense that reads the channels
  flattened: int  # for a Dense consumer, the positions Flatten lays out per channel; 0 for a conv

  @property
  def filters(self) -> int:
    return self.layer.filters


def prunable_convs(spec: spec_lib.NetSpec) -> list:
  """The convs whose filters may be pruned (see the module docstring), in network order."""
  shapes = {s.path: s for s in spec_lib.sites(spec)}
  found = []

  def scan(layers, prefix):
    for j, layer in enumerate(layers):
      if isinstance(layer, spec_lib.Residual):
        scan(layer.main, prefix + (j, 'main'))
      elif isinstance(layer, spec_lib.Conv):
        unit = _follow(layers, prefix, j, shapes)
        if unit is not None:
          found.append(unit)

  scan(spec.layers, ())
  return found


def _follow(layers, prefix, j, shapes):
  """The Prunable for the conv layers[j], or None when its channels do not
  reach a single Conv or Dense of the same sequence."""
  path = prefix + (j,)
  # z is the output of the last BatchNorm or ReLU before the consumer (the
  # conv's own output if there is none): Molchanov's activation after the
  # non-linearity. Not the conv's raw output, which a BatchNorm would shift:
  # removing filter k zeroes channel k where the consumer reads it. Only
  # pooling, dropout and Flatten can lie between z and the consumer, and they
  # map zero to zero, so zeroing z's channel k is exactly what removing the
  # filter does, and the criterion estimates the effect of the removal
  # itself. z is usually before the pooling (conv-BN-ReLU-pool), after it
  # where the net pools first (conv4's conv-pool-ReLU-BN).
  # Each layer type's channel role (spec.py) says how it treats the channels:
  # TRANSFORMS (batch norm, ReLU) map each in place, KEEPS pass them on
  # unchanged in number and order, zero staying zero.
  tap, batch_norms, flattened = path, [], 0
  for k in range(j + 1, len(layers)):
    layer, here = layers[k], prefix + (k,)
    if layer.channels == spec_lib.TRANSFORMS:
      tap = here
      if layer.per_channel_variables:
        batch_norms.append(spec_lib.scope_name(here, layer))
    elif layer.channels == spec_lib.FLATTENS:
      flattened = math.prod(shapes[here].in_shape[:2])
    elif layer.width_field is not None:
      return Prunable(
        path,
        layers[j],
        tuple(batch_norms),
        spec_lib.scope_name(tap),
        math.prod(shapes[tap].out_shape[:2]),
        spec_lib.scope_name(here, layer),
        flattened,
      )
    elif layer.channels != spec_lib.KEEPS:
      return None  # a Residual or Concat block takes the channels
  return None  # the sequence ends: the width is the block's output (or the logits)


# ---- the criterion


@functools.partial(jax.jit, static_argnums=(0, 1))
def _gate_gradient_sums(model, loss_fn, variables, gates, data, idx):
  images, labels, teacher_logits = data.images[idx], data.labels[idx], data.teacher_logits[idx]

  def loss(g):
    # Eval mode (BatchNorm's running statistics, no dropout): each example's
    # loss then depends on that example alone, so the per-example terms of
    # the criterion are exact, and they describe the network as it is used.
    logits = model.apply({**variables, 'gates': g}, images, train=False)
    return loss_fn(logits, labels, teacher_logits)

  return {k: jnp.abs(v).sum(0) for k, v in jax.grad(loss)(gates).items()}


def taylor_scores(
  spec: spec_lib.NetSpec, variables: dict, data: train_lib.Data, batches, loss_fn
) -> dict:
  """{conv path: normalised Taylor score per filter} over the training
  examples in `batches` (an array (count, batch) of indices into `data`)."""
  units = prunable_convs(spec)
  model = models.SpecNet(spec, gated=tuple(u.tap for u in units))
  size = batches.shape[1]
  gates = {u.tap: jnp.zeros((size, u.filters), jnp.float32) for u in units}
  plain = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  sums = {u.tap: 0.0 for u in units}
  for idx in batches:
    for tap, s in _gate_gradient_sums(model, loss_fn, plain, gates, data, idx).items():
      sums[tap] = sums[tap] + s
  scores = {}
  for u in units:
    # The gate gradient of a batch-mean loss is (1/B) sum_m dC_i/dz_m z_m
    # for example i, so Molchanov's |(1/M) sum_m dC_i/dz_m z_m| is B/M times
    # its absolute value; averaged over all examples seen.
    theta = np.asarray(sums[u.tap], np.float64) * size / u.positions / batches.size
    norm = np.sqrt(np.sum(theta**2))
    scores[u.path] = theta / norm if norm > 0 else theta
  return scores


def lowest_filters(spec: spec_lib.NetSpec, scores: dict, fraction: float) -> dict:
  """{conv path: filter indices} of the ceil(fraction * prunable filters)
  lowest-scored filters over all prunable convs, each conv keeping at least
  its best filter. Empty when every prunable conv is down to one filter."""
  units = prunable_convs(spec)
  count = math.ceil(fraction * sum(u.filters for u in units))
  candidates = []
  for u in units:
    order = np.argsort(scores[u.path], kind='stable')
    candidates += [(float(scores[u.path][f]), u.path, int(f)) for f in order[:-1]]
  # sorted() is stable, so ties go to the earlier layer and filter.
  chosen = sorted(candidates, key=lambda c: c[0])[:count]
  remove = {}
  for _, path, f in chosen:
    remove.setdefault(path, []).append(f)
  return {path: sorted(fs) for path, fs in remove.items()}


# ---- surgery


def prune(spec: spec_lib.NetSpec, variables: dict, remove: dict) -> tuple:
  """(spec, variables) without the filters `remove` names ({conv path:
  filter indices}): each conv loses those output channels, with its bias and
  the following BatchNorms' parameters and statistics, and its consumer loses
  the matching input channels (for a Dense after Flatten, the rows of those
  channels at every spatial position). Raises ValueError for a conv that is
  not prunable or would lose every filter."""
  units = {u.path: u for u in prunable_convs(spec)}
  # Sliced on the host: indexing device arrays would compile a gather for
  # every new shape, seconds per pruning step on a CPU.
  host = jax.device_get(
    {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  )
  params = {k: dict(v) for k, v in host['params'].items()}
  stats = {k: dict(v) for k, v in host['batch_stats'].items()}
  replace = {}
  for path, filters in remove.items():
    unit = units.get(tuple(path))
    if unit is None:
      raise ValueError(f'{path} is not a prunable conv of {spec.name!r}')
    keep = np.setdiff1d(np.arange(unit.filters), np.asarray(filters, dtype=int))
    if not keep.size:
      raise ValueError(f'pruning would remove every filter of the conv at {path}')
    conv = params[spec_lib.scope_name(unit.path, unit.layer)]
    conv['kernel'] = conv['kernel'][..., keep]
    if 'bias' in conv:
      conv['bias'] = conv['bias'][keep]
    for bn in unit.batch_norms:
      # Every variable of these layers holds one value per channel.
      for tree in (params, stats):
        if bn in tree:
          tree[bn] = {k: v[keep] for k, v in tree[bn].items()}
    consumer = params[unit.consumer]
    if unit.flattened:
      # Flatten lays an (H, W, C) map out position by position, C values each.
      rows = (np.arange(unit.flattened)[:, None] * unit.filters + keep[None, :]).ravel()
      consumer['kernel'] = consumer['kernel'][rows]
    else:
      consumer['kernel'] = consumer['kernel'][:, :, keep, :]
    replace[unit.path] = dataclasses.replace(unit.layer, filters=int(keep.size))
  layers = spec_lib._rebuild(spec.layers, replace)  # pylint: disable=protected-access
  pruned = spec_lib.NetSpec(spec.name, spec.input_shape, layers)
  spec_lib.validate(pruned)
  return pruned, jax.device_put({'params': params, 'batch_stats': stats})


# ---- the stopping rule


@dataclasses.dataclass(frozen=True)
class Limits:
  """Pruning stops at a network with fewer than `params` parameters or a
  validation accuracy below `val_accuracy`; `reference` describes where the
  limits came from (summary.json's 'reference')."""

  params: int
  val_accuracy: float
  reference: dict


def stop_reason(params: int, val_accuracy: float, limits: Limits) -> str | None:
  """Why a pruned network is not acceptable (the previous one is kept), or None."""
  if val_accuracy < limits.val_accuracy:
    return 'accuracy_below_limit'
  if params < limits.params:
    return 'params_below_limit'
  return None


def stopping_limits(config, workdir: str, teacher) -> Limits:
  """The paper's limits from the N2N student in the summary.json of
  pruning.reference (default: this workdir): its parameters, and its
  validation accuracy less pruning.max_accuracy_drop. pruning.min_params and
  pruning.min_accuracy, when either is set, are the limits instead (e.g. a
  Pareto student's size: pareto.json). Raises BaselineError when there are
  no limits."""
  p = config.pruning
  if (p.min_params or p.min_accuracy) and not p.reference:
    return _explicit_limits(p)
  folder = p.reference or workdir
  path = os.path.join(folder, report.SUMMARY_FILE)
  if os.path.exists(path):
    try:
      summary = report.read_summary(folder)
      student = summary['student']
      params, val = int(student['params']), float(student['val_accuracy'])
      their_teacher = summary.get('teacher', {}).get('params')
      their_teacher = None if their_teacher is None else int(their_teacher)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
      raise baselines.BaselineError(
        f'{path} holds no usable N2N student ({e!r}); it should be the summary mode=compress writes'
      ) from None
    teacher_params = spec_lib.param_count(teacher.spec)
    if their_teacher is not None and their_teacher != teacher_params:
      raise baselines.BaselineError(
        f'{path} compressed a teacher of {their_teacher:,} parameters, but this '
        f"workdir's teacher has {teacher_params:,}: pruning must start from the same teacher"
      )
    return Limits(
      params,
      val - p.max_accuracy_drop,
      {
        'workdir': os.path.abspath(folder),
        'params': params,
        'val_accuracy': val,
        'test_accuracy': student.get('test_accuracy'),
        'min_params': params,
        'min_val_accuracy': val - p.max_accuracy_drop,
      },
    )
  if p.reference:
    raise baselines.BaselineError(
      f'pruning.reference is {p.reference!r}, but {path} does not exist: run '
      '--config.mode=compress there first, or name the workdir of a finished compression'
    )
  if not p.min_params and not p.min_accuracy:
    raise baselines.BaselineError(
      f'pruning stops at the N2N student, and there is none: {path} does not exist. '
      'Run --config.mode=compress in this workdir first, point --config.pruning.reference '
      'at a workdir that has one, or set --config.pruning.min_params (and '
      '--config.pruning.min_accuracy) to stop at those limits instead'
    )
  return _explicit_limits(p)


def _explicit_limits(p) -> Limits:
  return Limits(
    int(p.min_params),
    float(p.min_accuracy),
    {
      'workdir': None,
      'params': None,
      'val_accuracy': None,
      'test_accuracy': None,
      'min_params': int(p.min_params),
      'min_val_accuracy': float(p.min_accuracy),
    },
  )


# ---- one pruning run


@dataclasses.dataclass
class Pruned:
  """The last acceptable network of one pruning run."""

  spec: spec_lib.NetSpec
  variables: dict
  val_accuracy: float
  steps: int  # pruning steps it went through (0: the unpruned teacher)
  stopped_because: str


def _batches(key, num_examples: int, batch_size: int, count: int) -> jax.Array:
  """`count` batches of indices (count, batch), from successive random permutations."""
  per_permutation = max(1, num_examples // batch_size)
  keys = jax.random.split(key, -(-count // per_permutation))
  return jnp.concatenate([train_lib.epoch_indices(k, num_examples, batch_size) for k in keys])[
    :count
  ]


@functools.cache
def _hard_soft(soft_weight: float):
  """The final training's loss, one function object per weight: the jitted
  functions here take it as a static argument, so a network seen again (the
  first step of each repeat often removes the same filters) is not compiled again."""
  return train_lib.make_loss('hard_soft', soft_weight)


@functools.lru_cache(maxsize=16)
def _train_step(spec: spec_lib.NetSpec, loss_fn, learning_rate: float) -> tuple:
  """(optimizer, jitted train step) for fine-tuning `spec`."""
  tx = train_lib.make_optimizer('adam', learning_rate, steps_per_epoch=1)
  # Not donated: layers the surgery left alone share their arrays with the
  # previous network, which is kept if this one fails the stopping rule.
  return tx, jax.jit(train_lib.make_step(models.build(spec), tx, loss_fn))


def finetune(
  spec: spec_lib.NetSpec,
  variables: dict,
  data: train_lib.Data,
  key,
  loss_fn,
  *,
  steps: int,
  batch_size: int,
  learning_rate: float,
) -> dict:
  """`steps` Adam steps of `loss_fn` on random training batches (train mode)."""
  if not steps:
    return variables
  tx, step = _train_step(spec, loss_fn, learning_rate)
  state = train_lib.TrainState.create(variables, tx)
  batch_key, step_key = jax.random.split(key)
  batches = _batches(batch_key, data.images.shape[0], batch_size, steps)
  for idx, k in zip(batches, jax.random.split(step_key, steps)):
    state, _ = step(state, data, idx, k)
  return state.variables


def prune_until_stop(
  config,
  spec,
  variables,
  val_accuracy: float,
  data: train_lib.Data,
  dataset,
  limits: Limits,
  key,
  *,
  log=None,
) -> Pruned:
  """Prune, fine-tune and check the stopping rule step by step, from `spec`
  with `variables` (validation accuracy `val_accuracy`); returns the last
  acceptable network. `log(step, removed, params, val_accuracy, reason)` is
  called after every step."""
  p = config.pruning
  loss_fn = _hard_soft(config.final.soft_weight)
  num_examples = data.images.shape[0]
  kept = Pruned(spec, variables, val_accuracy, 0, 'max_steps')
  for step in range(1, p.max_steps + 1):
    if all(u.filters == 1 for u in prunable_convs(kept.spec)):
      return dataclasses.replace(kept, stopped_because='nothing_prunable')
    score_key, tune_key = jax.random.split(jax.random.fold_in(key, step))
    scores = taylor_scores(
      kept.spec,
      kept.variables,
      data,
      _batches(score_key, num_examples, p.batch_size, p.score_batches),
      loss_fn,
    )
    remove = lowest_filters(kept.spec, scores, p.fraction_per_step)
    spec, variables = prune(kept.spec, kept.variables, remove)
    variables = finetune(
      spec,
      variables,
      data,
      tune_key,
      loss_fn,
      steps=p.finetune_steps,
      batch_size=p.batch_size,
      learning_rate=p.learning_rate,
    )
    accuracy = train_lib.accuracy(
      models.build(spec), variables, dataset.val_images, dataset.val_labels
    )
    params = spec_lib.param_count(spec)
    reason = stop_reason(params, accuracy, limits)
    if log is not None:
      log(step, sum(len(f) for f in remove.values()), params, accuracy, reason)
    if reason is not None:
      return dataclasses.replace(kept, stopped_because=reason)
    kept = Pruned(spec, variables, accuracy, step, 'max_steps')
  return kept


# ---- the baseline


def run(config, workdir: str, teacher, dataset, *, progress: bool = True) -> dict:
  """Paper Table 2's pruning baseline against the N2N student (see the module
  docstring); writes WORKDIR/baselines/taylor_pruning/ and returns its summary."""
  start = time.perf_counter()
  p = config.pruning
  limits = stopping_limits(config, workdir, teacher)
  teacher_logits = train_lib.predict(teacher.model, teacher.variables, dataset.train_images)
  data = train_lib.Data(dataset.train_images, dataset.train_labels, teacher_logits)
  teacher_params = spec_lib.param_count(teacher.spec)
  base_key = jax.random.fold_in(jax.random.key(config.seed), _KEY_STREAM)
  results, pruning_seconds = [], 0.0
  for r in range(p.repeats):
    bar = tqdm.tqdm(
      desc=f'pruning {r + 1}/{p.repeats}', unit='step', disable=not progress, dynamic_ncols=True
    )

    def log(step, removed, params, accuracy, reason, r=r, bar=bar):
      bar.update(1)
      bar.set_postfix(params=f'{params:,}', val=f'{accuracy:.4f}')
      if progress:
        verdict = f'stop ({reason}), keep step {step - 1}' if reason else 'ok'
        tqdm.tqdm.write(
          f'pruning {r + 1}/{p.repeats} step {step}: removed {removed} filters, '
          f'{params:,} params ({teacher_params / params:.2f}x), val accuracy '
          f'{accuracy:.4f} (limits {limits.params:,} params, '
          f'{limits.val_accuracy:.4f}): {verdict}',
          file=sys.stderr,
        )

    began = time.perf_counter()
    try:
      pruned = prune_until_stop(
        config,
        teacher.spec,
        teacher.variables,
        teacher.record['val_accuracy'],
        data,
        dataset,
        limits,
        jax.random.fold_in(base_key, r),
        log=log,
      )
    finally:
      bar.close()
    pruning_seconds += time.perf_counter() - began
    # Named apart from the teacher, for comparison tables and the export.
    spec = dataclasses.replace(pruned.spec, name=f'{teacher.spec.name}_{NAME}')
    trained = baselines.train_final(
      config,
      dataset,
      teacher_logits,
      spec,
      progress=progress,
      initial_variables=pruned.variables,
      desc=f'final training {r + 1}/{p.repeats}',
    )
    results.append((pruned, trained))

  # Highest validation accuracy; on a tie the smaller network, then the earlier repeat.
  _, best = max(results, key=lambda pt: (pt[1].val_accuracy, -spec_lib.param_count(pt[1].spec)))
  final_seconds = sum(t.seconds for _, t in results)
  summary = {
    'method': 'pruning',
    'name': NAME,
    'teacher': baselines.teacher_summary(teacher),
    'student': baselines.student_summary(best),
    'compression': teacher_params / spec_lib.param_count(best.spec),
    'reference': limits.reference,
    'repeats': [
      {
        'params': spec_lib.param_count(t.spec),
        'val_accuracy': t.val_accuracy,
        'test_accuracy': t.test_accuracy,
        'steps': pr.steps,
        'stopped_because': pr.stopped_because,
        'pruned_val_accuracy': pr.val_accuracy,
        'architecture': spec_lib.short_text(t.spec),
      }
      for pr, t in results
    ],
    'settings': p.to_dict(),
    'wall_seconds': round(time.perf_counter() - start, 2),
    # 'compile' is the part of 'final' spent compiling, not a third share.
    'time': {
      'pruning': round(pruning_seconds, 2),
      'final': round(final_seconds, 2),
      'compile': round(sum(t.compile_seconds for _, t in results), 2),
    },
  }
  return baselines.save(workdir, NAME, summary, best, teacher)
