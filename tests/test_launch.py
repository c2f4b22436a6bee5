"""launch/*.sh and multi-process runs (n2n_jax/distributed.py).

The scripts' dry runs must print the exact command (parsed back here with
shlex) with the config, workdir, overrides and each launcher's process
settings; bad arguments end with a usage message and exit 2. A real
two-process run on this machine's CPU (jax.distributed over 127.0.0.1, Gloo
collectives) must leave the files of one process, written by process 0 alone,
and end with the same teacher, records and student as a single-process run.
"""

import json
import os
import shlex
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from conftest import ROOT
from conftest import load_config
from conftest import run_records
from conftest import tiny_run_flags

from n2n_jax import config as config_lib
from n2n_jax import distributed
from n2n_jax import export
from n2n_jax import workdir_lock

CONFIG = 'configs/digits.py'
# An override a shell would split, to check the quoting.
OVERRIDES = ['--config.seed=3', '--config.teacher.decay_epochs=(5, 10)']
MAIN = ['-m', 'n2n_jax.main', f'--config={CONFIG}']


def launch(script, *args, env=None, timeout=60):
  return subprocess.run(
    ['bash', str(ROOT / 'launch' / script), *map(str, args)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=dict(os.environ, **(env or {})),
  )


def dry_run(script, *args) -> list:
  """The printed lines of a dry run, each split into words as a shell would."""
  proc = launch(script, '--dry-run', *args)
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr == ''
  return [shlex.split(line) for line in proc.stdout.splitlines()]


def test_one_gpu_dry_run(tmp_path):
  workdir = tmp_path / 'run'
  [words] = dry_run(
    'one_gpu.sh', '--gpu=2', '--python=/opt/py/bin/python', CONFIG, workdir, *OVERRIDES
  )
  assert words == [
    'env',
    'CUDA_VISIBLE_DEVICES=2',
    '/opt/py/bin/python',
    *MAIN,
    f'--workdir={workdir}',
    *OVERRIDES,
  ]
  assert not workdir.exists()  # nothing ran (that python does not exist either)


def test_dry_run_from_the_environment(tmp_path):
  proc = launch(
    'one_gpu.sh', '--python=/nonexistent/python', CONFIG, tmp_path / 'run', env={'DRY_RUN': '1'}
  )
  assert proc.returncode == 0, proc.stderr
  assert shlex.split(proc.stdout)[:3] == ['env', 'CUDA_VISIBLE_DEVICES=0', '/nonexistent/python']


def test_multi_gpu_dry_run_one_process_drives_all_gpus():
  [words] = dry_run('multi_gpu.sh', '--python=py', CONFIG, 'runs/x', *OVERRIDES)
  assert words == ['py', *MAIN, '--workdir=runs/x', *OVERRIDES]
  [words] = dry_run('multi_gpu.sh', '--python=py', '--gpus=4,5', CONFIG, 'runs/x')
  assert words[:2] == ['env', 'CUDA_VISIBLE_DEVICES=4,5']


def test_multi_gpu_dry_run_processes():
  lines = dry_run(
    'multi_gpu.sh',
    '--python=py',
    '--processes=3',
    '--port=5555',
    '--gpus=1,3,5',
    CONFIG,
    'runs/x',
    *OVERRIDES,
  )
  assert lines[-1] == ['wait']
  assert len(lines) == 4
  for i, words in enumerate(lines[:3]):
    assert words == [
      'env',
      f'CUDA_VISIBLE_DEVICES={2 * i + 1}',
      'JAX_COORDINATOR_ADDRESS=127.0.0.1:5555',
      'JAX_NUM_PROCESSES=3',
      f'JAX_PROCESS_ID={i}',
      'py',
      *MAIN,
      '--workdir=runs/x',
      *OVERRIDES,
      '&',
    ]


def test_tpu_vm_dry_run_runs_on_every_worker():
  [words] = dry_run(
    'tpu_vm.sh',
    '--tpu=my-tpu',
    '--zone=us-central2-b',
    '--project=proj',
    CONFIG,
    '/mnt/shared/run',
    *OVERRIDES,
  )
  command = words[-1]
  assert words[:-1] == [
    'gcloud',
    'compute',
    'tpus',
    'tpu-vm',
    'ssh',
    'my-tpu',
    '--zone=us-central2-b',
    '--project=proj',
    '--worker=all',
  ]
  assert command.startswith('--command=')
  # What each worker's shell runs: cd into the checkout, then the CLI with
  # jax.distributed on (the user's overrides come after, so they could turn it off).
  remote = shlex.split(command[len('--command=') :])
  assert remote == [
    'cd',
    'n2n_jax',
    '&&',
    '.venv/bin/python',
    *MAIN,
    '--workdir=/mnt/shared/run',
    '--config.runtime.distributed=on',
    *OVERRIDES,
  ]


def test_slurm_dry_run_batch_script():
  lines = launch(
    'slurm.sh',
    '--dry-run',
    '--nodes=2',
    '--gpus-per-node=4',
    '--tasks=gpu',
    '--time=12:00:00',
    '--partition=gpu',
    '--python=py',
    CONFIG,
    'runs/x',
    *OVERRIDES,
  ).stdout.splitlines()
  assert lines[0] == "sbatch <<'N2N_JAX_BATCH'" and lines[-1] == 'N2N_JAX_BATCH'
  script = lines[1:-1]
  assert script[0] == '#!/bin/bash'
  for directive in (
    '--nodes=2',
    '--ntasks-per-node=4',
    '--gpus-per-node=4',
    '--time=12:00:00',
    '--partition=gpu',
    '--signal=TERM@120',
  ):
    assert f'#SBATCH {directive}' in script
  assert shlex.split(script[-2]) == ['cd', str(ROOT)]
  assert shlex.split(script[-1]) == [
    'srun',
    '--kill-on-bad-exit=1',
    'py',
    *MAIN,
    '--workdir=runs/x',
    *OVERRIDES,
  ]
  # One task per node by default.
  default = launch(
    'slurm.sh', '--dry-run', '--nodes=3', '--gpus-per-node=8', CONFIG, 'runs/x'
  ).stdout
  assert '#SBATCH --ntasks-per-node=1\n' in default and '#SBATCH --gpus-per-node=8\n' in default


@pytest.mark.parametrize(
  'script,args,message',
  [
    ('one_gpu.sh', [CONFIG], 'CONFIG and WORKDIR are required'),
    ('one_gpu.sh', [], 'CONFIG and WORKDIR are required'),
    ('one_gpu.sh', ['--gpus=1', CONFIG, 'w'], 'unknown option --gpus'),
    ('one_gpu.sh', [CONFIG, 'w', 'stray'], "unexpected argument 'stray'"),
    ('one_gpu.sh', ['--gpu=one', CONFIG, 'w'], '--gpu must be an integer'),
    ('one_gpu.sh', ['configs/missing.py', 'w'], "config file 'configs/missing.py' not found"),
    (
      'one_gpu.sh',
      ['--config=configs/digits.py', 'w'],
      'give CONFIG and WORKDIR as plain arguments',
    ),
    ('multi_gpu.sh', ['--processes=0', CONFIG, 'w'], '--processes must be an integer >= 1'),
    (
      'multi_gpu.sh',
      ['--processes=3', '--gpus=0,1', CONFIG, 'w'],
      '--processes=3 needs as many GPUs',
    ),
    ('multi_gpu.sh', ['--gpus=all', CONFIG, 'w'], '--gpus must be a list'),
    ('tpu_vm.sh', [CONFIG, 'w'], '--tpu=NAME is required'),
    ('tpu_vm.sh', ['--tpu', 'x', 'README.md', 'w'], 'CONFIG must be a configs/NAME.py file'),
    ('slurm.sh', ['--tasks=core', CONFIG, 'w'], '--tasks must be node or gpu'),
    ('slurm.sh', ['--nodes', CONFIG, 'w'], '--nodes must be an integer'),
    ('slurm.sh', ['--time'], '--time needs a value'),
  ],
)
def test_bad_arguments_exit_2_with_usage(script, args, message):
  proc = launch(script, '--dry-run', *args)
  assert proc.returncode == 2
  assert f'error: {message}' in proc.stderr
  assert f'usage: launch/{script}' in proc.stderr
  assert proc.stdout == ''


def test_help_exits_0():
  proc = launch('slurm.sh', '--help')
  assert proc.returncode == 0 and proc.stdout.startswith('usage: launch/slurm.sh')


# ---- deciding whether to join other processes


@pytest.fixture
def clean_env(monkeypatch):
  for name in (
    'JAX_NUM_PROCESSES',
    'JAX_PROCESS_ID',
    'JAX_COORDINATOR_ADDRESS',
    'SLURM_STEP_NUM_TASKS',
    'SLURM_NTASKS',
    'OMPI_COMM_WORLD_SIZE',
    'TPU_WORKER_HOSTNAMES',
  ):
    monkeypatch.delenv(name, raising=False)
  return monkeypatch


@pytest.mark.parametrize(
  'env,reason',
  [
    ({}, None),
    ({'JAX_NUM_PROCESSES': '1'}, None),
    ({'JAX_NUM_PROCESSES': '2'}, 'JAX_NUM_PROCESSES=2'),
    ({'SLURM_STEP_NUM_TASKS': '4'}, 'SLURM_STEP_NUM_TASKS=4'),
    # A batch script's own environment: the command was not started by srun.
    ({'SLURM_NTASKS': '4'}, None),
    ({'SLURM_STEP_NUM_TASKS': '1', 'SLURM_NTASKS': '1'}, None),
    ({'OMPI_COMM_WORLD_SIZE': '8'}, 'OMPI_COMM_WORLD_SIZE=8'),
    ({'TPU_WORKER_HOSTNAMES': 'w0,w1'}, 'TPU_WORKER_HOSTNAMES lists several workers'),
    ({'TPU_WORKER_HOSTNAMES': 'w0'}, None),
  ],
)
def test_auto_joins_when_the_environment_says_so(clean_env, env, reason):
  for name, value in env.items():
    clean_env.setenv(name, value)
  assert distributed.launched_as_several() == reason


def test_initialize_refuses_bad_settings_before_touching_jax(clean_env):
  with pytest.raises(distributed.DistributedError, match="runtime.distributed='yes'"):
    distributed.initialize('yes')
  assert distributed.initialize('off') is False
  assert distributed.initialize('auto') is False  # one process: nothing to join
  clean_env.setenv('JAX_NUM_PROCESSES', '2')
  with pytest.raises(
    distributed.DistributedError, match='JAX_PROCESS_ID and JAX_COORDINATOR_ADDRESS must be'
  ):
    distributed.initialize('auto')
  clean_env.setenv('JAX_NUM_PROCESSES', 'two')
  with pytest.raises(distributed.DistributedError, match="JAX_NUM_PROCESSES='two' is not"):
    distributed.initialize('auto')
  assert not jax.distributed.is_initialized()


def test_config_checks_runtime_distributed():
  config = load_config('digits')
  config.runtime.distributed = 'always'
  with pytest.raises(config_lib.ConfigError, match='runtime.distributed'):
    config_lib.validate(config)


@pytest.mark.parametrize('value', [0, 1, -5, 10**6])
def test_config_checks_the_peer_timeout(value):
  config = load_config('digits')
  config.runtime.peer_timeout_seconds = value
  with pytest.raises(config_lib.ConfigError, match='runtime.peer_timeout_seconds'):
    config_lib.validate(config)


@pytest.mark.parametrize(
  'text, this, count, who',
  [
    ('UNAVAILABLE: Task 3 heartbeat timeout. This indicates', 0, 4, 'process 3 of 4'),
    (
      'The following tasks are unhealthy (stopped sending heartbeats):\n1\n2\nThe tasks',
      0,
      4,
      'process 1, 2 of 4',
    ),
    (
      'while calling /xla.coordination.CoordinationService/PollForError: Socket closed',
      2,
      4,
      'process 0 of 4',
    ),
    ('Gloo AllGather failed: Connection reset by peer', 1, 2, 'process 0 of 2'),
    ('Gloo AllGather failed: Connection reset by peer', 0, 4, 'another of the 4 processes'),
  ],
)
def test_the_lost_process_is_named(text, this, count, who):
  line = distributed.lost_peer_message(text, this, count)
  assert line.startswith(f'error: process {this} lost contact with {who} (killed')


def test_single_process_helpers_are_identities():
  assert distributed.is_primary() and distributed.process_count() == 1
  x = np.arange(3.0)
  assert distributed.from_primary(x) is not None and np.array_equal(distributed.from_primary(x), x)
  ran = []
  distributed.on_primary('test', lambda: ran.append(1))
  assert ran == [1]


# ---- a real two-process run on this machine

# Loaded into every process of the launched run (PYTHONPATH): logs each file
# the process creates, writes, renames or removes under the workdir, through
# Python's audit hooks, so the test sees which process wrote what.
AUDIT = textwrap.dedent("""
    import os, sys
    _root = os.path.abspath(os.environ['N2N_AUDIT_DIR'])
    _log = open(os.environ['N2N_AUDIT_LOG'] + '.' + os.environ.get('JAX_PROCESS_ID', 'x'), 'a')
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _hook(event, args):
      if event == 'open':
        path, mode, flags = args
        if not ((mode and any(c in mode for c in 'wax+')) or (flags or 0) & _WRITE):
          return
      elif event in ('os.rename', 'os.remove', 'os.rmdir', 'os.mkdir', 'shutil.rmtree',
                     'os.truncate'):
        path = args[0]
        if event == 'os.mkdir' and os.path.exists(path):
          return  # makedirs(exist_ok=True) of a folder that is there: no change
      else:
        return
      if isinstance(path, (str, bytes, os.PathLike)):
        path = os.path.abspath(os.fsdecode(path))
        if path == _root or path.startswith(_root + os.sep):
          _log.write(f'{event} {os.path.relpath(path, _root)}\\n')
          _log.flush()

    sys.addaudithook(_hook)
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _without(d: dict, *keys) -> dict:
  return {k: v for k, v in d.items() if k not in keys}


@pytest.mark.slow
def test_two_processes_write_once_and_match_one_process(tmp_path):
  audit = tmp_path / 'audit'
  audit.mkdir()
  (audit / 'sitecustomize.py').write_text(AUDIT)
  two, one = tmp_path / 'two', tmp_path / 'one'
  tiny = [*tiny_run_flags(tmp_path), '--config.runtime.compilation_cache_dir=']
  start = time.perf_counter()
  # Both runs at once: the machine's cores are shared either way.
  single = subprocess.Popen(
    [sys.executable, *MAIN, f'--workdir={one}', *tiny],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  proc = launch(
    'multi_gpu.sh',
    '--processes=2',
    f'--port={_free_port()}',
    f'--python={sys.executable}',
    CONFIG,
    two,
    *tiny,
    timeout=540,
    env={
      'PYTHONPATH': os.pathsep.join([str(audit), os.environ.get('PYTHONPATH', '')]),
      'N2N_AUDIT_DIR': str(two),
      'N2N_AUDIT_LOG': str(tmp_path / 'writes'),
    },
  )
  out, err = single.communicate(timeout=540)
  print(f'two processes and one, side by side: {time.perf_counter() - start:.1f} s')
  assert single.returncode == 0, err
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  # One JSON answer on stdout, from process 0 (Gloo's connect message went to stderr).
  answers = [_without(json.loads(text), 'wall_seconds', 'time') for text in (proc.stdout, out)]
  assert answers[0] == answers[1]

  # Process 0 wrote the run's files; process 1 wrote nothing at all.
  writes = {i: (tmp_path / f'writes.{i}').read_text().splitlines() for i in (0, 1)}
  assert writes[1] == []
  written = {line.split(' ', 1)[1] for line in writes[0]}
  for name in (
    '.n2n_jax.lock',
    'metrics.jsonl',
    '.student.partial/spec.json',
  ):  # the student's folder, swapped in whole
    assert name in written
  assert any(w.startswith('tensorboard/events.') for w in written)
  # Written as temporary siblings, then renamed (atomic.py).
  for prefix in (
    '.teacher.json.',
    '.summary.json.',
    '.report.md.',
    '.search_stage1.png.',
    '.accuracy_vs_params.png.',
  ):
    assert any(w.startswith(prefix) for w in written), (prefix, written)
  assert len(list((two / 'tensorboard').iterdir())) == 1

  # The same run as one process: teacher weights, every record, the student.
  teachers = [json.loads((d / 'teacher.json').read_text()) for d in (two, one)]
  assert teachers[0]['variables_sha256'] == teachers[1]['variables_sha256']
  assert run_records(two) == run_records(one)
  assert len(run_records(two)) == 2
  summaries = [
    _without(json.loads((d / 'summary.json').read_text()), 'wall_seconds', 'time')
    for d in (two, one)
  ]
  assert summaries[0] == summaries[1]
  assert (two / 'student' / 'spec.json').read_text() == (one / 'student' / 'spec.json').read_text()
  (_, a), (_, b) = (export.load_student(str(d / 'student')) for d in (two, one))
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  assert all(
    np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
  )


@pytest.mark.slow
def test_a_busy_workdir_stops_every_process(tmp_path):
  """Process 0 alone takes the workdir's lock; when another run holds it, the
  other processes learn so and stop too, instead of waiting for process 0."""
  start = time.perf_counter()
  with workdir_lock.WorkdirLock(str(tmp_path)):
    proc = launch(
      'multi_gpu.sh',
      '--processes=2',
      f'--port={_free_port()}',
      f'--python={sys.executable}',
      CONFIG,
      tmp_path,
      '--config.mode=teacher',
      '--config.runtime.compilation_cache_dir=',
      timeout=240,
    )
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert f'error: {tmp_path} is in use by pid {os.getpid()}' in proc.stderr  # process 0
  assert 'process 0 could not lock it' in proc.stderr  # process 1
  assert 'Traceback' not in proc.stderr and proc.stdout == ''
  assert time.perf_counter() - start < 80  # well short of JAX's 100 s wait for a dead process


# ---- a process of a two-process run dies


def start_pair(workdir, flags, port):
  """The two processes of a run, started by hand (not by launch/multi_gpu.sh,
  which would stop the survivor itself)."""
  return [
    subprocess.Popen(
      [sys.executable, *MAIN, f'--workdir={workdir}', *flags],
      cwd=ROOT,
      text=True,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      env=dict(
        os.environ,
        JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
        JAX_NUM_PROCESSES='2',
        JAX_PROCESS_ID=str(i),
      ),
    )
    for i in (0, 1)
  ]


@pytest.mark.slow
@pytest.mark.parametrize('lost', [1, 0])
def test_a_dead_process_stops_the_other_and_the_relaunch_resumes(tmp_path, lost):
  """SIGKILL one process after the search's first checkpoint: the survivor
  stops within the peer timeout, exits non-zero without a partial output,
  and the whole job run again ends with the uninterrupted run's student."""
  timeout = 20
  flags = [
    *tiny_run_flags(tmp_path),
    '--config.search.stage1_iterations=3',
    '--config.runtime.compilation_cache_dir=',
    f'--config.runtime.peer_timeout_seconds={timeout}',
  ]
  single = subprocess.run(
    [sys.executable, *MAIN, f'--workdir={tmp_path / "one"}', *flags],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=540,
    check=False,
  )
  assert single.returncode == 0, single.stderr[-3000:]
  workdir = tmp_path / 'two'
  procs = start_pair(workdir, flags, _free_port())
  first = workdir / 'search_checkpoints' / '1'
  while not first.exists():
    assert all(p.poll() is None for p in procs), [p.communicate()[1][-3000:] for p in procs]
    time.sleep(0.05)
  procs[lost].kill()
  killed_at = time.perf_counter()
  survivor = procs[1 - lost]
  _, err = survivor.communicate(timeout=timeout + 60)
  waited = time.perf_counter() - killed_at
  procs[lost].communicate()
  print(
    f'process {1 - lost} stopped {waited:.1f} s after process {lost} was killed; '
    f'exit code {survivor.returncode}; stderr ends: {err[-600:]}'
  )
  assert waited < timeout + 10
  if lost == 1:  # process 0 hits the broken collective and says so itself
    assert survivor.returncode == distributed.LOST_PEER_EXIT_CODE
    assert (
      'error: process 0 lost contact with process 1 of 2' in err
      and 'Run the whole job again' in err
    )
  else:  # JAX's client aborts process 1 when the coordinator (process 0) is gone
    assert survivor.returncode != 0
  assert not (workdir / 'summary.json').exists() and not (workdir / 'student').exists()
  assert not [name for name in os.listdir(workdir) if name.endswith('.tmp')]

  procs = start_pair(workdir, flags, _free_port())
  for p in procs:
    out, err = p.communicate(timeout=540)
    assert p.returncode == 0, err[-3000:]
  assert run_records(workdir) == run_records(tmp_path / 'one')
  summaries = [
    _without(json.loads((d / 'summary.json').read_text()), 'wall_seconds', 'time')
    for d in (workdir, tmp_path / 'one')
  ]
  assert summaries[0] == summaries[1]
