"""What a search leaves behind for people: the per-iteration metrics log
(WORKDIR/metrics.jsonl), TensorBoard scalars, the paper's Figure 3 plots, an
accuracy-vs-size scatter, summary.json and a report.md in the form of Table 1.

A metrics record (one per policy iteration, one JSON line each) holds:
  stage, iteration (1-based within its stage), and per rollout (m of them)
  rewards, accuracies, params, compressions (teacher / student params, 0 when
  degenerate), degenerate (reason or None), specs; plus mean_reward, baseline,
  policy_loss, best_reward (best so far in the stage) and seconds.
"""

from __future__ import annotations

import json
import math
import os
import warnings

import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure  # no pyplot: no global backend, no figure registry

from n2n_jax import atomic

METRICS_FILE = 'metrics.jsonl'
SUMMARY_FILE = 'summary.json'
TENSORBOARD_DIR = 'tensorboard'
STAGES = (1, 2)
# Figure 3's colours: compression blue, accuracy green, reward orange.
COLOURS = {'reward': 'tab:orange', 'accuracy': 'tab:green', 'compression': 'tab:blue'}


# --- JSON ----------------------------------------------------------------------------------------


def _to_builtin(x):
  """json's fallback: the search hands over numpy / jax scalars and arrays."""
  if hasattr(x, 'tolist'):  # numpy and jax arrays and scalars alike
    return x.tolist()
  raise TypeError(f'{type(x).__name__} is not JSON serialisable: {x!r:.80}')


def _dumps(obj, **kwargs) -> str:
  return json.dumps(obj, default=_to_builtin, **kwargs)


def _fsync_dir(directory: str):
  """Make a rename or a new file survive a power cut (POSIX; a no-op elsewhere)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


# --- metrics.jsonl -------------------------------------------------------------------------------


def _parse_lines(data: bytes, path: str):
  """(records, end of the last good line, problem with the last line or None).
  A bad line before the last is corruption, not a crash, and raises."""
  lines = data.split(b'\n')
  # After a crash the tail can be a partial write, or NULs where the filesystem
  # grew the file but never wrote the data (ext4 delayed allocation).
  while lines and not lines[-1].strip(b' \t\r\x00'):
    lines.pop()
  records, good_end, offset = [], 0, 0
  for number, raw in enumerate(lines, start=1):
    is_last = number == len(lines)
    try:
      record = json.loads(raw.decode('utf-8'))
      if not isinstance(record, dict):
        raise ValueError(f'expected a JSON object, got {type(record).__name__}')
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
      if is_last:
        return records, good_end, f'{path} line {number} is incomplete ({e}); ignoring it'
      raise ValueError(
        f'{path} line {number} is corrupted ({e}): {raw[:80]!r}. '
        'Only the last line may be cut short by a crash; fix or '
        'remove this line by hand.'
      ) from None
    records.append(record)
    offset += len(raw) + 1
    good_end = offset
  return records, good_end, None


def read_metrics(workdir: str) -> list[dict]:
  """The records in WORKDIR/metrics.jsonl, oldest first; [] if there is none yet.
  A last line cut mid-write is skipped with a warning; a bad line before it
  raises ValueError naming its line number."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path, 'rb') as f:
    data = f.read()
  records, _, problem = _parse_lines(data, path)
  if problem:
    warnings.warn(problem, stacklevel=2)
  return records


class MetricsWriter:
  """Appends one JSON line per policy iteration to WORKDIR/metrics.jsonl,
  flushed and fsynced so a crash loses at most the line being written."""

  def __init__(self, workdir: str, records: list | None = None):
    """With `records` (a resumed search's checkpointed history) the file is
    rewritten from them, dropping whatever was written after that checkpoint;
    otherwise a cut last line is repaired before appending."""
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, METRICS_FILE)
    if records is None:
      self._repair_tail()
    else:
      atomic.write_text(
        self.path, ''.join(_dumps(r, separators=(',', ':')) + '\n' for r in records)
      )

  def _repair_tail(self):
    """A run resumed after a crash would glue its first line onto a cut one and
    turn a skippable tail into mid-file corruption: cut the bad tail off first."""
    if not os.path.exists(self.path):
      return
    with open(self.path, 'rb') as f:
      data = f.read()
    _, good_end, problem = _parse_lines(data, self.path)  # mid-file corruption raises
    if problem is None and (not data or data.endswith(b'\n')):
      return
    if problem:
      warnings.warn(f'{problem}; removing it before appending', stacklevel=3)
    keep = len(data[:good_end])  # good_end counts a newline a crash may have cut off
    with open(self.path, 'r+b') as f:
      f.truncate(keep)
      if keep and not data[:keep].endswith(b'\n'):
        f.seek(keep)
        f.write(b'\n')
      f.flush()
      os.fsync(f.fileno())

  def append(self, record: dict):
    # Serialise first: a record that cannot be written leaves the file untouched.
    line = _dumps(record, separators=(',', ':')) + '\n'
    new = not os.path.exists(self.path)
    with open(self.path, 'a', encoding='utf-8') as f:
      f.write(line)  # one write, so a crash cuts at most this line
      f.flush()
      os.fsync(f.fileno())
    if new:
      _fsync_dir(os.path.dirname(os.path.abspath(self.path)))


