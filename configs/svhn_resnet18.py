"""Paper Table 1, SVHN: the ResNet-18 teacher (11,173,962 params; paper 11.17M).

Command:
  python -m n2n_jax.main --config=configs/svhn_resnet18.py --workdir=runs/svhn_resnet18

Data: TFDS "svhn_cropped" (73,257 train / 26,032 test; prepare once with
`pip install -e ".[tfds]"` and a first run (data.download='auto', the default) where there is
internet). No augmentation (paper: mean subtraction only).
Teacher schedule: paper appendix 10.2 (150 epochs, Adam lr 1e-3, /10 at 80 and 120, batch 128).
Expected teacher: 95.24 % test accuracy (paper). Runtime not measured yet; estimated
~2 h on one modern GPU.

The command runs the whole pipeline (teacher, then the paper's 100 + 100 policy
iterations of 5 students, final training, export); --config.mode=teacher trains
the teacher alone. Paper's compressed student: stage 1: 95.66 % at 2.24M
(4.97x); stage 1+2: 95.38 % at 564K (19.8x). The search's runtime is not
measured yet: ~1,000 student distillations of 5 epochs each, so plan on a GPU.
"""

from n2n_jax.config import apply_variant
from n2n_jax.config import base_config
from n2n_jax.config import paper_teacher_schedule


def get_config(variant=''):
  config = base_config()
  config.data.source = 'tfds'
  config.data.name = 'svhn_cropped'
  config.data.augment = False
  config.teacher.name = 'resnet18'
  # Lets 'describe' work before the data is on this machine.
  config.teacher.input_shape = (32, 32, 3)
  config.teacher.num_classes = 10
  paper_teacher_schedule(config, 'cifar')
  return apply_variant(config, variant)
