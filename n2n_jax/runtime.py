"""Process-wide JAX settings, applied once before any computation."""

from __future__ import annotations

import os
import warnings

import jax

# XLA CPU's YNN fusions slow the convolutions these CNNs are made of, the backward pass
# most (docs/performance.md, "XLA CPU options"). The flag only concerns the CPU backend.
CPU_XLA_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=',)
# runtime.deterministic: XLA's GPU kernels give the same result on every run
# (without it, GPU searches are not bit-reproducible: docs/performance.md, "On a
# GPU"). Other backends ignore the flag; CPU runs are deterministic anyway.
DETERMINISTIC_XLA_FLAGS = ('--xla_gpu_deterministic_ops=true',)


def _append_xla_flags(wanted) -> None:
  """Append `wanted` to XLA_FLAGS, except flags the user set already. XLA
  reads the variable when the first backend starts, so call this before any
  JAX work."""
  flags = os.environ.get('XLA_FLAGS', '')
  missing = [f for f in wanted if f.split('=')[0] not in flags]
  if missing:
    os.environ['XLA_FLAGS'] = ' '.join([flags] + missing).strip()


def set_cpu_flags() -> None:
  _append_xla_flags(CPU_XLA_FLAGS)


def set_deterministic_flags() -> None:
  _append_xla_flags(DETERMINISTIC_XLA_FLAGS)


def set_gpu_autotune_level(level: int) -> None:
  """runtime.gpu_autotune_level: XLA's GPU autotuning effort
  (--xla_gpu_autotune_level, 0 = none, 4 = XLA's default, which leaves
  XLA_FLAGS as it is). Autotuning convolutions is most of a new student's compile on a
  GPU (docs/performance.md, "On a GPU"); lower levels compile faster and may
  train slower (benchmarks/gpu_session.sh throughput measures both)."""
  if level != 4:
    _append_xla_flags((f'--xla_gpu_autotune_level={level}',))


