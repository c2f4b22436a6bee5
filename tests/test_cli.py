"""The command line and the config checks that run before any work."""

import io
import json
import os
import subprocess
import sys

import pytest
from conftest import DIGITS_CNN_PARAMS
from conftest import ROOT
from conftest import run_records
from conftest import tiny_run_flags

from n2n_jax import config as config_lib
from n2n_jax import experiment
from n2n_jax import spec as S
from n2n_jax import zoo

# Paper's Table 1 teachers: exact parameter counts `describe` must print.
TABLE1_PARAMS = {
  'mnist_vgg13': 9_414_858,
  'cifar10_vgg19': 20_040_522,
  'cifar10_resnet18': 11_173_962,
  'cifar10_resnet34': 21_282_122,
  'cifar100_resnet18': 11_220_132,
  'cifar100_resnet34': 21_328_292,
  'caltech256_resnet18': 11_307_840,
  'svhn_resnet18': 11_173_962,
  'mnist_conv4': 131_978,
  'fashion_mnist_vgg13': 9_414_858,
  'digits': 140_778,
}


def run(config, workdir=None):
  out = io.StringIO()
  result = experiment.run(config, workdir, out=out)
  assert json.loads(out.getvalue()) == json.loads(json.dumps(result))
  return result


@pytest.mark.parametrize('name', sorted(TABLE1_PARAMS))
def test_describe_prints_exact_counts_without_data(config_factory, name):
  config = config_factory(name)
  config.mode = 'describe'
  result = run(config)
  assert result['params'] == TABLE1_PARAMS[name]
  assert result['flops'] > result['params']
  assert sum(layer['params'] for layer in result['layers']) == result['params']
  assert result['layers'][-1]['type'] == 'Dense'


