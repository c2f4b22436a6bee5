"""Paper Table 5, transfer source: the VGG-11 teacher on CIFAR-10 (9,231,114 params).

Command (train the policies on VGG-11, then start VGG-19's search from them):
  python -m n2n_jax.main --config=configs/cifar10_vgg11.py --workdir=runs/cifar10_vgg11
  python -m n2n_jax.main --config=configs/cifar10_vgg19.py --workdir=runs/cifar10_vgg19_transfer \
      --config.policy.init_from=runs/cifar10_vgg11 --config.search.stage1_iterations=10 \
      --config.search.stage2_iterations=10
  python -m n2n_jax.compare runs/cifar10_vgg19_transfer runs/cifar10_vgg19 --first=10

Data, normalisation, augmentation and teacher schedule as configs/cifar10_vgg19.py.
Paper: the pretrained policy reaches a mean reward of 0.52 over VGG-19's first 10
iterations against -0.07 from scratch (Table 5; not yet reproduced here). Runtime
not measured; a GPU job, as VGG-19's.
Reduced CPU variant: --config=configs/cifar10_vgg11.py:reduced.
"""

from n2n_jax.config import apply_variant
from n2n_jax.config import base_config
from n2n_jax.config import paper_teacher_schedule


def get_config(variant=''):
  config = base_config()
  config.data.source = 'tfds'
  config.data.name = 'cifar10'
  config.data.augment = True
  config.teacher.name = 'vgg11'
  # Lets 'describe' work before the data is on this machine.
  config.teacher.input_shape = (32, 32, 3)
  config.teacher.num_classes = 10
  paper_teacher_schedule(config, 'cifar')
  return apply_variant(config, variant)
