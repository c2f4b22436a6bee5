"""Cost of bringing up a new architecture: build + init + compile of one train
step, with and without JAX's persistent compilation cache.

  python benchmarks/new_architecture.py [--cache-dir DIR]

Run it twice with the same --cache-dir: the first run compiles (cold), the
second loads the compiled programs from the cache (warm). Prints one line per
architecture, then one JSON line.
"""

import argparse
import json
import os
import platform
import time

from n2n_jax import runtime

runtime.set_cpu_flags()

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import optax

from n2n_jax import models
from n2n_jax import spec
from n2n_jax import train
from n2n_jax import zoo

ARCHS = (
  ('digits_cnn', (8, 8, 1)),
  ('conv4', (28, 28, 1)),
  ('vgg13', (28, 28, 1)),
  ('resnet18', (32, 32, 3)),
)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cache-dir', default='/tmp/n2n_jax_bench_cache')
  parser.add_argument('--batch', type=int, default=64)
  args = parser.parse_args()
  warm = os.path.isdir(args.cache_dir) and bool(os.listdir(args.cache_dir))
  runtime.enable_compilation_cache(args.cache_dir)
  rows = []
  for name, shape in ARCHS:
    net = zoo.get(name, shape, 10)
    t0 = time.perf_counter()
    model = models.build(net)
    variables = models.init_variables(model, 0, shape)
    jax.block_until_ready(variables)
    t1 = time.perf_counter()
    tx = optax.adam(1e-3)
    state = train.TrainState.create(variables, tx)
    step = jax.jit(train.make_step(model, tx, train.cross_entropy))
    data = train.Data(jnp.zeros((args.batch,) + shape), jnp.zeros((args.batch,), jnp.int32))
    idx = jnp.arange(args.batch)
    state, m = step(state, data, idx, jax.random.key(0))
    jax.block_until_ready(m)
    t2 = time.perf_counter()
    t_step = time.perf_counter()
    for i in range(3):
      state, m = step(state, data, idx, jax.random.key(i))
    jax.block_until_ready(m)
    step_s = (time.perf_counter() - t_step) / 3
    row = {
      'arch': name,
      'params': spec.param_count(net),
      'init_s': round(t1 - t0, 3),
      'compile_first_step_s': round(t2 - t1, 3),
      'step_s': round(step_s, 4),
    }
    rows.append(row)
    print(
      f'{name:12s} {row["params"]:>11,} params  init {row["init_s"]:.3f} s  '
      f'first step (compile) {row["compile_first_step_s"]:.2f} s  step {step_s * 1e3:.1f} ms '
      f'(batch {args.batch})'
    )
  print(
    json.dumps(
      {
        'cache': 'warm' if warm else 'cold',
        'backend': jax.default_backend(),
        'device': jax.devices()[0].device_kind,
        'machine': platform.machine(),
        'cpus': os.cpu_count(),
        'rows': rows,
      }
    )
  )


if __name__ == '__main__':
  main()
