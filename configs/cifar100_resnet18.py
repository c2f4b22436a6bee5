"""Paper Table 1, CIFAR-100: the ResNet-18 teacher (11,220,132 params; paper 11.22M).

Command:
  python -m n2n_jax.main --config=configs/cifar100_resnet18.py --workdir=runs/cifar100_resnet18

Data: TFDS "cifar100" (prepare once with `pip install -e ".[tfds]"` and
a first run (data.download='auto', the default) where there is internet). Crop + flip augmentation.
Teacher schedule: paper appendix 10.2 (150 epochs, Adam lr 1e-3, /10 at 80 and 120, batch 128).
Expected teacher: 72.22 % test accuracy (paper). Runtime not measured yet; estimated
~1.5 h on one modern GPU.

The command runs the whole pipeline (teacher, then the paper's 100 + 100 policy
iterations of 5 students, final training, export); --config.mode=teacher trains
the teacher alone. Paper's compressed student: stage 1: 69.64 % at 4.76M
(2.35x); stage 1+2: 68.01 % at 2.42M (4.64x). The search's runtime is not
measured yet: ~1,000 student distillations of 5 epochs each, so plan on a GPU.
"""

from n2n_jax.config import apply_variant
from n2n_jax.config import base_config
from n2n_jax.config import paper_teacher_schedule


def get_config(variant=''):
  config = base_config()
  config.data.source = 'tfds'
  config.data.name = 'cifar100'
  config.data.augment = True
  config.teacher.name = 'resnet18'
  # Lets 'describe' work before the data is on this machine.
  config.teacher.input_shape = (32, 32, 3)
  config.teacher.num_classes = 100
  paper_teacher_schedule(config, 'cifar')
  return apply_variant(config, variant)
