"""Runs `python -m n2n_jax.main ARGS` with a storage fault injected at the OS
boundary: from the Nth attempt to write a path that contains PATTERN on, every
write there fails with ERRNO, as on a disk that has filled up (ENOSPC) or a file
system remounted read-only (EROFS), until the process ends.

  python tests/write_faults.py ERRNO_NAME PATTERN N ARGS...

Tests run as root, where permissions cannot make a folder read-only, so the
failure is raised by Python's own file functions (open, os.open, os.mkdir,
os.rename, os.replace), which every write in this package and in orbax's
folder handling goes through. Writes made from C++ (tensorstore's array
files, XLA) pass untouched; tests/test_write_faults.py covers them with a
real full file system where the machine lets a test mount one.
"""

import builtins
import errno
import io
import os
import runpy
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def install(errno_name: str, pattern: str, nth: int) -> None:
  code = getattr(errno, errno_name)
  seen = [0]

  def check(path):
    if isinstance(path, (str, bytes, os.PathLike)) and pattern in os.fsdecode(path):
      seen[0] += 1
      if seen[0] >= nth:
        raise OSError(code, os.strerror(code), os.fsdecode(path))

  real_open, real_os_open = builtins.open, os.open
  real = {name: getattr(os, name) for name in ('mkdir', 'rename', 'replace')}

  def fake_open(file, mode='r', *args, **kwargs):
    if any(c in mode for c in 'wax+'):
      check(file)
    return real_open(file, mode, *args, **kwargs)

  def fake_os_open(path, flags, *args, **kwargs):
    if flags & _WRITE_FLAGS:
      check(path)
    return real_os_open(path, flags, *args, **kwargs)

  def wrap(name):
    def fake(src, *args, **kwargs):
      check(src)
      if args:
        check(args[0])
      return real[name](src, *args, **kwargs)

    return fake

  builtins.open = io.open = fake_open
  os.open = fake_os_open
  for name in real:
    setattr(os, name, wrap(name))


if __name__ == '__main__':
  install(sys.argv[1], sys.argv[2], int(sys.argv[3]))
  sys.argv = ['n2n_jax.main', *sys.argv[4:]]
  runpy.run_module('n2n_jax.main', run_name='__main__', alter_sys=True)
