"""Report outputs from hand-made search records: metrics log (round trip, crash
tails, corruption), TensorBoard scalars read back from the event file, the
plots, report.md's Table 1 and the atomic summary.json."""

import glob
import json
import math
import os
import struct

import matplotlib.image
import numpy as np
import pytest

from n2n_jax import report

TEACHER_PARAMS = 1_000_000
TEACHER = {
  'name': 'vgg_small',
  'params': TEACHER_PARAMS,
  'val_accuracy': 0.9150,
  'test_accuracy': 0.9120,
}


def _record(stage, iteration, rollouts, baseline, policy_loss, best_before, seconds):
  """One policy iteration; rollouts are (student params, accuracy, reward) or
  (None, reason) for a degenerate student. Derived fields are computed the
  way the search computes them."""
  rec = {
    'stage': stage,
    'iteration': iteration,
    'rewards': [],
    'accuracies': [],
    'params': [],
    'compressions': [],
    'degenerate': [],
    'specs': [],
  }
  for i, rollout in enumerate(rollouts):
    if rollout[0] is None:
      rec['rewards'].append(-1.0)
      rec['accuracies'].append(0.0)
      rec['params'].append(0)
      rec['compressions'].append(0.0)
      rec['degenerate'].append(rollout[1])
      rec['specs'].append(f's{stage}i{iteration}r{i}: {rollout[1]}')
    else:
      params, acc, reward = rollout
      rec['rewards'].append(reward)
      rec['accuracies'].append(acc)
      rec['params'].append(params)
      rec['compressions'].append(TEACHER_PARAMS / params)
      rec['degenerate'].append(None)
      rec['specs'].append(f's{stage}i{iteration}r{i}: conv64-conv128-fc10 ({params})')
  rec['mean_reward'] = sum(rec['rewards']) / len(rec['rewards'])
  rec['baseline'] = baseline
  rec['policy_loss'] = policy_loss
  rec['best_reward'] = max([best_before] + rec['rewards'])
  rec['seconds'] = seconds
  return rec


def make_records():
  """2 stages x 4 iterations x 3 students; rewards rise as the policy learns."""
  empty = (None, 'no layer left before the classifier')
  s1 = [
    [(600_000, 0.905, 0.61), empty, (420_000, 0.880, 0.70)],
    [(300_000, 0.899, 0.89), (350_000, 0.902, 0.86), empty],
    [(150_000, 0.890, 0.94), (180_000, 0.897, 0.95), (200_000, 0.900, 0.94)],
    [(120_000, 0.893, 0.96), (100_000, 0.888, 0.96), (130_000, 0.895, 0.96)],
  ]
  s2 = [
    [(90_000, 0.885, 0.96), (None, 'feature map shrinks below 1x1'), (70_000, 0.870, 0.94)],
    [(75_000, 0.884, 0.97), (80_000, 0.886, 0.97), (85_000, 0.887, 0.96)],
    [(60_000, 0.878, 0.96), (65_000, 0.881, 0.97), (70_000, 0.883, 0.97)],
    [(62_000, 0.880, 0.97), (64_000, 0.882, 0.97), (66_000, 0.882, 0.97)],
  ]
  records = []
  for stage, its in ((1, s1), (2, s2)):
    best = -math.inf
    for i, rollouts in enumerate(its, start=1):
      rec = _record(
        stage,
        i,
        rollouts,
        baseline=0.5 + 0.1 * i,
        policy_loss=0.3 / i,
        best_before=best,
        seconds=40.0 + i,
      )
      best = rec['best_reward']
      records.append(rec)
  return records