# --- per-record statistics -----------------------------------------------------------------------


def _valid_mask(record: dict) -> np.ndarray:
  """Rollouts that made a real student: not degenerate and with a size."""
  degenerate = record.get('degenerate') or [None] * len(record['rewards'])
  ratios = np.asarray(record['compressions'], dtype=float)
  return np.array([d is None for d in degenerate]) & (ratios > 0)


def relative_compression(ratios) -> np.ndarray:
  """The paper's C = 1 - #params(student)/#params(teacher), from teacher/student ratios."""
  ratios = np.asarray(ratios, dtype=float)
  with np.errstate(divide='ignore'):
    return np.where(ratios > 0, 1.0 - 1.0 / np.where(ratios > 0, ratios, 1.0), np.nan)


def iteration_stats(record: dict) -> dict:
  """Means over a record's rollouts. Reward counts degenerate students (their
  -1 is what the policy learns from); accuracy and compression average only
  real students, since a degenerate one has neither (NaN if there are none)."""
  valid = _valid_mask(record)
  accuracies = np.asarray(record['accuracies'], dtype=float)[valid]
  compressions = relative_compression(np.asarray(record['compressions'], dtype=float)[valid])
  return {
    'mean_reward': float(record['mean_reward']),
    'best_reward': float(record['best_reward']),
    'mean_accuracy': float(accuracies.mean()) if valid.any() else math.nan,
    'mean_compression': float(compressions.mean()) if valid.any() else math.nan,
    'baseline': float(record['baseline']),
    'policy_loss': float(record['policy_loss']),
  }


# --- TensorBoard ---------------------------------------------------------------------------------


class TensorBoardWriter:
  """Scalars per iteration under WORKDIR/tensorboard/, tagged stage{1,2}/NAME, at
  global step = the record's index in metrics.jsonl (both stages together, so
  stage 2 continues where stage 1 ended). When resuming, pass
  first_step=len(read_metrics(workdir)) so steps keep matching that index."""

  TAGS = (
    'mean_reward',
    'best_reward',
    'mean_accuracy',
    'mean_compression',
    'baseline',
    'policy_loss',
  )

  def __init__(self, workdir: str, first_step: int = 0):
    # tensorboardX is pure Python (no TensorFlow); imported here so that reading
    # metrics and plotting do not need it.
    import tensorboardX

    self.logdir = os.path.join(workdir, TENSORBOARD_DIR)
    self._writer = tensorboardX.SummaryWriter(logdir=self.logdir)
    self._step = first_step

  def append(self, record: dict, step: int | None = None) -> int:
    """Writes the record's scalars at step (default: the step after the last
    one written) and returns that step."""
    step = self._step if step is None else step
    stage = int(record['stage'])
    for name, value in iteration_stats(record).items():
      # An all-degenerate iteration has no mean accuracy; a NaN loss stays in metrics.jsonl.
      if math.isfinite(value):
        self._writer.add_scalar(f'stage{stage}/{name}', value, global_step=step)
    # Iterations are minutes apart: flush each so a crash loses nothing.
    self._writer.flush()
    self._step = step + 1
    return step

  def close(self):
    self._writer.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# --- plots ---------------------------------------------------------------------------------------


def _by_stage(records: list[dict]) -> dict:
  out = {}
  for record in records:
    out.setdefault(int(record['stage']), []).append(record)
  return {stage: sorted(rs, key=lambda r: r['iteration']) for stage, rs in sorted(out.items())}


