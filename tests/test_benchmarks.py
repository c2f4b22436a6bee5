"""benchmarks/throughput.py --quick runs end to end on a fresh install and
ends with one JSON line holding every figure issue #4 asks for."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow  # whole runs in subprocesses: the full suite only

SCRIPT = ROOT / 'benchmarks' / 'throughput.py'
SIZES = ('small', 'medium', 'teacher')


def _positive(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_quick_throughput_ends_with_one_json_line_of_sane_figures(tmp_path):
  env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / 'cache'))
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  # --torch without PyTorch must skip it (null figures), with it time it.
  proc = subprocess.run(
    [sys.executable, str(SCRIPT), '--quick', '--json-only', '--torch'],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1, proc.stdout  # --json-only: nothing but the JSON line
  r = json.loads(lines[-1])

  assert _positive(r['iteration_seconds'])
  assert isinstance(r['iteration_students_trained'], int)
  assert 1 <= r['iteration_students_trained'] <= r['iteration_rollouts']
  assert set(r['student_steps_per_second']) == set(SIZES)
  assert all(_positive(v) for v in r['student_steps_per_second'].values())
  assert _positive(r['new_architecture_seconds_cold'])
  assert _positive(r['new_architecture_seconds_warm'])
  # The warm figure loaded every program from the program store.
  assert r['new_architecture_warm_compiles'] == 0
  # auto: the digits' stage 2 pays on every backend (runtime.sharing_pays),
  # stage 1 only where students train together (not on CPUs).
  assert r['share_stage2_program'] is True
  assert r['share_stage1_programs'] is (r['backend'] != 'cpu')
  assert _positive(r['iteration_tflop'])
  # The fractions are the parts of the search's time spent waiting for compiles
  # (the JSON line rounds every figure, hence the tolerance).
  assert r['compile_fraction'] == pytest.approx(
    r['search_compile_seconds'] / (r['search_seconds'] + r['final_seconds']), abs=2e-3
  )
  assert r['compile_fraction_rerun'] == pytest.approx(
    r['rerun_compile_seconds'] / (r['rerun_search_seconds'] + r['rerun_final_seconds']), abs=2e-3
  )
  # A re-run finds its programs in the caches the first run filled.
  assert r['rerun_compile_seconds'] < r['search_compile_seconds']
  assert r['compile_fraction_xla'] >= 0
  assert _positive(r['train_gflops']) and _positive(r['matmul_peak_gflops'])
  assert r['train_vs_matmul_peak'] == pytest.approx(
    r['train_gflops'] / r['matmul_peak_gflops'], rel=1e-2
  )
  # The stated convention: 3 x forward FLOPs per image x batch x steps/s.
  assert r['train_gflops'] == pytest.approx(
    3
    * r['student_flops_per_image']['teacher']
    * r['batch_size']
    * r['student_steps_per_second']['teacher']
    / 1e9,
    rel=1e-2,
  )

  if importlib.util.find_spec('torch') is None:
    assert r['torch_steps_per_second'] is None and r['torch_train_gflops'] is None
  else:
    assert set(r['torch_steps_per_second']) == set(SIZES)
    assert all(_positive(v) for v in r['torch_steps_per_second'].values())
    assert _positive(r['torch_train_gflops'])

  assert r['backend'] and r['device_kind'] and r['machine']
  assert r['device_count'] >= 1 and r['cpu_count'] >= 1
  assert r['compile_threads'] >= 1
  assert r['jax_version'].count('.') >= 1
  assert 'throughput.py' in r['command'] and '--quick' in r['command']
  assert r['quick'] is True


def test_quick_cpu_options_compares_variants_in_fresh_processes(tmp_path):
  proc = subprocess.run(
    [sys.executable, str(ROOT / 'benchmarks' / 'cpu_options.py'), '--quick', '--json-only'],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=900,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 1, proc.stdout
  r = json.loads(lines[0])
  assert set(r['variants']) == {'cli', 'opt_level_0'}
  for name, v in r['variants'].items():
    assert v['runs'] == 1 and v['errors'] == [], name
    assert set(v['compile_seconds']) == {'digits', 'vgg_medium'}
    assert all(_positive(x) for x in v['compile_seconds'].values())
    assert set(v['steps_per_second']) == {'small', 'medium'}
    assert all(_positive(x) for x in v['steps_per_second'].values())
  # Each child ran under its own flags (XLA reads them once per process).
  assert r['variants']['cli']['xla_flags'] == '--xla_cpu_experimental_ynn_fusion_type='
  assert '--xla_backend_optimization_level=0' in r['variants']['opt_level_0']['xla_flags']
  assert math.isfinite(r['variants']['cli']['loss'])


def test_cpu_options_refuses_unknown_variants():
  proc = subprocess.run(
    [sys.executable, str(ROOT / 'benchmarks' / 'cpu_options.py'), '--variants=cli,warp_speed'],
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert proc.returncode == 2
  assert 'warp_speed' in proc.stderr and 'hugetlb' in proc.stderr  # lists the valid ones


def test_quick_search_figures_count_a_handful_of_programs(tmp_path):
  # Issue 17's CPU check: with both stages shared and students stacked, the
  # search compiles at most one program per set of pools kept, plus two.
  env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / 'cache'))
  proc = subprocess.run(
    [
      sys.executable,
      str(SCRIPT),
      '--search',
      '--quick',
      '--json-only',
      '--search-teacher=digits_cnn',
      '--share-stage1=on',
      '--share-stage2=on',
      '--together=vmap',
    ],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert r['search_iterations'] == [2, 1] and r['search_teacher'] == 'digits_cnn'
  assert r['train_together'] == 'vmap' and r['students_per_call'] == 5
  assert r['shared_program_stages'] == [1, 2]
  assert _positive(r['search_seconds']) and _positive(r['iteration_seconds_steady'])
  assert _positive(r['search_tflop'])
  assert 1 <= r['kept_pool_sets'] and 1 <= r['programs_compiled'] <= r['kept_pool_sets'] + 2
  assert r['torch_iteration_seconds'] is None  # not asked for


def test_kept_pool_sets_tell_apart_which_pools_a_student_kept():
  # The bound above counts sets of pool *positions*: two students that each
  # keep one of the digits teacher's pools keep different sets.
  module_spec = importlib.util.spec_from_file_location('throughput', SCRIPT)
  throughput = importlib.util.module_from_spec(module_spec)
  sys.modules['throughput'] = throughput  # its dataclasses look their module up
  module_spec.loader.exec_module(throughput)
  from n2n_jax import spec as S  # pylint: disable=import-outside-toplevel
  from n2n_jax import zoo  # pylint: disable=import-outside-toplevel

  teacher = zoo.get('digits_cnn', (8, 8, 1), 10)
  pools = [i for i, l in enumerate(teacher.layers) if isinstance(l, (S.MaxPool, S.AvgPool))]
  assert len(pools) >= 2
  assert throughput.kept_pools(teacher, teacher) == tuple(pools)
  for p in pools:  # the teacher less one pool and the layer after it
    layers = tuple(l for i, l in enumerate(teacher.layers) if i not in (p, p + 1))
    student = S.NetSpec('student', teacher.input_shape, layers)
    assert throughput.kept_pools(student, teacher) == tuple(q for q in pools if q != p)
