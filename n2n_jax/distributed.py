"""Runs of several processes (jax.distributed): the workers of a Cloud TPU
slice, the tasks of a Slurm job, or several processes on one machine.

Every process runs the whole job on its own local devices, and process 0 alone
writes files and prints. Orbax's saves are collective: every process calls
them, orbax writes process 0's copy and makes the others wait for it; a
resumed run then reads on every process what process 0 wrote, so the workdir
must be one folder that all processes see (a shared filesystem). Hosts may compute the last bits differently (GPU reductions are
not bitwise reproducible), so the search takes process 0's sampled actions and
scores on every process (`from_primary`): the processes cannot drift apart into
different students or different sequences of collective calls.

`initialize('auto')` joins the other processes when the environment says there
are several: Slurm (srun with more than one task), Open MPI (mpirun), a GKE TPU
slice, or these variables, set by launch/multi_gpu.sh --processes or by hand:

  JAX_COORDINATOR_ADDRESS  host:port where process 0 listens (JAX's own variable)
  JAX_NUM_PROCESSES        the number of processes
  JAX_PROCESS_ID           this process's index, 0 .. JAX_NUM_PROCESSES - 1

On a Cloud TPU VM slice nothing in the environment says so without asking the
metadata server: use 'on' (launch/tpu_vm.sh does), which lets
jax.distributed.initialize() find the workers itself.
"""

from __future__ import annotations

import contextlib
import os
import sys

import jax
from jax.experimental import multihost_utils
import numpy as np

MODES = ('auto', 'off', 'on')  # config field runtime.distributed
NUM_PROCESSES = 'JAX_NUM_PROCESSES'
PROCESS_ID = 'JAX_PROCESS_ID'
COORDINATOR = 'JAX_COORDINATOR_ADDRESS'


class DistributedError(RuntimeError):
  """The processes of a run cannot be joined; the message says what to set."""


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, '').strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise DistributedError(f'{name}={value!r} is not an integer') from None


def launched_as_several() -> str | None:
  """What in the environment says this process is one of several (e.g.
  'SLURM_STEP_NUM_TASKS=4'), or None."""
  # SLURM_STEP_NUM_TASKS, not SLURM_NTASKS: srun sets it for its tasks, while
  # a batch script that runs the command without srun has SLURM_NTASKS of the
  # whole allocation and would wait for processes that never start.
  for name in (NUM_PROCESSES, 'SLURM_STEP_NUM_TASKS', 'OMPI_COMM_WORLD_SIZE'):
    count = _env_int(name)
    if count is not None and count > 1:
      return f'{name}={count}'
  if ',' in os.environ.get('TPU_WORKER_HOSTNAMES', ''):
    return 'TPU_WORKER_HOSTNAMES lists several workers'
  return None


def initialize(mode: str = 'auto') -> bool:
  """Join the run's other processes with jax.distributed.initialize() as
  `mode` ('auto', 'on', 'off'; see the module docstring) says. Returns whether
  this is a jax.distributed run. Call it before any JAX computation."""
  if mode not in MODES:
    raise DistributedError(f'runtime.distributed={mode!r} is not valid; choose one of '
                           f'{", ".join(MODES)}')
  if jax.distributed.is_initialized():
    return True
  if mode == 'off' or (mode == 'auto' and launched_as_several() is None):
    return False
  explicit = {}
  count = _env_int(NUM_PROCESSES)
  if count is not None:
    index = _env_int(PROCESS_ID)
    if index is None or not os.environ.get(COORDINATOR):
      raise DistributedError(f'{NUM_PROCESSES} is set, so {PROCESS_ID} and {COORDINATOR} '
                             'must be too')
    explicit = dict(num_processes=count, process_id=index)  # JAX reads the address itself
  # n2n_jax handles SIGTERM itself (preemption.py). JAX's preemption service
  # installs a C++ SIGTERM handler that silently replaces Python's, and the
  # run would then ignore a preemption instead of saving and exiting 143.
  jax.config.update('jax_enable_preemption_service', False)
  try:
    jax.distributed.initialize(**explicit)
  except (RuntimeError, ValueError, TypeError) as e:
    why = str(e).strip().splitlines()[0][:300].rstrip('.')
    raise DistributedError(
        f'jax.distributed.initialize() failed: {why}. Outside Slurm, Open MPI and Cloud TPU '
        f'set {COORDINATOR}, {NUM_PROCESSES} and {PROCESS_ID} for every process (see '
        'launch/README.md)') from None
  # Connect now, and with stdout pointing at stderr: on CPUs, Gloo prints a
  # line to stdout when the processes first meet, which would land in the
  # JSON that the CLI prints there.
  with _stdout_to_stderr():
    sync('n2n_jax: all processes joined')
  return True


@contextlib.contextmanager
def _stdout_to_stderr():
  """File descriptor 1 goes to 2 for the block (C++ libraries write there directly)."""
  sys.stdout.flush()
  saved = os.dup(1)
  try:
    os.dup2(2, 1)
    yield
  finally:
    os.dup2(saved, 1)
    os.close(saved)


def process_count() -> int:
  return jax.process_count()


def is_primary() -> bool:
  """Whether this process writes files and prints: process 0, or the only one."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Wait until every process has got here (nothing to wait for in a run of one)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def on_primary(name: str, fn) -> None:
  """Process 0 runs `fn` (a change to shared files, e.g. deleting
  checkpoints) once every process has got here, so none is still reading what
  it changes; all go on when it is done, so none reads the old state after."""
  sync(f'{name}: before')
  if is_primary():
    fn()
  sync(f'{name}: after')


def from_primary(value) -> np.ndarray:
  """Process 0's `value` (an array of the same shape and dtype on every
  process), on every process."""
  value = np.asarray(value)
  if jax.process_count() == 1:
    return value
  # As bytes: JAX without x64 would round float64 (the rewards) to float32.
  raw = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
  raw = np.asarray(multihost_utils.broadcast_one_to_all(raw))
  return raw.view(value.dtype).reshape(value.shape)