def compile_threads(requested: int) -> int:
  """runtime.compile_threads: `requested`, or for 0 one thread per 4 CPU cores
  this process may use, at least one. A 2-core machine keeps one
  (compiling and training share the cores, so a second thread does not
  pay: docs/performance.md, "Compiling"); a 16-core GPU host gets 4, where
  students compile for seconds and train in a fraction of one."""
  if requested:
    return requested
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return max(1, (cores or 1) // 4)


SWITCHES = ('auto', 'on', 'off')

# What the 'auto' sharing rule weighs, per backend: seconds to compile one new
# student's programs, and the training FLOP/s a single student reaches; round
# figures from the measurements in docs/performance.md, "Sharing programs: the
# rule" (CPU: a 2-core machine; GPU: an H200). Other backends (TPU) take the
# GPU's figures until measured.
COMPILE_SECONDS = {'cpu': 2.0, 'gpu': 5.0}
STUDENT_FLOPS_PER_SECOND = {'cpu': 60e9, 'gpu': 30e12}


def sharing_pays(source_flops: float, images: int, backend: str | None = None) -> bool:
  """Whether training a stage's students inside its source (padding.py)
  costs less than compiling them one by one: a student run inside the
  source pays the source's arithmetic instead of its own, on average about
  half of it extra (stage 1 removes, stage 2 shrinks, half the network in
  expectation), against one compile saved per new student. `source_flops`:
  the source's forward FLOPs per image (spec.flops); `images`: the images one
  student trains on (distill.epochs x training examples). Training counts
  3x forward."""
  backend = backend or jax.default_backend()
  compile_s = COMPILE_SECONDS.get(backend, COMPILE_SECONDS['gpu'])
  rate = STUDENT_FLOPS_PER_SECOND.get(backend, STUDENT_FLOPS_PER_SECOND['gpu'])
  return 0.5 * 3 * source_flops * images / rate < compile_s


def share_programs(
  switch: str,
  source_flops: float | None = None,
  images: int = 0,
  *,
  stage: int = 2,
  together: str | None = None,
) -> bool:
  """runtime.share_stage2_program or share_stage1_programs: 'on', 'off', or
  'auto': `sharing_pays` for a source of `source_flops` and students
  training on `images` images (without them: on unless JAX runs on the
  CPU); for stage 1 only where students train `together` (train_together):
  a switched teacher compiles several times slower than a student, so
  sharing alone costs more stage-1 time than it saves in compiles
  (docs/performance.md, "Sharing programs: the rule")."""
  if switch not in SWITCHES:
    raise ValueError(f'unknown switch {switch!r}; valid: {", ".join(SWITCHES)}')
  if switch != 'auto':
    return switch == 'on'
  if stage == 1 and together is None:
    return False
  if source_flops is None:
    return jax.default_backend() != 'cpu'
  return sharing_pays(source_flops, images)


TOGETHER = ('auto', 'off', 'vmap', 'map')


def train_together(switch: str) -> str | None:
  """runtime.train_together: the stacked lowering (stacked.py) or None for
  one student per call. 'auto': off on CPUs, where stacked students train
  slower than one by one (XLA's CPU backend runs grouped convolutions, and
  backward convolutions inside a loop, poorly: see train.py and
  docs/performance.md, "Students trained together"); 'vmap' on GPUs and
  TPUs, where one student fills a small part of the chip (to be settled by
  benchmarks/gpu_session.sh throughput)."""
  if switch not in TOGETHER:
    raise ValueError(f'unknown runtime.train_together {switch!r}; valid: {", ".join(TOGETHER)}')
  if switch == 'auto':
    return None if jax.default_backend() == 'cpu' else 'vmap'
  return None if switch == 'off' else switch


def _cannot_write(directory: str) -> str | None:
  """The OS's reason why no file can be created in `directory`, or None."""
  probe = os.path.join(directory, f'.write_probe.{os.getpid()}')
  try:
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    os.remove(probe)
    return None
  except OSError as e:
    return e.strerror


def enable_compilation_cache(cache_dir: str, *, trust_shared: bool = False) -> bool:
  """JAX's persistent compilation cache: a re-run, or an architecture seen
  before, loads its programs from disk instead of compiling them again.
  Those programs are executables, so a folder other users can write to is
  not used (one warning) unless trust_shared (runtime.trust_shared_cache).
  Returns whether the cache is on."""
  if not cache_dir:
    return False
  from n2n_jax import program_store  # pylint: disable=g-import-not-at-top

  why = None if trust_shared else program_store.writable_by_others(cache_dir)
  if why:
    warnings.warn(
      f"JAX's compilation cache {cache_dir} is not used: {why}, so another user "
      'could plant code there that would run as you. Programs compile as usual; '
      'runtime.trust_shared_cache=True uses it anyway.',
      stacklevel=2,
    )
    return False
  try:
    os.makedirs(os.path.dirname(os.path.abspath(cache_dir)), mode=0o700, exist_ok=True)
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
  except OSError as e:  # read-only, full or not ours: a cache fault costs compiles, not the run
    warnings.warn(
      f"JAX's compilation cache {cache_dir} cannot be made ({e.strerror}); "
      'programs compile as usual and are not stored.',
      stacklevel=2,
    )
    return False
  why = _cannot_write(cache_dir)
  if why:
    warnings.warn(
      f"JAX's compilation cache {cache_dir} cannot be written ({why}); "
      'the programs it holds are used, new ones compile as usual and are not '
      'stored.',
      stacklevel=2,
    )
  # JAX warns about every entry it fails to write or read back, and compiles
  # the program instead. A full disk or a read-only folder is reported once
  # instead (above, or by the program store that shares the folder); a
  # damaged entry (a full disk leaves empty ones) costs one compile and is
  # written anew (docs/reliability.md).
  warnings.filterwarnings('ignore', message='Error (writing|reading) persistent compilation cache')
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  # JAX decides whether to use the cache at its first compile; a library or
  # notebook user may already have compiled something, so let it decide again.
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top

  compilation_cache.reset_cache()
  # Students are small and compile fast; cache them all, not only slow ones.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return True
