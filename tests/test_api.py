"""n2n_jax.compress, the one-call Python API, with every kind of teacher and
data it takes; data.from_arrays' checks; config overrides; docs/library.md's
examples, executed."""

import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import ROOT
from sklearn.datasets import load_digits

import n2n_jax
from n2n_jax import api
from n2n_jax import config as config_lib
from n2n_jax import data as data_lib
from n2n_jax import models
from n2n_jax import report
from n2n_jax import search
from n2n_jax import spec as S
from n2n_jax import teacher as teacher_lib

# A whole compress call in seconds: one iteration per stage of two students.
TINY = {
  'teacher.epochs': 2,
  'search.stage1_iterations': 1,
  'search.stage2_iterations': 1,
  'search.rollouts': 2,
  'distill.epochs': 1,
  'distill.max_train_examples': 256,
  'final.epochs': 1,
  'policy.num_layers': 1,
  'policy.removal_hidden': 8,
  'policy.shrink_hidden': 8,
  'runtime.progress': False,
  'runtime.compilation_cache_dir': '',
}
SMALL = S.NetSpec(
  'small',
  (8, 8, 1),
  (
    S.Conv(8, 3, 1, 1),
    S.BatchNorm(),
    S.ReLU(),
    S.Conv(8, 3, 1, 1),
    S.ReLU(),
    S.MaxPool(2, 2),
    S.Flatten(),
    S.Dense(10),
  ),
)


def digits_arrays():
  """scikit-learn's digits as plain arrays, ink in [0, 1], split by hand."""
  digits = load_digits()
  x, y = digits.images[..., None].astype(np.float32) / 16.0, digits.target
  return {
    'train': (x[:1300], y[:1300]),
    'val': (x[1300:1450], y[1300:1450]),
    'test': (x[1450:], y[1450:]),
  }


def accuracy(model, variables, images, labels):
  logits = model.apply(variables, images, train=False)
  return float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))


# ---- data.from_arrays


def test_from_arrays_normalises_with_training_statistics():
  arrays = digits_arrays()
  ds = data_lib.from_arrays(train=arrays['train'], test=arrays['test'])
  # 10 % of the 1,300 training images held out.
  assert (ds.train_images.shape, ds.val_images.shape, ds.test_images.shape) == (
    (1170, 8, 8, 1),
    (130, 8, 8, 1),
    (347, 8, 8, 1),
  )
  assert ds.num_classes == 10 and ds.input_shape == (8, 8, 1)
  # Standardised with the statistics of the 1,170 images it trains on.
  np.testing.assert_allclose(np.asarray(ds.train_images).mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ds.train_images).std(), 1.0, atol=1e-5)
  np.testing.assert_allclose(
    np.asarray(ds.test_images), (arrays['test'][0] - ds.mean[0]) / ds.std[0], rtol=1e-5, atol=1e-6
  )
  raw = data_lib.from_arrays(**arrays, normalize=False)
  np.testing.assert_array_equal(np.asarray(raw.test_images), arrays['test'][0])
  np.testing.assert_array_equal(np.asarray(raw.val_labels), arrays['val'][1])
  assert data_lib.fingerprint(raw) == data_lib.fingerprint(
    data_lib.from_arrays(**arrays, normalize=False)
  )
  assert data_lib.fingerprint(raw) != data_lib.fingerprint(ds)


X, Y = np.zeros((20, 8, 8, 1), np.float32), np.arange(20) % 4


@pytest.mark.parametrize(
  'train,test,message',
  [
    ((X, Y[:5]), (X, Y), r'train labels must be one per image \(20\), got shape \(5,\)'),
    ((X[..., 0, 0], Y), (X, Y), r'train images must be N x H x W x C'),
    ((np.where(X == 0, np.nan, X), Y), (X, Y), 'train images hold NaN'),
    ((X, Y - 1), (X, Y), 'train labels must be integers >= 0'),
    ((X, Y + 0.5), (X, Y), 'train labels must be integers'),
    ((X, Y), (X[:, :4], Y), 'differ in shape'),
    ((X, Y), X, 'test must be an .images, labels. pair'),
    ((X.astype(str), Y), (X, Y), 'train images must be numbers'),
    ((X, Y * 0), (X, Y * 0), 'num_classes >= 2'),
  ],
)
def test_bad_arrays_get_one_line_errors(train, test, message):
  with pytest.raises(data_lib.DataError, match=message) as info:
    data_lib.from_arrays(train=train, test=test)
  assert '\n' not in str(info.value)


