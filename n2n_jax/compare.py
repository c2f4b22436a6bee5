"""Several runs side by side: teachers, N2N students and the paper's baselines
from each workdir, and how each search went in its first iterations.

Usage:
  python -m n2n_jax.compare DIR [DIR ...] [--first=10] [--format=text|markdown|json]
                            [--plot=PATH.png] [--labels=a,b,...]

Prints a results table (markdown: the paper's Table form, Model | Acc. |
#Params | Compr. | Δ Acc.) and a search-statistics table: per stage, mean
reward, accuracy and compression over the first --first policy iterations (the
paper's Table 5 measure of how fast a transferred policy learns) and over all
of them. --format=json prints collect()'s rows instead. --plot draws test
accuracy against size for every result and the mean reward per iteration.

A DIR is a run workdir if it holds summary.json, metrics.jsonl or teacher.json;
a search still running (no summary.json yet) shows what it has so far.

Library use: collect(workdirs, first=10) -> rows, one per result (kind
'teacher', 'stage1', 'n2n', 'pareto', 'pruning', 'handdesigned') and one per workdir of
kind 'search' holding that search's statistics.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend, as in report.py

from n2n_jax import report

TEACHER_FILE = 'teacher.json'  # teacher.RECORD_FILE; not imported, to keep orbax out
RUN_FILES = (report.SUMMARY_FILE, report.METRICS_FILE, TEACHER_FILE)
KINDS = ('teacher', 'stage1', 'n2n', 'pareto', 'pruning', 'handdesigned')
FORMATS = ('text', 'markdown', 'json')


class NotAWorkdir(ValueError):
  """A path given to compare is not a run workdir, or cannot be read as one."""


# --- reading a workdir ---------------------------------------------------------------------------


def _read_json(path: str):
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _is_workdir(path: str) -> bool:
  return os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in RUN_FILES)


def check_workdirs(workdirs):
  """NotAWorkdir naming every path that holds no run, before anything is read."""
  bad = [w for w in workdirs if not _is_workdir(w)]
  if bad:
    what = 'is not a run workdir' if len(bad) == 1 else 'are not run workdirs'
    raise NotAWorkdir(
      f'{", ".join(bad)} {what} (a run workdir has at least one of {", ".join(RUN_FILES)})'
    )


def _load(workdir: str) -> dict:
  """Everything compare reads from one workdir; NotAWorkdir if it holds no run
  or one of its files cannot be parsed."""
  check_workdirs([workdir])
  # Imported here: baselines brings in JAX, which takes seconds to import and
  # which a command that only reads JSON files does not need before this point.
  from n2n_jax import baselines  # pylint: disable=g-import-not-at-top

  try:
    return {
      'summary': _read_json(os.path.join(workdir, report.SUMMARY_FILE)),
      'teacher': _read_json(os.path.join(workdir, TEACHER_FILE)),
      'records': report.read_metrics(workdir),
      'baselines': baselines.read_all(workdir),
    }
  except (OSError, ValueError) as e:  # json.JSONDecodeError and corrupt metrics are ValueErrors
    raise NotAWorkdir(f'{workdir}: cannot read the run in it: {e}') from None


def _default_labels(workdirs) -> list[str]:
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  # Two runs called run/ in different folders would be indistinguishable by name.
  paths = [os.path.normpath(w) for w in workdirs]
  if len(set(names)) == len(names):
    return names
  if len(set(paths)) == len(paths):
    return paths
  return [f'{name} #{i}' for i, name in enumerate(names, start=1)]  # a folder given twice


# --- result rows ---------------------------------------------------------------------------------


def _delta(acc, reference):
  return None if acc is None or reference is None else acc - reference


def _row(workdir, label, kind, name, params, val, test, teacher, wall=None, **extra) -> dict:
  """One result; compression and deltas are against this workdir's teacher."""
  t_params = teacher.get('params')
  return {
    'workdir': workdir,
    'label': label,
    'kind': kind,
    'name': name,
    'params': params,
    'compression': t_params / params if t_params and params else None,
    'val_accuracy': val,
    'test_accuracy': test,
    'delta_val_accuracy': _delta(val, teacher.get('val_accuracy')),
    'delta_test_accuracy': _delta(test, teacher.get('test_accuracy')),
    'wall_seconds': wall,
    **extra,
  }


def _teacher(run: dict) -> dict:
  """The teacher as summary.json states it, else as teacher.json does."""
  summary, record = run['summary'] or {}, run['teacher'] or {}
  teacher = dict(summary.get('teacher') or {})
  for key in ('name', 'params', 'val_accuracy', 'test_accuracy'):
    teacher.setdefault(key, record.get(key))
  seconds = (summary.get('time') or {}).get('teacher', record.get('seconds'))
  return dict(teacher, seconds=seconds)