def _save(fig: Figure, path: str) -> str:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  # Written whole or not at all (atomic.py): a reader never opens half a PNG.
  return atomic.write_with(
    path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches='tight'), suffix='.png'
  )


def _legend_below(ax):
  # Below the axes, so that no point is ever hidden behind it.
  ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8, frameon=False)


def stage_figure(stage: int, records: list[dict]) -> Figure:
  """One stage's Figure 3 (see plot_search), not yet saved."""
  fig = Figure(figsize=(8, 4.8))
  ax = fig.add_subplot()
  its = np.array([r['iteration'] for r in records])
  stats = [iteration_stats(r) for r in records]

  # Faint points: every rollout; degenerate ones only have a reward (-1), drawn as x.
  for r in records:
    valid = _valid_mask(r)
    x = np.full(len(valid), r['iteration'], dtype=float)
    rewards = np.asarray(r['rewards'], dtype=float)
    ax.scatter(x[valid], rewards[valid], s=14, color=COLOURS['reward'], alpha=0.3, lw=0)
    ax.scatter(
      x[~valid], rewards[~valid], s=22, color=COLOURS['reward'], alpha=0.5, marker='x', lw=1
    )
    ax.scatter(
      x[valid],
      np.asarray(r['accuracies'], dtype=float)[valid],
      s=14,
      color=COLOURS['accuracy'],
      alpha=0.3,
      lw=0,
    )
    ax.scatter(
      x[valid],
      relative_compression(np.asarray(r['compressions'])[valid]),
      s=14,
      color=COLOURS['compression'],
      alpha=0.3,
      lw=0,
    )

  ax.plot(
    its,
    [s['mean_reward'] for s in stats],
    '-o',
    ms=4,
    color=COLOURS['reward'],
    label='reward (mean)',
  )
  ax.plot(
    its,
    [s['best_reward'] for s in stats],
    '--',
    color=COLOURS['reward'],
    alpha=0.8,
    label='best reward so far',
  )
  ax.plot(
    its,
    [s['mean_accuracy'] for s in stats],
    '-o',
    ms=4,
    color=COLOURS['accuracy'],
    label='accuracy (mean)',
  )
  ax.plot(
    its,
    [s['mean_compression'] for s in stats],
    '-o',
    ms=4,
    color=COLOURS['compression'],
    label='compression C = 1 - student/teacher (mean)',
  )
  if any(not _valid_mask(r).all() for r in records):
    # A proxy so the legend explains the x markers.
    ax.scatter([], [], marker='x', color=COLOURS['reward'], label='degenerate student (reward)')
  ax.axhline(0, color='0.7', lw=0.8, zorder=0)

  n_students = sum(len(r['rewards']) for r in records)
  action = {1: 'layer removal', 2: 'layer shrinkage'}.get(stage, f'stage {stage}')
  ax.set_title(
    f'Stage {stage} ({action}): reward, accuracy and compression per iteration\n'
    f'{len(records)} iterations, {n_students} students; faint points are single '
    'students',
    fontsize=10,
  )
  ax.set_xlabel('policy iteration')
  ax.set_ylabel('score')
  if len(its):
    ax.set_xlim(its.min() - 0.5, its.max() + 0.5)
  ax.xaxis.get_major_locator().set_params(integer=True)
  ax.grid(alpha=0.3)
  _legend_below(ax)
  return fig


def plot_search(records: list[dict], path_prefix: str) -> list[str]:
  """Figure 3: per stage, reward, accuracy and compression against iteration.
  Writes {path_prefix}_stage1.png and, if stage 2 ran, _stage2.png; returns the paths."""
  return [
    _save(stage_figure(stage, rs), f'{path_prefix}_stage{stage}.png')
    for stage, rs in _by_stage(records).items()
  ]


def _accuracy(d: dict):
  """The accuracy comparable with the search's: validation first."""
  for key in ('val_accuracy', 'accuracy', 'test_accuracy'):
    if d.get(key) is not None:
      return float(d[key])
  return None


def params_axis(ax) -> None:
  """A log x axis of parameter counts labelled as in the tables (73K, 1.2M)
  rather than powers of ten; the minor ticks at 2x and 5x get labels too, since
  a run often spans less than a decade."""
  ax.set_xscale('log')
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: format_params(v)))
  ax.xaxis.set_minor_formatter(
    ticker.FuncFormatter(lambda v, _: format_params(v) if f'{v:.0e}'[0] in '25' else '')
  )
  ax.tick_params(axis='x', which='minor', labelsize=7)
  ax.set_xlabel('#params (log scale)')