def test_overrides_are_checked_like_the_command_line():
  config = config_lib.apply_overrides(config_lib.base_config(), {'search.rollouts': 3})
  assert config.search.rollouts == 3
  with pytest.raises(
    config_lib.ConfigError,
    match=r"search has no field 'roll_outs' "
    r"\(did you mean 'rollouts'\?\)",
  ):
    config_lib.apply_overrides(config_lib.base_config(), {'search.roll_outs': 3})
  with pytest.raises(config_lib.ConfigError, match="override 'search.rollouts'"):
    config_lib.apply_overrides(config_lib.base_config(), {'search.rollouts': 'many'})
  with pytest.raises(config_lib.ConfigError, match='names a section'):
    config_lib.apply_overrides(config_lib.base_config(), {'search': 1})
  with pytest.raises(config_lib.ConfigError, match='teacher must be a zoo name'):
    n2n_jax.compress(42, 'digits', overrides=TINY)
  with pytest.raises(config_lib.ConfigError, match="unknown teacher 'vgg14'"):
    n2n_jax.compress('vgg14', 'digits', overrides=TINY)
  with pytest.raises(data_lib.DataError, match="unknown data 'imagenet'"):
    n2n_jax.compress('digits_cnn', 'imagenet', overrides=TINY)


def test_import_loads_nothing_heavy():
  code = 'import sys, n2n_jax; print(sorted(m for m in ("jax", "flax") if m in sys.modules))'
  done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert done.stdout.strip() == '[]'


# ---- compress


def check_result(result, dataset):
  """The returned student is the exported one, scoring what it says."""
  assert isinstance(result, api.Compressed) and result.model.spec == result.spec
  assert S.param_count(result.spec) == result.params
  assert result.compression == pytest.approx(result.teacher['params'] / result.params)
  assert accuracy(
    result.model, result.variables, dataset.test_images, dataset.test_labels
  ) == pytest.approx(result.test_accuracy, abs=1e-6)
  assert len(result.records) == 2 and result.summary['student']['spec'] == S.to_dict(result.spec)
  assert f'{result.params:,}' in repr(result) and 'teacher' in repr(result)


@pytest.mark.slow
def test_a_zoo_teacher_on_a_named_source_in_a_temporary_folder(tmp_path, monkeypatch):
  monkeypatch.setenv('TMPDIR', str(tmp_path))  # where the temporary workdir goes
  import tempfile  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(tempfile, 'tempdir', None)
  result = n2n_jax.compress('digits_cnn', 'digits', overrides=dict(TINY, **{'teacher.epochs': 1}))
  check_result(result, data_lib.load(data_lib.default_data_config()))
  assert result.workdir is None and result.teacher['name'] == 'digits_cnn'
  assert os.listdir(tmp_path) == []  # the temporary workdir is gone


@pytest.mark.slow
def test_a_spec_trained_here_on_arrays_resumes_in_its_workdir(tmp_path):
  arrays = digits_arrays()
  dataset = data_lib.from_arrays(**arrays)
  workdir = str(tmp_path / 'run')
  first = n2n_jax.compress(SMALL, arrays, workdir=workdir, overrides=TINY)
  check_result(first, dataset)
  assert first.workdir == workdir and first.teacher['name'] == 'small'
  teacher_record = open(os.path.join(workdir, 'teacher.json')).read()
  again = n2n_jax.compress(SMALL, dataset, workdir=workdir, overrides=TINY)
  assert open(os.path.join(workdir, 'teacher.json')).read() == teacher_record  # not retrained
  assert [r['rewards'] for r in again.records] == [r['rewards'] for r in first.records]
  assert again.spec == first.spec
  # Other arrays in the same workdir are refused, naming what differs.
  other = dict(arrays, test=(arrays['test'][0][:100], arrays['test'][1][:100]))
  with pytest.raises(teacher_lib.WorkdirMismatch, match='data.name'):
    n2n_jax.compress(SMALL, other, workdir=workdir, overrides=TINY)


