"""The embedded default: the whole N2N pipeline on scikit-learn's bundled 8x8 digits.

Command:
  python -m n2n_jax.main --config=configs/digits.py --workdir=runs/digits

Data: sklearn.datasets.load_digits (1,797 images, ships with scikit-learn; no
network). 20 % is held out as the test split, 10 % of the rest for validation.
Expected: teacher `digits_cnn` (140,778 params) at 0.99 test accuracy in
12-30 s; then 10 stage-1 and 6 stage-2 policy iterations of 5 students. The
chosen student depends on the CPU (float rounding steers the search): on a
2-core AVX-512 machine (2026-12-07) 5,706 params (24.7x smaller) at 0.9972 test
accuracy in 2 min 10-19 s with every cache empty (stage 2 in one shared
program: runtime.share_stage2_program='auto'); on an earlier 2-core machine
(2026-11-27) 19,850 params (7.1x) at 0.9916 (RESULTS.md, Table 1; its
runtimes, empty caches and re-run, are in docs/performance.md, "Compiling").
Teacher only: --config.mode=teacher (~30 s).
"""

from n2n_jax.config import apply_variant
from n2n_jax.config import base_config


def get_config(variant=''):
  config = base_config()
  config.data.source = 'digits'
  config.teacher.name = 'digits_cnn'  # base_config's teacher schedule suits it as is
  # A search small enough for 2 CPU cores in under 10 minutes.
  config.search.stage1_iterations = 10
  config.search.stage2_iterations = 6
  config.final.epochs = 40
  return apply_variant(config, variant)
