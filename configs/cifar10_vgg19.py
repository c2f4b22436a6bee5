"""Paper Table 1, CIFAR-10: the VGG-19 teacher (20,040,522 params; paper 20.2M).

Command:
  python -m n2n_jax.main --config=configs/cifar10_vgg19.py --workdir=runs/cifar10_vgg19

Data: TFDS "cifar10" (prepare once with `pip install -e ".[tfds]"` and
a first run (data.download='auto', the default) where there is internet, or copy a prepared
~/tensorflow_datasets/cifar10 folder; set --config.data.data_dir if elsewhere).
Per-channel mean/std normalisation from the training split; random crop
(pad 4) + horizontal flip on the device.
Teacher schedule: paper appendix 10.2 (150 epochs, Adam lr 1e-3, /10 at 80 and 120, batch 128).
Expected teacher: 91.97 % test accuracy (paper). Runtime not measured yet; estimated
~1 h on one modern GPU; days on a 2-core CPU (use a GPU).

The command runs the whole pipeline (teacher, then the paper's 100 + 100 policy
iterations of 5 students, final training, export); --config.mode=teacher trains
the teacher alone. Paper's compressed student: stage 1: 92.05 % at 1.7M (11.8x);
stage 1+2: 91.64 % at 984K (20.53x). The search's runtime is not measured yet:
~1,000 student distillations of 5 epochs each, so plan on a GPU.
"""

from n2n_jax.config import apply_variant
from n2n_jax.config import base_config
from n2n_jax.config import paper_teacher_schedule


def get_config(variant=''):
  config = base_config()
  config.data.source = 'tfds'
  config.data.name = 'cifar10'
  config.data.augment = True
  config.teacher.name = 'vgg19'
  # Lets 'describe' work before the data is on this machine.
  config.teacher.input_shape = (32, 32, 3)
  config.teacher.num_classes = 10
  paper_teacher_schedule(config, 'cifar')
  return apply_variant(config, variant)
