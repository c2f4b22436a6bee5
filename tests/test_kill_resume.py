"""Kill anywhere, lose at most one iteration: the CI share of
benchmarks/kill_resume.py (whose --kills 20 run is the stress version).

A compress job run in a subprocess is SIGKILLed three times (in the middle of
a search checkpoint write, at a random moment of the resumed run, in the
middle of the student's export), rerun each time, and its final result must
equal an uninterrupted run's exactly.
"""

import copy
import os
import random
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / 'benchmarks'))
import kill_resume  # pylint: disable=g-import-not-at-top,wrong-import-position

pytestmark = pytest.mark.slow  # whole runs in subprocesses: the full suite only

# Smaller than the stress job (fewer students to compile, no warm-up run): the
# test took 2 minutes on 2 idle CPU cores, 3.5 with a load average of 4.5.
SMALLER = {
  '--config.teacher.epochs': '2',
  '--config.search.stage1_iterations': '1',
  '--config.search.stage2_iterations': '1',
  '--config.final.epochs': '1',
}
CI_OVERRIDES = tuple(
  o for o in kill_resume.job_overrides() if o.split('=')[0] not in SMALLER
) + tuple(f'{k}={v}' for k, v in SMALLER.items())


def test_killed_runs_end_with_the_uninterrupted_result(tmp_path):
  workroot, cache = str(tmp_path), str(tmp_path / 'cache')
  # No warm-up run: the reference compiles every program, the killed runs
  # load them from the cache it filled.
  ref = kill_resume.reference_run(workroot, cache, CI_OVERRIDES, warm_up=False)
  search_writes = [
    key
    for key in kill_resume.writes_ahead(ref.writes, str(tmp_path / 'fresh'))
    if key[0] == 'search_checkpoints'
  ]
  assert len(search_writes) == 2, ref.writes  # one checkpoint per policy iteration
  rng = random.Random(int(os.environ.get('KILL_RESUME_SEED', '0')))
  kills = [
    # Orbax's search checkpoint writes take tenths of a second here, so the
    # kill reliably lands while the temporary folder exists.
    kill_resume.Kill('checkpoint', target=rng.choice(search_writes)),
    # Within the first half of the time the first run took: the resumed run
    # repeats its startup and has at least one iteration and the final
    # training left, more than the teacher training it skips, so it is
    # still going.
    lambda runs: kill_resume.Kill('random', rng.uniform(0.0, runs[0].seconds / 2)),
    kill_resume.Kill('checkpoint', target=('.student.partial', 'variables')),
  ]
  print(f'reference {ref.seconds:.1f} s (cold cache)')  # shown if the test fails
  trial = kill_resume.run_trial(0, ref, workroot, cache, kills, rng, CI_OVERRIDES)
  runs = '\n'.join(kill_resume._describe_run(0, n, r) for n, r in enumerate(trial.runs))
  assert trial.error is None, runs + '\n' + trial.error
  assert trial.mismatches == [], runs
  assert [r.landed for r in trial.runs] == [True, True, True, False], runs
  assert trial.runs[-1].returncode == 0
  first = trial.runs[0]
  assert 'search_checkpoints' in first.during_write, runs
  assert first.step_after == int(first.kill.target[1]) - 1  # that step was not saved ...
  # ... and the next run to write one began with it: nothing else was lost.
  written = [r.first_step_written for r in trial.runs[1:] if r.first_step_written]
  assert written[0] == first.step_after + 1, runs
  assert kill_resume.temporary_folders(os.path.join(workroot, 'trial000')) == {}
  summary = kill_resume.comparable(os.path.join(workroot, 'trial000'))['summary']
  assert summary['student'] == ref.result['summary']['student']
  assert summary['teacher'] == ref.result['summary']['teacher']


def test_comparison_catches_any_difference_but_timing():
  result = {
    'summary': {
      'teacher': {'val_accuracy': 0.9, 'test_accuracy': 0.9},
      'student': {'params': 10, 'spec': {'layers': [1]}, 'val_accuracy': 0.8, 'test_accuracy': 0.7},
      'compression': 2.0,
    },
    'metrics': [{'stage': 1, 'iteration': 1, 'rewards': [0.5]}],
    'student': {'spec': {}, 'info': {}},
  }
  assert kill_resume.differences(result, copy.deepcopy(result)) == []
  for path, value in (
    ((('summary', 'student', 'test_accuracy')), 0.7000001),
    (('summary', 'student', 'spec'), {'layers': [2]}),
    (('summary', 'teacher', 'test_accuracy'), 0.91),
    (('summary', 'compression'), 2.5),
    (('student', 'info'), {'x': 1}),
  ):
    other = copy.deepcopy(result)
    node = other
    for k in path[:-1]:
      node = node[k]
    node[path[-1]] = value
    assert kill_resume.differences(result, other), path
  other = copy.deepcopy(result)
  other['metrics'][0]['rewards'] = [0.6]
  assert 'record 1' in kill_resume.differences(result, other)[0]
  other['metrics'].append(other['metrics'][0])
  assert any('reference has 1 records, got 2' in d for d in kill_resume.differences(result, other))


@pytest.mark.parametrize(
  'tmp,key',
  [
    ('search_checkpoints/3.orbax-checkpoint-tmp-17', ('search_checkpoints', '3')),
    ('teacher_checkpoint.orbax-checkpoint-tmp-17', ('teacher_checkpoint', '')),
    ('.student.partial/variables.orbax-checkpoint-tmp-17', ('.student.partial', 'variables')),
  ],
)
def test_write_keys(tmp, key):
  assert kill_resume.write_key(tmp.replace('/', os.sep)) == key
