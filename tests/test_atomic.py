"""Outputs written whole or not at all (n2n_jax/atomic.py): report.md, the
plots and the exported student survive a write that fails midway (a full
disk injected), and a reader polling a run's folder never sees half a file."""

import errno
import json
import os
import subprocess
import sys
import time

import jax
import matplotlib.image
import numpy as np
import pytest
from conftest import ROOT
from conftest import tiny_run_flags
from matplotlib.figure import Figure
from test_report import make_records
from test_report import make_summary

from n2n_jax import atomic
from n2n_jax import export
from n2n_jax import models
from n2n_jax import report
from n2n_jax import spec as S


def disk_full(*_, **__):
  raise OSError(errno.ENOSPC, 'No space left on device')


def leftovers(folder) -> list:
  return sorted(n for n in os.listdir(folder) if n.startswith('.'))


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
  path = str(tmp_path / 'notes.txt')
  atomic.write_text(path, 'first\n')

  def half_then_full(tmp):
    with open(tmp, 'w') as f:
      f.write('sec')
    disk_full()

  with pytest.raises(OSError, match='No space'):
    atomic.write_with(path, half_then_full)
  assert open(path).read() == 'first\n' and leftovers(tmp_path) == []
  monkeypatch.setattr(atomic.os, 'fsync', disk_full)  # the data written, not yet on disk
  with pytest.raises(OSError, match='No space'):
    atomic.write_text(path, 'second\n')
  assert open(path).read() == 'first\n' and leftovers(tmp_path) == []


def test_report_and_plots_survive_a_full_disk(tmp_path, monkeypatch):
  records, path = make_records(), str(tmp_path / 'report.md')
  report.write_report(make_summary(), records, path)
  before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
  assert {'report.md', 'search_stage1.png', 'accuracy_vs_params.png'} <= set(before)
  real_savefig = Figure.savefig

  def half_a_png(fig, target, **kwargs):  # writes part of the file, then the disk is full
    real_savefig(fig, target, **kwargs)
    with open(target, 'r+b') as f:
      f.truncate(100)
    disk_full()

  monkeypatch.setattr(Figure, 'savefig', half_a_png)
  with pytest.raises(OSError, match='No space'):
    report.write_report(dict(make_summary(), wall_seconds=1.0), records, path)
  assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before
  monkeypatch.setattr(Figure, 'savefig', real_savefig)
  monkeypatch.setattr(atomic.os, 'fsync', disk_full)  # the plots written, report.md not
  with pytest.raises(OSError, match='No space'):
    report.write_report(dict(make_summary(), wall_seconds=2.0), records, path)
  assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before
  for name in before:
    if name.endswith('.png'):
      assert matplotlib.image.imread(str(tmp_path / name)).ndim == 3


def test_an_export_that_fails_leaves_the_previous_student(tmp_path, monkeypatch):
  spec = S.NetSpec('s', (8, 8, 1), (S.Conv(4, 3, 1, 1), S.ReLU(), S.Flatten(), S.Dense(10)))
  model = models.build(spec)
  first, second = (models.init_variables(model, seed, (8, 8, 1)) for seed in (0, 1))
  folder = str(tmp_path / 'student')
  export.save_student(folder, spec, first, {'n': 1})

  def same(a, b):
    leaves = [jax.tree_util.tree_leaves(t) for t in (a, b)]
    return len(leaves[0]) == len(leaves[1]) and all(np.array_equal(x, y) for x, y in zip(*leaves))

  assert same(export.load_student(folder)[1], first)
  monkeypatch.setattr(export.ocp.Checkpointer, 'save', disk_full)
  with pytest.raises(OSError, match='No space'):
    export.save_student(folder, spec, second, {'n': 2})
  monkeypatch.undo()
  assert same(export.load_student(folder)[1], first) and leftovers(tmp_path) == []
  assert json.load(open(os.path.join(folder, 'spec.json')))['info'] == {'n': 1}
  # A killed export leaves its partial folder: the next one clears it and
  # replaces the student whole.
  os.makedirs(atomic.partial_dir(folder) + '/variables/junk')
  export.save_student(folder, spec, second, {'n': 2})
  assert same(export.load_student(folder)[1], second) and leftovers(tmp_path) == []
  assert json.load(open(os.path.join(folder, 'spec.json')))['info'] == {'n': 2}


@pytest.mark.slow
def test_a_reader_polling_a_running_search_never_sees_half_a_file(tmp_path):
  # A tiny compress run in a subprocess; this process reads every output it
  # finds as often as it can, as a dashboard would.
  workdir = tmp_path / 'run'
  proc = subprocess.Popen(
    [
      sys.executable,
      '-m',
      'n2n_jax.main',
      '--config=configs/digits.py',
      f'--workdir={workdir}',
      *tiny_run_flags(tmp_path),
      '--config.runtime.compilation_cache_dir=',
    ],
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  reads = {'summary.json': 0, 'metrics.jsonl': 0, 'report.md': 0, 'png': 0, 'student': 0}
  try:
    while True:
      done = proc.poll() is not None
      if (workdir / 'summary.json').exists():
        json.loads((workdir / 'summary.json').read_text())
        reads['summary.json'] += 1
      if (workdir / 'metrics.jsonl').exists():
        text = (workdir / 'metrics.jsonl').read_text()
        # The line being appended may be cut; every complete one parses.
        for line in text.splitlines(keepends=True):
          if line.endswith('\n'):
            json.loads(line)
        reads['metrics.jsonl'] += 1
      if (workdir / 'report.md').exists():
        text = (workdir / 'report.md').read_text()
        assert text.startswith('# ') and text.endswith('\n') and '## Plots' in text, text
        reads['report.md'] += 1
      for png in (p for p in workdir.glob('*.png') if not p.name.startswith('.')):
        assert matplotlib.image.imread(str(png)).ndim == 3
        reads['png'] += 1
      if (workdir / 'student').exists():
        spec = json.loads((workdir / 'student' / 'spec.json').read_text())
        assert spec['spec']['layers'] and (workdir / 'student' / 'variables').is_dir()
        reads['student'] += 1
      if done:
        break
      time.sleep(0.01)
  finally:
    proc.kill()
  assert proc.wait() == 0, proc.stderr.read()[-3000:]
  assert all(reads.values()), reads
