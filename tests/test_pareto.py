"""The search's accuracy-vs-params Pareto front (n2n_jax/pareto.py) and the
students trained from it (final.pareto_max)."""

import json
import math
import os
import random

import numpy as np
import pytest
from conftest import run_records
from conftest import tiny_search
from conftest import workdir_with_teacher
from test_report import _points
from test_report import make_records
from test_report import make_summary

from n2n_jax import compare
from n2n_jax import data as data_lib
from n2n_jax import experiment
from n2n_jax import export
from n2n_jax import pareto
from n2n_jax import report
from n2n_jax import spec as S


def entry(params, acc, name='s'):
  return {
    'params': params,
    'val_accuracy': acc,
    'spec': {'name': f'{name}{params}'},
    'reward': acc,
    'stage': 1,
    'iteration': 1,
  }


def test_the_front_keeps_exactly_the_students_nothing_beats():
  rng = random.Random(0)
  for _ in range(50):
    seen = [
      entry(rng.choice(range(100, 2000, 50)), rng.choice([0.5, 0.6, 0.7, 0.8, 0.9]))
      for _ in range(rng.randint(1, 30))
    ]
    front = []
    for start in range(0, len(seen), 4):  # fed an iteration at a time, as the search does
      front = pareto.update(front, seen[start : start + 4])
    assert [m['params'] for m in front] == sorted(m['params'] for m in front)
    for m in front:
      assert not any(pareto.dominates(o, m) for o in seen)
    for s in seen:  # everything else is beaten by, or ties with, a member
      assert s in front or any(
        pareto.dominates(m, s)
        or (m['params'] == s['params'] and m['val_accuracy'] == s['val_accuracy'])
        for m in front
      )
    pairs = [(m['params'], m['val_accuracy']) for m in front]
    assert len(set(pairs)) == len(pairs)


def test_a_tie_keeps_the_first_student_found():
  first, twin = entry(500, 0.9, 'first'), entry(500, 0.9, 'twin')
  assert pareto.update([first], [twin]) == [first]
  assert pareto.update([first], [entry(500, 0.91)]) == [entry(500, 0.91)]


def test_spread_picks_the_ends_and_sizes_evenly_apart_in_log_params():
  front = [
    entry(p, 0.5 + i / 100) for i, p in enumerate([100, 120, 300, 1000, 1100, 3000, 9000, 10000])
  ]
  assert pareto.spread(front, 3) == [front[0], front[3], front[7]]  # 100, ~1000, 10000
  chosen = pareto.spread(front, 5)
  assert [m['params'] for m in chosen] == [100, 300, 1000, 3000, 10000]
  targets = [math.exp(math.log(100) + math.log(100) * i / 4) for i in range(5)]
  assert all(abs(math.log(m['params'] / t)) < 0.2 for m, t in zip(chosen, targets))
  assert pareto.spread(front, 1) == [front[0]]
  assert pareto.spread(front, 0) == [] and pareto.spread([], 3) == []
  assert pareto.spread(front[:2], 5) == front[:2]
  left = pareto.spread(front, 3, leave_out=front[7]['spec'])
  assert front[7] not in left and left[-1] == front[6]


def test_the_plot_marks_the_pareto_students():
  records, summary = make_records(), make_summary()
  front = [
    {'params': 30_000, 'val_accuracy': 0.861, 'test_accuracy': 0.855},
    {'params': 75_000, 'val_accuracy': 0.902, 'test_accuracy': 0.897},
  ]
  ax = report.accuracy_vs_params_figure(
    records, summary['teacher'], summary['student'], front
  ).axes[0]
  points = _points(ax)
  for m in front:
    assert (m['params'], round(100 * m['val_accuracy'], 9)) in points
  labels = [t.get_text() for t in ax.texts]
  assert any(t.startswith('Pareto student 1 (test 85.50%)') for t in labels), labels
  assert any(t.startswith('Pareto student 2 (test 89.70%)') for t in labels), labels


@pytest.mark.slow
def test_a_search_trains_and_exports_spread_pareto_students(config_factory, teacher_dir, tmp_path):
  config = tiny_search(config_factory('digits'))
  config.search.rollouts = 4
  config.final.pareto_max = 2
  workdir = workdir_with_teacher(teacher_dir, tmp_path / 'run')
  summary = experiment.run(config, workdir)

  # The front, rebuilt from metrics.jsonl alone: every valid student's size and accuracy.
  records = run_records(workdir)
  seen = [
    entry(p, a)
    for r in records
    for p, a, why, broken in zip(r['params'], r['accuracies'], r['degenerate'], r['violations'])
    if why is None and not broken and a is not None and p
  ]
  front = pareto.update([], seen)
  stored = json.loads(open(os.path.join(workdir, pareto.FILE)).read())
  assert stored['front_size'] == len(front) >= 3
  on_front = {(m['params'], m['val_accuracy']) for m in front}
  chosen = stored['students']
  assert len(chosen) == 2 and chosen[0]['params'] < chosen[1]['params']
  assert all((c['params'], c['search_val_accuracy']) in on_front for c in chosen)
  assert all(c['spec'] != summary['student']['spec'] for c in chosen)  # the answer not again
  assert summary['pareto'] == {
    'front_size': len(front),
    'students': [{k: v for k, v in c.items() if k != 'spec'} for c in chosen],
  }
  ds = data_lib.load(config.data)
  for c in chosen:  # each trained, exported and reported like the answer
    model, variables = export.load_student(os.path.join(workdir, c['directory']))
    assert S.param_count(model.spec) == c['params'] == S.param_count(S.from_dict(c['spec']))
    logits = model.apply(variables, ds.test_images, train=False)
    accuracy = float(np.mean(np.argmax(logits, -1) == np.asarray(ds.test_labels)))
    assert accuracy == pytest.approx(c['test_accuracy'], abs=1e-6)
  assert sorted(os.listdir(os.path.join(workdir, pareto.STUDENTS_DIR))) == sorted(
    os.path.basename(c['directory']) for c in chosen
  )
  text = open(os.path.join(workdir, 'report.md')).read()
  assert '## Pareto set (2 of the' in text and chosen[1]['directory'] in text
  rows = [r for r in compare.collect([workdir]) if r['kind'] == 'pareto']
  assert [(r['params'], r['test_accuracy']) for r in rows] == [
    (c['params'], c['test_accuracy']) for c in chosen
  ]

  # Resumed with another pareto_max: the search is not redone (the front is in
  # its checkpoint) and the students folder holds the new set only.
  config.final.pareto_max = 1
  again = experiment.run(config, workdir)
  assert run_records(workdir) == records and again['student'] == summary['student']
  assert again['pareto']['front_size'] == len(front)
  assert [c['params'] for c in again['pareto']['students']] == [chosen[0]['params']]
  assert len(os.listdir(os.path.join(workdir, pareto.STUDENTS_DIR))) == 1
