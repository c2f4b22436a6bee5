"""Kill anywhere, lose at most one iteration: SIGKILL a small compress job at
random moments (some of them while orbax is writing a checkpoint), rerun the
same command until it finishes, and check that its result equals an
uninterrupted run's exactly.

  python benchmarks/kill_resume.py --kills 20 [--seed S] [--workroot DIR] [--json]

First an uninterrupted run of the job (the CLI in a subprocess, digits config
with a tiny budget, see JOB_OVERRIDES) gives the reference result, duration and
checkpoint writes; it uses its own persistent compilation cache, filled by one
more uninterrupted run before it if empty (that run's result must be the same).
Then each trial takes a fresh workdir and runs the same command 2-4 times with
a SIGKILL each, then once more to the end. Each kill is drawn when its run
starts (draw_kill): half of them at a moment uniform over the run's expected
duration (the reference's for a fresh workdir, startup plus what is left after
the saved search step for a resumed one), half the instant the orbax temporary
folder of a checkpoint write still ahead appears (teacher progress, teacher,
a search step, the exported student; writes not yet cut in the session first).
A kill counts if SIGKILL ended the process, and as "during a checkpoint write"
if a temporary folder the run created outlived it. The finished run's
summary.json (timings aside), metrics.jsonl (the 'seconds' of each record
aside) and student/spec.json must equal the reference's, and no run may start
from a search step older than the latest saved one.

Prints a line per run and per trial, then one JSON line with the figures. Exit
status: 0 if every trial matched, 1 on a mismatch or a run that failed by
itself, 3 if fewer kills landed than asked for within --max-seconds.
tests/test_kill_resume.py runs a few kills of the same harness in CI.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The smallest job that still goes through every phase: teacher training and
# saving, both search stages with a checkpoint per iteration, final training
# and export.
JOB_OVERRIDES = (
  '--config.data.max_train_examples=256',
  '--config.teacher.epochs=3',
  '--config.search.stage1_iterations=3',
  '--config.search.stage2_iterations=2',
  '--config.search.rollouts=2',
  '--config.distill.epochs=1',
  '--config.final.epochs=2',
  '--config.runtime.progress=False',
)


def job_overrides() -> tuple[str, ...]:
  """JOB_OVERRIDES, plus teacher progress saved after every epoch, so that
  teacher training has checkpoints to hit too."""
  return JOB_OVERRIDES + ('--config.runtime.teacher_checkpoint_seconds=0',)


TMP_MARK = 'orbax-checkpoint-tmp'
# Fields that measure time, which no two runs share.
SUMMARY_TIMING = ('wall_seconds', 'time')
RECORD_TIMING = ('seconds',)
# Orbax's writes here last from ~50 ms (the student) to ~0.8 s (a search step).
POLL_SECONDS = 0.002
KILLED = -signal.SIGKILL  # Popen.returncode of a process that SIGKILL ended


def job_command(
  workdir: str, cache_dir: str, overrides=JOB_OVERRIDES, config: str = 'configs/digits.py'
) -> list[str]:
  return [
    sys.executable,
    '-m',
    'n2n_jax.main',
    f'--config={config}',
    f'--workdir={workdir}',
    *overrides,
    f'--config.runtime.compilation_cache_dir={cache_dir}',
  ]


# ---- what a finished run leaves that must not depend on interruptions


def comparable(workdir: str) -> dict:
  """summary.json, metrics.jsonl and student/spec.json of a finished run, with
  timing fields removed. Read directly (not through n2n_jax) so that a damaged
  file shows up here rather than being repaired on the way."""
  with open(os.path.join(workdir, 'summary.json'), encoding='utf-8') as f:
    summary = json.load(f)
  for k in SUMMARY_TIMING:
    summary.pop(k, None)
  records = []
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    for line in f:
      record = json.loads(line)
      records.append({k: v for k, v in record.items() if k not in RECORD_TIMING})
  with open(os.path.join(workdir, 'student', 'spec.json'), encoding='utf-8') as f:
    student = json.load(f)
  return {'summary': summary, 'metrics': records, 'student': student}


# What the brief names first; the rest of summary.json is compared too.
KEY_FIELDS = (
  ('student', 'spec'),
  ('student', 'params'),
  ('student', 'val_accuracy'),
  ('student', 'test_accuracy'),
  ('teacher', 'val_accuracy'),
  ('teacher', 'test_accuracy'),
)


def differences(reference: dict, got: dict) -> list[str]:
  """Human-readable differences between two `comparable` results; [] if equal."""
  out = []
  rs, gs = reference['summary'], got['summary']
  for path in KEY_FIELDS:
    r, g = rs, gs
    for k in path:
      r, g = (r or {}).get(k), (g or {}).get(k)
    if r != g:
      out.append(f'summary {".".join(path)}: reference {_short(r)}, got {_short(g)}')
  for k in sorted(set(rs) | set(gs)):
    if rs.get(k) != gs.get(k) and k not in ('student', 'teacher'):
      out.append(f'summary {k}: reference {_short(rs.get(k))}, got {_short(gs.get(k))}')
  for k in ('student', 'teacher'):
    r, g = rs.get(k) or {}, gs.get(k) or {}
    for field in sorted(set(r) | set(g)):
      if r.get(field) != g.get(field) and (k, field) not in KEY_FIELDS:
        out.append(
          f'summary {k}.{field}: reference {_short(r.get(field))}, got {_short(g.get(field))}'
        )
  rm, gm = reference['metrics'], got['metrics']
  if len(rm) != len(gm):
    out.append(f'metrics.jsonl: reference has {len(rm)} records, got {len(gm)}')
  for i, (r, g) in enumerate(zip(rm, gm)):
    if r != g:
      keys = sorted(k for k in set(r) | set(g) if r.get(k) != g.get(k))
      out.append(
        f'metrics.jsonl record {i + 1} (stage {r.get("stage")} iteration '
        f'{r.get("iteration")}) differs in {keys}'
      )
  if reference['student'] != got['student']:
    out.append('student/spec.json differs')
  return out


def _short(x, n=120) -> str:
  text = json.dumps(x, sort_keys=True)
  return text if len(text) <= n else text[:n] + '...'


# ---- watching a workdir for checkpoint writes


def temporary_folders(workdir: str) -> dict[str, tuple[int, int]]:
  """Orbax temporary folders in workdir and its immediate subfolders, as
  {relative path: (inode, mtime in ns)}: search and teacher-progress steps
  (SUBDIR/N.orbax-checkpoint-tmp), teacher and student variables
  (NAME.orbax-checkpoint-tmp beside their final folder). Orbax 0.12 names them
  without a timestamp, so a rerun writing the same step recreates a folder of
  the same name as a killed run's leftover: (inode, mtime) tells them apart."""
  found = {}

  def add(name, entry):
    try:
      st = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
      return
    found[name] = (st.st_ino, st.st_mtime_ns)

  try:
    top = list(os.scandir(workdir))
  except FileNotFoundError:
    return found
  for entry in top:
    if TMP_MARK in entry.name:
      add(entry.name, entry)
    elif entry.is_dir(follow_symlinks=False) and entry.name != 'tensorboard':
      try:
        for e in os.scandir(entry.path):
          if TMP_MARK in e.name:
            add(os.path.join(entry.name, e.name), e)
      except FileNotFoundError:
        pass
  return found