class LinenCNN(nn.Module):
  """A teacher written and trained the plain Flax + optax way."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(16, (3, 3), padding='SAME')(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


LINEN_SPEC = S.NetSpec(
  'linen_cnn', (8, 8, 1), (S.Conv(16, 3, 1, 1), S.ReLU(), S.MaxPool(2, 2), S.Flatten(), S.Dense(10))
)


def train_linen_teacher(arrays):
  x, y = (jnp.asarray(a) for a in arrays['train'])
  module = LinenCNN()
  params = module.init(jax.random.key(0), x[:1])
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(module.apply(p, x), y).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(150):
    params, opt_state = step(params, opt_state)
  test_x, test_y = arrays['test']
  own = float(np.mean(np.argmax(module.apply(params, test_x), -1) == test_y))
  return params, own


@pytest.mark.slow
def test_a_flax_teacher_trained_elsewhere_is_measured_as_its_owner_measures_it(tmp_path):
  arrays = digits_arrays()
  params, own_accuracy = train_linen_teacher(arrays)
  assert own_accuracy > 0.9
  variables = models.from_linen(LINEN_SPEC, params)
  assert sorted(variables['params']) == ['0_Conv', '4_Dense']
  dataset = data_lib.from_arrays(**arrays, normalize=False)  # the inputs it was trained on
  result = n2n_jax.compress(
    (LINEN_SPEC, variables), dataset, overrides=TINY, workdir=str(tmp_path / 'run')
  )
  assert result.teacher['test_accuracy'] == pytest.approx(own_accuracy, abs=1e-9)
  assert result.params < result.teacher['params']
  record = teacher_lib.load(str(tmp_path / 'run'))
  assert record.record['trained_elsewhere'] and record.record['history'] == []

  # Compressions chain: the exported student is the next run's teacher.
  chained = n2n_jax.compress(str(tmp_path / 'run' / 'student'), dataset, overrides=TINY)
  assert chained.teacher['params'] == result.params
  assert chained.teacher['test_accuracy'] == pytest.approx(result.test_accuracy, abs=1e-9)


def test_variables_that_do_not_fit_are_refused_naming_the_layer():
  params = LinenCNN().init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  wider = S.NetSpec(
    'wider', (8, 8, 1), (S.Conv(32, 3, 1, 1), S.ReLU(), S.MaxPool(2, 2), S.Flatten(), S.Dense(10))
  )
  with pytest.raises(
    ValueError,
    match=r"'wider': \['params'\]\['0_Conv'\]\['bias'\] is \(16,\), the spec "
    r'needs \(32,\)',
  ):
    models.from_linen(wider, params)
  with pytest.raises(ValueError, match=r"layers \['Conv', 'Dense'\] are not the spec's"):
    models.from_linen(SMALL, params)
  with pytest.raises(teacher_lib.TrainingError, match='variables do not fit'):
    n2n_jax.compress(
      (wider, models.from_linen(LINEN_SPEC, params)), digits_arrays(), overrides=TINY
    )


# ---- docs/library.md, executed


def library_examples():
  text = (ROOT / 'docs' / 'library.md').read_text()
  return re.findall(r'```python\n(.*?)```', text, re.S)


@pytest.mark.slow
def test_the_library_guide_runs_as_written(as_a_user):
  tmp_path = as_a_user  # its runs/ folders and caches land here
  examples = library_examples()
  assert len(examples) >= 4
  namespace = {}
  for example in examples:
    exec(example, namespace)  # pylint: disable=exec-used
  assert isinstance(namespace['result'], n2n_jax.Compressed)
  assert search.STUDENT_DIR in os.listdir(tmp_path / 'runs' / 'digits_api')


@pytest.mark.slow
def test_the_readmes_library_examples_run_as_written(as_a_user):
  tmp_path = as_a_user  # their runs/ folders and caches land here
  text = (ROOT / 'README.md').read_text()
  section = text.split('\n## Library\n')[1].split('\n## ')[0]
  examples = re.findall(r'```python\n(.*?)```', section, re.S)
  assert len(examples) == 3  # compress, the building blocks, a scorer of your own
  namespace = {}
  for example in examples:
    exec(example, namespace)  # pylint: disable=exec-used
  result = namespace['result']
  assert namespace['logits'].shape == (len(namespace['digits'].test_labels), 10)
  assert result.params < result.teacher['params'] and len(result.records) == 5
  # The scorer example searched with its proxy, not by distilling.
  records = report.read_metrics(str(tmp_path / 'runs' / 'proxy'))
  scored = [(a, p) for r in records for a, p in zip(r['accuracies'], r['params']) if p]
  assert scored and all(a == pytest.approx(min(1.0, p / 50_000)) for a, p in scored)


@pytest.mark.slow
def test_a_data_config_section(tmp_path):
  section = data_lib.default_data_config()
  section.max_train_examples = 300
  result = n2n_jax.compress(SMALL, section, workdir=str(tmp_path / 'run'), overrides=TINY)
  check_result(result, data_lib.load(section))
  summary = json.loads((tmp_path / 'run' / 'summary.json').read_text())
  assert summary == result.summary and result.teacher['name'] == 'small'