def make_summary(with_stage2=True):
  student = {
    'params': 48_700 if with_stage2 else 81_300,
    'val_accuracy': 0.9108,
    'test_accuracy': 0.9078,
    'spec': {'name': 'vgg_small_student', 'layers': []},
    'flops': 12_345_678,
  }
  return {
    'teacher': dict(TEACHER),
    'student': student,
    'stage1_best': {'params': 81_300, 'val_accuracy': 0.9108, 'reward': 0.971},
    'stage2_best': (
      {'params': 48_700, 'val_accuracy': 0.9070, 'reward': 0.978} if with_stage2 else None
    ),
    'compression': TEACHER_PARAMS / 48_700 if with_stage2 else TEACHER_PARAMS / 81_300,
    'wall_seconds': 7384.0,
    'time': {'teacher': 1200.0, 'search': 5400.0, 'compile': 600.0, 'final': 184.0},
  }


@pytest.fixture
def records():
  return make_records()


# --- metrics.jsonl -------------------------------------------------------------------------------


def test_metrics_round_trip_one_line_per_record(tmp_path, records):
  writer = report.MetricsWriter(str(tmp_path))
  for rec in records:
    writer.append(rec)
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert len(lines) == 8 and all(json.loads(line)['stage'] in (1, 2) for line in lines)
  assert report.read_metrics(str(tmp_path)) == records
  # A resumed run appends to the same file.
  report.MetricsWriter(str(tmp_path)).append(records[0])
  assert report.read_metrics(str(tmp_path)) == records + records[:1]


def test_numpy_values_are_written_as_plain_json(tmp_path):
  writer = report.MetricsWriter(str(tmp_path))
  writer.append(
    {
      'stage': np.int64(1),
      'rewards': np.array([0.5, -1.0], np.float32),
      'mean_reward': np.float32(-0.25),
    }
  )
  back = report.read_metrics(str(tmp_path))[0]
  assert back == {'stage': 1, 'rewards': [0.5, -1.0], 'mean_reward': -0.25}
  with pytest.raises(TypeError, match='object'):
    writer.append({'x': object()})
  assert len(report.read_metrics(str(tmp_path))) == 1  # the failed record left no trace


def test_missing_metrics_file_reads_as_no_records(tmp_path):
  assert report.read_metrics(str(tmp_path)) == []


def _write_lines(path, records, tail=''):
  path.write_text(''.join(json.dumps(r) + '\n' for r in records) + tail)


def test_last_line_cut_mid_write_is_skipped_with_a_warning(tmp_path, records):
  cut = json.dumps(records[3])[:57]
  _write_lines(tmp_path / 'metrics.jsonl', records[:3], cut)
  with pytest.warns(UserWarning, match='line 4 is incomplete'):
    assert report.read_metrics(str(tmp_path)) == records[:3]
  # NULs where the filesystem grew the file but never wrote it count as a cut tail too.
  _write_lines(tmp_path / 'metrics.jsonl', records[:3], '\0' * 40)
  assert report.read_metrics(str(tmp_path)) == records[:3]


def test_resumed_writer_removes_a_cut_tail_before_appending(tmp_path, records):
  _write_lines(tmp_path / 'metrics.jsonl', records[:3], json.dumps(records[3])[:57])
  with pytest.warns(UserWarning, match='removing it'):
    writer = report.MetricsWriter(str(tmp_path))
  writer.append(records[3])
  assert report.read_metrics(str(tmp_path)) == records[:4]
  # A complete record whose newline was lost is kept, not glued to the next one.
  (tmp_path / 'metrics.jsonl').write_text(json.dumps(records[0]) + '\n' + json.dumps(records[1]))
  report.MetricsWriter(str(tmp_path)).append(records[2])
  assert report.read_metrics(str(tmp_path)) == records[:3]


def test_corrupted_middle_line_raises_naming_it(tmp_path, records):
  path = tmp_path / 'metrics.jsonl'
  lines = [json.dumps(r) for r in records]
  lines[2] = lines[2][:30] + '}'
  path.write_text('\n'.join(lines) + '\n')
  with pytest.raises(ValueError, match=r'metrics.jsonl line 3 is corrupted'):
    report.read_metrics(str(tmp_path))
  with pytest.raises(ValueError, match='line 3'):  # and a resumed run refuses to append
    report.MetricsWriter(str(tmp_path))
  lines[2] = '[1, 2]'  # valid JSON, but not a record
  path.write_text('\n'.join(lines) + '\n')
  with pytest.raises(ValueError, match='line 3 .*JSON object'):
    report.read_metrics(str(tmp_path))


