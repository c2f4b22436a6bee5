"""runtime.time_budget_minutes (n2n_jax/time_budget.py): the search ends on
time, stage 1 within its share, and a resumed run may change the budget."""

import pytest
from conftest import load_config
from conftest import tiny_search
from conftest import workdir_with_teacher

from n2n_jax import config as config_lib
from n2n_jax import experiment
from n2n_jax import report
from n2n_jax import search
from n2n_jax import search_state
from n2n_jax import time_budget


def test_stage_one_gets_its_share_and_stage_two_the_rest():
  assert time_budget.stage_deadline(0, 1, 10, 10) is None
  assert time_budget.stage_deadline(10, 1, 30, 10) == 450.0  # 600 s x 30/40
  assert time_budget.stage_deadline(10, 2, 30, 10) == 600.0
  assert time_budget.stage_deadline(1, 1, 0, 5) == 0.0


def test_an_iteration_starts_only_if_its_expected_time_fits():
  assert time_budget.room_for_another(1e9, None, [5.0])
  assert time_budget.room_for_another(99.0, 100.0, [])  # a stage's first iteration
  assert not time_budget.room_for_another(100.0, 100.0, [])
  assert time_budget.room_for_another(90.0, 100.0, [8.0, 12.0])  # 90 + 10 <= 100
  assert not time_budget.room_for_another(91.0, 100.0, [8.0, 12.0])


def make_meta(done1, done2, seconds=10.0):
  state = search_state.SearchState.fresh(origin={})
  state.records = [{'stage': 1, 'seconds': seconds}] * done1 + [
    {'stage': 2, 'seconds': seconds}
  ] * done2
  state.done = {1: done1, 2: done2}
  return state


def test_the_search_loop_asks_the_rule(config_factory):
  config = config_factory('digits')
  config.search.stage2_iterations = 10
  config.runtime.time_budget_minutes = 10.0  # stage 1: 300 s of 600
  meta = make_meta(3, 0)
  assert search._starts_another(config, meta, 1, 10, elapsed=280.0)  # 280 + 10 <= 300
  assert not search._starts_another(config, meta, 1, 3, elapsed=0.0)  # none left
  assert not search._starts_another(config, meta, 1, 10, elapsed=295.0)
  assert search._starts_another(config, meta, 2, 10, elapsed=580.0)  # stage 2: the whole 600
  assert not search._starts_another(config, make_meta(3, 2), 2, 10, elapsed=595.0)
  # Once stage 2 has finished an iteration, stage 1 is closed, whatever the time.
  config.runtime.time_budget_minutes = 0.0
  assert search._starts_another(config, make_meta(3, 0), 1, 10, elapsed=1e6)
  assert not search._starts_another(config, make_meta(3, 1), 1, 10, elapsed=0.0)
  assert search._starts_another(config, make_meta(3, 1), 2, 10, elapsed=1e6)


@pytest.mark.parametrize('value', [-1.0, float('nan'), float('inf')])
def test_the_budget_is_checked(value):
  config = load_config('digits')
  config.runtime.time_budget_minutes = value
  with pytest.raises(config_lib.ConfigError, match='runtime.time_budget_minutes'):
    config_lib.validate(config)


@pytest.mark.slow
def test_a_search_ends_on_time_and_a_resume_may_give_it_more(config_factory, teacher_dir, tmp_path):
  config = tiny_search(config_factory('digits'))
  # Far more iterations than 6 s of search time holds (each trains students
  # for real: tenths of a second at least), so the budget ends stage 1.
  config.search.stage1_iterations = 50
  config.search.stage2_iterations = 1
  config.runtime.time_budget_minutes = 0.1
  workdir = workdir_with_teacher(teacher_dir, tmp_path / 'run')
  summary = experiment.run(config, workdir)
  ran = summary['iterations']
  assert 1 <= ran['stage1'] < 50 and ran['stage2'] <= 1
  assert ran['planned'] == [50, 1] and ran['time_budget_minutes'] == 0.1
  records = report.read_metrics(workdir)
  assert [r['stage'] for r in records] == [1] * ran['stage1'] + [2] * ran['stage2']
  seconds = sum(r['seconds'] for r in records)
  print(f'{ran}: {seconds:.1f} s in iterations')  # shown if the test fails

  # Resumed with a larger budget: the search goes on where it stopped (stage
  # 1 if stage 2 had not run, else stage 2, which is done) and the records so
  # far stay as they were.
  config.runtime.time_budget_minutes = 0.5
  again = experiment.run(config, workdir)['iterations']
  assert report.read_metrics(workdir)[: len(records)] == records
  if ran['stage2']:
    assert again['stage1'] == ran['stage1'] and again['stage2'] == 1
  else:
    assert again['stage1'] > ran['stage1']
