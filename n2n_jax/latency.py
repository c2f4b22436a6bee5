"""A student's inference time on the device of the run, for the latency
constraint (constraints.max_latency_ms; paper sections 2 and 5: constraints
may encode inference time, and FLOPs are a poor proxy for it on real
hardware, as NetAdapt and AMC found).

The time is the median over `repeats` calls of the student's own compiled
forward pass (train=False) on a batch of `batch_size` images, after `warmup`
calls, with fresh weights (their values do not change the time). The search
measures each architecture once and checkpoints the figure, so a resumed
search sees the same latencies as an uninterrupted one; in a run of several
processes, process 0's figure is used.

Timings are noisy: other work on the machine, clock scaling and the first
calls after a compile all move them, typically by a few percent on an idle
machine and far more on a busy one. Measure on the device you deploy to
(runtime.student_devices picks the one the search uses) and leave a margin
under the limit. The forward program is compiled for timing alone (the
training programs have other batch sizes), and kept in the program store
(program_store.py) when one is given, so a rerun or a second search loads it
instead of compiling it again.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from n2n_jax import models
from n2n_jax import program_store as program_store_lib
from n2n_jax import spec as spec_lib


def measure(
  spec: spec_lib.NetSpec,
  batch_size: int = 1,
  device=None,
  *,
  warmup: int = 3,
  repeats: int = 20,
  store: program_store_lib.ProgramStore | None = None,
) -> float:
  """Median milliseconds of one forward pass of `spec` on `batch_size` images
  on `device` (default: the first local device); `store` keeps the compiled
  forward pass for later processes."""
  device = device or jax.local_devices()[0]
  model = models.build(spec)
  with jax.default_device(device):
    variables = jax.device_put(models.init_variables(model, 0, spec.input_shape), device)
    images = jnp.zeros((batch_size,) + tuple(spec.input_shape), jnp.float32)
    forward = _forward(model, variables, images, device, store)
    for _ in range(warmup):
      jax.block_until_ready(forward(variables, images))
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(forward(variables, images))
      times.append(time.perf_counter() - start)
  return 1000.0 * statistics.median(times)


def _forward(model, variables, images, device, store):
  """The compiled forward pass, from `store` if it holds it."""
  spec_json = spec_lib.to_json(model.spec)
  key = None
  if store is not None:
    key = store.key(device, 'latency', spec_json, images.shape)
    loaded = store.load(key, spec=spec_json)
    if loaded is not None:
      return loaded[0]['forward']
  with program_store_lib.persistent_cache_hits() as hits:
    forward = (
      jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, images).compile()
    )
  # Programs from JAX's own cache serialize incompletely (program_store.py).
  if store is not None and not hits():
    store.save(key, {'forward': forward}, {'spec': spec_json})
  return forward