# --- TensorBoard ---------------------------------------------------------------------------------


def _read_events(path):
  """Scalar events from a TFRecord event file, CRCs checked: {tag: [(step, value)]}."""
  from tensorboardX.proto import event_pb2
  from tensorboardX.record_writer import masked_crc32c

  data = open(path, 'rb').read()
  scalars, pos = {}, 0
  while pos < len(data):
    header = data[pos : pos + 8]
    (length,) = struct.unpack('<Q', header)
    assert struct.unpack('<I', data[pos + 8 : pos + 12])[0] == masked_crc32c(header)
    body = data[pos + 12 : pos + 12 + length]
    assert struct.unpack('<I', data[pos + 12 + length : pos + 16 + length])[0] == masked_crc32c(
      body
    )
    pos += 16 + length
    event = event_pb2.Event.FromString(body)
    for value in event.summary.value:
      scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_tensorboard_scalars_per_stage_at_global_steps(tmp_path, records):
  with report.TensorBoardWriter(str(tmp_path)) as writer:
    steps = [writer.append(rec) for rec in records]
  assert steps == list(range(8))
  files = glob.glob(str(tmp_path / 'tensorboard' / 'events.out.tfevents.*'))
  assert len(files) == 1
  scalars = _read_events(files[0])
  assert set(scalars) == {
    f'stage{s}/{name}' for s in (1, 2) for name in report.TensorBoardWriter.TAGS
  }
  assert [step for step, _ in scalars['stage1/mean_reward']] == [0, 1, 2, 3]
  assert [step for step, _ in scalars['stage2/mean_reward']] == [4, 5, 6, 7]
  np.testing.assert_allclose(
    [v for _, v in scalars['stage2/best_reward']],
    [r['best_reward'] for r in records[4:]],
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    [v for _, v in scalars['stage1/mean_reward']],
    [r['mean_reward'] for r in records[:4]],
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    [v for _, v in scalars['stage1/policy_loss']], [0.3, 0.15, 0.1, 0.075], rtol=1e-6
  )
  # Stage 1, iteration 1: the degenerate student is left out of accuracy and compression.
  _, acc = scalars['stage1/mean_accuracy'][0]
  _, compression = scalars['stage1/mean_compression'][0]
  assert acc == pytest.approx((0.905 + 0.880) / 2, rel=1e-6)
  assert compression == pytest.approx(((1 - 0.6) + (1 - 0.42)) / 2, rel=1e-6)


def test_tensorboard_resumes_at_a_given_step_and_skips_undefined_means(tmp_path, records):
  all_degenerate = dict(records[0], degenerate=['x'] * 3, compressions=[0.0] * 3)
  with report.TensorBoardWriter(str(tmp_path), first_step=5) as writer:
    assert writer.append(all_degenerate) == 5
    assert writer.append(records[1]) == 6
  scalars = _read_events(glob.glob(str(tmp_path / 'tensorboard' / 'events.*'))[0])
  assert [s for s, _ in scalars['stage1/mean_accuracy']] == [6]
  assert [s for s, _ in scalars['stage1/mean_reward']] == [5, 6]


# --- plots ---------------------------------------------------------------------------------------


def _check_png(path):
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert os.path.getsize(path) > 5_000
  image = matplotlib.image.imread(path)
  assert image.shape[0] > 300 and image.shape[1] > 500
  assert image[..., :3].std() > 0.05  # not a blank canvas


