"""python -m n2n_jax.compare on workdirs made by the real pipeline: one tiny
compress run, copied and varied (baselines added, summary removed, records
with degenerate students added), checked against the files it read."""

import io
import json
import math
import os
import shutil
import subprocess
import sys

import matplotlib.image
import pytest
from conftest import ROOT
from conftest import quiet_config
from conftest import tiny_search
from conftest import workdir_with_teacher

from n2n_jax import compare
from n2n_jax import experiment
from n2n_jax import report

TEACHER_FILE = 'teacher.json'


@pytest.fixture(scope='module')
def run_dir(teacher_dir, tmp_path_factory):
  """One finished compress run, as small as the search allows to stay quick."""
  config = tiny_search(quiet_config('digits'))
  config.search.stage1_iterations = 1
  config.search.stage2_iterations = 1
  config.final.epochs = 1
  workdir = workdir_with_teacher(teacher_dir, tmp_path_factory.mktemp('compare') / 'tiny')
  experiment.run(config, workdir, out=io.StringIO())
  return workdir


def _copy(run_dir, tmp_path, name):
  path = str(tmp_path / name)
  shutil.copytree(run_dir, path)
  return path


def _read(workdir, name):
  with open(os.path.join(workdir, name)) as f:
    return json.load(f)


def _by_kind(rows):
  return {r['kind']: r for r in rows}


def _cli(argv, capsys):
  code = compare.main(argv)
  captured = capsys.readouterr()
  return code, captured.out, captured.err


# --- rows ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_rows_equal_the_summary(run_dir):
  summary = _read(run_dir, 'summary.json')
  rows = compare.collect([run_dir])
  assert [r['kind'] for r in rows] == ['teacher', 'stage1', 'n2n', 'search']
  assert {r['label'] for r in rows} == {'tiny'}
  assert {r['workdir'] for r in rows} == {run_dir}
  got = _by_kind(rows)
  teacher, student, stage1 = summary['teacher'], summary['student'], summary['stage1_best']

  t = got['teacher']
  assert (t['name'], t['params'], t['val_accuracy'], t['test_accuracy']) == (
    teacher['name'],
    teacher['params'],
    teacher['val_accuracy'],
    teacher['test_accuracy'],
  )
  assert t['wall_seconds'] == summary['time']['teacher']

  n = got['n2n']
  assert (n['params'], n['val_accuracy'], n['test_accuracy'], n['flops'], n['stage']) == (
    student['params'],
    student['val_accuracy'],
    student['test_accuracy'],
    student['flops'],
    student['stage'],
  )
  assert n['compression'] == summary['compression']
  assert n['wall_seconds'] == summary['wall_seconds']
  assert n['delta_test_accuracy'] == pytest.approx(
    student['test_accuracy'] - teacher['test_accuracy']
  )

  s = got['stage1']
  assert (s['params'], s['val_accuracy'], s['reward'], s['iteration']) == (
    stage1['params'],
    stage1['val_accuracy'],
    stage1['reward'],
    stage1['iteration'],
  )
  assert s['compression'] == pytest.approx(teacher['params'] / stage1['params'])
  # Only briefly distilled in the search: no test accuracy, so no test delta.
  assert s['test_accuracy'] is None and s['delta_test_accuracy'] is None
  assert s['delta_val_accuracy'] == pytest.approx(stage1['val_accuracy'] - teacher['val_accuracy'])


def _expected_stats(records, teacher_params, stage, first=None):
  """Table 5's measure, computed from the raw metrics fields: per iteration
  the mean reward of all students and the mean accuracy and C = 1 -
  student/teacher of the valid ones, then the mean over iterations (those
  with no valid student left out of accuracy and C)."""
  records = sorted((r for r in records if r['stage'] == stage), key=lambda r: r['iteration'])
  records = records[:first] if first else records
  rewards, accuracies, compressions = [], [], []
  for r in records:
    rewards.append(sum(r['rewards']) / len(r['rewards']))
    valid = [i for i, why in enumerate(r['degenerate']) if why is None]
    if valid:
      accuracies.append(sum(r['accuracies'][i] for i in valid) / len(valid))
      compressions.append(sum(1 - r['params'][i] / teacher_params for i in valid) / len(valid))
  mean = lambda xs: sum(xs) / len(xs) if xs else None
  return {
    'iterations': len(records),
    'mean_reward': mean(rewards),
    'mean_accuracy': mean(accuracies),
    'mean_compression': mean(compressions),
  }


