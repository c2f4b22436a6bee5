"""SIGTERM (a cloud preemption, `kill`, Slurm's time limit) as an exception.

Cloud machines send SIGTERM and give a short grace period before SIGKILL. The
run must stop quickly and leave its latest state on disk: `install()` turns
SIGTERM into `Preempted`, raised in the main thread wherever it is, so the
teacher loop can save its last finished epoch and the search (which saves
after every iteration anyway) can exit at once. Inside `deferred()` (a
checkpoint being written) the signal waits until the write is complete, so a
preemption never cuts a checkpoint in half.
"""

from __future__ import annotations

import contextlib
import signal
import threading

# 128 + SIGTERM, what a shell reports for a process that SIGTERM ended.
EXIT_CODE = 128 + signal.SIGTERM


class Preempted(BaseException):
  """SIGTERM arrived. A BaseException, like KeyboardInterrupt, so that the
  evaluator's `except Exception` (one failed student must not stop a search)
  cannot swallow it and score the student -1."""


_deferring = 0
_pending = False
_stopping = False  # Preempted was raised: the run is on its way out


def _handler(signum, frame):  # pylint: disable=unused-argument
  global _pending, _stopping
  if _stopping:
    # A second SIGTERM (an impatient launcher) must not interrupt the saves
    # and shutdown the first one started.
    return
  if _deferring:
    _pending = True
    return
  _stopping = True
  raise Preempted(f'stopped by signal {signal.Signals(signum).name}')


def install() -> bool:
  """Route SIGTERM to `Preempted`; False (and nothing done) outside the main
  thread, where Python cannot install signal handlers."""
  global _stopping, _pending
  if threading.current_thread() is not threading.main_thread():
    return False
  _stopping = _pending = False
  signal.signal(signal.SIGTERM, _handler)
  return True


@contextlib.contextmanager
def deferred():
  """Hold SIGTERM until the block finishes, then raise `Preempted`."""
  global _deferring, _pending, _stopping
  _deferring += 1
  try:
    yield
  finally:
    _deferring -= 1
    if not _deferring and _pending:
      _pending = False
      _stopping = True
      raise Preempted('stopped by signal SIGTERM')