def _stage1_so_far(records: list[dict]) -> dict | None:
  """The best stage-1 student in metrics.jsonl, chosen as the search chooses
  (highest reward, the first on ties), for a search that has no summary yet.
  Degenerate students are skipped: they have a reward of -1 but no accuracy."""
  best = None
  for r in records:
    if int(r['stage']) != 1:
      continue
    degenerate = r.get('degenerate') or [None] * len(r['rewards'])
    for reward, acc, params, why in zip(r['rewards'], r['accuracies'], r['params'], degenerate):
      if why is None and params and (best is None or reward > best['reward']):
        best = {
          'params': params,
          'val_accuracy': acc,
          'reward': reward,
          'iteration': r['iteration'],
        }
  return best


def _result_rows(workdir: str, label: str, run: dict) -> list[dict]:
  teacher, summary = _teacher(run), run['summary']
  rows = [
    _row(
      workdir,
      label,
      'teacher',
      teacher.get('name'),
      teacher.get('params'),
      teacher.get('val_accuracy'),
      teacher.get('test_accuracy'),
      teacher,
      wall=teacher['seconds'],
    )
  ]
  # The stage-1 best was only distilled briefly during the search: it has the
  # validation accuracy the reward saw, and no test accuracy.
  stage1 = summary.get('stage1_best') if summary else _stage1_so_far(run['records'])
  if stage1:
    rows.append(
      _row(
        workdir,
        label,
        'stage1',
        'N2N stage 1',
        stage1['params'],
        stage1.get('val_accuracy'),
        None,
        teacher,
        reward=stage1.get('reward'),
        iteration=stage1.get('iteration'),
        partial=summary is None,
      )
    )
  if summary:
    student = summary['student']
    row = _row(
      workdir,
      label,
      'n2n',
      'N2N stage 1+2',
      student['params'],
      student.get('val_accuracy'),
      student.get('test_accuracy'),
      teacher,
      wall=summary.get('wall_seconds'),
      flops=student.get('flops'),
      stage=student.get('stage'),
    )
    if summary.get('compression'):
      row['compression'] = summary['compression']
    rows.append(row)
    # The Pareto students trained after the search (final.pareto_max).
    for n, m in enumerate(summary.get('pareto', {}).get('students', []), 1):
      rows.append(
        _row(
          workdir,
          label,
          'pareto',
          str(n),
          m['params'],
          m.get('val_accuracy'),
          m.get('test_accuracy'),
          teacher,
          flops=m.get('flops'),
        )
      )
  for name, b in run['baselines'].items():
    student = b.get('student') or {}
    extra = {'flops': student.get('flops')}
    if 'repeats' in b:
      extra['repeats'] = b['repeats']
    row = _row(
      workdir,
      label,
      b.get('method', 'baseline'),
      b.get('name', name),
      student.get('params'),
      student.get('val_accuracy'),
      student.get('test_accuracy'),
      teacher,
      wall=b.get('wall_seconds'),
      **extra,
    )
    if row['compression'] is None and b.get('compression'):
      row['compression'] = b['compression']
    rows.append(row)
  return rows


# --- search statistics ---------------------------------------------------------------------------


def _nan_to_none(x):
  return None if x is None or not math.isfinite(x) else x