def _degenerate_record(stage, iteration, template, reasons):
  """A policy iteration with some students degenerate (reasons[i] not None),
  written as the search writes them: reward -1, accuracy 0, no size."""
  r = json.loads(json.dumps(template))
  r['iteration'] = iteration
  for i, why in enumerate(reasons):
    if why is not None:
      r['rewards'][i], r['accuracies'][i], r['params'][i] = -1.0, 0.0, 0
      r['compressions'][i], r['degenerate'][i] = 0.0, why
  r['mean_reward'] = sum(r['rewards']) / len(r['rewards'])
  r['stage'] = stage
  return r


@pytest.mark.slow
def test_first_k_statistics_match_the_metrics_log(run_dir, tmp_path):
  workdir = _copy(run_dir, tmp_path, 'more')
  records = report.read_metrics(workdir)
  # Two more stage-1 iterations: one half degenerate, one all degenerate (no
  # accuracy at all), so that the valid-only means and the first-k cut matter.
  stage1 = [r for r in records if r['stage'] == 1]
  extra = [
    _degenerate_record(1, 2, stage1[0], ['no layer left', None]),
    _degenerate_record(1, 3, stage1[0], ['no layer left', 'no layer left']),
  ]
  with open(os.path.join(workdir, report.METRICS_FILE), 'w') as f:
    for r in stage1 + extra + [r for r in records if r['stage'] == 2]:
      f.write(json.dumps(r) + '\n')
  records = report.read_metrics(workdir)
  teacher_params = _read(workdir, TEACHER_FILE)['params']

  for first in (1, 2, 10):
    search = compare.searches(compare.collect([workdir], first=first))[0]
    assert search['first'] == first
    for stage in (1, 2):
      got = search[f'stage{stage}']
      for part, k in (('first', first), ('all', None)):
        want = _expected_stats(records, teacher_params, stage, k)
        for key, value in want.items():
          assert got[part][key] == pytest.approx(value), (first, stage, part, key)
  search = compare.searches(compare.collect([workdir], first=10))[0]['stage1']['all']
  assert search['iterations'] == 3
  assert search['students'] == 6 and search['degenerate'] == 3
  # The all-degenerate iteration pulls the reward down and leaves the accuracy be.
  first2 = _expected_stats(records, teacher_params, 1, 2)
  assert search['mean_reward'] < first2['mean_reward']
  assert search['mean_accuracy'] == pytest.approx(first2['mean_accuracy'])


# --- output --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_markdown_has_the_paper_table_rows(run_dir, capsys):
  summary = _read(run_dir, 'summary.json')
  teacher, student, stage1 = summary['teacher'], summary['student'], summary['stage1_best']
  code, out, _ = _cli([run_dir, '--format=markdown', '--labels=tiny run'], capsys)
  assert code == 0
  lines = out.splitlines()
  assert '| Model | Acc. | #Params | Compr. | Δ Acc. |' in lines
  assert (
    f'| tiny run: Teacher ({teacher["name"]}) | '
    f'{report.format_accuracy(teacher["test_accuracy"])} | '
    f'{report.format_params(teacher["params"])} | – | – |'
  ) in lines
  assert (
    f'| tiny run: N2N Student (Stage1+Stage2) | '
    f'{report.format_accuracy(student["test_accuracy"])} | '
    f'{report.format_params(student["params"])} | '
    f'{report.format_compression(summary["compression"])} | '
    f'{report.format_delta(student["test_accuracy"], teacher["test_accuracy"])} |'
  ) in lines
  # The stage-1 best shows its search validation accuracy, marked as such.
  assert (
    f'| tiny run: N2N Student (Stage1) | '
    f'{report.format_accuracy(stage1["val_accuracy"])}† | '
    f'{report.format_params(stage1["params"])} | '
    f'{report.format_compression(teacher["params"] / stage1["params"])} | '
    f'{report.format_delta(stage1["val_accuracy"], teacher["val_accuracy"])}† |'
  ) in lines
  search = [line for line in lines if line.startswith('| tiny run | ')]
  assert [line.split(' | ')[1:3] for line in search] == [['1', '1'], ['2', '1']]


