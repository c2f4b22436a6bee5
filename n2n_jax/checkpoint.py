"""Search checkpoints: after every policy iteration the arrays (policy
parameters and optimiser states) and a JSON record of everything else (the
config, counters, best students, metrics so far) are saved together, atomically,
with orbax. Resuming restores the latest complete one that passes its checksum.

A checksum over both parts is stored in the JSON record, because orbax
detects a truncated file but not flipped bytes: a damaged checkpoint is moved
aside with a warning and the one before it is used, so a run never continues
from garbage and loses at most one iteration.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp

from n2n_jax import distributed
from n2n_jax import preemption

SEARCH_DIR = 'search_checkpoints'
DAMAGED_DIR = 'damaged_checkpoints'
_CHECKSUM = 'checksum'


class CheckpointDamaged(RuntimeError):
  """No stored search checkpoint can be read back intact."""


def checksum(arrays, meta: dict) -> str:
  """sha256 of the JSON record (as it reads back) and every array's dtype,
  shape and bytes, in tree order."""
  h = hashlib.sha256()
  record = {k: v for k, v in meta.items() if k != _CHECKSUM}
  h.update(json.dumps(json.loads(json.dumps(record)), sort_keys=True).encode())
  for leaf in jax.tree_util.tree_leaves(arrays):
    a = np.asarray(jax.device_get(leaf))
    h.update(f'{a.dtype.str}{a.shape}'.encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


class Checkpoints:
  """Numbered checkpoints in WORKDIR/SUBDIR (the last `keep` kept): the
  search's in search_checkpoints, teacher training's in teacher_progress."""

  def __init__(self, workdir: str, keep: int = 2, subdir: str = SEARCH_DIR):
    self.workdir = workdir
    self.directory = os.path.abspath(os.path.join(workdir, subdir))
    self._keep = keep
    self._manager = self._open()

  def _open(self):
    return ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=self._keep, enable_async_checkpointing=False
      ),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, arrays, meta: dict) -> None:
    # Orbax writes into a temporary folder and renames it when complete, so a
    # crash mid-save leaves the previous checkpoint as the latest; SIGTERM
    # waits until the write is done. Saving is collective in a run of several
    # processes: all call it and orbax writes process 0's copy. As NumPy:
    # orbax refuses single-device jax.Arrays there (it cannot tell that the
    # processes' copies are one and the same), and restore() gives back
    # jax.Arrays either way.
    arrays = jax.device_get(arrays)
    meta = dict(meta, **{_CHECKSUM: checksum(arrays, meta)})
    with preemption.deferred(), failures_name(self.directory):
      self._manager.save(
        step,
        args=ocp.args.Composite(arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)),
        force=True,
      )
      self._manager.wait_until_finished()

  def restore(self, abstract_arrays, step: int | None = None) -> tuple:
    """(arrays, meta) of `step` (default: the latest), checksum verified;
    `abstract_arrays` gives the tree structure, shapes and dtypes to restore into."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract_arrays
    )
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(
        arrays=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
      ),
    )
    arrays, meta = restored['arrays'], dict(restored['meta'])
    stored = meta.pop(_CHECKSUM, None)
    if stored is not None and stored != checksum(arrays, meta):
      raise ValueError('checksum mismatch: its contents changed after it was written')
    return jax.device_put(arrays), meta

  def restore_meta(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    return {k: v for k, v in meta.items() if k != _CHECKSUM}

  def restore_latest_good(self, abstract_arrays, check_meta=None, remedy: str = '') -> tuple:
    """(arrays, meta) of the newest checkpoint that reads back intact. Damaged
    ones are moved to WORKDIR/damaged_checkpoints with a warning naming them.
    `check_meta(meta)` may raise to refuse a readable checkpoint (e.g. one made
    from another config); that error propagates and nothing is moved. When
    none is intact, CheckpointDamaged says so, ending with `remedy`."""
    skipped = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        meta = self.restore_meta(step)
      except Exception as e:  # pylint: disable=broad-except
        skipped.append((step, why(e)))
        continue
      if check_meta is not None:
        check_meta(meta)
      try:
        arrays, meta = self.restore(abstract_arrays, step)
      except Exception as e:  # pylint: disable=broad-except
        skipped.append((step, why(e)))
        continue
      if skipped:
        self._quarantine(skipped, kept=step)
      return arrays, meta
    raise CheckpointDamaged(
      f'no checkpoint in {self.directory} can be read back intact ('
      + '; '.join(f'step {s}: {reason}' for s, reason in skipped)
      + '). '
      + remedy
    )

  def _quarantine(self, skipped, kept: int) -> None:
    """Move damaged steps out of orbax's folder (so the next save of that step
    number starts clean), keeping them for inspection."""
    self._manager.close()

    def move():
      damaged = os.path.join(self.workdir, DAMAGED_DIR)
      os.makedirs(damaged, exist_ok=True)
      stamp = time.strftime('%Y%m%d-%H%M%S')
      for step, reason in skipped:
        target = os.path.join(damaged, f'{os.path.basename(self.directory)}-{step}-{stamp}')
        shutil.move(os.path.join(self.directory, str(step)), target)
        warnings.warn(
          f'checkpoint {self.directory}/{step} is damaged ({reason}); moved to '
          f'{target}; resuming from step {kept}, so the work after it is redone',
          stacklevel=5,
        )  # the caller of restore_latest_good

    distributed.on_primary(f'quarantine {self.directory}', move)
    self._manager = self._open()

  def close(self):
    self._manager.close()

  def delete_all(self):
    """Collective in a run of several processes, like save()."""
    self.close()
    distributed.on_primary(
      f'delete {self.directory}', lambda: shutil.rmtree(self.directory, ignore_errors=True)
    )


@contextlib.contextmanager
def failures_name(directory: str):
  """An OSError from orbax that names no file (its metadata writes, a full
  disk) is raised again naming `directory`, so the one-line report of a
  failed write (write_errors.py) can say what could not be written."""
  try:
    yield
  except OSError as e:
    if e.filename is not None or e.errno is None:
      raise
    raise OSError(e.errno, e.strerror, directory) from e


def save_tree(path: str, tree) -> None:
  """Save `tree` (orbax, standard layout) at `path`, done when this returns.
  Not with ocp.StandardCheckpointer: that one saves from background threads,
  and when its write fails (a full disk) they wait for a signal that never
  comes, holding the process at exit (docs/performance.md, "Failure paths")."""
  with failures_name(path):
    ocp.Checkpointer(ocp.StandardCheckpointHandler()).save(path, tree, force=True)


def why(error: Exception) -> str:
  """One short line saying what went wrong."""
  return f'{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}'[:200]