def stage_stats(records: list[dict]) -> dict:
  """Means over iterations of report.iteration_stats: reward counts degenerate
  students' -1 (what the policy learns from); accuracy and compression
  (C = 1 - student/teacher) are of the valid students only, and an iteration
  with none is left out of those two means. None where nothing is known."""
  stats = [report.iteration_stats(r) for r in records]
  students = sum(len(r['rewards']) for r in records)
  degenerate = sum(d is not None for r in records for d in (r.get('degenerate') or []))

  def mean(key):
    values = np.array([s[key] for s in stats], dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None

  return {
    'iterations': len(records),
    'students': students,
    'degenerate': degenerate,
    'mean_reward': mean('mean_reward'),
    'mean_accuracy': mean('mean_accuracy'),
    'mean_compression': mean('mean_compression'),
    'best_reward': _nan_to_none(max((s['best_reward'] for s in stats), default=None)),
  }


def search_row(workdir: str, label: str, records: list[dict], first: int) -> dict:
  """Per stage, statistics over the first `first` iterations and over all."""
  row = {'workdir': workdir, 'label': label, 'kind': 'search', 'first': first}
  by_stage = report._by_stage(records)  # pylint: disable=protected-access
  for stage in report.STAGES:
    rs = by_stage.get(stage, [])
    row[f'stage{stage}'] = {'first': stage_stats(rs[:first]), 'all': stage_stats(rs)}
  return row


def collect(workdirs, first: int = 10, labels=None) -> list[dict]:
  """Rows for every workdir in order: its results (teacher, stage-1 best,
  final N2N student, baselines), then its 'search' statistics row. Raises
  NotAWorkdir naming every path that holds no run (before reading any), or
  the one whose files cannot be read; ValueError for a bad first or labels."""
  return _collect(workdirs, first, labels)[0]


def _collect(workdirs, first, labels):
  """(rows, [(label, metrics records)]): the plot needs the records too."""
  if first < 1:
    raise ValueError(f'first must be at least 1, got {first}')
  labels = list(labels) if labels is not None else _default_labels(workdirs)
  if len(labels) != len(workdirs):
    raise ValueError(f'{len(labels)} labels for {len(workdirs)} workdirs')
  if len(set(labels)) < len(labels):  # rows and plot colours are told apart by label
    raise ValueError(f'labels must differ, got {labels}')
  check_workdirs(workdirs)
  rows, records = [], []
  for workdir, label in zip(workdirs, labels):
    run = _load(workdir)
    rows += _result_rows(workdir, label, run)
    rows.append(search_row(workdir, label, run['records'], first))
    records.append((label, run['records']))
  return rows, records


def results(rows):
  return [r for r in rows if r['kind'] != 'search']


def searches(rows):
  return [r for r in rows if r['kind'] == 'search']


# --- tables --------------------------------------------------------------------------------------

MODEL_NAMES = {
  'teacher': 'Teacher',
  'stage1': 'N2N Student (Stage1)',
  'n2n': 'N2N Student (Stage1+Stage2)',
  'pareto': 'N2N Pareto student',
  'pruning': 'Pruning',
  'handdesigned': 'Hand-designed',
}
VAL_MARK = '†'  # an accuracy that is the search's validation accuracy, not a test accuracy


def _model(row: dict) -> str:
  kind = MODEL_NAMES.get(row['kind'], row['kind'])
  if row.get('partial'):
    kind += ' so far'
  name = f' ({row["name"]})' if row['kind'] not in ('stage1', 'n2n') and row['name'] else ''
  return f'{row["label"]}: {kind}{name}'


def _shown_accuracy(row: dict) -> tuple[str, str]:
  """(Acc., Δ Acc.) for the paper-style table: test accuracy, or for a row
  with none the validation accuracy, marked, against the teacher's."""
  if row['test_accuracy'] is not None or row['val_accuracy'] is None:
    return (
      report.format_accuracy(row['test_accuracy']),
      report.NA if row['kind'] == 'teacher' else _signed(row['delta_test_accuracy']),
    )
  return (
    report.format_accuracy(row['val_accuracy']) + VAL_MARK,
    _signed(row['delta_val_accuracy'])
    + (VAL_MARK if row['delta_val_accuracy'] is not None else ''),
  )


def _signed(delta) -> str:
  return report.format_delta(delta, 0.0) if delta is not None else report.NA


def _compression(row):
  return report.NA if row['kind'] == 'teacher' else report.format_compression(row['compression'])


def _results_table(rows) -> tuple[list[str], list[list[str]]]:
  header = ['Model', 'Acc.', '#Params', 'Compr.', 'Δ Acc.']
  body = []
  for r in results(rows):
    acc, delta = _shown_accuracy(r)
    body.append([_model(r), acc, report.format_params(r['params']), _compression(r), delta])
  return header, body


def _results_table_text(rows) -> tuple[list[str], list[list[str]]]:
  """The text form has room for both accuracies and the time taken."""
  header = ['Model', 'Val. acc.', 'Test acc.', '#Params', 'Compr.', 'Δ Test acc.', 'Wall']
  body = [
    [
      _model(r),
      report.format_accuracy(r['val_accuracy']),
      report.format_accuracy(r['test_accuracy']),
      report.format_params(r['params']),
      _compression(r),
      report.NA if r['kind'] == 'teacher' else _signed(r['delta_test_accuracy']),
      report.format_duration(r['wall_seconds']),
    ]
    for r in results(rows)
  ]
  return header, body


def _number(x, digits=4) -> str:
  return report.NA if x is None else f'{x:.{digits}f}'


def _search_table(rows) -> tuple[list[str], list[list[str]]]:
  first = searches(rows)[0]['first'] if searches(rows) else 0
  header = [
    'Run',
    'Stage',
    'Iters',
    'Students',
    'Degenerate',
    f'Reward (first {first})',
    f'Acc. (first {first})',
    f'C (first {first})',
    'Reward (all)',
    'Acc. (all)',
    'C (all)',
    'Best reward',
  ]
  body = []
  for r in searches(rows):
    for stage in report.STAGES:
      s = r[f'stage{stage}']
      a, f = s['all'], s['first']
      body.append(
        [
          r['label'],
          str(stage),
          str(a['iterations']),
          str(a['students']),
          str(a['degenerate']),
          _number(f['mean_reward']),
          report.format_accuracy(f['mean_accuracy']),
          _number(f['mean_compression'], 3),
          _number(a['mean_reward']),
          report.format_accuracy(a['mean_accuracy']),
          _number(a['mean_compression'], 3),
          _number(a['best_reward']),
        ]
      )
  return header, body


def _markdown(header, body, right_from=1) -> list[str]:
  align = ['---' if i < right_from else '--:' for i in range(len(header))]
  row = report._table_row  # pylint: disable=protected-access
  return [row(cells) for cells in [header, align] + body]


def _text(header, body) -> list[str]:
  widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
  lines = []
  for n, row in enumerate([header] + body):
    cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
    lines.append('  '.join(cells).rstrip())
    if n == 0:
      lines.append('  '.join('-' * w for w in widths))
  return lines


def _notes(rows, fmt) -> list[str]:
  first = searches(rows)[0]['first'] if searches(rows) else 0
  notes = [
    'Compr. is teacher / student parameters and Δ is in percentage points, both '
    "against the same workdir's teacher."
  ]
  if any(r['kind'] == 'stage1' for r in results(rows)):
    mark = f'{VAL_MARK} ' if fmt == 'markdown' else ''
    notes.append(
      f'{mark}The stage-1 best was only distilled briefly during the search: it has '
      'the validation accuracy the reward saw, and no test accuracy.'
    )
  if fmt == 'text' and any(r['kind'] == 'n2n' for r in results(rows)):
    notes.append("The N2N student's wall time includes training its teacher.")
  notes.append(
    f'Search statistics are means over policy iterations (first {first}, then all) '
    'of the per-iteration means: reward counts degenerate students as -1; Acc. and '
    'C = 1 - student/teacher params are over valid students only.'
  )
  return notes


def format_tables(rows, fmt: str = 'text') -> str:
  """The results and search-statistics tables as text or markdown; json is
  the rows themselves."""
  if fmt == 'json':
    return json.dumps(rows, indent=2)
  if fmt == 'markdown':
    out = ['## Results', ''] + _markdown(*_results_table(rows))
    out += ['', '## Search', ''] + _markdown(*_search_table(rows), right_from=2)
    out += [''] + [f'- {n}' for n in _notes(rows, fmt)]
  else:
    out = ['Results'] + _text(*_results_table_text(rows))
    out += ['', 'Search'] + _text(*_search_table(rows))
    out += [''] + _notes(rows, fmt)
  return '\n'.join(out) + '\n'


# --- plot ----------------------------------------------------------------------------------------

MARKERS = {'teacher': '*', 'n2n': 'D', 'pruning': 's', 'handdesigned': '^'}
PLOT_KINDS = {
  'teacher': 'teacher',
  'n2n': 'N2N stage 1+2',
  'pruning': 'pruning',
  'handdesigned': 'hand-designed',
}


def _colours(labels):
  cycle = [f'C{i}' for i in range(10)]
  return {label: cycle[i % len(cycle)] for i, label in enumerate(labels)}


def _plot_results(ax, rows, colours):
  """Test accuracy against size; colour is the run, marker the kind of model.
  The stage-1 best has no test accuracy and is left out."""
  runs = list(colours)
  for r in results(rows):
    if r['test_accuracy'] is None or not r['params']:
      continue
    # Runs often share one teacher (a transferred policy, a baseline): each
    # later run's marker is drawn smaller, so that all of them stay visible.
    size = (200 if r['kind'] == 'teacher' else 80) * 0.8 ** runs.index(r['label'])
    ax.scatter(
      [r['params']],
      [100 * r['test_accuracy']],
      s=size,
      marker=MARKERS.get(r['kind'], 'o'),
      color=colours[r['label']],
      edgecolor='black',
      lw=0.6,
      zorder=3 + runs.index(r['label']),
    )
  # Two legends: runs by colour, kinds by marker.
  for label, colour in colours.items():
    ax.scatter([], [], marker='o', color=colour, label=label)
  for kind, marker in MARKERS.items():
    if any(r['kind'] == kind for r in results(rows)):
      ax.scatter(
        [], [], marker=marker, color='0.6', edgecolor='black', lw=0.6, label=PLOT_KINDS[kind]
      )
  report.params_axis(ax)
  ax.margins(x=0.1, y=0.1)
  ax.set_ylabel('test accuracy (%)')
  ax.set_title(
    'Test accuracy against size\n(the stage-1 best has no test accuracy: not shown)', fontsize=10
  )
  ax.grid(alpha=0.3, which='both')
  ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8, frameon=False)


