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
import re
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

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


def initialize(mode: str = 'auto', peer_timeout_seconds: int = 100) -> bool:
  """Join the run's other processes with jax.distributed.initialize() as
  `mode` ('auto', 'on', 'off'; see the module docstring) says. Returns whether
  this is a jax.distributed run. Call it before any JAX computation.
  A process that stops answering for `peer_timeout_seconds` is lost: see
  stop_if_a_peer_is_lost."""
  if mode not in MODES:
    raise DistributedError(
      f'runtime.distributed={mode!r} is not valid; choose one of {", ".join(MODES)}'
    )
  if jax.distributed.is_initialized():
    return True
  if mode == 'off' or (mode == 'auto' and launched_as_several() is None):
    return False
  explicit = {}
  count = _env_int(NUM_PROCESSES)
  if count is not None:
    index = _env_int(PROCESS_ID)
    if index is None or not os.environ.get(COORDINATOR):
      raise DistributedError(
        f'{NUM_PROCESSES} is set, so {PROCESS_ID} and {COORDINATOR} must be too'
      )
    explicit = dict(num_processes=count, process_id=index)  # JAX reads the address itself
  # n2n_jax handles SIGTERM itself (preemption.py). JAX's preemption service
  # installs a C++ SIGTERM handler that silently replaces Python's, and the
  # run would then ignore a preemption instead of saving and exiting 143.
  jax.config.update('jax_enable_preemption_service', False)
  try:
    jax.distributed.initialize(
      **explicit,
      heartbeat_timeout_seconds=peer_timeout_seconds,
      shutdown_timeout_seconds=peer_timeout_seconds,
    )
  except (RuntimeError, ValueError, TypeError) as e:
    why = str(e).strip().splitlines()[0][:300].rstrip('.')
    raise DistributedError(
      f'jax.distributed.initialize() failed: {why}. Outside Slurm, Open MPI and Cloud TPU '
      f'set {COORDINATOR}, {NUM_PROCESSES} and {PROCESS_ID} for every process (see '
      'launch/README.md)'
    ) from None
  # Connect now, and with stdout pointing at stderr: on CPUs, Gloo prints a
  # line to stdout when the processes first meet, which would land in the
  # JSON that the CLI prints there.
  with _stdout_to_stderr():
    sync('n2n_jax: all processes joined')
  return True


# --- a lost peer ---------------------------------------------------------------------------------
#
# When a process dies, the others learn it in one of two ways (how long each
# takes: docs/performance.md, "Failure paths"):
# - a collective they are in fails at once (Gloo: "Connection reset by
#   peer"). Left alone, the survivor would print a traceback and wait in
#   JAX's shutdown barrier until the heartbeat timeout before aborting;
#   instead it prints one line naming the lost process and exits at once with
#   LOST_PEER_EXIT_CODE, skipping that barrier.
# - JAX's coordination service reports the loss (the coordinator's process
#   died, or a process missed heartbeats for runtime.peer_timeout_seconds),
#   and JAX's client aborts the process from a C++ thread: exit 134 and JAX's
#   "Terminating process because the JAX distributed service detected fatal
#   errors ... another task died". That happens before Python can act (the
#   client's callback cannot be a Python function: jaxlib 0.10.2 fails to
#   pass it the status, std::bad_cast), so it stands, bounded by the timeout.
# Either way nothing half-written is left for readers (outputs are renamed
# into place, and orbax finishes a checkpoint by renaming it), and the
# relaunched job resumes from the last checkpoint.

LOST_PEER_EXIT_CODE = 75  # EX_TEMPFAIL in sysexits.h: run it again
# What Gloo, gRPC and the coordination service say when a peer is gone.
_LOST_PEER_TEXT = re.compile(
  r'Connection (reset|closed) by peer|heartbeat timeout|Socket closed|'
  r'tasks are unhealthy|UNAVAILABLE'
)


def _lost_processes(text: str) -> list[int]:
  """The processes `text` (a coordination service error) names as lost."""
  named = re.findall(r'Task (\d+) heartbeat timeout', text)
  unhealthy = re.search(r'tasks are unhealthy[^:]*:\s*([\d,\s]+)', text)
  if unhealthy:
    named += re.findall(r'\d+', unhealthy.group(1))
  return sorted({int(n) for n in named})


def lost_peer_message(text: str, this: int, count: int) -> str:
  """The line a surviving process prints, naming the lost process where the
  error or the run's shape tells which one."""
  lost = [p for p in _lost_processes(text) if p != this]
  if not lost and this != 0 and ('coordination' in text.lower() or 'PollForError' in text):
    lost = [0]  # the coordinator runs in process 0: its service is gone
  if not lost and count == 2:
    lost = [1 - this]
  who = (
    f'process {", ".join(map(str, lost))} of {count}'
    if lost
    else f'another of the {count} processes'
  )
  return (
    f'error: process {this} lost contact with {who} (killed, preempted or its machine '
    'gone); stopping. Run the whole job again to resume from the last checkpoint.'
  )


def stop_if_a_peer_is_lost(error: BaseException) -> None:
  """In a run of several processes, an error saying a peer is gone ends this
  process at once (see above); any other error returns."""
  text = str(error)
  if not (
    jax.distributed.is_initialized() and jax.process_count() > 1 and _LOST_PEER_TEXT.search(text)
  ):
    return
  sys.stderr.write(lost_peer_message(text, jax.process_index(), jax.process_count()) + '\n')
  sys.stderr.flush()
  # Not sys.exit: JAX's exit handler would wait for the lost process in its
  # shutdown barrier until the timeout, then abort.
  os._exit(LOST_PEER_EXIT_CODE)  # pylint: disable=protected-access


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
