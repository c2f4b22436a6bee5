"""Outputs written whole or not at all.

A reader of a run's folder (a dashboard polling summary.json, a user opening
report.md, a script loading student/) must never see half of a file, and a
write that fails (full disk, read-only file system, a kill) must leave the
previous version as it was. Each writer here writes a temporary sibling and
renames it over the target: a rename within one folder is atomic on POSIX
file systems. Temporary files are removed where the file system allows.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil


def write_with(path: str, write, *, suffix: str = '.tmp') -> str:
  """`write(temporary path)` then rename it to `path`; returns `path`.
  `suffix` keeps a file type where the writer infers it from the name."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f'.{os.path.basename(path)}.{secrets.token_hex(4)}{suffix}')
  # Not tempfile.mkstemp: its files are private (0600), and the output must
  # get the usual mode (0666 less the umask) like any other file of the run.
  os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
  return path


def write_text(path: str, text: str) -> str:
  """`text` (UTF-8) to `path`, flushed to disk before the rename."""

  def write(tmp):
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())

  return write_with(path, write)


def partial_dir(directory: str) -> str:
  """The temporary folder a new `directory` is written into (a fixed name
  beside it, so processes writing collectively, e.g. with orbax, agree on it)."""
  parent, name = os.path.split(os.path.abspath(directory))
  return os.path.join(parent, f'.{name}.partial')


def fresh_partial_dir(directory: str) -> str:
  """partial_dir(directory), emptied of what a killed write left there."""
  partial = partial_dir(directory)
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  return partial


def commit_dir(directory: str) -> str:
  """Put the written partial_dir(directory) at `directory`, replacing any
  earlier folder. Between the two renames that swap them `directory` is
  briefly absent (a reader sees no folder, never a mixed one); the earlier
  folder is removed last, and put back if the swap fails."""
  directory, partial = os.path.abspath(directory), partial_dir(directory)
  old = partial[: -len('.partial')] + '.old'
  shutil.rmtree(old, ignore_errors=True)
  if os.path.exists(directory):
    os.rename(directory, old)
  try:
    os.rename(partial, directory)
  except BaseException:
    if os.path.exists(old):
      os.rename(old, directory)
    raise
  shutil.rmtree(old, ignore_errors=True)
  return directory


def discard_partial_dir(directory: str) -> None:
  shutil.rmtree(partial_dir(directory), ignore_errors=True)