def _plot_rewards(ax, stage, per_run, colours, first):
  """Mean reward per iteration of one stage, one line per run; the shaded
  span is the iterations the 'first' statistics cover."""
  longest = 0
  for label, records in per_run:
    rs = report._by_stage(records).get(stage, [])  # pylint: disable=protected-access
    if rs:
      its = [r['iteration'] for r in rs]
      longest = max(longest, max(its))
      ax.plot(its, [r['mean_reward'] for r in rs], '-o', ms=3, color=colours[label], label=label)
  if longest:
    ax.axvspan(
      0.5,
      min(first, longest) + 0.5,
      color='0.9',
      zorder=0,
      label=f'first {first} iteration{"s" if first > 1 else ""} (statistics)',
    )
    ax.set_xlim(0.5, longest + 0.5)
  else:
    ax.text(
      0.5,
      0.5,
      f'no stage-{stage} iterations yet',
      transform=ax.transAxes,
      ha='center',
      va='center',
      color='0.5',
    )
  action = {1: 'layer removal', 2: 'layer shrinkage'}[stage]
  ax.set_title(f'Stage {stage} ({action}): mean reward per iteration', fontsize=10)
  ax.set_ylabel('mean reward')
  ax.xaxis.get_major_locator().set_params(integer=True)
  ax.grid(alpha=0.3)