def _rollouts(stage):
  """make_records' inputs for one stage, by hand: (iteration, params or None,
  accuracy, reward) per rollout."""
  out = []
  for r in make_records():
    if r['stage'] == stage:
      for params, acc, reward, why in zip(
        r['params'], r['accuracies'], r['rewards'], r['degenerate']
      ):
        out.append((r['iteration'], params if why is None else None, acc, reward))
  return out


def _points(ax):
  """Every scattered point of an axes, as a set of rounded (x, y)."""
  return {
    (round(float(x), 9), round(float(y), 9)) for c in ax.collections for x, y in c.get_offsets()
  }


@pytest.mark.parametrize('stage', [1, 2])
def test_search_figure_plots_the_records_values(records, stage):
  ax = report.stage_figure(stage, [r for r in records if r['stage'] == stage]).axes[0]
  rollouts = _rollouts(stage)
  iterations = sorted({it for it, *_ in rollouts})
  valid = [(it, p, a, r) for it, p, a, r in rollouts if p is not None]
  expected = (
    {(it, r) for it, _, _, r in rollouts}  # rewards, -1 for degenerate ones
    | {(it, a) for it, _, a, _ in valid}
    | {(it, 1 - p / TEACHER_PARAMS) for it, p, _, _ in valid}
  )
  assert _points(ax) == {(round(float(x), 9), round(float(y), 9)) for x, y in expected}
  lines = {line.get_label(): line for line in ax.lines}
  by_iteration = lambda values: [
    np.mean([v for it2, v in values if it2 == it]) for it in iterations
  ]
  np.testing.assert_allclose(
    lines['reward (mean)'].get_xydata(),
    np.column_stack([iterations, by_iteration([(it, r) for it, _, _, r in rollouts])]),
  )
  np.testing.assert_allclose(
    lines['accuracy (mean)'].get_ydata(), by_iteration([(it, a) for it, _, a, _ in valid])
  )
  np.testing.assert_allclose(
    lines['compression C = 1 - student/teacher (mean)'].get_ydata(),
    by_iteration([(it, 1 - p / TEACHER_PARAMS) for it, p, _, _ in valid]),
  )
  best = np.maximum.accumulate(
    [max(r for it2, _, _, r in rollouts if it2 == it) for it in iterations]
  )
  np.testing.assert_allclose(lines['best reward so far'].get_ydata(), best)


def test_accuracy_vs_params_figure_plots_every_real_student(records):
  summary = make_summary()
  ax = report.accuracy_vs_params_figure(records, summary['teacher'], summary['student']).axes[0]
  students = [(p, 100 * a) for stage in (1, 2) for _, p, a, _ in _rollouts(stage) if p is not None]
  marked = {
    (TEACHER_PARAMS, 100 * TEACHER['val_accuracy']),
    (summary['student']['params'], 100 * summary['student']['val_accuracy']),
  }
  assert _points(ax) == {
    (round(float(x), 9), round(float(y), 9)) for x, y in set(students) | marked
  }
  (front,) = [l for l in ax.lines if l.get_label() == 'best accuracy at this size or less']
  by_size = sorted(students)
  np.testing.assert_allclose(front.get_xdata(), [p for p, _ in by_size])
  np.testing.assert_allclose(front.get_ydata(), np.maximum.accumulate([a for _, a in by_size]))


def test_search_plots_one_per_stage(tmp_path, records):
  paths = report.plot_search(records, str(tmp_path / 'plots' / 'search'))
  assert paths == [
    str(tmp_path / 'plots' / 'search_stage1.png'),
    str(tmp_path / 'plots' / 'search_stage2.png'),
  ]
  for path in paths:
    _check_png(path)
  only_stage1 = report.plot_search(records[:4], str(tmp_path / 'only'))
  assert only_stage1 == [str(tmp_path / 'only_stage1.png')]


