"""Command line: python -m n2n_jax.main --config=configs/NAME.py [--workdir=DIR]
[--config.key=value ...]

Modes (--config.mode=): compress (default: teacher, both N2N stages, final
training and export, resumable), describe (print the teacher as JSON; needs no
data), teacher (train the teacher, or load it from DIR, and write
DIR/teacher.json), prune and handdesigned (the paper's baselines, on the
teacher in DIR, written to DIR/baselines/). See README.md for what DIR
receives and docs/experiments.md for every experiment of the paper.
--config=configs/NAME.py:reduced is a config's reduced CPU variant. Without
--workdir, DIR is runs/NAME (runs/NAME_VARIANT for a variant), relative to
the current folder; rerunning the same command resumes there.
"""

import ast
import os
import re
import sys
import warnings

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from n2n_jax import distributed
from n2n_jax import preemption
from n2n_jax import runtime
from n2n_jax import write_errors

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Experiment config file, e.g. configs/digits.py.', lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  'workdir',
  None,
  'Folder for this run: teacher, search checkpoints, metrics, report, '
  'exported student. Default: runs/NAME for --config=configs/NAME.py (runs/NAME_VARIANT '
  'for NAME.py:VARIANT).',
)


def default_workdir(config_argument: str) -> str:
  """runs/NAME for --config=.../NAME.py, runs/NAME_VARIANT for .../NAME.py:VARIANT."""
  path, _, variant = config_argument.partition(':')
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join('runs', f'{name}_{variant}' if variant else name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  # A failed write is reported once, below, not by each thread orbax runs it in.
  logging.get_absl_handler().addFilter(write_errors.QuietStorageErrors())
  runtime.set_cpu_flags()  # before the first JAX computation starts a backend
  from n2n_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from n2n_jax import experiment  # pylint: disable=g-import-not-at-top

  config = loaded_config()
  workdir = _WORKDIR.value
  try:
    # Checked first, so that a bad value ends every process of a multi-process
    # run at once instead of leaving the others waiting for it.
    config_lib.validate(config)
    if config.runtime.deterministic:
      runtime.set_deterministic_flags()  # before JAX starts a backend
    runtime.set_gpu_autotune_level(config.runtime.gpu_autotune_level)
    # Before any JAX computation, and before preemption.install() (see
    # distributed.initialize for why).
    distributed.initialize(config.runtime.distributed, config.runtime.peer_timeout_seconds)
    preemption.install()
    if not distributed.is_primary():
      # Process 0 speaks for the run; the others would repeat its warnings.
      # Their errors still show.
      warnings.simplefilter('ignore')
      logging.set_verbosity(logging.ERROR)
    if workdir is None and config.mode != 'describe':
      workdir = default_workdir(config_flags.get_config_filename(flags.FLAGS['config']))
      if distributed.is_primary():
        print(
          f'workdir: {workdir} (the default for this config; --workdir=DIR to choose)',
          file=sys.stderr,
        )
    experiment.run(config, workdir)
  except experiment.USER_ERRORS as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except preemption.Preempted as e:
    # The teacher saved its last finished epoch on the way out; the search
    # saved its last finished iteration when it ended.
    print(
      f'{e}: progress is saved in {workdir}; run the same command again to resume', file=sys.stderr
    )
    sys.exit(preemption.EXIT_CODE)
  except Exception as e:  # pylint: disable=broad-except  # full disk, read-only, lost peer
    distributed.stop_if_a_peer_is_lost(e)
    line = write_errors.message(e, workdir)
    if line is None:
      raise
    # Coroutines and writers the failed write abandoned would report it again
    # at exit (tensorboardX flushes from an atexit hook).
    warnings.simplefilter('ignore')
    sys.unraisablehook = lambda unraisable: None
    print(line, file=sys.stderr)
    sys.exit(write_errors.EXIT_CODE)


def parse_flags(argv, flag_values=flags.FLAGS):
  """absl's parsing, but a bad --config or --config.x=value (an unknown field,
  a missing file, a value of the wrong type) ends with one line naming it
  instead of a traceback from inside ml_collections. `flag_values` is for tests,
  which parse into a fresh FlagValues."""
  if not any(a.split('=')[0] in ('--config', '--help', '--helpfull', '-h') for a in argv[1:]):
    _usage_error('--config=configs/NAME.py is required (configs/digits.py is the default job)')
  try:
    return flag_values(argv)
  except flags.Error as e:  # absl's own errors name the flag already
    _usage_error(_without_traceback(str(e)))
  except _FLAG_ERRORS as e:
    _usage_error(_name_the_override(_clean(e), argv))
  except (RecursionError, MemoryError):
    # ml_collections reads override values with ast.literal_eval, and CPython's
    # parser reports a value nested too deeply (e.g. '~~~~...1') as one of these.
    _usage_error(f'{_too_deep(argv)} is nested too deeply to read as a Python literal')


def loaded_config(config_flag=_CONFIG):
  """The parsed --config, or the one-line exit of a file that failed to load."""
  try:
    config = config_flag.value
    _ = config.mode  # a file that failed to load raises here
  except _FLAG_ERRORS as e:
    _usage_error(e)
  return config


# What ml_collections and absl raise for a bad config file or override, at
# parse time or (for a config file that fails to load) on first access.
_FLAG_ERRORS = (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError)
_MAX_MESSAGE_CHARS = 500


def _too_deep(argv) -> str:
  """The override whose value the parser cannot take, as '--config.x', for the message."""
  for arg in argv[1:]:
    name, _, value = arg.partition('=')
    try:
      ast.literal_eval(value)
    except (RecursionError, MemoryError):
      return name
    except Exception:  # pylint: disable=broad-except  # any other verdict is not ours to give
      pass
  return 'a --config.x=value override'


def _without_traceback(message: str) -> str:
  """absl quotes the whole traceback of an exception raised inside a config
  file's get_config (e.g. an unknown :VARIANT); its last line says it all."""
  head, found, trace = message.partition('Traceback (most recent call last):')
  if not found:
    return message
  last = trace.strip().splitlines()[-1]
  return head.strip() + ' ' + last.split(': ', 1)[-1]


def _clean(error) -> str:
  message = str(error).replace("\\'", "'").replace('\\n', ' ').replace('\n', ' ').strip()
  # ml_collections wraps its KeyError text in quotes, sometimes twice ("'nosuch'").
  while len(message) > 1 and message[0] == message[-1] and message[0] in '\'"':
    message = message[1:-1]
  return message


def _name_the_override(message: str, argv) -> str:
  """ml_collections reports a bad override path as a bare KeyError ('nosuch') or
  TypeError ('string indices must be integers'); say which --config.x it was."""
  paths = [a.split('=', 1)[0] for a in argv[1:] if re.match(r'--(no)?config\.', a)]
  key = re.match(r"'?([^' ]+)'?(?: |$)", message)
  if key:
    named = [p for p in paths if key.group(1) in p.split('.')[1:]]
    if named:
      rest = message[key.end() :].strip()
      return f'{named[-1]}: the config has no field {key.group(1)!r}' + (
        f'. {rest}' if rest else ''
      )
  if 'indices must be' in message and paths:
    return (
      f'cannot apply {", ".join(paths)}: {message} (a field holding a value was given sub-fields)'
    )
  return message


def _usage_error(error):
  message = _clean(error)
  if len(message) > _MAX_MESSAGE_CHARS:  # absl quotes the whole value, however long
    message = message[: _MAX_MESSAGE_CHARS - 3] + '...'
  print(
    f'error: {message}\nSee --help for the flags and configs/*.py for the fields.', file=sys.stderr
  )
  sys.exit(2)


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main, flags_parser=parse_flags)