@pytest.mark.slow
def test_text_is_the_default_and_lists_every_result(run_dir, capsys):
  code, out, _ = _cli([run_dir, '--first=1'], capsys)
  assert code == 0
  assert out.startswith('Results\n')
  for model in (
    'tiny: Teacher (digits_cnn)',
    'tiny: N2N Student (Stage1)',
    'tiny: N2N Student (Stage1+Stage2)',
  ):
    assert model in out
  assert 'Reward (first 1)' in out


@pytest.mark.slow
def test_json_parses_and_plot_is_a_png(run_dir, tmp_path, capsys):
  other = _copy(run_dir, tmp_path, 'other')
  path = str(tmp_path / 'plots' / 'compare.png')
  code, out, err = _cli([run_dir, other, '--format=json', f'--plot={path}', '--labels=a,b'], capsys)
  assert code == 0
  rows = json.loads(out)
  assert rows == json.loads(json.dumps(compare.collect([run_dir, other], labels=['a', 'b'])))
  assert [r['label'] for r in rows if r['kind'] == 'search'] == ['a', 'b']
  assert path in err
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  image = matplotlib.image.imread(path)
  assert image.shape[0] > 400 and image.shape[1] > 800


# --- baselines and partial runs ------------------------------------------------------------------


def _write_baseline(workdir, name, method, params, val, test, **extra):
  teacher = _read(workdir, TEACHER_FILE)
  summary = {
    'method': method,
    'name': name,
    'teacher': {k: teacher[k] for k in ('name', 'params', 'val_accuracy', 'test_accuracy')},
    'student': {
      'name': name,
      'params': params,
      'flops': 10 * params,
      'val_accuracy': val,
      'test_accuracy': test,
      'spec': {},
    },
    'compression': teacher['params'] / params,
    'wall_seconds': 12.5,
    **extra,
  }
  report.write_summary(summary, os.path.join(workdir, 'baselines', name))
  return summary


@pytest.mark.slow
def test_baselines_in_the_workdir_get_rows(run_dir, tmp_path, capsys):
  workdir = _copy(run_dir, tmp_path, 'with_baselines')
  teacher = _read(workdir, TEACHER_FILE)
  _write_baseline(workdir, 'taylor_pruning', 'pruning', 20_000, 0.70, 0.68, repeats=2)
  _write_baseline(workdir, 'mini_cnn', 'handdesigned', 5_000, 0.60, 0.61)
  os.makedirs(os.path.join(workdir, 'baselines', 'unfinished'))  # no summary yet: no row

  rows = compare.collect([workdir])
  assert [r['kind'] for r in rows] == [
    'teacher',
    'stage1',
    'n2n',
    'handdesigned',
    'pruning',
    'search',
  ]
  got = _by_kind(rows)
  pruning, hand = got['pruning'], got['handdesigned']
  assert (
    pruning['name'],
    pruning['params'],
    pruning['test_accuracy'],
    pruning['repeats'],
    pruning['wall_seconds'],
  ) == ('taylor_pruning', 20_000, 0.68, 2, 12.5)
  assert pruning['compression'] == pytest.approx(teacher['params'] / 20_000)
  assert hand['delta_test_accuracy'] == pytest.approx(0.61 - teacher['test_accuracy'])

  code, out, _ = _cli([workdir, '--format=markdown'], capsys)
  assert code == 0
  assert (
    f'| with_baselines: Pruning (taylor_pruning) | 68.00% | 20K | '
    f'{report.format_compression(teacher["params"] / 20_000)} | '
    f'{report.format_delta(0.68, teacher["test_accuracy"])} |'
  ) in out.splitlines()
  assert '| with_baselines: Hand-designed (mini_cnn) | 61.00% | 5K |' in out


