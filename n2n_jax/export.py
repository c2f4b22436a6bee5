"""The exported student: its spec as JSON plus its variables as an orbax
checkpoint, loadable with one call."""

from __future__ import annotations

import contextlib
import json
import os

import jax
import orbax.checkpoint as ocp

from n2n_jax import atomic
from n2n_jax import checkpoint
from n2n_jax import distributed
from n2n_jax import models
from n2n_jax import spec as spec_lib

SPEC_FILE = 'spec.json'
VARIABLES_DIR = 'variables'


@contextlib.contextmanager
def folder_written_whole(directory: str):
  """Yields the temporary folder (atomic.partial_dir) that `directory` is
  written into. Process 0 empties it first (the others wait), and when the
  block ends swaps it in whole (atomic.commit_dir) or, if the block raised,
  removes it. Collective in a run of several processes: all enter the block."""
  primary = distributed.is_primary()
  if primary:
    atomic.fresh_partial_dir(directory)
  distributed.sync(f'export {os.path.basename(directory)}: folder ready')
  try:
    yield atomic.partial_dir(directory)
    if primary:
      atomic.commit_dir(directory)
  except BaseException:
    if primary:
      atomic.discard_partial_dir(directory)
    raise


def save_student(
  directory: str, spec: spec_lib.NetSpec, variables: dict, info: dict | None = None
) -> None:
  """Write DIR/spec.json (the spec plus `info`, e.g. accuracies and the data
  normalisation a user needs to feed it) and DIR/variables/ (orbax), whole or
  not at all: both go into a temporary folder that then replaces DIR
  (atomic.py), so a reader never loads a half-written student and a failed
  export leaves the previous one.

  In a run of several processes all call it (orbax's save is collective and
  writes process 0's variables, which must be NumPy there; see
  checkpoint.Checkpoints.save) and process 0 alone handles the folders and
  writes spec.json."""
  with folder_written_whole(directory) as partial:
    checkpoint.save_tree(os.path.join(partial, VARIABLES_DIR), jax.device_get(variables))
    if distributed.is_primary():
      with open(os.path.join(partial, SPEC_FILE), 'w', encoding='utf-8') as f:
        json.dump({'spec': spec_lib.to_dict(spec), 'info': info or {}}, f, indent=2)


def load_student(directory: str) -> tuple:
  """(module, variables) ready for `module.apply(variables, images, train=False)`."""
  path = os.path.join(directory, SPEC_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f'{path} not found: {directory} holds no exported student '
      '(a finished compression run writes WORKDIR/student/)'
    )
  with open(path) as f:
    spec = spec_lib.from_dict(json.load(f)['spec'])
  model = models.build(spec)
  target = models.variable_shapes(model, spec.input_shape)
  variables = ocp.StandardCheckpointer().restore(
    os.path.abspath(os.path.join(directory, VARIABLES_DIR)), target
  )
  return model, dict(jax.device_put(variables))  # jax.Arrays, though saved from NumPy
