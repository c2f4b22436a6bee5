"""What the command line runs, as plain library calls: `run(config, workdir)`."""

from __future__ import annotations

import json
import sys

from n2n_jax import baselines
from n2n_jax import checkpoint as checkpoint_lib
from n2n_jax import config as config_lib
from n2n_jax import data as data_lib
from n2n_jax import distributed
from n2n_jax import pruning
from n2n_jax import runtime
from n2n_jax import search as search_lib
from n2n_jax import spec as spec_lib
from n2n_jax import teacher as teacher_lib
from n2n_jax import workdir_lock

# Errors that mean "fix your input" or "this run cannot go on", shown without
# a traceback.
USER_ERRORS = (
  config_lib.ConfigError,
  data_lib.DataError,
  spec_lib.SpecError,
  teacher_lib.WorkdirMismatch,
  teacher_lib.TrainingError,
  search_lib.ResumeMismatch,
  search_lib.SearchError,
  workdir_lock.WorkdirBusy,
  teacher_lib.TeacherDamaged,
  checkpoint_lib.CheckpointDamaged,
  distributed.DistributedError,
  baselines.BaselineError,
)


def describe(spec: spec_lib.NetSpec) -> dict:
  """A JSON-ready summary of an architecture: counts and its layer list."""
  layers = []
  for i, (layer, stats) in enumerate(zip(spec.layers, spec_lib.layer_stats(spec))):
    layers.append(
      {
        'index': i,
        **spec_lib.layer_to_dict(layer),
        'output_shape': list(stats.out_shape),
        'params': stats.params,
        'flops': stats.flops,
      }
    )
  return {
    'name': spec.name,
    'input_shape': list(spec.input_shape),
    'num_classes': spec_lib.num_classes(spec),
    'params': spec_lib.param_count(spec),
    'flops': spec_lib.flops(spec),
    'removable_layers': spec_lib.removable_count(spec),
    'shrinkable_variables': len(spec_lib.shrink_vars(spec)),
    'layers': layers,
  }


def run(config, workdir: str | None, out=sys.stdout, *, scorer=None, latency=None) -> dict:
  """Validate the config, then run its mode. Returns what was printed.
  `scorer` (compress mode): what scores the search's students, see
  n2n_jax/scoring.py; by default they are distilled from the teacher.
  `latency` (compress mode, with constraints.max_latency_ms): spec ->
  milliseconds in place of timing each student (latency.measure)."""
  config_lib.validate(config)
  input_shape, num_classes = config_lib.input_of(config, need_data=config.mode != 'describe')
  spec = config_lib.teacher_spec(config, input_shape, num_classes)
  if config.mode == 'describe':
    result = describe(spec)
  else:
    if not workdir:
      raise config_lib.ConfigError(f'--workdir is required for mode={config.mode!r}')
    with workdir_lock.job_lock(workdir):
      result = _train(config, spec, workdir, scorer, latency)
  if distributed.is_primary():  # one copy of the answer from a run of several processes
    print(json.dumps(result, indent=2), file=out)
  return result


def _train(config, spec, workdir: str, scorer=None, latency=None) -> dict:
  """The teacher, and in compress mode the search after it, in `workdir`."""
  runtime.enable_compilation_cache(
    config.runtime.compilation_cache_dir, trust_shared=config.runtime.trust_shared_cache
  )
  progress = config.runtime.progress and distributed.is_primary()
  dataset = None

  def get_dataset():
    nonlocal dataset
    if dataset is None:
      dataset = data_lib.load(config.data)
    return dataset

  teacher = teacher_lib.train_or_load(config, spec, workdir, get_dataset, progress=progress)
  if config.mode == 'teacher':
    result = {
      k: v for k, v in teacher.record.items() if k not in ('history', 'origin', 'variables_sha256')
    }
    return dict(result, workdir=workdir)
  if config.mode == 'prune':
    return pruning.run(config, workdir, teacher, get_dataset(), progress=progress)
  if config.mode == 'handdesigned':
    return baselines.run_handdesigned(config, workdir, teacher, get_dataset(), progress=progress)
  return search_lib.run(
    config, workdir, teacher, get_dataset(), progress=progress, scorer=scorer, latency=latency
  )
