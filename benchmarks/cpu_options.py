"""XLA CPU options against the two costs of a search on a CPU: compiling each
new student, and training it.

  python benchmarks/cpu_options.py [--quick] [--variants=NAME,NAME] [--repeats=N]
                                   [--json-only]

Each variant (a set of XLA_FLAGS / environment variables, listed in VARIANTS)
runs in a fresh process, because XLA reads its flags once, when the backend
starts; all but 'jax_default' run unless --variants names some. With
--repeats=N the variants run N times, interleaved, and medians are reported
(this machine's timings drift by ~10 % between runs). In each process, with
the persistent compilation cache off:

* compile_seconds[name]: ahead-of-time compile of the train step and the
  validation forward pass of the digits_cnn teacher on 8x8 inputs (the
  bundled-digits search's students are this size) and of the MNIST VGG-13
  student with every width halved;
* steps_per_second[name]: steady-state train steps/s at batch 64 of VGG-13
  students with widths x0.25, x0.5 and the teacher itself (28x28x1 synthetic
  data, distillation loss, Adam), and GFLOP/s for the teacher-sized one;
* loss: the mean distillation loss of the first epoch of the x0.5 student,
  from the same initial weights and batches in every variant: a variant that
  changes the arithmetic (fast math, other kernels) shows here.

Lines for people, then one JSON line with every variant's figures. --quick
(tests/test_benchmarks.py) runs two variants with tiny sizes. What the
variants gave on our 2-core CPU is in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))

YNN_OFF = '--xla_cpu_experimental_ynn_fusion_type='
# name -> (XLA_FLAGS, other environment variables). 'cli' is what the command
# line uses (runtime.CPU_XLA_FLAGS); the others each change one thing from it,
# except 'jax_default' (no flags at all).
VARIANTS = {
  'cli': (YNN_OFF, {}),
  'jax_default': ('', {}),
  'onednn': (f'{YNN_OFF} --xla_cpu_use_onednn=true', {}),
  'no_xnnpack': (f'{YNN_OFF} --xla_cpu_use_xnnpack=false', {}),
  'fast_compile': (f'{YNN_OFF} --xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE', {}),
  'opt_level_0': (f'{YNN_OFF} --xla_backend_optimization_level=0', {}),
  'opt_level_1': (f'{YNN_OFF} --xla_backend_optimization_level=1', {}),
  'llvm_cheap': (f'{YNN_OFF} --xla_llvm_disable_expensive_passes=true', {}),
  'fast_math': (f'{YNN_OFF} --xla_cpu_enable_fast_math=true', {}),
  'hugetlb': (YNN_OFF, {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}),
}
# 'jax_default' is left out unless asked for: its backward convolutions run
# ~10x slower (the team's DESIGN.md), so its teacher figure alone takes minutes.
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v != 'jax_default')
QUICK_VARIANTS = ('cli', 'opt_level_0')


def measure(quick: bool) -> dict:
  """The figures for the flags this process was started with."""
  sys.path.insert(0, HERE)
  import jax  # pylint: disable=g-import-not-at-top
  import throughput as tp  # pylint: disable=g-import-not-at-top

  from n2n_jax import evaluator as evaluator_lib  # pylint: disable=g-import-not-at-top
  from n2n_jax import models  # pylint: disable=g-import-not-at-top
  from n2n_jax import spec as spec_lib  # pylint: disable=g-import-not-at-top
  from n2n_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  from n2n_jax import zoo  # pylint: disable=g-import-not-at-top

  tp.persistent_cache(None)
  out = {
    'xla_flags': os.environ.get('XLA_FLAGS', ''),
    'compile_seconds': {},
    'steps_per_second': {},
  }
  teacher_name, shape, sizes, epoch_steps, min_seconds = (
    ('digits_cnn', (8, 8, 1), (('small', 0.25), ('medium', 0.5)), 5, 0.3)
    if quick
    else ('vgg13', (28, 28, 1), tp.SIZES, 10, 3.0)
  )
  digits = zoo.get('digits_cnn', (8, 8, 1), tp.NUM_CLASSES)
  teacher = zoo.get(teacher_name, shape, tp.NUM_CLASSES)
  medium = tp.shrunk(teacher, 0.5)

  def data_for(spec):
    dataset = tp.synthetic_dataset(spec.input_shape, epoch_steps * tp.BATCH, 100, 0)
    model = models.build(spec)
    logits = train_lib.predict(
      model, models.init_variables(model, 0, spec.input_shape), dataset.train_images
    )
    return dataset, logits

  # The first compile of a process also pays for JAX's own start-up; a
  # throwaway one keeps that out of the first figure.
  jax.jit(lambda x: x + 1).lower(1.0).compile()
  for name, spec in (('digits', digits), ('vgg_medium', medium)):
    dataset, logits = data_for(spec)
    evaluator = evaluator_lib.Evaluator(dataset, logits, tp.distill_settings(epoch_steps))
    tp.cold_caches()
    _, seconds = evaluator.programs.get(spec, evaluator.devices[0])
    out['compile_seconds'][name] = seconds

  dataset, logits = data_for(teacher)
  for name, factor in sizes:
    student = tp.shrunk(teacher, factor)
    if name == 'medium':
      evaluator = evaluator_lib.Evaluator(dataset, logits, tp.distill_settings(epoch_steps))
      program, _ = evaluator.programs.get(student, evaluator.devices[0])
      state = train_lib.TrainState.create(
        models.init_variables(program.model, 0, student.input_shape), program.tx
      )
      _, metrics = program.runner.run(state, evaluator.data, jax.random.key(1), tp.BATCH)
      out['loss'] = metrics['loss']
    out['steps_per_second'][name] = tp.steps_per_second(
      dataset, logits, student, epoch_steps, min_seconds
    )
  out['train_gflops'] = (
    3 * spec_lib.flops(teacher) * tp.BATCH * out['steps_per_second'][sizes[-1][0]] / 1e9
  )
  return out


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true', help='tiny sizes, two variants')
  parser.add_argument(
    '--variants', default='', help=f'comma-separated subset of: {", ".join(VARIANTS)}'
  )
  parser.add_argument(
    '--repeats',
    type=int,
    default=1,
    help="run the variants this many times, interleaved (the machine's "
    'load drifts), and report medians',
  )
  parser.add_argument('--json-only', action='store_true', help='print only the JSON line')
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:  # one variant, flags already in the environment
    print(json.dumps(measure(args.quick)), flush=True)
    return {}
  names = [n for n in args.variants.split(',') if n] or list(
    QUICK_VARIANTS if args.quick else DEFAULT_VARIANTS
  )
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    parser.error(f'unknown variant(s) {", ".join(unknown)}; valid: {", ".join(VARIANTS)}')
  say = (lambda text: None) if args.json_only else (lambda text: print(text, flush=True))
  runs = {name: [] for name in names}
  for repeat in range(args.repeats):
    for name in names:
      flags, extra = VARIANTS[name]
      proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), '--child']
        + (['--quick'] if args.quick else []),
        env=dict(os.environ, XLA_FLAGS=flags, **extra),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
      )
      if proc.returncode:
        runs[name].append({'error': proc.stderr.strip().splitlines()[-1:]})
        say(f'{name} (run {repeat + 1}): FAILED ({runs[name][-1]["error"]})')
        continue
      r = json.loads(proc.stdout.strip().splitlines()[-1])
      runs[name].append(r)
      say(f'{name:13s} run {repeat + 1}: ' + _line(r))
  results = {}
  for name, rs in runs.items():
    good = [r for r in rs if 'error' not in r]
    flags, extra = VARIANTS[name]
    # The flags as the child process saw them.
    results[name] = {
      'xla_flags': good[0]['xla_flags'] if good else flags,
      'env': extra,
      'runs': len(good),
      'errors': [r['error'] for r in rs if 'error' in r],
    }
    if good:
      results[name].update(_medians(good))
      say(
        f'{name:13s} median of {len(good)}: '
        + _line(results[name])
        + f' | XLA_FLAGS="{flags}"'
        + ''.join(f' {k}={v}' for k, v in extra.items())
      )
  print(
    json.dumps({'command': ' '.join([sys.executable] + sys.argv), 'variants': results}), flush=True
  )
  return results


def _line(r: dict) -> str:
  return (
    'compile s: '
    + ', '.join(f'{k} {v:.2f}' for k, v in r['compile_seconds'].items())
    + ' | steps/s: '
    + ', '.join(f'{k} {v:.2f}' for k, v in r['steps_per_second'].items())
    + f' | {r["train_gflops"]:.1f} GFLOP/s | loss {r["loss"]:.6g}'
  )


def _medians(runs: list) -> dict:
  """Per-figure medians over runs (the loss is the same in every run)."""
  med = lambda xs: float(statistics.median(xs))
  return {
    'compile_seconds': {
      k: med([r['compile_seconds'][k] for r in runs]) for k in runs[0]['compile_seconds']
    },
    'steps_per_second': {
      k: med([r['steps_per_second'][k] for r in runs]) for k in runs[0]['steps_per_second']
    },
    'train_gflops': med([r['train_gflops'] for r in runs]),
    'loss': runs[0]['loss'],
  }


if __name__ == '__main__':
  main()
