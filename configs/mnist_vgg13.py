"""Paper Table 1, MNIST: the VGG-13 teacher (9,414,858 params; paper 9.4M).

Command:
  python -m n2n_jax.main --config=configs/mnist_vgg13.py --workdir=runs/mnist_vgg13

Data: TFDS "mnist" (prepare once with `pip install -e ".[tfds]"` and
a first run (data.download='auto', the default) where there is internet), or the four MNIST IDX
files: `--config.data.source=idx --config.data.path=DIR`.
Teacher schedule: paper appendix 10.2 (50 epochs, SGD lr 0.01, /10 at 30, batch 64).
Expected teacher: 99.54 % test accuracy (paper). Runtime not measured yet; a VGG-13
step at batch 64 costs ~0.4 s on our 2-core CPU, so ~5 h there; under 15 min
estimated on one modern GPU.

The command runs the whole pipeline (teacher, then the paper's 100 + 100 policy
iterations of 5 students, final training, export); --config.mode=teacher trains
the teacher alone. Paper's compressed student: stage 1: 99.55 % at 73K params
(127x). The search's runtime is not measured yet: ~1,000 student distillations
of 5 epochs each, so plan on a GPU.
"""

from n2n_jax.config import apply_variant
from n2n_jax.config import base_config
from n2n_jax.config import paper_teacher_schedule


def get_config(variant=''):
  config = base_config()
  config.data.source = 'tfds'
  config.data.name = 'mnist'
  config.data.augment = False
  config.teacher.name = 'vgg13'
  # Lets 'describe' work before the data is on this machine.
  config.teacher.input_shape = (28, 28, 1)
  config.teacher.num_classes = 10
  paper_teacher_schedule(config, 'mnist')
  return apply_variant(config, variant)
