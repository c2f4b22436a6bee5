"""A run folder that fills up or goes read-only (n2n_jax/write_errors.py) and a
cache folder that does (runtime.enable_compilation_cache, program_store).

The folder faults are injected at each write site in turn by
tests/write_faults.py (ENOSPC, then EROFS on the rerun), and where this machine
lets a test mount a file system, a real size-limited tmpfs fills up. Each
faulted run must stop with exit code 74 and one line naming what could not be
written and where; the run after the fault is cleared must end with the
uninterrupted run's records and student. A cache fault must change nothing
but compile counts, with one warning per cache.
"""

import errno
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT
from conftest import run_records
from conftest import tiny_run_flags

from n2n_jax import write_errors

MAIN = [sys.executable, '-m', 'n2n_jax.main', '--config=configs/digits.py']
INJECT = [sys.executable, str(ROOT / 'tests' / 'write_faults.py')]


def main(workdir, flags, *, fault=None, cache=''):
  """The compress job in a subprocess; fault = (errno name, path pattern, nth)."""
  prefix = [*INJECT, *map(str, fault), '--config=configs/digits.py'] if fault else MAIN
  return subprocess.run(
    [*prefix, f'--workdir={workdir}', *flags, f'--config.runtime.compilation_cache_dir={cache}'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )


def result(workdir):
  summary = json.loads((workdir / 'summary.json').read_text())
  del summary['wall_seconds'], summary['time']
  return run_records(workdir), summary


def temporaries(workdir) -> list:
  """Files and folders a write leaves behind when it fails."""
  found = []
  for folder, dirs, files in os.walk(workdir):
    for name in dirs + files:
      if (
        name.endswith('.tmp')
        or '.partial' in name
        or 'orbax-checkpoint-tmp' in name
        or (name.startswith('.') and name != '.n2n_jax.lock')
      ):
        found.append(os.path.join(folder, name))
  return found


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  folder = tmp_path_factory.mktemp('uninterrupted')
  flags = tiny_run_flags(folder)
  done = main(folder / 'run', flags)
  assert done.returncode == 0, done.stderr[-3000:]
  return flags, result(folder / 'run')


# --- the message --------------------------------------------------------------------------------


def test_a_full_or_read_only_folder_is_found_in_the_error_chain(tmp_path):
  workdir = str(tmp_path / 'run')
  path = os.path.join(workdir, 'search_checkpoints', '3.orbax-checkpoint-tmp')
  try:
    try:
      raise OSError(errno.EROFS, 'Read-only file system', path)
    except OSError as e:
      raise RuntimeError('orbax: save failed') from e
  except RuntimeError as e:
    assert write_errors.find(e, workdir) == (path, 'Read-only file system')
    line = write_errors.message(e, workdir)
  assert line.startswith(f'error: could not write the search checkpoint ({path}): Read-only')
  assert 'run the same command again to resume' in line
  # tensorstore (orbax's arrays) raises ValueError carrying the OS's text and the file.
  tensorstore = ValueError(
    'RESOURCE_EXHAUSTED: Error opening "zarr" driver: Error writing "x/.zarray" in OCDBT '
    f'database at local file "{workdir}/search_checkpoints/1/arrays/": Failed writing: '
    f'"{workdir}/search_checkpoints/1/arrays/d/9bf": Failed to write 214 bytes to file 13: '
    "No space left on device [os_error_code='28']"
  )
  assert write_errors.find(tensorstore, workdir) == (
    f'{workdir}/search_checkpoints/1/arrays/d/9bf',
    'No space left on device',
  )
  # A permission error counts inside the run's folder only; other errors never.
  denied = OSError(errno.EACCES, 'Permission denied', '/data/train.idx')
  assert write_errors.find(denied, workdir) is None
  assert write_errors.find(OSError(errno.EACCES, 'Permission denied', path), workdir)
  assert write_errors.message(OSError(errno.ENOENT, 'No such file', path), workdir) is None
  assert write_errors.message(ValueError('bad value'), workdir) is None


@pytest.mark.parametrize(
  'name, what',
  [
    ('.summary.json.1a2b3c4d.tmp', 'the summary'),
    ('summary.json', 'the summary'),
    ('.search_stage2.png.1a2b3c4d.png', 'a plot'),
    ('.student.partial', 'the exported student'),
    ('baselines/prune/summary.json', "a baseline's results"),
    ('report.md', 'the report'),
    ('search_checkpoints/2.orbax-checkpoint-tmp/arrays', 'the search checkpoint'),
    ('tensorboard/events.out', "TensorBoard's event file"),
    ('teacher_checkpoint.orbax-checkpoint-tmp', "the teacher's weights"),
    ('teacher.json', "the teacher's record"),
    ('metrics.jsonl', 'the metrics'),
    ('somewhere_else', 'a file'),
    ('../other/summary.json', 'a file'),
    ('', 'the run folder'),
  ],
)
def test_each_part_of_the_run_folder_is_named(name, what):
  assert write_errors.what_is(os.path.join('/w', name), '/w') == what


# --- faults in the run's folder -----------------------------------------------------------------

SITES = [  # (path pattern, what the message calls it)
  ('/teacher_progress', "the teacher's training progress"),
  ('/teacher_checkpoint', "the teacher's weights"),
  ('/teacher.json', "the teacher's record"),
  ('/metrics.jsonl', 'the metrics'),
  ('/tensorboard', "TensorBoard's event file"),
  ('/search_checkpoints/2', 'the search checkpoint'),  # the first one stays
  ('.png', 'a plot'),
  ('/report.md', 'the report'),
  ('/summary.json', 'the summary'),
  ('/student', 'the exported student'),
]


def assert_stopped_with_one_line(done, what, workdir):
  assert done.returncode == write_errors.EXIT_CODE, done.stderr[-3000:]
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in done.stderr, done.stderr[-3000:]
  assert lines[0].startswith(f'error: could not write {what} ({workdir}'), lines[0]
  assert temporaries(workdir) == []


@pytest.mark.slow
@pytest.mark.parametrize('pattern, what', SITES, ids=[s[0].strip('/.') for s in SITES])
def test_a_full_then_read_only_folder_stops_the_run_and_the_rerun_resumes(
  uninterrupted, tmp_path, pattern, what
):
  flags, expected = uninterrupted
  workdir = tmp_path / 'run'
  for code in ('ENOSPC', 'EROFS'):
    done = main(workdir, flags, fault=(code, pattern, 1))
    assert_stopped_with_one_line(done, what, workdir)
    assert os.strerror(getattr(errno, code)) in done.stderr
  done = main(workdir, flags)  # the fault cleared
  assert done.returncode == 0, done.stderr[-3000:]
  assert result(workdir) == expected


def can_mount() -> bool:
  probe = '/tmp/n2n_jax_mount_probe'
  os.makedirs(probe, exist_ok=True)
  made = (
    subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe], capture_output=True, check=False
    ).returncode
    == 0
  )
  if made:
    subprocess.run(['umount', probe], check=True)
  return made


