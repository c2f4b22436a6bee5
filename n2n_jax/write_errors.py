"""A run's folder that cannot be written (a full disk, a quota, a file system
gone read-only): one line saying what could not be written and where, instead
of a traceback from deep inside orbax, tensorboardX or matplotlib.

Nothing needs undoing when that happens: every output is written beside its
target and renamed over it (atomic.py; orbax does the same for checkpoints),
so the last checkpoint and the files a reader sees stay whole, and running the
same command again once space is freed resumes from that checkpoint. The
command line exits with EXIT_CODE (EX_IOERR) so a job script can tell "fix
the disk, then rerun" apart from a bug (1) or bad flags (2).
"""

from __future__ import annotations

import errno
import logging
import os
import re

EXIT_CODE = 74  # EX_IOERR in sysexits.h

# Errors that mean "this place cannot take what we write", whatever wrote it.
# Permission errors count only inside the run's folder (see find): elsewhere
# they more likely concern a file being read (a dataset, a teacher spec).
_FULL_OR_READ_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
_PERMISSION = {errno.EACCES, errno.EPERM}
# tensorstore (orbax's array files) raises ValueError whose text carries the
# OS's message and the file it failed on.
_TENSORSTORE_TEXT = re.compile(
  r'(No space left on device|Disk quota exceeded|Read-only file system|Permission denied)'
)
# The file itself where it says, else the database folder it was writing.
_TENSORSTORE_PATHS = (re.compile(r'Failed writing: "([^"]+)"'), re.compile(r'local file "([^"]+)"'))

# What each part of a run's folder is, for the message (README: "what DIR receives").
_WHAT = (
  ('search_checkpoints', 'the search checkpoint'),
  ('teacher_progress', "the teacher's training progress"),
  ('teacher_checkpoint', "the teacher's weights"),
  ('teacher.json', "the teacher's record"),
  ('metrics.jsonl', 'the metrics'),
  ('tensorboard', "TensorBoard's event file"),
  ('.png', 'a plot'),
  ('report.md', 'the report'),
  ('summary.json', 'the summary'),
  ('student', 'the exported student'),
  ('baselines', "a baseline's results"),
  ('damaged_checkpoints', 'a damaged checkpoint being moved aside'),
  ('.n2n_jax.lock', "the run folder's lock"),
)


def _chain(error: BaseException):
  """`error` and the errors it was raised from or while handling."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def find(error: BaseException, workdir: str | None) -> tuple[str | None, str] | None:
  """(path, the OS's reason) when `error` comes from writing a full or
  read-only place (or, inside `workdir`, one without permission); else None.
  The path is None where the error does not name it (a failed flush)."""
  inside = os.path.abspath(workdir) + os.sep if workdir else None
  for e in _chain(error):
    if isinstance(e, OSError):
      path = os.path.abspath(os.fsdecode(e.filename)) if e.filename is not None else None
      if e.errno in _FULL_OR_READ_ONLY or (
        e.errno in _PERMISSION and path and inside and (path + os.sep).startswith(inside)
      ):
        return path, e.strerror or os.strerror(e.errno)
    reason = _TENSORSTORE_TEXT.search(str(e))
    if reason and not isinstance(e, OSError):
      where = [m.group(1) for m in (p.search(str(e)) for p in _TENSORSTORE_PATHS) if m]
      return (where[0] if where else None), reason.group(1)
  return None


def what_is(path: str, workdir: str | None) -> str:
  """'the search checkpoint', 'the report', ... for a path in the run's folder,
  told by its first part there (temporaries included: '.summary.json.x1y2.tmp',
  '.student.partial/...', 'search_checkpoints/3.orbax-checkpoint-tmp/...')."""
  relative = os.path.relpath(path, workdir) if workdir else os.path.basename(path)
  if relative == '.':
    return 'the run folder'
  if relative.startswith('..'):  # outside the run's folder
    return 'a file'
  first = relative.split(os.sep)[0].lstrip('.')
  return next((what for part, what in _WHAT if part.lstrip('.') in first), 'a file')


def message(error: BaseException, workdir: str | None) -> str | None:
  """The one line the command line prints for `error`, or None when it is not
  a storage fault."""
  found = find(error, workdir)
  if found is None:
    return None
  path, reason = found
  where = f'{what_is(path, workdir)} ({path})' if path else f'in {workdir or "the run folder"}'
  return (
    f'error: could not write {where}: {reason}. What was saved before is intact; '
    'free space or make the folder writable, then run the same command again to resume.'
  )


class QuietStorageErrors(logging.Filter):
  """Drops log records about a storage fault (orbax logs each failed write
  from its background threads): the command line reports it once, itself."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    if error is not None:
      return find(error, None) is None
    return _TENSORSTORE_TEXT.search(record.getMessage()) is None