@pytest.mark.slow
def test_a_search_without_summary_shows_what_it_has(run_dir, teacher_dir, tmp_path, capsys):
  workdir = _copy(run_dir, tmp_path, 'running')
  os.remove(os.path.join(workdir, 'summary.json'))
  teacher = _read(workdir, TEACHER_FILE)
  records = report.read_metrics(workdir)

  rows = compare.collect([workdir, str(teacher_dir)], labels=['running', 'teacher only'])
  assert [(r['label'], r['kind']) for r in rows] == [
    ('running', 'teacher'),
    ('running', 'stage1'),
    ('running', 'search'),
    ('teacher only', 'teacher'),
    ('teacher only', 'search'),
  ]
  t = rows[0]
  assert (t['params'], t['test_accuracy'], t['wall_seconds']) == (
    teacher['params'],
    teacher['test_accuracy'],
    teacher['seconds'],
  )
  # The stage-1 best so far: the valid student with the highest reward.
  best = None
  for r in (r for r in records if r['stage'] == 1):
    for student in zip(r['rewards'], r['params'], r['accuracies'], r['degenerate']):
      if student[3] is None and (best is None or student[0] > best[0]):
        best = student
  reward, params, acc, _ = best
  assert (rows[1]['reward'], rows[1]['params'], rows[1]['val_accuracy']) == (reward, params, acc)
  assert rows[1]['partial'] is True
  empty = rows[4]['stage1']['all']
  assert empty['iterations'] == 0 and empty['mean_reward'] is None

  path = str(tmp_path / 'partial.png')
  code, out, _ = _cli(
    [workdir, str(teacher_dir), '--labels=running,teacher only', f'--plot={path}'], capsys
  )
  assert code == 0
  assert 'running: N2N Student (Stage1) so far' in out
  assert 'Stage1+Stage2' not in out
  assert os.path.getsize(path) > 1000


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_not_a_workdir_exits_2_naming_it(run_dir, tmp_path):
  bogus = tmp_path / 'not_a_run'
  bogus.mkdir()
  (bogus / 'notes.txt').write_text('hello')
  # The real entry point, so that "no traceback" is checked as a user sees it.
  proc = subprocess.run(
    [sys.executable, '-m', 'n2n_jax.compare', run_dir, str(bogus)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2
  assert str(bogus) in proc.stderr and 'not a run workdir' in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert proc.stdout == ''


@pytest.mark.slow
def test_missing_dir_and_corrupt_metrics_exit_2(run_dir, tmp_path, capsys):
  missing = str(tmp_path / 'missing')
  code, out, err = _cli([missing], capsys)
  assert code == 2 and missing in err and out == ''

  corrupt = _copy(run_dir, tmp_path, 'corrupt')
  path = os.path.join(corrupt, report.METRICS_FILE)
  with open(path) as f:
    lines = f.readlines()
  lines[0] = lines[0][:20] + '\n'  # corruption before the last line is not a crash tail
  with open(path, 'w') as f:
    f.writelines(lines)
  code, out, err = _cli([corrupt], capsys)
  assert code == 2 and corrupt in err and 'line 1' in err


@pytest.mark.slow
def test_labels_must_match_the_dirs(run_dir, capsys):
  with pytest.raises(SystemExit) as e:
    compare.main([run_dir, '--labels=a,b'])
  assert e.value.code == 2
  assert '2 names for 1 DIRs' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    compare.main([run_dir, '--first=0'])


def test_stage_stats_of_no_records_are_empty():
  stats = compare.stage_stats([])
  assert stats['iterations'] == 0 and stats['students'] == 0
  assert all(
    stats[k] is None for k in ('mean_reward', 'mean_accuracy', 'mean_compression', 'best_reward')
  )
  assert not any(isinstance(v, float) and math.isnan(v) for v in stats.values())


@pytest.mark.slow
def test_default_labels_tell_runs_apart(run_dir, tmp_path):
  a = _copy(run_dir, tmp_path / 'a', 'run')
  b = _copy(run_dir, tmp_path / 'b', 'run')
  labels = lambda dirs: [r['label'] for r in compare.searches(compare.collect(dirs))]
  assert labels([a, run_dir]) == ['run', 'tiny']
  assert labels([a, b]) == [os.path.normpath(a), os.path.normpath(b)]  # same name
  assert labels([a, a + os.sep]) == ['run #1', 'run #2']  # same folder


@pytest.mark.slow
def test_a_cut_last_metrics_line_is_a_one_line_warning(run_dir, tmp_path, capsys):
  workdir = _copy(run_dir, tmp_path, 'cut')
  with open(os.path.join(workdir, report.METRICS_FILE), 'a') as f:
    f.write('{"stage": 2, "iter')  # a search killed mid-write
  code, out, err = _cli([workdir], capsys)
  assert code == 0 and 'N2N Student (Stage1+Stage2)' in out
  assert err.startswith('warning: ') and 'incomplete' in err and 'Traceback' not in err