def plot(rows, records_by_label: list, path: str) -> str:
  """One figure: left, test accuracy against #params for every result; right,
  mean reward per iteration, stage 1 above stage 2. records_by_label is
  [(label, metrics records)] in the rows' order. Returns path."""
  colours = _colours([label for label, _ in records_by_label])
  first = searches(rows)[0]['first'] if searches(rows) else 10
  fig = Figure(figsize=(13, 6.5))
  grid = fig.add_gridspec(2, 2, width_ratios=(1.1, 1), hspace=0.35, wspace=0.2)
  _plot_results(fig.add_subplot(grid[:, 0]), rows, colours)
  top = fig.add_subplot(grid[0, 1])
  bottom = fig.add_subplot(grid[1, 1])
  _plot_rewards(top, 1, records_by_label, colours, first)
  _plot_rewards(bottom, 2, records_by_label, colours, first)
  bottom.set_xlabel('policy iteration')
  if top.get_legend_handles_labels()[0]:
    top.legend(fontsize=8, loc='best')
  return report._save(fig, path)  # pylint: disable=protected-access


# --- command line --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog='python -m n2n_jax.compare',
    description='Compare N2N runs (and the baselines run in their workdirs) side by side.',
  )
  p.add_argument('workdirs', nargs='+', metavar='DIR', help='run workdirs')
  p.add_argument(
    '--first',
    type=int,
    default=10,
    help='search statistics over this many first iterations per stage (paper Table 5 uses 10)',
  )
  p.add_argument('--format', choices=FORMATS, default='text')
  p.add_argument('--plot', metavar='PATH.png', help='write a comparison figure here')
  p.add_argument('--labels', help='comma-separated names for the DIRs, in order')
  return p


def main(argv=None, out=None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if args.first < 1:
    parser.error(f'--first must be at least 1, got {args.first}')
  labels = None
  if args.labels is not None:
    labels = [s.strip() for s in args.labels.split(',')]
    if len(labels) != len(args.workdirs):
      parser.error(f'--labels has {len(labels)} names for {len(args.workdirs)} DIRs')
    if len(set(labels)) < len(labels):
      parser.error(f'--labels must all differ, got {args.labels}')
  try:
    with warnings.catch_warnings():
      # A search being written can have a cut last metrics line: say so in one line.
      warnings.showwarning = _one_line_warning
      rows, records = _collect(args.workdirs, args.first, labels)
  except NotAWorkdir as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  (out or sys.stdout).write(format_tables(rows, args.format))
  if args.plot:
    try:
      print(f'plot: {plot(rows, records, args.plot)}', file=sys.stderr)
    except OSError as e:
      print(f'error: cannot write the plot {args.plot}: {e}', file=sys.stderr)
      return 2
  return 0


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
  print(f'warning: {message}', file=sys.stderr)


if __name__ == '__main__':
  sys.exit(main())
