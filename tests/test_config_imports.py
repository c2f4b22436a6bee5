"""Config files load without JAX: a config is a description, cheap to read
(listing experiments, tools, a launcher choosing a machine), and importing JAX
alone takes seconds and may grab an accelerator."""

import glob
import os
import subprocess
import sys
import textwrap

import pytest

from n2n_jax import config as config_lib
from n2n_jax import data_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, 'configs', '*.py')))
HEAVY = ('jax', 'jaxlib', 'flax', 'optax', 'orbax', 'tensorflow', 'numpy')


def test_every_config_file_loads_without_importing_jax():
  assert len(CONFIGS) >= 10
  script = textwrap.dedent(f"""
      import importlib.util, sys
      for path in {CONFIGS!r}:
        spec = importlib.util.spec_from_file_location('experiment_config', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for variant in ('', 'reduced'):
          config = module.get_config(variant)
          assert config.teacher.name or config.teacher.spec_file, path
      loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))
      print('heavy:', ','.join(loaded))
  """)
  done = subprocess.run(
    [sys.executable, '-c', script], capture_output=True, text=True, cwd=REPO, check=False
  )
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == 'heavy:', done.stdout


def test_the_checks_still_know_every_name_list():
  # validate() imports the modules owning the name lists when it runs; an
  # unknown name is still refused with the valid ones listed.
  for field, bad, listed in (
    ('teacher.optimizer', 'lamb', 'adamw'),
    ('search.reward', 'greedy', 'naive'),
    ('policy.method', 'ppo', 'actor_critic'),
    ('distill.init', 'imagenet', 'teacher'),
    ('runtime.train_together', 'pmap', 'vmap'),
    ('runtime.distributed', 'maybe', 'auto'),
  ):
    config = config_lib.apply_overrides(config_lib.base_config(), {field: bad})
    with pytest.raises(config_lib.ConfigError, match=f'{field}=.*{listed}'):
      config_lib.validate(config)


def test_the_data_section_is_checked_without_loading_data():
  from n2n_jax import data  # pylint: disable=g-import-not-at-top

  # One error class, whichever module a caller catches it from.
  assert data.DataError is data_config.DataError
  section = data_config.default_data_config()
  section.source = 'imagenet'
  with pytest.raises(data_config.DataError, match='choose one of digits, idx, tfds'):
    data_config.validate_data_config(section)
  config = config_lib.base_config()
  config.data.source = 'idx'  # no path
  with pytest.raises(config_lib.ConfigError, match='data.path is empty'):
    config_lib.validate(config)
