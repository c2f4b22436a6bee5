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
    config = _CONFIG.value
    config.mode  # pylint: disable=pointless-statement  # a file that failed to load raises here
  except _FLAG_ERRORS as e:
    _usage_error(e)
  try:
    experiment.run(config, _WORKDIR.value)
  except experiment.USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def parse_flags(argv):
  """absl's parsing, but a bad --config or --config.x=value (an unknown field,
  a missing file, a value of the wrong type) ends with one line naming it
  instead of a traceback from inside ml_collections."""
  if not any(a.split('=')[0] in ('--config', '--help', '--helpfull', '-h') for a in argv[1:]):
    _usage_error('--config=configs/NAME.py is required (configs/digits.py is the default job)')
  try:
    return flags.FLAGS(argv)
  except _FLAG_ERRORS as e:
    _usage_error(e)


# What ml_collections and absl raise for a bad config file or override, at
# parse time or (for a config file that fails to load) on first access.
_FLAG_ERRORS = (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError)


def _usage_error(error):
  message = str(error).replace("\\'", "'").replace('\\n', ' ').replace('\n', ' ').strip()
  if len(message) > 1 and message[0] == message[-1] == "'":
    message = message[1:-1]  # ml_collections wraps its KeyError text in quotes
  print(f'error: {message}\nSee --help for the flags and configs/*.py for the fields.',
        file=sys.stderr)
  sys.exit(2)


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main, flags_parser=parse_flags)
