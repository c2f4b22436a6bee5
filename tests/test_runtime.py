"""Process-wide settings: XLA flags the command line sets, compile threads."""

import os
import subprocess
import sys

import jax
import pytest
from conftest import ROOT

from n2n_jax import runtime


@pytest.mark.parametrize('cores,expected', [(1, 1), (2, 1), (7, 1), (8, 2), (16, 4), (64, 16)])
def test_compile_threads_auto_is_one_per_four_cores(monkeypatch, cores, expected):
  monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: set(range(cores)), raising=False)
  assert runtime.compile_threads(0) == expected
  assert runtime.compile_threads(3) == 3  # an explicit number is kept


def test_deterministic_flags_are_appended_once_and_never_override_the_users(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_dump_to=/tmp/x')
  runtime.set_deterministic_flags()
  runtime.set_deterministic_flags()
  assert os.environ['XLA_FLAGS'] == '--xla_dump_to=/tmp/x --xla_gpu_deterministic_ops=true'
  monkeypatch.setenv('XLA_FLAGS', '--xla_gpu_deterministic_ops=false')
  runtime.set_deterministic_flags()
  assert os.environ['XLA_FLAGS'] == '--xla_gpu_deterministic_ops=false'


def test_xla_accepts_the_flags_the_command_line_sets():
  # XLA aborts the process on a flag it does not know, so start a backend
  # with both sets of flags in a fresh interpreter.
  code = (
    'import os; os.environ.pop("XLA_FLAGS", None)\n'
    'from n2n_jax import runtime\n'
    'runtime.set_cpu_flags(); runtime.set_deterministic_flags()\n'
    'import jax.numpy as jnp\n'
    'print(os.environ["XLA_FLAGS"]); print(float(jnp.arange(4.0).sum()))\n'
  )
  proc = subprocess.run(
    [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stderr
  flags, total = proc.stdout.split('\n')[:2]
  assert flags.split() == list(runtime.CPU_XLA_FLAGS + runtime.DETERMINISTIC_XLA_FLAGS)
  assert total == '6.0'


def test_the_command_line_sets_the_deterministic_flag_before_jax_starts():
  # In a fresh interpreter: main() with runtime.deterministic=True must set the
  # flag while no JAX backend has started (XLA reads XLA_FLAGS only then).
  code = """
import os, sys
os.environ.pop("XLA_FLAGS", None)
from absl import app
from jax._src import xla_bridge
from n2n_jax import experiment, main, runtime
real = runtime.set_deterministic_flags
def watched():
  print("started before:", xla_bridge.backends_are_initialized())
  real()
runtime.set_deterministic_flags = watched
experiment.run = lambda config, workdir: print("flags:", os.environ["XLA_FLAGS"])
sys.argv = ["main", "--config=configs/digits.py", "--config.runtime.deterministic=True",
            "--workdir=/nonexistent"]
app.run(main.main, flags_parser=main.parse_flags)
"""
  proc = subprocess.run(
    [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines() == [
    'started before: False',
    'flags: ' + ' '.join(runtime.CPU_XLA_FLAGS + runtime.DETERMINISTIC_XLA_FLAGS),
  ]


def test_share_programs_auto_is_on_for_accelerators_only(monkeypatch):
  assert runtime.share_programs('on') and not runtime.share_programs('off')
  for backend, expected in (('cpu', False), ('gpu', True), ('tpu', True)):
    monkeypatch.setattr(jax, 'default_backend', lambda b=backend: b)
    assert runtime.share_programs('auto') is expected
  with pytest.raises(ValueError, match='valid: auto, on, off'):
    runtime.share_programs(True)
