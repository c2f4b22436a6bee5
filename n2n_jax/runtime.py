"""Process-wide JAX settings, applied once before any computation."""

from __future__ import annotations

import os
import warnings

import jax

# XLA CPU's YNN fusions slow the convolutions these CNNs are made of; turning
# them off gave +25-40 % training throughput on our 2-core machines (the team's
# DESIGN.md and the foundation issue's note). The flag only concerns the CPU backend.
CPU_XLA_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=',)
# runtime.deterministic: XLA's GPU kernels give the same result on every run
# (two runs of a Fashion-MNIST search on an H200 without it differed in stage
# 2's accuracies by up to 0.5 points). Other backends ignore the flag; CPU
# runs are deterministic anyway.
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


def compile_threads(requested: int) -> int:
  """runtime.compile_threads: `requested`, or for 0 one thread per 4 CPU cores
  this process may use, at least one. A 2-core machine keeps one (a second
  gave no gain there: compiling and training share the cores); a 16-core GPU
  host gets 4, where students compile for seconds and train in a fraction of
  one."""
  if requested:
    return requested
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return max(1, (cores or 1) // 4)


SWITCHES = ('auto', 'on', 'off')


def share_programs(switch: str) -> bool:
  """runtime.share_stage2_program or share_stage1_programs: 'on', 'off', or
  'auto' (on unless JAX runs on the CPU: on accelerators compiling a student
  costs more than training it at its source's size, on CPUs the arithmetic
  dominates)."""
  if switch not in SWITCHES:
    raise ValueError(f'unknown switch {switch!r}; valid: {", ".join(SWITCHES)}')
  return switch == 'on' or (switch == 'auto' and jax.default_backend() != 'cpu')


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
    warnings.warn(f'JAX\'s compilation cache {cache_dir} is not used: {why}, so another user '
                  'could plant code there that would run as you. Programs compile as usual; '
                  'runtime.trust_shared_cache=True uses it anyway.', stacklevel=2)
    return False
  os.makedirs(os.path.dirname(os.path.abspath(cache_dir)), mode=0o700, exist_ok=True)
  os.makedirs(cache_dir, mode=0o700, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  # JAX decides whether to use the cache at its first compile; a library or
  # notebook user may already have compiled something, so let it decide again.
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  compilation_cache.reset_cache()
  # Students are small and compile fast; cache them all, not only slow ones.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return True
