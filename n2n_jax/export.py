"""The exported student: its spec as JSON plus its variables as an orbax
checkpoint, loadable with one call."""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from n2n_jax import distributed
from n2n_jax import models
from n2n_jax import spec as spec_lib

SPEC_FILE = 'spec.json'
VARIABLES_DIR = 'variables'


def save_student(directory: str, spec: spec_lib.NetSpec, variables: dict,
                 info: dict | None = None) -> None:
  """Write DIR/spec.json (the spec plus `info`, e.g. accuracies and the data
  normalisation a user needs to feed it) and DIR/variables/ (orbax).

  In a run of several processes all call it (orbax's save is collective and
  writes process 0's variables, which must be NumPy there; see
  checkpoint.Checkpoints.save) and process 0 alone writes spec.json."""
  if distributed.is_primary():
    os.makedirs(directory, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.abspath(os.path.join(directory, VARIABLES_DIR)),
                    jax.device_get(variables), force=True)
  checkpointer.wait_until_finished()
  if distributed.is_primary():
    with open(os.path.join(directory, SPEC_FILE), 'w') as f:
      json.dump({'spec': spec_lib.to_dict(spec), 'info': info or {}}, f, indent=2)


def load_student(directory: str) -> tuple:
  """(module, variables) ready for `module.apply(variables, images, train=False)`."""
  path = os.path.join(directory, SPEC_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: {directory} holds no exported student '
                            '(a finished compression run writes WORKDIR/student/)')
  with open(path) as f:
    spec = spec_lib.from_dict(json.load(f)['spec'])
  model = models.build(spec)
  target = models.variable_shapes(model, spec.input_shape)
  variables = ocp.StandardCheckpointer().restore(
      os.path.abspath(os.path.join(directory, VARIABLES_DIR)), target)
  return model, dict(jax.device_put(variables))  # jax.Arrays, though saved from NumPy