def new_folders(now: dict, before: dict) -> set[str]:
  """Temporary folders in `now` that are not the untouched leftovers in `before`."""
  return {name for name, ident in now.items() if before.get(name) != ident}


def location(tmp: str) -> str:
  """Which write a temporary folder belongs to: its subfolder, or for a
  top-level one the folder it becomes (teacher_checkpoint)."""
  head = tmp.split(os.sep)[0]
  return head.split('.' + TMP_MARK)[0] if TMP_MARK in head else head


def write_key(tmp: str) -> tuple[str, str]:
  """(location, what): ('search_checkpoints', '3') for step 3's write,
  ('teacher_checkpoint', '') for the teacher's variables, ('.student.partial',
  'variables') for the exported student's (written beside student/, atomic.py)."""
  head, _, rest = tmp.partition(os.sep)
  if not rest:
    return location(tmp), ''
  return head, rest.split('.' + TMP_MARK)[0]


def latest_step(workdir: str, subdir: str = 'search_checkpoints') -> int:
  try:
    steps = [int(n) for n in os.listdir(os.path.join(workdir, subdir)) if n.isdigit()]
  except FileNotFoundError:
    return 0
  return max(steps, default=0)


def latest_search_step(workdir: str) -> int:
  return latest_step(workdir)


def writes_ahead(reference_writes, workdir: str) -> list[tuple[str, str]]:
  """The checkpoint writes (write_key) of the reference run that a run started
  now on `workdir` still has to make."""
  teacher_done = os.path.exists(os.path.join(workdir, 'teacher.json'))
  ahead = []
  for name, _, _ in reference_writes:
    where, what = write_key(name)
    if where in ('teacher_progress', 'teacher_checkpoint') and teacher_done:
      continue
    if what.isdigit() and int(what) <= latest_step(workdir, where):
      continue
    ahead.append((where, what))
  return ahead


