"""benchmarks/gpu_session.sh's argument handling and its `paper` steps' order.
The steps themselves were run end to end on a CPU with `tiny` (the script's
header: 3.5 + 3.6 minutes on 2 cores), too long for this suite."""

import os
import subprocess

import pytest
from conftest import ROOT

SCRIPT = str(ROOT / 'benchmarks' / 'gpu_session.sh')


def run(*args, out):
  return subprocess.run(
    ['bash', SCRIPT, *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=60,
    check=False,
    env=dict(os.environ, OUT=str(out)),
  )


@pytest.mark.parametrize(
  'args',
  [['paper'], ['paper', 'teacher'], ['paper', 'search', 'big'], ['search', 'x'], ['nonsense']],
)
def test_bad_arguments_print_the_usage(tmp_path, args):
  done = run(*args, out=tmp_path)
  assert done.returncode == 2 and 'usage: benchmarks/gpu_session.sh' in done.stderr
  assert 'paper search|baselines [tiny]' in done.stderr


def test_the_baselines_need_the_search_first(tmp_path):
  done = run('paper', 'baselines', 'tiny', out=tmp_path)
  assert done.returncode == 1
  assert "run 'paper search' first on this machine" in done.stderr
  assert not (tmp_path / 'paper_steps.txt').exists()  # nothing was started
