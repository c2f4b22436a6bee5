"""Several devices give the same results as one.

XLA fixes the device count when the backend starts, so the checks run in a
child process with four CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=4): this file is both the
test and, run as a script, the child.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # whole runs in subprocesses: the full suite only

DEVICES = 4


def test_four_devices_give_the_same_results_as_one(tmp_path):
  env = dict(
    os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={DEVICES}', JAX_PLATFORMS='cpu'
  )
  done = subprocess.run(
    [sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True, timeout=900
  )
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads(done.stdout.strip().splitlines()[-1])
  assert report['devices'] == DEVICES
  # Data-parallel teacher training follows the one-device run up to the order
  # of floating-point sums.
  assert report['teacher_devices'] == [DEVICES, 1]
  parallel_history, single_history = report['teacher_histories']
  assert len(parallel_history) == len(single_history) == 3
  for (loss_p, val_p), (loss_s, val_s) in zip(parallel_history, single_history):
    assert abs(loss_p - loss_s) <= 1e-3 * abs(loss_s)
    assert abs(val_p - val_s) <= 0.01
  # The three students of each iteration trained concurrently on three devices
  # (the final training from the first), and the search ended exactly where the
  # one-device search does: same rewards, accuracies and student.
  assert report['parallel_devices'] == [0, 1, 2]
  assert report['single_devices'] == [0]
  assert report['parallel']['records'] == report['single']['records']
  assert report['parallel']['student'] == report['single']['student']
  # Both stages ran, and each trained students.
  assert [r['stage'] for r in report['single']['records']] == [1, 1, 2]
  for stage in (1, 2):
    assert any(
      a is not None
      for r in report['single']['records']
      if r['stage'] == stage
      for a in r['accuracies']
    )
  # Students train on one device each; the final training splits its batches
  # over all four (runtime.final_devices=0), or trains on one when asked, and
  # both reach the same student up to the order of floating-point sums.
  assert report['student_meshes'] == [1]
  assert report['final_meshes'] == [DEVICES]
  assert report['final_one_meshes'] == [1]
  parallel, one = report['parallel']['student'], report['final_one']['student']
  assert parallel['spec'] == one['spec']
  assert abs(parallel['val_accuracy'] - one['val_accuracy']) <= 0.02
  assert abs(parallel['test_accuracy'] - one['test_accuracy']) <= 0.02
  # Stage-2 students inside their source's program (runtime.share_stage2_program)
  # on three devices at once: the same accuracies as on one.
  on_three, on_one = report['inside']
  assert len(on_three) == 3 and None not in on_three and on_three == on_one


def _child(workdir):
  import jax  # pylint: disable=g-import-not-at-top

  here = os.path.dirname(os.path.abspath(__file__))
  sys.path[:0] = [here, os.path.dirname(here)]  # conftest, and n2n_jax without an install
  import conftest  # pylint: disable=g-import-not-at-top

  from n2n_jax import data as data_lib  # pylint: disable=g-import-not-at-top,multiple-imports
  from n2n_jax import evaluator as E  # pylint: disable=g-import-not-at-top,multiple-imports
  from n2n_jax import experiment  # pylint: disable=g-import-not-at-top,multiple-imports
  from n2n_jax import models  # pylint: disable=g-import-not-at-top,multiple-imports
  from n2n_jax import report  # pylint: disable=g-import-not-at-top,multiple-imports
  from n2n_jax import spec as S  # pylint: disable=g-import-not-at-top,multiple-imports
  from n2n_jax import train  # pylint: disable=g-import-not-at-top,multiple-imports
  from n2n_jax import zoo  # pylint: disable=g-import-not-at-top,multiple-imports

  def tiny_config(mode='compress'):
    config = conftest.tiny_search(conftest.quiet_config('digits'))
    config.search.stage2_iterations = 1
    config.search.rollouts = 3
    config.final.epochs = 1
    config.mode = mode
    return config

  # The teacher's batches split over four devices (data parallel), and on one.
  teacher_dir = os.path.join(workdir, 'teacher')
  teachers = [experiment.run(tiny_config('teacher'), teacher_dir)]
  config = tiny_config('teacher')
  config.runtime.teacher_devices = 1
  teachers.append(experiment.run(config, os.path.join(workdir, 'teacher_one_device')))
  histories = []
  for path in (teacher_dir, os.path.join(workdir, 'teacher_one_device')):
    with open(os.path.join(path, 'teacher.json')) as f:
      histories.append([(h['loss'], h['val_accuracy']) for h in json.load(f)['history']])

  # Which device each student of the search trained on.
  placed = []
  meshes = {'student': set(), 'final': set()}  # devices each training's batches spanned
  real_train = E.Evaluator._train

  def record_device(self, spec, key, seed, keep, progress, device, *rest):
    placed.append(jax.devices().index(device))
    meshes['final' if keep else 'student'].add(1 if self.mesh is None else self.mesh.size)
    return real_train(self, spec, key, seed, keep, progress, device, *rest)

  E.Evaluator._train = record_device

  def search(student_devices, name, final_devices=0):
    placed.clear()
    for seen in meshes.values():
      seen.clear()
    config = tiny_config()
    config.runtime.student_devices = student_devices
    config.runtime.final_devices = final_devices
    summary = experiment.run(
      config, conftest.workdir_with_teacher(teacher_dir, os.path.join(workdir, name))
    )
    records = [
      {k: v for k, v in r.items() if k != 'seconds'}
      for r in report.read_metrics(os.path.join(workdir, name))
    ]
    return {
      'student': {
        k: summary['student'][k] for k in ('spec', 'params', 'val_accuracy', 'test_accuracy')
      },
      'records': records,
    }, sorted(set(placed))

  parallel, parallel_devices = search(0, 'parallel')
  student_meshes, final_meshes = sorted(meshes['student']), sorted(meshes['final'])
  final_one, _ = search(0, 'final_one', final_devices=1)
  final_one_meshes = sorted(meshes['final'])
  single, single_devices = search(1, 'single')

  E.Evaluator._train = real_train
  dataset = data_lib.load(data_lib.default_data_config())
  source = zoo.get('digits_cnn', (8, 8, 1), 10)
  logits = train.predict(
    models.build(source),
    models.init_variables(models.build(source), 0, (8, 8, 1)),
    dataset.train_images,
  )
  jobs = [
    (S.shrink(source, [f] * len(S.shrink_vars(source))), jax.random.key(i))
    for i, f in enumerate((0.3, 0.5, 0.7))
  ]
  inside = []
  for devices in (jax.devices()[:3], jax.devices()[:1]):
    ev = E.Evaluator(
      dataset, logits, E.DistillSettings(epochs=1, max_train_examples=256), devices=devices
    )
    inside.append(
      [r.accuracy if r.error is None else None for r in ev.train_many(jobs, seed=0, inside=source)]
    )
  print(
    json.dumps(
      {
        'devices': len(jax.devices()),
        'parallel': parallel,
        'single': single,
        'final_one': final_one,
        'student_meshes': student_meshes,
        'final_meshes': final_meshes,
        'final_one_meshes': final_one_meshes,
        'teacher_histories': histories,
        'inside': inside,
        'teacher_devices': [t['devices'] for t in teachers],
        'parallel_devices': parallel_devices,
        'single_devices': single_devices,
      }
    )
  )


if __name__ == '__main__':
  _child(sys.argv[1])
