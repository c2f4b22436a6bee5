"""Paper Table 1, MNIST: the Conv4 teacher (131,978 params).

Command:
  python -m n2n_jax.main --config=configs/mnist_conv4.py --workdir=runs/mnist_conv4

Data: TFDS "mnist", prepared once with `pip install -e ".[tfds]"` and
a first run (data.download='auto', the default) on a machine with internet (or copy a prepared
~/tensorflow_datasets/mnist folder); alternatively copy the four MNIST IDX
files into a folder and use `--config.data.source=idx --config.data.path=DIR`.
Teacher schedule: paper appendix 10.2 (50 epochs, SGD lr 0.01, /10 at 30, batch 64).
Expected teacher: ~99.3-99.5 % test accuracy (the paper gives no Conv4 number). Runtime
not measured yet; estimate ~1 h on a 2-core CPU, a few minutes on one GPU.

The command runs the whole pipeline (teacher, then the paper's 100 + 100 policy
iterations of 5 students, final training, export); --config.mode=teacher trains
the teacher alone. Paper's compressed student: the paper gives no Conv4 row. The search's runtime is
not measured yet: ~1,000 student distillations of 5 epochs each, so plan on a GPU.
"""

from n2n_jax.config import apply_variant
from n2n_jax.config import base_config
from n2n_jax.config import paper_teacher_schedule


def get_config(variant=''):
  config = base_config()
  config.data.source = 'tfds'
  config.data.name = 'mnist'
  config.data.augment = False
  config.teacher.name = 'conv4'
  # Lets 'describe' work before the data is on this machine.
  config.teacher.input_shape = (28, 28, 1)
  config.teacher.num_classes = 10
  paper_teacher_schedule(config, 'mnist')
  return apply_variant(config, variant)