def plot_accuracy_vs_params(
  records: list[dict], teacher: dict, chosen: dict, path: str, pareto_students=()
) -> str:
  """Every sampled non-degenerate student as a point (x = #params, log scale;
  y = validation accuracy), the teacher and the chosen student marked, and
  the trained Pareto students (summary['pareto']['students']) at their
  validation accuracy after final training. Returns path."""
  return _save(accuracy_vs_params_figure(records, teacher, chosen, pareto_students), path)


def accuracy_vs_params_figure(
  records: list[dict], teacher: dict, chosen: dict, pareto_students=()
) -> Figure:
  """plot_accuracy_vs_params's figure, not yet saved."""
  fig = Figure(figsize=(8, 5))
  ax = fig.add_subplot()
  all_params, all_acc = [], []
  for stage, rs in _by_stage(records).items():
    params, acc = [], []
    for r in rs:
      valid = _valid_mask(r)
      params += list(np.asarray(r['params'], dtype=float)[valid])
      acc += list(np.asarray(r['accuracies'], dtype=float)[valid] * 100)
    ax.scatter(
      params,
      acc,
      s=16,
      alpha=0.5,
      lw=0,
      color='tab:blue' if stage == 1 else 'tab:purple',
      label=f'stage {stage} students ({len(params)})',
    )
    all_params += params
    all_acc += acc

  if all_params:
    # The best accuracy reachable at each size or smaller: the trade-off the search explores.
    order = np.argsort(all_params)
    front = np.maximum.accumulate(np.asarray(all_acc)[order])
    ax.step(
      np.asarray(all_params)[order],
      front,
      where='post',
      color='0.4',
      lw=1,
      label='best accuracy at this size or less',
    )

  def mark(d, marker, colour, label, side):
    acc = _accuracy(d)
    if d.get('params') is None or acc is None:
      return
    x, y = float(d['params']), acc * 100
    ax.scatter(
      [x], [y], s=140, marker=marker, color=colour, edgecolor='black', zorder=5, label=label
    )
    # Text inwards: the teacher is the largest model, the chosen student among the smallest.
    ax.annotate(
      f'{label}\n{format_params(d["params"])}, {y:.2f}%',
      (x, y),
      textcoords='offset points',
      xytext=(-12 if side == 'left' else 12, 0),
      ha='right' if side == 'left' else 'left',
      va='center',
      fontsize=8,
      bbox={'boxstyle': 'round', 'fc': 'white', 'alpha': 0.8, 'lw': 0},
    )

  mark(teacher, '*', 'gold', f'teacher {teacher.get("name", "")}'.strip(), 'left')
  mark(chosen, 'D', 'tab:red', 'chosen student', 'right')
  for n, member in enumerate(pareto_students, 1):
    mark(
      member,
      's',
      'tab:green',
      f'Pareto student {n} (test {format_accuracy(member.get("test_accuracy"))})',
      'right',
    )
  params_axis(ax)
  ax.margins(x=0.08, y=0.12)
  ax.set_ylabel('validation accuracy (%)')
  ax.set_title(
    'Sampled students: accuracy against size (degenerate students left out)', fontsize=10
  )
  ax.grid(alpha=0.3, which='both')
  _legend_below(ax)
  return fig


# --- summary.json and report.md ------------------------------------------------------------------


def write_json(path: str, obj) -> str:
  """Writes `obj` as indented JSON atomically: readers see the old or the new
  file, never half of one. Returns path."""
  text = _dumps(obj, indent=2) + '\n'  # fails before any file is touched
  atomic.write_text(path, text)
  _fsync_dir(os.path.dirname(os.path.abspath(path)))
  return path


def write_summary(summary: dict, workdir: str) -> str:
  """Writes WORKDIR/summary.json (write_json). Returns its path."""
  return write_json(os.path.join(workdir, SUMMARY_FILE), summary)


def read_summary(workdir: str) -> dict:
  with open(os.path.join(workdir, SUMMARY_FILE)) as f:
    return json.load(f)


NA = '–'


