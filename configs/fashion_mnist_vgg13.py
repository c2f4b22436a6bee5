"""Fashion-MNIST from Debian's files with the MNIST VGG-13 teacher (9,414,858 params).

Command:
  apt-get install dataset-fashion-mnist     # once: 60k/10k IDX files, no internet needed
  python -m n2n_jax.main --config=configs/fashion_mnist_vgg13.py --workdir=runs/fmnist_vgg13

Data: /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist; any
folder with the four (Fashion-)MNIST IDX files works: --config.data.path=DIR).
6,000 training images are held out for validation.
Teacher schedule: the paper's MNIST one (appendix 10.2: 50 epochs, SGD lr 0.01,
/10 at 30, batch 64).
Expected teacher: ~93-94 % test accuracy (typical for VGG on Fashion-MNIST; the paper
has no Fashion-MNIST row). Runtime: a full-size VGG-13 step at batch 64 costs
~0.4 s on our 2-core CPU, so the 50 epochs take many hours there; for a quick
look add --config.teacher.epochs=2 --config.data.max_train_examples=5000.

The command runs the whole pipeline (teacher, then the paper's 100 + 100 policy
iterations of 5 students, final training, export); --config.mode=teacher trains
the teacher alone. Paper's compressed student: no paper row. On one NVIDIA H200
(2026-11-28; RESULTS.md, docs/performance.md) a teacher epoch took 1.07 s (so ~1 min for the
50), and a 10 + 6-iteration search with 1-epoch distillations 232 s, 141 s of it
compiling: the paper's budget (~1,000 students of 5 epochs, ~1.3 s each per epoch
there, plus compiling each new architecture) is a few hours on such a GPU. A
shorter GPU run that finished in 4.5 min there (teacher 93.60 %, student 23.8x
smaller at 92.99 %): launch/one_gpu.sh configs/fashion_mnist_vgg13.py DIR
--config.teacher.epochs=20 --config.teacher.decay_epochs='(15,)'
--config.search.stage1_iterations=10 --config.search.stage2_iterations=6
--config.distill.epochs=1 --config.final.epochs=20
"""

from n2n_jax.config import apply_variant
from n2n_jax.config import base_config
from n2n_jax.config import paper_teacher_schedule


def get_config(variant=''):
  config = base_config()
  config.data.source = 'idx'
  config.data.name = 'fashion_mnist'
  config.data.path = '/usr/share/datasets/fashion-mnist'
  config.teacher.name = 'vgg13'
  config.teacher.input_shape = (28, 28, 1)
  config.teacher.num_classes = 10
  paper_teacher_schedule(config, 'mnist')
  return apply_variant(config, variant)
