"""Damaged state and numerical faults: a run falls back to the last good
checkpoint with a warning, or refuses with a clear message, and a broken
student scores -1 with its reason while the search goes on."""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import DIGITS_CNN_PARAMS
from conftest import quiet_config
from conftest import tiny_search
from conftest import without_timing
from conftest import workdir_with_teacher

from n2n_jax import checkpoint as checkpoint_lib
from n2n_jax import data as data_lib
from n2n_jax import evaluator as E
from n2n_jax import experiment
from n2n_jax import models
from n2n_jax import preemption
from n2n_jax import program_cache
from n2n_jax import report
from n2n_jax import search
from n2n_jax import spec as S
from n2n_jax import teacher as teacher_lib
from n2n_jax import train as train_lib
from n2n_jax import zoo


def search_config(config_factory):
  config = tiny_search(config_factory('digits'))
  config.search.stage2_iterations = 1
  return config


@pytest.fixture(scope='module')
def finished(tmp_path_factory, teacher_dir):
  """A finished tiny search: its workdir (copied per test) and its summary."""
  config = search_config(quiet_config)
  path = tmp_path_factory.mktemp('finished') / 'run'
  summary = experiment.run(config, workdir_with_teacher(teacher_dir, path))
  return path, summary


def copy_of(finished, tmp_path):
  path = tmp_path / 'run'
  shutil.copytree(finished[0], path)
  return str(path)


def step_dir(workdir, step):
  return os.path.join(workdir, checkpoint_lib.SEARCH_DIR, str(step))


def flip_bytes(path):
  with open(path, 'r+b') as f:
    data = bytearray(f.read())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(255 - b for b in data[middle : middle + 8])
    f.seek(0)
    f.write(data)


def largest_file(folder):
  files = [os.path.join(root, f) for root, _, names in os.walk(folder) for f in names]
  return max(files, key=os.path.getsize)


def same_result(a, b):
  assert a['student']['spec'] == b['student']['spec']
  assert a['student']['params'] == b['student']['params']
  assert a['student']['val_accuracy'] == b['student']['val_accuracy']
  assert a['student']['test_accuracy'] == b['student']['test_accuracy']


@pytest.mark.slow
def test_damaged_latest_search_checkpoint_falls_back_to_the_one_before(
  config_factory, finished, tmp_path
):
  workdir = copy_of(finished, tmp_path)
  ckpts = checkpoint_lib.Checkpoints(workdir)
  latest = ckpts.latest_step()
  ckpts.close()
  # Bytes flipped inside the array data: orbax reads it without complaint, the checksum does not.
  flip_bytes(largest_file(os.path.join(step_dir(workdir, latest), 'arrays')))
  with pytest.warns(
    UserWarning,
    match=rf'{checkpoint_lib.SEARCH_DIR}/{latest} is damaged .*'
    rf'resuming from step {latest - 1}',
  ):
    summary = experiment.run(search_config(config_factory), workdir)
  same_result(summary, finished[1])
  assert without_timing(report.read_metrics(workdir)) == without_timing(
    report.read_metrics(str(finished[0]))
  )
  moved = os.listdir(os.path.join(workdir, checkpoint_lib.DAMAGED_DIR))
  assert moved and moved[0].startswith(f'{checkpoint_lib.SEARCH_DIR}-{latest}-')


@pytest.mark.slow
def test_edited_checkpoint_record_is_caught_by_its_checksum(config_factory, finished, tmp_path):
  workdir = copy_of(finished, tmp_path)
  latest = checkpoint_lib.Checkpoints(workdir).latest_step()
  path = os.path.join(step_dir(workdir, latest), 'meta', 'metadata')
  with open(path) as f:
    meta = json.load(f)
  meta['best']['reward'] += 0.5  # still valid JSON, but not what was written
  with open(path, 'w') as f:
    json.dump(meta, f)
  with pytest.warns(UserWarning, match='checksum mismatch'):
    summary = experiment.run(search_config(config_factory), workdir)
  same_result(summary, finished[1])


@pytest.mark.slow
def test_every_checkpoint_damaged_is_refused_with_the_remedy(config_factory, finished, tmp_path):
  workdir = copy_of(finished, tmp_path)
  steps = checkpoint_lib.Checkpoints(workdir)._manager.all_steps()
  assert len(steps) == 2
  for step in steps:
    with open(os.path.join(step_dir(workdir, step), 'meta', 'metadata'), 'r+') as f:
      f.truncate(100)  # cut mid-write
  with pytest.raises(
    checkpoint_lib.CheckpointDamaged,
    match=r'can be read back intact .*step \d+: .*search.restart=True',
  ):
    experiment.run(search_config(config_factory), workdir)
  # Nothing was moved or deleted: the user decides.
  assert sorted(checkpoint_lib.Checkpoints(workdir)._manager.all_steps()) == sorted(steps)
  config = search_config(config_factory)
  config.search.restart = True
  same_result(experiment.run(config, workdir), finished[1])