def format_params(n) -> str:
  """Table 1's style: 9.4M, 11.17M, 984K, 73K."""
  if n is None:
    return NA
  n = int(n)
  if round(n / 1e3) >= 1000:
    return f'{n / 1e6:.2f}'.rstrip('0').rstrip('.') + 'M'
  if n >= 10_000:
    return f'{n / 1e3:.0f}K'
  if n >= 1000:
    return f'{n / 1e3:.1f}'.rstrip('0').rstrip('.') + 'K'
  return str(n)


def format_compression(ratio) -> str:
  """Table 1's style: 127x, 11.8x, 5.26x (about three significant digits)."""
  if ratio is None or not ratio > 0 or not math.isfinite(ratio):
    return NA
  if ratio >= 99.95:
    return f'{ratio:.0f}x'
  if ratio >= 9.995:
    return f'{ratio:.1f}x'
  return f'{ratio:.2f}x'


def format_accuracy(acc) -> str:
  return NA if acc is None else f'{100 * acc:.2f}%'


def format_delta(acc, reference) -> str:
  """Accuracy difference in percentage points, always signed: +0.01%, -0.42%."""
  if acc is None or reference is None:
    return NA
  delta = round(100 * (acc - reference), 2)
  return f'{delta + 0.0:+.2f}%'  # + 0.0 turns -0.00 into +0.00


def format_duration(seconds) -> str:
  if seconds is None:
    return NA
  s = int(round(seconds))
  if s < 60:
    return f'{s}s'
  if s < 3600:
    return f'{s // 60}m {s % 60:02d}s'
  return f'{s // 3600}h {s % 3600 // 60:02d}m'


def _ratio(teacher_params, student_params):
  if not teacher_params or not student_params:
    return None
  return teacher_params / student_params


def _table_row(cells) -> str:
  return '| ' + ' | '.join(cells) + ' |'


def _run_lines(summary: dict, records: list[dict]) -> list[str]:
  stages = _by_stage(records)
  lines = []
  its = ', '.join(f'{len(rs)} in stage {s}' for s, rs in stages.items()) or 'none'
  lines.append(f'- Policy iterations: {its}.')
  per_stage = {s: sum(len(r['rewards']) for r in rs) for s, rs in stages.items()}
  total = sum(per_stage.values())
  split = ' + '.join(f'{n} in stage {s}' for s, n in per_stage.items())
  lines.append(f'- Students sampled: {total}' + (f' ({split}).' if split else '.'))
  reasons = {}
  for r in records:
    for reason in r.get('degenerate') or []:
      if reason is not None:
        reasons[reason] = reasons.get(reason, 0) + 1
  n_degenerate = sum(reasons.values())
  share = f' ({100 * n_degenerate / total:.1f}%)' if total else ''
  why = '; '.join(
    f'{n} x {reason}' for reason, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
  )
  lines.append(
    f'- Degenerate students (reward -1): {n_degenerate}{share}' + (f': {why}.' if why else '.')
  )
  shared = [s for s, rs in stages.items() if any(r.get('shared_program') for r in rs)]
  if 1 in shared:
    lines.append(
      "- Stage 1 trained its students inside the teacher's compiled programs where "
      'they fit, removed layers switched off (runtime.share_stage1_programs): the '
      'same results as on their own programs up to floating-point rounding, except '
      'for dropout masks.'
    )
  if 2 in shared:
    lines.append(
      "- Stage 2 trained its students inside their source's compiled program "
      '(runtime.share_stage2_program): the same results as on their own programs '
      'up to floating-point rounding, except for dropout masks.'
    )
  best = ', '.join(f'stage {s} {max(r["best_reward"] for r in rs):.4f}' for s, rs in stages.items())
  if best:
    lines.append(f'- Best reward: {best}.')
  student = summary.get('student') or {}
  if student.get('latency_ms') is not None:
    lines.append(
      f'- Student inference time: {student["latency_ms"]:.3g} ms per batch of '
      f'{student["latency_batch_size"]} (median of timed forward passes; see '
      'n2n_jax/latency.py).'
    )
  wall = summary.get('wall_seconds')
  parts = summary.get('time') or {}
  if wall is not None or parts:
    split = ', '.join(
      f'{name} {format_duration(t)}' + (f' ({100 * t / wall:.0f}%)' if wall else '')
      for name, t in parts.items()
      if t is not None
    )
    lines.append(f'- Wall time: {format_duration(wall)}' + (f' ({split}).' if split else '.'))
  return lines


