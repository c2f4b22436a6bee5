"""Paper Table 1, Caltech-256: ResNet-18 with the ImageNet stem, 256 classes
(11,307,840 params; paper 11.31M), trained from scratch as in the paper.

Command:
  python -m n2n_jax.main --config=configs/caltech256_resnet18.py --workdir=runs/caltech256 \
      --config.data.path=/data/256_ObjectCategories

Data: TFDS has no Caltech-256 builder, so this reads the image folders of the
official archive: download 256_ObjectCategories.tar from the Caltech data site
(https://data.caltech.edu, dataset "Caltech 256"), `tar xf` it and point
data.path at the 256_ObjectCategories folder. The 257th class (clutter) is
left out; 20 % of each class is held out as the test split (there is no
official split), 10 % of the rest for validation. Images are resized to
224x224 and kept on the device: ~18 GB as float32, so use a GPU with enough
memory, or add --config.data.image_size=64 --config.teacher.input_shape='(64, 64, 3)'
on smaller machines (the teacher then sees 64x64 inputs; its parameter count
stays the same).
Teacher schedule: the paper's (appendix 10.2) as we read it: SGD lr 0.01 for 50
epochs, then 0.001 for 20 more; crop + flip augmentation.
Expected teacher: 47.65 % test accuracy (paper). Runtime not measured yet; estimated
a few hours on one modern GPU.

The command runs the whole pipeline (teacher, then the paper's 100 + 100 policy
iterations of 5 students, final training, export); --config.mode=teacher trains
the teacher alone. Paper's compressed student: stage 1: 44.71 % at 3.62M
(3.12x). The search's runtime is not measured yet: ~1,000 student distillations
of 5 epochs each, so plan on a GPU.
"""

from n2n_jax.config import apply_variant
from n2n_jax.config import base_config
from n2n_jax.config import paper_teacher_schedule


def get_config(variant=''):
  config = base_config()
  config.data.source = 'folder'
  config.data.name = 'caltech256'
  config.data.path = '256_ObjectCategories'
  config.data.image_size = 224
  config.data.exclude_classes = '257.clutter'
  config.data.augment = True
  config.teacher.name = 'resnet18_imagenet'
  # Lets 'describe' work before the data is on this machine.
  config.teacher.input_shape = (224, 224, 3)
  config.teacher.num_classes = 256
  paper_teacher_schedule(config, 'caltech256')
  return apply_variant(config, variant)
