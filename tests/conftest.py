import collections
import importlib.util
import json
import pathlib
import shutil

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_config(name: str, variant: str = ''):
  """configs/NAME.py's get_config(), loaded the way the CLI loads it (by path);
  `variant` as in --config=configs/NAME.py:VARIANT."""
  path = ROOT / 'configs' / f'{name}.py'
  module_spec = importlib.util.spec_from_file_location(f'config_{name}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


# zoo.digits_cnn on 8x8x1 digits, by hand: convs 3x3 1->32, 32->32, 32->64,
# 64->64, 64->128 with biases, a batch norm (scale, bias) after each, three
# 2x2 pools to 1x1, and Dense(128 -> 10).
DIGITS_CNN_PARAMS = (
  (9 * 1 * 32 + 32)
  + (9 * 32 * 32 + 32)
  + (9 * 32 * 64 + 64)
  + (9 * 64 * 64 + 64)
  + (9 * 64 * 128 + 128)
  + 2 * (32 + 32 + 64 + 64 + 128)
  + (128 * 10 + 10)
)
assert DIGITS_CNN_PARAMS == 140_778


def quiet_config(name: str = 'digits', variant: str = ''):
  """A config from configs/, with the compilation cache and progress bars kept
  out of the user's home and the test log."""
  config = load_config(name, variant)
  config.runtime.compilation_cache_dir = ''
  config.runtime.progress = False
  return config


@pytest.fixture(scope='session', autouse=True)
def private_config_home(tmp_path_factory):
  """XDG_CONFIG_HOME in a temporary folder for the whole run (child processes
  too), so the program store's key (program_store.key_file) is made there and
  never in the user's home."""
  with pytest.MonkeyPatch.context() as patch:
    path = tmp_path_factory.mktemp('config_home')
    patch.setenv('XDG_CONFIG_HOME', str(path))
    yield path


@pytest.fixture
def as_a_user(tmp_path, monkeypatch):
  """For code run the way a user runs it (README and docs examples): the
  current folder and the caches in tmp_path. Such code turns JAX's
  persistent compilation cache on for the whole process; it is turned back
  off afterwards, so that later tests compile (and store programs) as if it
  had never run."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top

  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
  before = jax.config.jax_compilation_cache_dir
  yield tmp_path
  jax.config.update('jax_compilation_cache_dir', before)
  compilation_cache.reset_cache()


@pytest.fixture
def config_factory():
  return quiet_config


def tiny_search(config):
  """A complete compress run on a tiny budget (seconds, not minutes)."""
  config.mode = 'compress'
  config.data.max_train_examples = 256
  config.teacher.epochs = 3
  config.search.stage1_iterations = 2
  config.search.stage2_iterations = 2
  config.search.rollouts = 2
  config.distill.epochs = 1
  config.final.epochs = 2
  return config


@pytest.fixture(scope='session')
def teacher_dir(tmp_path_factory):
  """A tiny digits teacher trained once; copy it into a workdir with
  `workdir_with_teacher`."""
  from n2n_jax import experiment  # pylint: disable=g-import-not-at-top

  config = tiny_search(quiet_config('digits'))
  config.mode = 'teacher'
  path = tmp_path_factory.mktemp('teacher')
  experiment.run(config, str(path))
  return path


def workdir_with_teacher(teacher_dir, path):
  shutil.copytree(teacher_dir, path)
  return str(path)


# A whole compress job from the command line in seconds (with
# --config=configs/digits.py): a 2-conv teacher and small policies keep
# compiling short (it dominates such a run).
TINY_RUN = [
  '--config.mode=compress',
  '--config.data.max_train_examples=256',
  '--config.teacher.epochs=1',
  '--config.search.stage1_iterations=1',
  '--config.search.stage2_iterations=1',
  '--config.search.rollouts=2',
  '--config.distill.epochs=1',
  '--config.final.epochs=1',
  '--config.policy.num_layers=1',
  '--config.policy.removal_hidden=8',
  '--config.policy.shrink_hidden=8',
  '--config.runtime.progress=False',
]
TINY_TEACHER = {
  'name': 'tiny',
  'input_shape': [8, 8, 1],
  'layers': [
    {'type': 'Conv', 'filters': 8, 'kernel': 3, 'stride': 1, 'padding': 1, 'use_bias': True},
    {'type': 'ReLU'},
    {'type': 'Conv', 'filters': 8, 'kernel': 3, 'stride': 1, 'padding': 1, 'use_bias': True},
    {'type': 'ReLU'},
    {'type': 'MaxPool', 'window': 2, 'stride': 2, 'padding': 0},
    {'type': 'Flatten'},
    {'type': 'Dense', 'features': 10, 'use_bias': True},
  ],
}


def tiny_run_flags(folder) -> list:
  """TINY_RUN with TINY_TEACHER written to FOLDER/tiny.json as the teacher."""
  path = pathlib.Path(folder) / 'tiny.json'
  path.write_text(json.dumps(TINY_TEACHER))
  return [*TINY_RUN, f'--config.teacher.spec_file={path}']


def run_records(workdir):
  """A finished run's metrics.jsonl records, without their timings."""
  with open(pathlib.Path(workdir) / 'metrics.jsonl') as f:
    return without_timing(json.loads(line) for line in f)


@pytest.fixture
def compiled_specs():
  """The specs Evaluator compiles programs for, in order, from an empty
  in-memory program cache."""
  from n2n_jax import program_cache  # pylint: disable=g-import-not-at-top

  program_cache.SHARED.clear()
  return SpecLog(program_cache.SHARED.built)


class SpecLog:
  """A live view of a ProgramCache's `built` log as the list of specs it
  built programs for; clear() clears the log."""

  def __init__(self, built: list):
    self._built = built

  def _specs(self) -> list:
    return [b.spec for b in self._built]

  def __eq__(self, other):
    return self._specs() == list(other)

  def __len__(self):
    return len(self._built)

  def __getitem__(self, index):
    return self._specs()[index]

  def __iter__(self):
    return iter(self._specs())

  def __repr__(self):
    return repr(self._specs())

  def clear(self) -> None:
    self._built.clear()


def best_recorded(records) -> dict:
  """The answer by the README's rule, from metrics.jsonl alone: the highest
  reward over both stages among students that are neither degenerate nor
  constraint-breaking, the earliest (stage, iteration, rollout) on a tie."""
  best = None
  for r in records:
    for j, reward in enumerate(r['rewards']):
      if r['degenerate'][j] is None and not r['violations'][j] and r['params'][j]:
        if best is None or reward > best['reward']:
          best = {
            'reward': reward,
            'stage': r['stage'],
            'iteration': r['iteration'],
            'spec_text': r['specs'][j],
            'params': r['params'][j],
            'val_accuracy': r['accuracies'][j],
          }
  return best


def without_timing(records):
  return [{k: v for k, v in r.items() if k != 'seconds'} for r in records]


# Fuzz tests (tests/test_fuzz.py) count every case they try here, by target and
# outcome, and the summary at the end of the run prints the totals, so a run
# shows how much was tried and not only that nothing failed.
_FUZZ_CASES = collections.defaultdict(collections.Counter)


@pytest.fixture(scope='session')
def fuzz_cases():
  """{target: Counter(outcome -> cases)}; add one per case tried."""
  return _FUZZ_CASES


def pytest_terminal_summary(terminalreporter):
  if not _FUZZ_CASES:
    return
  parts = []
  for target, outcomes in _FUZZ_CASES.items():
    detail = ', '.join(f'{n} {outcome}' for outcome, n in outcomes.most_common())
    parts.append(f'{target} {sum(outcomes.values())} cases ({detail})')
  terminalreporter.write_line('fuzzed: ' + '; '.join(parts))