def test_accuracy_vs_params_plot(tmp_path, records):
  summary = make_summary()
  path = report.plot_accuracy_vs_params(
    records, summary['teacher'], summary['student'], str(tmp_path / 'scatter.png')
  )
  assert path == str(tmp_path / 'scatter.png')
  _check_png(path)


def test_relative_compression_is_the_papers_c():
  np.testing.assert_allclose(report.relative_compression([4.0, 1.0, 0.0]), [0.75, 0.0, np.nan])


# --- report.md and summary.json ------------------------------------------------------------------


def test_number_formats_follow_table_1():
  assert [
    report.format_params(n) for n in (9_400_000, 11_170_000, 984_000, 73_000, 999_700, 1_234, 512)
  ] == ['9.4M', '11.17M', '984K', '73K', '1M', '1.2K', '512']
  assert [report.format_compression(r) for r in (127.2, 12.34, 5.263, 0.0, None)] == [
    '127x',
    '12.3x',
    '5.26x',
    '–',
    '–',
  ]
  assert report.format_delta(0.9512, 0.9554) == '-0.42%'
  assert report.format_delta(0.9955, 0.9954) == '+0.01%'
  assert report.format_delta(0.5, 0.5) == '+0.00%'
  assert report.format_duration(7384) == '2h 03m' and report.format_duration(75) == '1m 15s'


def test_report_has_table_1_rows_run_lines_and_plot_links(tmp_path, records):
  path = report.write_report(make_summary(), records, str(tmp_path / 'report.md'))
  text = open(path).read()
  assert '| Architecture | Model | Acc. | #Params | Δ Acc. | Compr. |' in text
  assert '| vgg_small | Teacher | 91.50% | 1M | – | – |' in text
  assert '|  | Student (Stage1) | 91.08% | 81K | -0.42% | 12.3x |' in text
  assert '|  | Student (Stage1+Stage2) | 90.70% | 49K | -0.80% | 20.5x |' in text
  assert '| Student | 91.08% | 90.78% | 48,700 | 12.35M | -0.42% | 20.5x |' in text
  assert '- Policy iterations: 4 in stage 1, 4 in stage 2.' in text
  assert '- Students sampled: 24 (12 in stage 1 + 12 in stage 2).' in text
  assert (
    '- Degenerate students (reward -1): 3 (12.5%): 2 x no layer left before the '
    'classifier; 1 x feature map shrinks below 1x1.'
  ) in text
  assert (
    '- Wall time: 2h 03m (teacher 20m 00s (16%), search 1h 30m (73%), '
    'compile 10m 00s (8%), final 3m 04s (2%)).'
  ) in text
  for name in ('search_stage1.png', 'search_stage2.png', 'accuracy_vs_params.png'):
    assert f']({name})' in text
    _check_png(tmp_path / name)


def test_report_without_stage2_leaves_its_row_out(tmp_path, records):
  text = open(
    report.write_report(make_summary(with_stage2=False), records[:4], str(tmp_path / 'report.md'))
  ).read()
  assert 'Student (Stage1) |' in text and 'Stage1+Stage2' not in text
  assert '- Policy iterations: 4 in stage 1.' in text
  assert not os.path.exists(tmp_path / 'search_stage2.png')


def test_summary_is_written_atomically(tmp_path):
  summary = make_summary()
  path = report.write_summary(summary, str(tmp_path))
  assert path == str(tmp_path / 'summary.json')
  assert report.read_summary(str(tmp_path)) == summary
  # A summary that cannot be serialised leaves the old file whole and no temp file.
  with pytest.raises(TypeError):
    report.write_summary(dict(summary, bad=object()), str(tmp_path))
  assert report.read_summary(str(tmp_path)) == summary
  assert os.listdir(tmp_path) == ['summary.json']
  report.write_summary(dict(summary, wall_seconds=np.float64(1.5)), str(tmp_path))
  assert report.read_summary(str(tmp_path))['wall_seconds'] == 1.5
  assert os.listdir(tmp_path) == ['summary.json']