@pytest.mark.slow
def test_metrics_cut_mid_line_is_rewritten_from_the_checkpoint(config_factory, finished, tmp_path):
  workdir = copy_of(finished, tmp_path)
  path = os.path.join(workdir, report.METRICS_FILE)
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[: len(data) - 40])
  with pytest.warns(UserWarning, match='cut'):
    assert len(report.read_metrics(workdir)) == len(data.splitlines()) - 1
  experiment.run(search_config(config_factory), workdir)
  with open(path, 'rb') as f:
    assert f.read() == data  # the checkpoint's records, byte for byte


@pytest.mark.slow
@pytest.mark.parametrize('damage', ['no_checkpoint', 'flipped_weights', 'cut_record'])
def test_damaged_teacher_is_refused_naming_the_file_and_the_fix(
  config_factory, teacher_dir, tmp_path, damage
):
  workdir = workdir_with_teacher(teacher_dir, tmp_path / 'run')
  checkpoint = os.path.join(workdir, teacher_lib.CHECKPOINT_DIR)
  record = os.path.join(workdir, teacher_lib.RECORD_FILE)
  if damage == 'no_checkpoint':
    shutil.rmtree(checkpoint)
    expected = 'teacher_checkpoint cannot be read'
  elif damage == 'flipped_weights':
    flip_bytes(largest_file(os.path.join(checkpoint, 'ocdbt.process_0')))
    expected = 'checksum mismatch|cannot be read'
  else:
    with open(record, 'r+') as f:
      f.truncate(os.path.getsize(record) // 2)
    expected = 'teacher.json is damaged'
  with pytest.raises(teacher_lib.TeacherDamaged, match=expected) as error:
    experiment.run(search_config(config_factory), workdir)
  assert f'Delete {record}' in str(error.value)
  assert isinstance(error.value, experiment.USER_ERRORS)  # one line from the CLI, exit 2


@pytest.mark.slow
def test_teacher_training_resumes_from_saved_progress(config_factory, tmp_path, monkeypatch):
  """SIGTERM inside epoch 2 of 4: the epoch finishes, is saved, the run stops;
  the rerun trains epochs 3 and 4 and ends with the same teacher as an
  uninterrupted run."""
  config = tiny_search(config_factory('digits'))
  config.mode = 'teacher'
  config.teacher.epochs = 4
  config.runtime.teacher_checkpoint_seconds = 0
  straight = experiment.run(config, str(tmp_path / 'straight'))

  real_accuracy = train_lib.accuracy
  calls = []

  def sigterm_in_second_epoch(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:  # the validation pass inside epoch 2
      os.kill(os.getpid(), signal.SIGTERM)
    return real_accuracy(*args, **kwargs)

  workdir = str(tmp_path / 'stopped')
  monkeypatch.setattr(train_lib, 'accuracy', sigterm_in_second_epoch)
  previous = signal.getsignal(signal.SIGTERM)
  preemption.install()
  try:
    with pytest.raises(preemption.Preempted):
      experiment.run(config, workdir)
  finally:
    signal.signal(signal.SIGTERM, previous)
  monkeypatch.undo()
  saved = checkpoint_lib.Checkpoints(workdir, subdir=teacher_lib.PROGRESS_DIR)
  assert saved.latest_step() == 2  # epoch 2 finished before the exit, and was saved
  saved.close()
  assert not os.path.exists(os.path.join(workdir, teacher_lib.RECORD_FILE))

  resumed = experiment.run(config, workdir)
  for key in ('val_accuracy', 'test_accuracy', 'train_accuracy'):
    assert resumed[key] == straight[key]
  with open(os.path.join(workdir, teacher_lib.RECORD_FILE)) as f:
    history = json.load(f)['history']
  with open(str(tmp_path / 'straight' / teacher_lib.RECORD_FILE)) as f:
    assert history == json.load(f)['history']
  assert not os.path.exists(os.path.join(workdir, teacher_lib.PROGRESS_DIR))


@pytest.mark.slow
def test_sigterm_during_a_search_keeps_the_last_iteration(
  config_factory, finished, teacher_dir, tmp_path, monkeypatch
):
  workdir = workdir_with_teacher(teacher_dir, tmp_path / 'run')
  real_train_many = E.Evaluator.train_many
  iterations = []

  def sigterm_in_second_iteration(self, jobs, seed, **kwargs):
    iterations.append(1)
    if len(iterations) == 2:
      os.kill(os.getpid(), signal.SIGTERM)  # a preemption while students train
    return real_train_many(self, jobs, seed, **kwargs)

  monkeypatch.setattr(E.Evaluator, 'train_many', sigterm_in_second_iteration)
  previous = signal.getsignal(signal.SIGTERM)
  preemption.install()
  try:
    with pytest.raises(preemption.Preempted):
      experiment.run(search_config(config_factory), workdir)
  finally:
    signal.signal(signal.SIGTERM, previous)
  monkeypatch.undo()
  assert checkpoint_lib.Checkpoints(workdir).latest_step() == 1
  assert len(report.read_metrics(workdir)) == 1
  same_result(experiment.run(search_config(config_factory), workdir), finished[1])


def test_a_sigterm_during_a_periodic_teacher_save_is_not_saved_twice(tmp_path, monkeypatch):
  # The race the CLI test once hit: SIGTERM arrives while teacher progress is
  # being written; the save completes, Preempted is raised, and the save on
  # the way out finds those epochs already on disk.
  saver = teacher_lib._ProgressSaver(str(tmp_path), {'teacher': 'x'}, 0.0)  # pylint: disable=protected-access
  real_save = checkpoint_lib.Checkpoints.save

  def signalled_while_writing(self, step, arrays, meta):
    with preemption.deferred():
      real_save(self, step, arrays, meta)
      os.kill(os.getpid(), signal.SIGTERM)

  previous = signal.getsignal(signal.SIGTERM)
  preemption.install()
  monkeypatch.setattr(checkpoint_lib.Checkpoints, 'save', signalled_while_writing)
  state, history = {'w': np.zeros(3, np.float32)}, [{'epoch': 1}]
  try:
    with pytest.raises(preemption.Preempted):
      saver.save(state, history, 1.0)
    saver.save(state, history, 1.0)  # what training does on its way out
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert saver.ckpts.latest_step() == 1 and saver.saved_epochs == 1


def test_a_second_sigterm_does_not_interrupt_the_first_ones_shutdown():
  previous = signal.getsignal(signal.SIGTERM)
  preemption.install()
  try:
    with pytest.raises(preemption.Preempted):
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(5)  # interrupted by the handler
    os.kill(os.getpid(), signal.SIGTERM)  # ignored while the run winds down
    time.sleep(0.2)
    preemption.install()  # a new run listens again
    with pytest.raises(preemption.Preempted):
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(5)
  finally:
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow
def test_cli_exits_143_on_sigterm_and_the_rerun_resumes(tmp_path):
  command = [
    sys.executable,
    '-m',
    'n2n_jax.main',
    '--config=configs/digits.py',
    f'--workdir={tmp_path}',
    '--config.mode=teacher',
    '--config.teacher.epochs=6',
    '--config.data.max_train_examples=256',
    '--config.runtime.teacher_checkpoint_seconds=0',
    '--config.runtime.progress=False',
    '--config.runtime.compilation_cache_dir=',
  ]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  process = subprocess.Popen(command, cwd=root, stderr=subprocess.PIPE, text=True)
  progress = tmp_path / teacher_lib.PROGRESS_DIR
  deadline = time.monotonic() + 300
  while not (progress.is_dir() and any(p.name.isdigit() for p in progress.iterdir())):
    assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == preemption.EXIT_CODE, stderr
  assert 'stopped by signal SIGTERM: progress is saved in' in stderr
  assert 'run the same command again to resume' in stderr
  assert 'Traceback' not in stderr

  done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr
  assert re.search(r'teacher training resumes after epoch \d+', done.stderr)
  with open(tmp_path / teacher_lib.RECORD_FILE) as f:
    assert len(json.load(f)['history']) == 6


# ---- numerical faults: reward -1 with the reason, the search goes on

TEACHER = zoo.get('digits_cnn', (8, 8, 1), 10)


@pytest.fixture(scope='module')
def digits():
  ds = data_lib.load(data_lib.default_data_config())
  variables = models.init_variables(models.build(TEACHER), 0, (8, 8, 1))
  return ds, train_lib.predict(models.build(TEACHER), variables, ds.train_images)


@pytest.mark.slow
def test_student_over_the_memory_limit_fails_before_compiling(digits):
  ds, logits = digits
  need = E.training_memory_bytes(TEACHER, 64)
  assert need > 4 * 4 * DIGITS_CNN_PARAMS  # at least parameters, gradients and Adam's two moments
  ev = E.Evaluator(ds, logits, E.DistillSettings(epochs=1), memory_limit_bytes=need - 1)
  result = ev.train(TEACHER, jax.random.key(0), 0)
  assert re.fullmatch(
    r'too large for device memory: training needs about \d+ MB, the limit '
    r'is \d+ MB',
    result.error,
  )
  assert result.compile_seconds == 0.0 and ev.compile_seconds == 0.0
  fits = E.Evaluator(ds, logits, E.DistillSettings(epochs=1), memory_limit_bytes=need)
  assert fits.train(TEACHER, jax.random.key(0), 0).error is None


@pytest.mark.slow
def test_a_broken_student_under_a_memory_limit_fails_alone(digits):
  # Compiling ahead asks each student's memory need first; a spec that cannot
  # be built must come back as that student's error, not end the batch.
  ds, logits = digits
  broken = S.NetSpec('broken', (8, 8, 1), (S.Conv(4, 9), S.Flatten(), S.Dense(10)))
  fine = S.NetSpec('fine', (8, 8, 1), (S.Conv(4, 3), S.Flatten(), S.Dense(10)))
  ev = E.Evaluator(
    ds, logits, E.DistillSettings(epochs=1), memory_limit_bytes=E.training_memory_bytes(TEACHER, 64)
  )
  assert ev.compile_ahead
  results = ev.train_many(
    [(fine, jax.random.key(0)), (broken, jax.random.key(1)), (fine, jax.random.key(2))], 0
  )
  assert [r.error is None for r in results] == [True, False, True]
  assert results[1].error.startswith('SpecError') and 'collapsed' in results[1].error
  # The students beside it trained as they do alone.
  alone = E.Evaluator(ds, logits, E.DistillSettings(epochs=1), compile_ahead=False)
  assert [r.accuracy for r in (results[0], results[2])] == [
    alone.train(fine, jax.random.key(k), 0).accuracy for k in (0, 2)
  ]


@pytest.mark.slow
def test_non_finite_validation_logits_are_a_failure_not_an_accuracy(digits):
  ds, logits = digits
  # One corrupt validation image (NaN pixels) gives a linear student NaN
  # logits, which argmax would quietly call class 0. (ReLU networks map NaN
  # inputs to finite logits on XLA's CPU backend.)
  val = np.asarray(ds.val_images).copy()
  val[0] = np.nan
  broken = dataclasses.replace(ds, val_images=jax.numpy.asarray(val))
  linear = S.NetSpec('linear', (8, 8, 1), (S.Flatten(), S.Dense(10)))
  result = E.Evaluator(broken, logits, E.DistillSettings(epochs=1)).train(
    linear, jax.random.key(0), 0
  )
  assert result.error == 'validation logits are not finite (NaN or Inf)'
  assert np.isnan(result.accuracy)


@pytest.mark.slow
def test_failing_students_score_minus_one_and_the_search_goes_on(
  config_factory, teacher_dir, tmp_path, monkeypatch
):
  config = search_config(config_factory)
  config.search.stage2_iterations = 0
  workdir = workdir_with_teacher(teacher_dir, tmp_path / 'run')
  real_build = models.build
  teacher_spec = teacher_lib.load(workdir).spec
  students = []

  def build_fails_for_the_first_student(spec):
    # Fault injection: an exception while building one student.
    if spec != teacher_spec:
      students.append(spec)
      if len(students) == 1:
        raise RuntimeError('injected build failure')
    return real_build(spec)

  monkeypatch.setattr(models, 'build', build_fails_for_the_first_student)
  # Programs compiled by earlier tests would skip the build.
  program_cache.SHARED.clear()
  experiment.run(config, workdir)
  records = report.read_metrics(workdir)
  assert len(records) == config.search.stage1_iterations  # the search went on
  first = records[0]
  failed = [
    i for i, why in enumerate(first['degenerate']) if why == 'RuntimeError: injected build failure'
  ]
  assert failed and all(first['rewards'][i] == -1.0 for i in failed)

  # A memory limit no student fits: every one scores -1 with the reason, every
  # iteration runs, and the run ends saying no usable student was found.
  config.runtime.student_memory_limit_mb = 0.001
  config.search.restart = True
  monkeypatch.undo()
  with pytest.raises(search.SearchError, match='no usable student'):
    experiment.run(config, workdir)
  records = report.read_metrics(workdir)
  assert len(records) == config.search.stage1_iterations
  for r in records:
    for reward, why in zip(r['rewards'], r['degenerate']):
      assert reward == -1.0
      assert why.startswith(
        ('too large for device memory', 'empty', 'dense_input', 'invalid_shape', 'not_smaller')
      )