def test_cli_describe_subprocess_exits_zero():
  proc = subprocess.run(
    [sys.executable, '-m', 'n2n_jax.main', '--config=configs/digits.py', '--config.mode=describe'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr
  assert json.loads(proc.stdout)['params'] == DIGITS_CNN_PARAMS


def test_cli_bad_value_exits_2_with_field_name(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'n2n_jax.main',
      '--config=configs/digits.py',
      '--config.search.rollouts=0',
      f'--workdir={tmp_path}',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2
  assert 'search.rollouts must be a positive integer' in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not os.listdir(tmp_path)  # failed before any work


@pytest.mark.parametrize(
  'field,value,message',
  [
    (
      'mode',
      'compress_all',
      "mode='compress_all' is not valid; choose one of compress, describe, teacher",
    ),
    ('teacher.name', 'vgg99', 'choose one of conv4, digits_cnn, vgg11'),
    ('teacher.epochs', -1, 'teacher.epochs must be a positive integer'),
    ('teacher.batch_size', 0, 'teacher.batch_size must be a positive integer'),
    ('teacher.learning_rate', 0.0, 'teacher.learning_rate must be a positive number'),
    ('teacher.optimizer', 'lion', 'choose one of sgd, adam, adamw'),
    ('data.validation_fraction', 1.5, 'data.validation_fraction'),
    ('data.validation_fraction', 0.0, 'data.validation_fraction'),
    ('data.source', 'imagenet', 'choose one of digits, idx, tfds'),
    ('runtime.epoch_mode', 'fast', 'choose one of auto, scan, loop'),
    ('runtime.compile_threads', -1, 'runtime.compile_threads must be an integer >= 0'),
    ('runtime.share_stage2_program', 'yes', 'choose one of auto, on, off'),
    ('runtime.share_stage1_programs', 'True', 'choose one of auto, on, off'),
    ('search.stage1_iterations', -1, 'search.stage1_iterations must be a non-negative integer'),
    ('search.reward', 'accuracy', 'choose one of n2n, naive'),
    ('policy.method', 'ppo', 'choose one of reinforce, actor_critic'),
    ('policy.baseline', 'none', 'choose one of ema, running_mean'),
    ('policy.shrink_actions', (0.0, 0.5), 'policy.shrink_actions must be factors in'),
    ('distill.epochs', 0, 'distill.epochs must be a positive integer'),
    ('final.batch_size', -4, 'final.batch_size must be a positive integer'),
    ('constraints.max_params', -1, 'constraints.max_params'),
    ('constraints.epsilon_schedule', 'cosine', 'choose one of poly, linear, hard'),
  ],
)
def test_invalid_values_name_the_field(config_factory, field, value, message):
  config = config_factory('digits')
  section, _, key = field.rpartition('.')
  (config[section] if section else config)[key] = value
  with pytest.raises(experiment.USER_ERRORS, match=message.replace('(', r'\(')):
    run(config, '/nonexistent/never/created')


def test_teacher_that_cannot_take_the_input_says_which_layer(config_factory):
  config = config_factory('digits')
  config.teacher.name = 'conv4'  # its 6x6 average pool cannot fit 8x8 digits
  with pytest.raises(config_lib.ConfigError, match=r'conv4.*\(8, 8, 1\).*layers\[14\].*collapsed'):
    run(config)


@pytest.mark.parametrize('mode', ['teacher', 'compress'])
def test_workdir_required_from_python(config_factory, mode):
  # The command line picks a default (below); a library call must say where.
  config = config_factory('digits')
  config.mode = mode
  with pytest.raises(config_lib.ConfigError, match='--workdir is required'):
    run(config)


def test_default_workdir_is_runs_and_the_config_name():
  from n2n_jax import main  # pylint: disable=g-import-not-at-top

  assert main.default_workdir('configs/mnist_vgg13.py') == os.path.join('runs', 'mnist_vgg13')
  assert main.default_workdir('/abs/configs/fashion_mnist_vgg13.py:reduced') == os.path.join(
    'runs', 'fashion_mnist_vgg13_reduced'
  )


@pytest.mark.slow
def test_the_command_as_written_runs_in_runs_config_name_and_resumes_there(tmp_path):
  """python -m n2n_jax.main --config=configs/NAME.py, no --workdir: the brief's
  command (here on the bundled digits, with a tiny budget)."""
  (tmp_path / 'configs').symlink_to(ROOT / 'configs')
  command = [
    sys.executable,
    '-m',
    'n2n_jax.main',
    '--config=configs/digits.py',
    *tiny_run_flags(tmp_path),
    '--config.runtime.compilation_cache_dir=',
  ]
  workdir = tmp_path / 'runs' / 'digits'
  first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-3000:]
  assert f'workdir: {os.path.join("runs", "digits")} ' in first.stderr
  summary = json.loads((workdir / 'summary.json').read_text())
  assert json.loads(first.stdout) == summary
  teacher = (workdir / 'teacher.json').read_text()
  records = run_records(workdir)

  again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  # The same workdir: the stored teacher and the finished search are reused.
  assert (workdir / 'teacher.json').read_text() == teacher
  assert run_records(workdir) == records
  assert json.loads(again.stdout)['student']['spec'] == summary['student']['spec']


def test_user_spec_file(config_factory, tmp_path):
  spec = S.NetSpec('mine', (8, 8, 1), (S.Conv(4, 3, 1, 1), S.ReLU(), S.Flatten(), S.Dense(10)))
  path = tmp_path / 'mine.json'
  path.write_text(S.to_json(spec))
  config = config_factory('digits')
  config.mode = 'describe'
  config.teacher.spec_file = str(path)
  result = run(config)
  assert (
    result['name'] == 'mine' and result['params'] == S.param_count(spec) == 2_610
  )  # 3*3*4+4 + 8*8*4*10+10

  bad = S.NetSpec('bad', (8, 8, 1), (S.Conv(4, 9), S.Flatten(), S.Dense(10)))
  path.write_text(S.to_json(bad))
  with pytest.raises(config_lib.ConfigError, match=r'layers\[0\] \(Conv\): spatial size collapsed'):
    run(config)
  path.write_text('{"input_shape": [8, 8, 1], "layers": [{"type": "Convolution"}]}')
  with pytest.raises(S.SpecError, match='unknown layer type .Convolution.; valid types'):
    run(config)
  config.teacher.spec_file = str(tmp_path / 'missing.json')
  with pytest.raises(config_lib.ConfigError, match='cannot read'):
    run(config)


def test_missing_idx_folder_names_path_and_remedy(config_factory, tmp_path):
  config = config_factory('fashion_mnist_vgg13')
  config.data.path = str(tmp_path / 'nowhere')
  with pytest.raises(experiment.USER_ERRORS, match='nowhere') as err:
    run(config, str(tmp_path / 'run'))
  assert 'apt-get install dataset-fashion-mnist' in str(err.value)
  config.mode = 'describe'  # the declared input shape stands in for the data
  # VGG-13 on 28x28x1, by hand: 3x3 convs 1-64-64, 64-128-128, 128-256-256,
  # 256-512-512, 512-512-512 with biases and batch norms, then Dense(512 -> 10).
  widths = [
    (1, 64),
    (64, 64),
    (64, 128),
    (128, 128),
    (128, 256),
    (256, 256),
    (256, 512),
    (512, 512),
    (512, 512),
    (512, 512),
  ]
  vgg13 = sum(9 * i * o + o + 2 * o for i, o in widths) + 512 * 10 + 10
  assert run(config)['params'] == vgg13 == 9_414_858


def test_every_zoo_name_is_listed_in_errors():
  with pytest.raises(KeyError) as err:
    zoo.get('alexnet', (32, 32, 3), 10)
  for name in zoo.NAMES:
    assert name in str(err.value)


def test_a_busy_workdir_is_refused(config_factory, tmp_path):
  from n2n_jax import workdir_lock

  config = config_factory('digits')
  config.mode = 'teacher'
  with workdir_lock.WorkdirLock(str(tmp_path)):
    with pytest.raises(workdir_lock.WorkdirBusy, match=f'in use by pid {os.getpid()}'):
      run(config, str(tmp_path))
  assert os.listdir(tmp_path) == [workdir_lock.LOCK_FILE]  # nothing was written


@pytest.mark.slow
@pytest.mark.parametrize(
  'args,message',
  [
    (['--config=configs/digits.py', '--config.teacher.nme=x'], 'Did you mean "name"'),
    (['--config=configs/nope.py'], "No such file or directory: 'configs/nope.py'"),
    (['--config.mode=describe'], '--config=configs/NAME.py is required'),
    (
      ['--config=configs/mnist_vgg13.py:tiny', '--config.mode=describe'],
      "unknown config variant 'tiny'; valid variants: reduced",
    ),
  ],
)
def test_bad_flags_end_with_one_clear_line(args, message):
  proc = subprocess.run(
    [sys.executable, '-m', 'n2n_jax.main'] + args,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2
  assert message in proc.stderr and 'Traceback' not in proc.stderr