@pytest.mark.slow
@pytest.mark.skipif(
  not can_mount(),
  reason='needs permission to mount a tmpfs (root in a '
  'container with CAP_SYS_ADMIN); the injected faults above still run',
)
def test_a_real_disk_that_fills_up(uninterrupted, tmp_path):
  """tensorstore writes the checkpoints' arrays from C++, past the injection:
  a real 200 KB file system fills up during the search's first checkpoint."""
  flags, expected = uninterrupted
  disk = tmp_path / 'disk'
  disk.mkdir()
  subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=200k', 'tmpfs', str(disk)], check=True)
  try:
    workdir = disk / 'run'
    done = main(workdir, flags)
    assert done.returncode == write_errors.EXIT_CODE, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith('error: could not write the ') and str(workdir) in last
    assert 'No space left on device' in last and 'Traceback' not in done.stderr
    subprocess.run(['mount', '-o', 'remount,size=20m', str(disk)], check=True)
    done = main(workdir, flags)
    assert done.returncode == 0, done.stderr[-3000:]
    assert result(workdir) == expected
  finally:
    subprocess.run(['umount', str(disk)], check=True)


# --- faults in the cache folder -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize('fault', ['EROFS', 'ENOSPC', 'damaged'])
def test_a_cache_fault_costs_compiles_not_results(uninterrupted, tmp_path, fault):
  flags, expected = uninterrupted
  cache = tmp_path / 'cache'
  if fault == 'damaged':  # a cache filled by an earlier run, then every file cut short
    assert main(tmp_path / 'fill', flags, cache=cache).returncode == 0
    damaged = 0
    for folder, _, files in os.walk(cache):
      for name in files:
        with open(os.path.join(folder, name), 'r+b') as f:
          f.truncate(os.path.getsize(f.name) // 2)
        damaged += 1
    assert damaged > 10
    done = main(tmp_path / 'run', flags, cache=cache)
  else:  # the folder is there (as on a disk remounted read-only); writes into it fail
    cache.mkdir()
    done = main(tmp_path / 'run', flags, cache=cache, fault=(fault, str(cache), 1))
  assert done.returncode == 0, done.stderr[-3000:]
  assert result(tmp_path / 'run') == expected
  warned = [line for line in done.stderr.splitlines() if 'Warning:' in line]
  if fault == 'damaged':
    assert len(warned) == 1 and 'not signed with your key' in warned[0], done.stderr
  else:
    reason = os.strerror(getattr(errno, fault))
    assert len(warned) == 2, done.stderr  # JAX's cache and the program store, once each
    assert 'cannot be written' in warned[0] and 'program store' in warned[1], done.stderr
    assert all(reason in line for line in warned), done.stderr


def test_a_cache_folder_that_cannot_be_made_turns_the_cache_off(tmp_path, monkeypatch):
  from n2n_jax import runtime  # pylint: disable=g-import-not-at-top

  def read_only(path, *_, **__):
    raise OSError(errno.EROFS, 'Read-only file system', path)

  monkeypatch.setattr(os, 'mkdir', read_only)
  with pytest.warns(UserWarning, match='cannot be made .Read-only file system.; programs compile'):
    assert runtime.enable_compilation_cache(str(tmp_path / 'ro' / 'cache')) is False
