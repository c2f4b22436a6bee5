"""Search checkpoints: after every policy iteration the arrays (policy
parameters and optimiser states) and a JSON record of everything else (the
config, counters, best students, metrics so far) are saved together, atomically,
with orbax. Resuming restores the latest complete one."""

from __future__ import annotations

import os
import shutil

import jax
import orbax.checkpoint as ocp

SEARCH_DIR = 'search_checkpoints'


class Checkpoints:
  """Numbered search checkpoints in WORKDIR/search_checkpoints (the last two kept)."""

  def __init__(self, workdir: str, keep: int = 2):
    self.directory = os.path.abspath(os.path.join(workdir, SEARCH_DIR))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                             enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, arrays, meta: dict) -> None:
    # Orbax writes into a temporary folder and renames it when complete, so a
    # crash mid-save leaves the previous checkpoint as the latest.
    self._manager.save(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)), force=True)
    self._manager.wait_until_finished()

  def restore(self, abstract_arrays, step: int | None = None) -> tuple:
    """(arrays, meta) of `step` (default: the latest); `abstract_arrays` gives
    the tree structure, shapes and dtypes to restore into."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract_arrays)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        arrays=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored['arrays'], restored['meta']

  def restore_meta(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    return self._manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta']

  def close(self):
    self._manager.close()

  def delete_all(self):
    self.close()
    shutil.rmtree(self.directory, ignore_errors=True)