# ---- one run of the job, killed or not


@dataclasses.dataclass
class Kill:
  """When to kill a run: `mode` 'random' kills `delay` seconds after the start;
  'checkpoint' kills the instant the orbax temporary folder of the write
  `target` (a write_key) appears."""

  mode: str
  delay: float = 0.0
  target: tuple[str, str] | None = None

  def describe(self) -> str:
    if self.mode == 'random':
      return f'random kill at {self.delay:.2f} s'
    return f'kill on the write of {"/".join(x for x in self.target if x)}'


@dataclasses.dataclass
class Run:
  kill: Kill | None
  returncode: int | None = None
  seconds: float = 0.0
  landed: bool = False  # SIGKILL ended it (not a kill sent after it had exited)
  during_write: list[str] = dataclasses.field(default_factory=list)  # locations cut mid-write
  cut: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # their write_keys
  writes: list[tuple[str, float, float]] = dataclasses.field(default_factory=list)
  step_before: int = 0  # latest finalised search step when the run started
  step_after: int = 0  # ... when it ended
  first_step_written: int | None = None  # first search step it began to write
  log: str = ''

  @property
  def failed(self) -> bool:
    return not self.landed and self.returncode != 0


def run_job(
  command: list[str], workdir: str, kill: Kill | None, log_path: str, timeout: float
) -> Run:
  """Run `command` once, watching `workdir` for checkpoint writes, and
  SIGKILL it as `kill` says (None: let it finish, or kill it at `timeout`)."""
  result = Run(kill, step_before=latest_search_step(workdir), log=log_path)
  before = temporary_folders(workdir)  # leftovers of earlier kills
  seen: dict[str, list[float]] = {}  # tmp folder -> [first seen, last seen]
  with open(log_path, 'w', encoding='utf-8') as log:
    start = time.monotonic()
    # Its own session, so that the kill reaches anything it started too.
    proc = subprocess.Popen(
      command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    fire_at = start + (kill.delay if kill and kill.mode == 'random' else timeout)
    killed_on = None
    while proc.poll() is None:
      now = time.monotonic()
      current = new_folders(temporary_folders(workdir), before)
      for name in current:
        seen.setdefault(name, [now - start, now - start])[1] = now - start
      if kill is None or kill.mode == 'random':
        fire = now >= fire_at
      else:  # the targeted write is in progress
        fire = any(write_key(n) == tuple(kill.target) for n in current)
      if fire or now >= start + timeout:
        try:
          os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
        killed_on = now
        break
      time.sleep(POLL_SECONDS)
    proc.wait()
    result.seconds = time.monotonic() - start
  timed_out = killed_on is not None and killed_on >= start + timeout
  result.returncode = 'timeout' if timed_out else proc.returncode
  # A kill sent just after the process exited by itself leaves its own exit status.
  result.landed = kill is not None and not timed_out and proc.returncode == KILLED
  # A folder created by this run that is still there after the process died
  # is a write the kill cut short: orbax renames it away when a write completes.
  after = new_folders(temporary_folders(workdir), before)
  if result.landed:
    result.during_write = sorted(location(n) for n in after)
    result.cut = sorted(write_key(n) for n in after)
  result.writes = sorted(((n, t0, t1) for n, (t0, t1) in seen.items()), key=lambda w: w[1])
  result.step_after = latest_search_step(workdir)
  steps = [
    int(n.split(os.sep)[1].split('.')[0])
    for n, _, _ in result.writes
    if n.startswith('search_checkpoints' + os.sep)
  ]
  result.first_step_written = steps[0] if steps else None
  return result


# ---- the reference run and the trials


@dataclasses.dataclass
class Reference:
  result: dict
  seconds: float
  # When (s after start) each search step's write began: to aim later kills
  # at what is left of a resumed run.
  step_times: dict[int, float]
  startup: float  # until the first checkpoint write began
  writes: list


def reference_run(
  workroot: str,
  cache_dir: str,
  overrides=JOB_OVERRIDES,
  timeout: float = 1800.0,
  warm_up: bool = True,
  say=print,
) -> Reference:
  """The uninterrupted run. With `warm_up` and an empty compilation cache, one
  more uninterrupted run first fills the cache (and must give the same result)."""
  workdir = os.path.join(workroot, 'reference')
  command = job_command(workdir, cache_dir, overrides)
  if warm_up and (not os.path.isdir(cache_dir) or not os.listdir(cache_dir)):
    # A cold cache would make the reference slow and the kill moments drawn
    # from its duration late: one warm-up run compiles everything first.
    say('warming the compilation cache with one uninterrupted run')
    warm = run_job(
      job_command(os.path.join(workroot, 'warmup'), cache_dir, overrides),
      os.path.join(workroot, 'warmup'),
      None,
      os.path.join(workroot, 'warmup.log'),
      timeout,
    )
    if warm.returncode != 0:
      raise RuntimeError(
        f'the warm-up run failed (exit {warm.returncode}); {warm.log} ends:\n' + log_tail(warm.log)
      )
  run = run_job(command, workdir, None, os.path.join(workroot, 'reference.log'), timeout)
  if run.returncode != 0:
    raise RuntimeError(
      f'the reference run failed (exit {run.returncode}); {run.log} ends:\n' + log_tail(run.log)
    )
  result = comparable(workdir)
  if os.path.isdir(os.path.join(workroot, 'warmup')):
    # Two uninterrupted runs, compiled and from the cache, must agree before
    # any difference can be blamed on a kill.
    diff = differences(result, comparable(os.path.join(workroot, 'warmup')))
    if diff:
      raise RuntimeError(
        'two uninterrupted runs differ, so kills cannot be judged:\n  ' + '\n  '.join(diff)
      )
  step_times = {}
  for name, t0, _ in run.writes:
    if name.startswith('search_checkpoints' + os.sep):
      step_times[int(name.split(os.sep)[1].split('.')[0])] = t0
  startup = min((t0 for _, t0, _ in run.writes), default=run.seconds / 4)
  return Reference(result, run.seconds, step_times, startup, run.writes)


def remaining_seconds(ref: Reference, workdir: str) -> float:
  """Roughly how long a run started now on `workdir` takes: startup plus what
  the reference still had to do after the latest saved search step."""
  step = latest_search_step(workdir)
  if not step or step not in ref.step_times:
    return ref.seconds
  return min(ref.seconds, ref.startup + ref.seconds - ref.step_times[step])


def draw_kill(
  rng: random.Random, ref: Reference, workdir: str, checkpoint_share: float, hit: set | None = None
) -> Kill:
  """With probability `checkpoint_share`, a kill during one of the checkpoint
  writes the run about to start still has to make (teacher progress, teacher,
  each search step, the exported student), uniform over those not in `hit`
  (the writes already cut in this session) while any is left, so that a
  session covers them all. Otherwise a moment uniform over the run's expected
  duration: the whole reference run for a fresh workdir, startup plus the part
  after the saved step for a resumed one."""
  ahead = writes_ahead(ref.writes, workdir)
  if ahead and rng.random() < checkpoint_share:
    untried = [w for w in ahead if w not in (hit or ())]
    return Kill('checkpoint', target=rng.choice(untried or ahead))
  return Kill('random', rng.uniform(0.0, remaining_seconds(ref, workdir)))


@dataclasses.dataclass
class Trial:
  index: int
  runs: list[Run]
  mismatches: list[str]
  error: str | None = None  # a run failed by itself, or the result is unreadable

  @property
  def kills(self) -> int:
    return sum(r.landed for r in self.runs)


def run_trial(
  index: int,
  ref: Reference,
  workroot: str,
  cache_dir: str,
  kills: list,
  rng: random.Random,
  overrides=JOB_OVERRIDES,
  checkpoint_share: float = 0.5,
  say=print,
  hit: set | None = None,
) -> Trial:
  """One workdir: a run per entry of `kills` (ending early if one finishes
  before its kill), one more left to finish, and the comparison with the
  reference.
  `kills` holds Kill objects, functions of the runs so far returning one,
  or mode names ('random' / 'checkpoint' / None for either) drawn with
  draw_kill; the last two are resolved when their run starts. `hit` (see draw_kill)
  collects the checkpoint writes cut."""
  hit = set() if hit is None else hit
  workdir = os.path.join(workroot, f'trial{index:03d}')
  command = job_command(workdir, cache_dir, overrides)
  timeout = 5 * ref.seconds + 120
  trial = Trial(index, [], [])
  for n, planned in enumerate(list(kills) + ['finish']):
    if planned == 'finish':
      kill = None
    elif isinstance(planned, Kill):
      kill = planned
    elif callable(planned):
      kill = planned(trial.runs)
    else:
      kill = draw_kill(
        rng, ref, workdir, {'random': 0.0, 'checkpoint': 1.0}.get(planned, checkpoint_share), hit
      )
    run = run_job(command, workdir, kill, f'{workdir}.run{n}.log', timeout)
    trial.runs.append(run)
    hit.update(run.cut)
    say(_describe_run(index, n, run))
    if run.failed:
      trial.error = f'run {n} exited with {run.returncode} by itself; {run.log} ends:\n' + log_tail(
        run.log
      )
      return trial
    if not run.landed:  # it finished
      break
  # Lose at most one iteration: saved progress never goes back, and each run
  # starts with the step after the latest one saved when it started.
  for n, run in enumerate(trial.runs):
    if run.step_after < run.step_before:
      trial.mismatches.append(
        f'run {n}: the latest saved search step went back from '
        f'{run.step_before} to {run.step_after}'
      )
    if run.first_step_written not in (None, run.step_before + 1):
      trial.mismatches.append(
        f'run {n} started with search step {run.step_before} saved but wrote step '
        f'{run.first_step_written} first (expected {run.step_before + 1})'
      )
  try:
    got = comparable(workdir)
  except (OSError, ValueError) as e:
    trial.error = f'the finished run left unreadable results: {type(e).__name__}: {e}'
    return trial
  trial.mismatches += differences(ref.result, got)
  return trial


def log_tail(path: str, lines: int = 5) -> str:
  try:
    with open(path, encoding='utf-8', errors='replace') as f:
      return ''.join(f.readlines()[-lines:]).rstrip()
  except OSError:
    return ''


def _describe_run(trial: int, n: int, run: Run) -> str:
  what = 'finished' if run.returncode == 0 else f'exit {run.returncode}'
  if run.kill is not None:
    aim = run.kill.describe()
    if run.landed:
      what = f'{aim}: landed at {run.seconds:.2f} s'
      if run.during_write:
        what += f' during a write to {", ".join(run.during_write)}'
    else:
      what = f'{aim}: missed ({what} first)'
  steps = f'search steps saved {run.step_before}->{run.step_after}'
  return f'trial {trial} run {n}: {what} ({run.seconds:.1f} s, {steps})'


def machine() -> dict:
  return {
    'platform': platform.platform(),
    'machine': platform.machine(),
    'python': platform.python_version(),
    'cpus': os.cpu_count(),
    'load_average': [round(x, 2) for x in os.getloadavg()],
  }


def stress(
  kills: int,
  seed: int,
  workroot: str,
  *,
  max_seconds: float = 1800.0,
  overrides=None,
  checkpoint_share: float = 0.5,
  kills_per_trial=(2, 4),
  say=print,
) -> dict:
  """Trials until `kills` kills have landed (or `max_seconds` have passed);
  returns the figures. `overrides` default: job_overrides()."""
  start = time.monotonic()
  overrides = job_overrides() if overrides is None else tuple(overrides)
  os.makedirs(workroot, exist_ok=True)
  cache_dir = os.path.join(workroot, 'compilation_cache')
  rng = random.Random(seed)
  ref = reference_run(workroot, cache_dir, overrides, say=say)
  say(
    f'reference: {ref.seconds:.1f} s, student {ref.result["summary"]["student"]["params"]} '
    f'params, test accuracy {ref.result["summary"]["student"]["test_accuracy"]:.4f}; '
    f'checkpoint writes: '
    + ', '.join(f'{location(n)} {t1 - t0 + POLL_SECONDS:.3f} s' for n, t0, t1 in ref.writes)
  )
  trials, hit = [], set()
  while sum(t.kills for t in trials) < kills and time.monotonic() - start < max_seconds:
    left = kills - sum(t.kills for t in trials)
    plan = [None] * min(left, rng.randint(*kills_per_trial))
    trial = run_trial(
      len(trials),
      ref,
      workroot,
      cache_dir,
      plan,
      rng,
      overrides,
      checkpoint_share,
      say=say,
      hit=hit,
    )
    trials.append(trial)
    verdict = (
      'ERROR ' + trial.error
      if trial.error
      else (
        'MISMATCH\n  ' + '\n  '.join(trial.mismatches)
        if trial.mismatches
        else 'same result as the reference'
      )
    )
    say(f'trial {trial.index}: {trial.kills} kills, {verdict}')
  return figures(trials, ref, time.monotonic() - start, seed, workroot, overrides)


def figures(
  trials, ref: Reference, seconds: float, seed, workroot: str, overrides=JOB_OVERRIDES
) -> dict:
  runs = [r for t in trials for r in t.runs]
  landed = [r for r in runs if r.landed]
  by_location = {}
  for r in landed:
    for where in r.during_write:
      by_location[where] = by_location.get(where, 0) + 1
  return {
    'kills': len(landed),
    'kills_during_checkpoint_write': sum(bool(r.during_write) for r in landed),
    'kills_during_write_by_location': by_location,
    # Coverage: which of the reference run's checkpoint writes some kill cut.
    'writes_cut': sorted({'/'.join(x for x in k if x) for r in landed for k in r.cut}),
    'writes_in_reference': len(ref.writes),
    'random_kills': sum(r.kill.mode == 'random' for r in landed),
    'checkpoint_aimed_kills': sum(r.kill.mode == 'checkpoint' for r in landed),
    'missed_kills': sum(r.kill is not None and not r.landed for r in runs),
    'trials': len(trials),
    'runs': len(runs),
    'reruns': len(runs) - len(trials),
    'mismatches': sum(len(t.mismatches) for t in trials),
    'failures': sum(t.error is not None for t in trials),
    'leftover_tmp_folders': sum(
      len(temporary_folders(os.path.join(workroot, f'trial{t.index:03d}'))) for t in trials
    ),
    'reference_seconds': round(ref.seconds, 2),
    'seconds': round(seconds, 1),
    'seed': seed,
    'command': shlex.join(
      job_command('WORKDIR', os.path.join(workroot, 'compilation_cache'), overrides)
    ),
    'harness': shlex.join([sys.executable] + sys.argv),
    'machine': machine(),
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--kills', type=int, default=20, help='kills that must land')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument(
    '--workroot',
    default=None,
    help='folder for the workdirs and the compilation cache (default: a '
    'new temporary folder); a warm cache there is reused',
  )
  parser.add_argument(
    '--max-seconds', type=float, default=1800.0, help='start no trial after this long'
  )
  parser.add_argument(
    '--checkpoint-share', type=float, default=0.5, help='share of kills aimed at a checkpoint write'
  )
  parser.add_argument('--json', action='store_true', help='print only the JSON line')
  args = parser.parse_args(argv)
  workroot = args.workroot or tempfile.mkdtemp(prefix='n2n_kill_resume_')
  say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
  say(f'workroot {workroot}')
  result = stress(
    args.kills,
    args.seed,
    workroot,
    max_seconds=args.max_seconds,
    checkpoint_share=args.checkpoint_share,
    say=say,
  )
  say(
    f'{result["kills"]} kills ({result["kills_during_checkpoint_write"]} during checkpoint '
    f'writes) in {result["trials"]} trials, {result["mismatches"]} mismatches, '
    f'{result["failures"]} failed trials, {result["seconds"]:.0f} s'
  )
  print(json.dumps(result), flush=True)
  if result['mismatches'] or result['failures']:
    return 1
  return 0 if result['kills'] >= args.kills else 3


if __name__ == '__main__':
  sys.exit(main())
