"""Process-wide JAX settings, applied once before any computation."""

from __future__ import annotations

import os

import jax

# XLA CPU's YNN fusions slow the convolutions these CNNs are made of; turning
# them off gave +25-40 % training throughput on our 2-core machines (DESIGN.md
# and the foundation issue's note). The flag only concerns the CPU backend.
CPU_XLA_FLAGS = ('--xla_cpu_experimental_ynn_fusion_type=',)


def set_cpu_flags() -> None:
  """Append CPU_XLA_FLAGS to XLA_FLAGS unless the user set them. XLA reads the
  variable when the first backend starts, so call this before any JAX work."""
  flags = os.environ.get('XLA_FLAGS', '')
  missing = [f for f in CPU_XLA_FLAGS if f.split('=')[0] not in flags]
  if missing:
    os.environ['XLA_FLAGS'] = ' '.join([flags] + missing).strip()


def enable_compilation_cache(cache_dir: str) -> None:
  """JAX's persistent compilation cache: a re-run, or an architecture seen
  before, loads its programs from disk instead of compiling them again."""
  if not cache_dir:
    return
  os.makedirs(cache_dir, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  # JAX decides whether to use the cache at its first compile; a library or
  # notebook user may already have compiled something, so let it decide again.
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
  compilation_cache.reset_cache()
  # Students are small and compile fast; cache them all, not only slow ones.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
