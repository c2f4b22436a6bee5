"""The paper's experiments as configs: every config's reduced CPU variant, a
reduced run on TFDS mock data, and the hand-designed-student baseline."""

import json
import pathlib

import numpy as np
import pytest
from conftest import ROOT
from conftest import quiet_config
from conftest import tiny_search
from conftest import workdir_with_teacher

from n2n_jax import baselines
from n2n_jax import config as config_lib
from n2n_jax import data
from n2n_jax import experiment
from n2n_jax import export
from n2n_jax import models
from n2n_jax import report
from n2n_jax import spec
from n2n_jax import zoo

CONFIGS = sorted(p.stem for p in pathlib.Path(ROOT, 'configs').glob('*.py'))


@pytest.mark.parametrize('name', CONFIGS)
def test_reduced_variant_keeps_the_experiment_and_shrinks_its_budget(name):
  full, reduced = quiet_config(name), quiet_config(name, 'reduced')
  config_lib.validate(reduced)
  # Same model, data source and search method ...
  for field in (
    'teacher.name',
    'data.source',
    'data.name',
    'search.reward',
    'policy.method',
    'search.rollouts',
    'teacher.optimizer',
  ):
    section, key = field.split('.')
    assert reduced[section][key] == full[section][key], field
  # ... on a budget a 2-core CPU finishes.
  assert reduced.data.max_train_examples <= 5000
  assert reduced.teacher.epochs <= 5 < full.teacher.epochs or name == 'digits'
  assert reduced.search.stage1_iterations + reduced.search.stage2_iterations == 16
  assert reduced.distill.epochs == 1 and reduced.final.epochs == 10
  assert all(e < reduced.teacher.epochs for e in reduced.teacher.decay_epochs)
  if reduced.teacher.input_shape:  # the declared shape follows a resized folder source
    assert reduced.teacher.input_shape[0] == (
      reduced.data.image_size or full.teacher.input_shape[0]
    )


def test_unknown_variant_lists_the_valid_ones():
  with pytest.raises(config_lib.ConfigError, match="unknown config variant 'tiny'.*reduced"):
    quiet_config('mnist_conv4', 'tiny')


@pytest.mark.slow
def test_reduced_mnist_run_on_tfds_mock_data(tmp_path):
  """The whole pipeline of a TFDS experiment, on mock MNIST images: the path
  a real run takes once the dataset is prepared."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # slow to import

  config = quiet_config('mnist_conv4', 'reduced')
  config.teacher.epochs = 1
  config.search.stage1_iterations = config.search.stage2_iterations = 1
  config.search.rollouts = 2
  config.final.epochs = 1
  with tfds.testing.mock_data(num_examples=120):
    summary = experiment.run(config, str(tmp_path))
  assert summary['teacher']['name'] == 'conv4'
  assert summary['teacher']['params'] == spec.param_count(zoo.get('conv4', (28, 28, 1), 10))
  assert summary['student']['params'] < summary['teacher']['params']
  assert len(report.read_metrics(str(tmp_path))) == 2
  assert report.read_summary(str(tmp_path)) == summary


@pytest.fixture
def digits_workdir(teacher_dir, tmp_path):
  path = tmp_path / 'run'
  workdir_with_teacher(teacher_dir, path)
  return path


@pytest.mark.slow
def test_handdesigned_student_is_distilled_like_the_n2n_student(digits_workdir):
  config = tiny_search(quiet_config('digits'))
  config.mode = 'handdesigned'
  config.handdesigned.name = 'vgg_small'
  config.final.epochs = 10  # 40 steps: enough to tell trained from untrained
  summary = experiment.run(config, str(digits_workdir))
  folder = digits_workdir / baselines.BASELINES_DIR / 'vgg_small'
  assert report.read_summary(str(folder)) == summary
  assert baselines.read_all(str(digits_workdir)) == {'vgg_small': summary}
  student = zoo.get('vgg_small', (8, 8, 1), 10)
  assert summary['student']['params'] == spec.param_count(student)
  assert summary['student']['spec'] == spec.to_dict(student)
  assert summary['compression'] == pytest.approx(
    summary['teacher']['params'] / spec.param_count(student)
  )
  teacher = json.loads((digits_workdir / 'teacher.json').read_text())
  assert summary['teacher']['test_accuracy'] == teacher['test_accuracy']
  # The exported network is the one scored.
  dataset = data.load(config.data)
  model, variables = export.load_student(str(folder / 'student'))
  logits = model.apply(variables, dataset.test_images, train=False)
  accuracy = float(np.mean(np.argmax(logits, -1) == np.asarray(dataset.test_labels)))
  assert accuracy == pytest.approx(summary['student']['test_accuracy'], abs=1e-6)
  # And it was trained: the same network with fresh weights scores far less.
  fresh = models.init_variables(model, 0, student.input_shape)
  untrained = float(
    np.mean(
      np.argmax(model.apply(fresh, dataset.test_images, train=False), -1)
      == np.asarray(dataset.test_labels)
    )
  )
  # Measured: 0.94 trained, 0.13 untrained.
  assert accuracy > untrained + 0.5, (accuracy, untrained)


@pytest.mark.slow
def test_handdesigned_student_that_cannot_take_the_input_is_a_clear_error(digits_workdir):
  config = tiny_search(quiet_config('digits'))
  config.mode = 'handdesigned'
  config.handdesigned.name = 'squeezenet1_1'  # its stride-2 stem and pools collapse 8x8
  with pytest.raises(baselines.BaselineError, match="'squeezenet1_1' cannot take input"):
    experiment.run(config, str(digits_workdir))
  assert not (digits_workdir / baselines.BASELINES_DIR / 'squeezenet1_1').exists()
