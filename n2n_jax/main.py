"""Command line: python -m n2n_jax.main --config=configs/NAME.py --workdir=DIR
[--config.key=value ...]

Modes (--config.mode=): compress (default: teacher, both N2N stages, final
training and export, resumable), describe (print the teacher as JSON; needs no
data), teacher (train the teacher, or load it from DIR, and write
DIR/teacher.json). See README.md for what DIR receives.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from n2n_jax import runtime

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, e.g. configs/digits.py.', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Folder for this run: teacher, search checkpoints, metrics, report, exported student.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  runtime.set_cpu_flags()  # before the first JAX computation starts a backend
  from n2n_jax import experiment  # pylint: disable=g-import-not-at-top
  try:
    experiment.run(_CONFIG.value, _WORKDIR.value)
  except experiment.USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
