"""The embedded default: a small CNN teacher on scikit-learn's bundled 8x8 digits.

Command:
  python -m n2n_jax.main --config=configs/digits.py --workdir=/tmp/n2n_digits

Data: sklearn.datasets.load_digits (1,797 images, ships with scikit-learn; no
network). 20 % is held out as the test split, 10 % of the rest for validation.
Expected: teacher `digits_cnn` (140,778 params) at ~0.97-0.99 test accuracy,
about 30 s on a 2-core CPU (first run; the compilation cache makes re-runs faster).
"""

from n2n_jax.config import base_config


def get_config():
  config = base_config()
  config.data.source = 'digits'
  config.teacher.name = 'digits_cnn'
  config.teacher.epochs = 30
  config.teacher.batch_size = 64
  config.teacher.optimizer = 'sgd'
  config.teacher.learning_rate = 0.01
  config.teacher.decay_epochs = (20,)
  return config
