"""Paper Table 1, CIFAR-10: the ResNet-18 teacher (11,173,962 params; paper 11.17M).

Command:
  python -m n2n_jax.main --config=configs/cifar10_resnet18.py --workdir=runs/cifar10_resnet18

Data: TFDS "cifar10" (prepare once with `pip install -e ".[tfds]"` and
`--config.data.download=True` where there is internet). Crop + flip augmentation.
Teacher schedule: paper appendix 10.2 (150 epochs, Adam lr 1e-3, /10 at 80 and 120, batch 128).
Expected: 92.01 % test accuracy (paper). Runtime not measured yet; estimated
~1.5 h on one modern GPU; days on a 2-core CPU.
"""

from n2n_jax.config import base_config, paper_teacher_schedule


def get_config():
  config = base_config()
  config.data.source = 'tfds'
  config.data.name = 'cifar10'
  config.data.augment = True
  config.teacher.name = 'resnet18'
  # Lets 'describe' work before the data is on this machine.
  config.teacher.input_shape = (32, 32, 3)
  config.teacher.num_classes = 10
  paper_teacher_schedule(config, 'cifar')
  return config
