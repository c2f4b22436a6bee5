"""One run per workdir: a second run pointed at a busy workdir is refused
instead of interleaving its writes with the first's."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time

from n2n_jax import distributed

LOCK_FILE = '.n2n_jax.lock'


class WorkdirBusy(RuntimeError):
  """Another run holds the workdir."""


class WorkdirLock:
  """An exclusive flock on WORKDIR/.n2n_jax.lock for the duration of a `with`.
  The kernel drops it when the holder exits, however it exits (SIGKILL
  included), so a crashed run never leaves the workdir locked."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._file = None

  def __enter__(self) -> WorkdirLock:
    os.makedirs(os.path.dirname(self.path) or '.', exist_ok=True)
    f = open(self.path, 'a+', encoding='utf-8')
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or 'another process'
      f.close()
      raise WorkdirBusy(
        f'{os.path.dirname(self.path)} is in use by {holder}; wait for it '
        'to finish or use another --workdir'
      ) from None
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()} since {time.strftime("%Y-%m-%d %H:%M:%S")}')
    f.flush()
    self._file = f
    return self

  def __exit__(self, *exc):
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()
    self._file = None


@contextlib.contextmanager
def job_lock(workdir: str):
  """The lock for a run of one or several processes (jax.distributed).

  Process 0 holds it for all of them: the others share its workdir, and its
  lock would refuse them (flock conflicts between processes on one machine,
  and across machines on filesystems that support it, such as NFSv4). Every
  process learns whether process 0 got it, so that none goes on alone and
  waits for the others forever.
  """
  with contextlib.ExitStack() as stack:
    busy = None
    if distributed.is_primary():
      try:
        stack.enter_context(WorkdirLock(workdir))
      except WorkdirBusy as e:
        busy = e
    if distributed.from_primary(busy is not None):
      raise busy or WorkdirBusy(f'{workdir} is in use by another run (process 0 could not lock it)')
    yield