def write_report(
  summary: dict, records: list[dict], path: str, plots: list[str] | None = None
) -> str:
  """Writes report.md: a table in the form of the paper's Table 1, the final
  student's test accuracy, lines on the run and links to the plots. With
  plots=None the plots are drawn next to the report first. Returns path."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  teacher, student = summary['teacher'], summary['student']
  pareto_students = summary.get('pareto', {}).get('students', ())
  if plots is None:
    plots = plot_search(records, os.path.join(directory, 'search'))
    plots.append(
      plot_accuracy_vs_params(
        records,
        teacher,
        student,
        os.path.join(directory, 'accuracy_vs_params.png'),
        pareto_students,
      )
    )

  t_params, t_val = teacher.get('params'), teacher.get('val_accuracy')
  name = teacher.get('name') or 'teacher'
  out = [
    f'# N2N compression of {name}',
    '',
    _table_row(['Architecture', 'Model', 'Acc.', '#Params', 'Δ Acc.', 'Compr.']),
    '|---|---|--:|--:|--:|--:|',
    _table_row([name, 'Teacher', format_accuracy(t_val), format_params(t_params), NA, NA]),
  ]
  for label, key in (
    ('Student (Stage1)', 'stage1_best'),
    ('Student (Stage1+Stage2)', 'stage2_best'),
  ):
    best = summary.get(key)
    if not best:  # stage 2 did not run: Table 1 leaves such rows out too
      continue
    acc = best.get('val_accuracy')
    out.append(
      _table_row(
        [
          '',
          label,
          format_accuracy(acc),
          format_params(best.get('params')),
          format_delta(acc, t_val),
          format_compression(_ratio(t_params, best.get('params'))),
        ]
      )
    )
  out += [
    '',
    'Acc. is validation accuracy: for students, as trained during the search '
    '(what the reward saw); Δ Acc. is in percentage points against the teacher; '
    'Compr. is teacher / student parameters.',
    '',
  ]

  out += [
    '## Final student',
    '',
    _table_row(['Model', 'Val. acc.', 'Test acc.', '#Params', 'FLOPs', 'Δ Test acc.', 'Compr.']),
    '|---|--:|--:|--:|--:|--:|--:|',
  ]
  t_test = teacher.get('test_accuracy')
  for label, d in (('Teacher', teacher), ('Student', student)):
    is_student = d is student
    ratio = summary.get('compression') or _ratio(t_params, d.get('params'))
    out.append(
      _table_row(
        [
          label,
          format_accuracy(d.get('val_accuracy')),
          format_accuracy(d.get('test_accuracy')),
          f'{d["params"]:,}' if d.get('params') is not None else NA,
          format_params(d['flops']) if d.get('flops') is not None else NA,
          format_delta(d.get('test_accuracy'), t_test) if is_student else NA,
          format_compression(ratio) if is_student else NA,
        ]
      )
    )
  if pareto_students:
    size = summary['pareto']['front_size']
    out += [
      '',
      f'## Pareto set ({len(pareto_students)} of the {size} students no other beat '
      'on both size and accuracy)',
      '',
      _table_row(
        [
          'Student',
          'Search val. acc.',
          'Val. acc.',
          'Test acc.',
          '#Params',
          'Δ Test acc.',
          'Compr.',
          'Folder',
        ]
      ),
      '|---|--:|--:|--:|--:|--:|--:|---|',
    ]
    for n, m in enumerate(pareto_students, 1):
      out.append(
        _table_row(
          [
            f'Pareto {n}',
            format_accuracy(m.get('search_val_accuracy')),
            format_accuracy(m.get('val_accuracy')),
            format_accuracy(m.get('test_accuracy')),
            f'{m["params"]:,}',
            format_delta(m.get('test_accuracy'), t_test),
            format_compression(m.get('compression')),
            f'`{m["directory"]}/`',
          ]
        )
      )
  out += ['', '## Run', ''] + _run_lines(summary, records) + ['', '## Plots', '']
  for plot in plots:
    rel = os.path.relpath(os.path.abspath(plot), directory)
    title = os.path.splitext(os.path.basename(plot))[0].replace('_', ' ')
    out.append(f'![{title}]({rel})')
    out.append('')

  return atomic.write_text(path, '\n'.join(out).rstrip('\n') + '\n')
