"""Teacher training on the bundled digits: accuracy, the stored record, reuse."""

import json

import jax
import numpy as np
import pytest
from conftest import DIGITS_CNN_PARAMS

from n2n_jax import experiment
from n2n_jax import teacher as teacher_lib


@pytest.mark.slow
def test_default_digits_teacher_reaches_095_and_is_reused(config_factory, tmp_path):
  config = config_factory('digits')  # the README's main job's teacher, unchanged
  config.mode = 'teacher'
  first = experiment.run(config, str(tmp_path))
  record = json.loads((tmp_path / 'teacher.json').read_text())
  assert record['test_accuracy'] >= 0.95
  assert record['params'] == DIGITS_CNN_PARAMS and record['val_accuracy'] >= 0.9
  assert len(record['history']) == config.teacher.epochs
  assert record['origin']['spec']['name'] == 'digits_cnn'
  assert first['test_accuracy'] == record['test_accuracy']

  # A second run loads the stored teacher instead of training again.
  again = teacher_lib.load(str(tmp_path), None)
  assert again.record['seconds'] == record['seconds']
  trained_leaves = jax.tree_util.tree_leaves(again.variables)
  assert all(np.isfinite(np.asarray(x)).all() for x in trained_leaves)
  second = experiment.run(config, str(tmp_path))
  assert second['seconds'] == first['seconds']


@pytest.mark.slow
def test_stored_teacher_round_trips_and_other_configs_are_refused(config_factory, tmp_path):
  config = config_factory('digits')
  config.mode = 'teacher'
  config.teacher.epochs = 2
  config.data.max_train_examples = 300
  experiment.run(config, str(tmp_path))
  loaded = teacher_lib.load(str(tmp_path), None)
  from n2n_jax import data as data_lib
  from n2n_jax import train

  ds = data_lib.load(config.data)
  acc = train.accuracy(loaded.model, loaded.variables, ds.test_images, ds.test_labels)
  assert acc == pytest.approx(loaded.record['test_accuracy'])

  config.data.download = 'on'  # where data comes from does not make a teacher stale
  assert teacher_lib.load(str(tmp_path), teacher_lib._origin(config, loaded.spec)) is not None

  config.teacher.learning_rate = 0.05
  with pytest.raises(
    teacher_lib.WorkdirMismatch, match='training.learning_rate: stored 0.01, now 0.05'
  ):
    experiment.run(config, str(tmp_path))
