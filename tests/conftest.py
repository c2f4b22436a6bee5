import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_config(name: str):
  """configs/NAME.py's get_config(), loaded the way the CLI loads it (by path)."""
  path = ROOT / 'configs' / f'{name}.py'
  module_spec = importlib.util.spec_from_file_location(f'config_{name}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config()


@pytest.fixture
def config_factory(tmp_path):
  """A config from configs/, with the compilation cache and progress bars kept
  out of the user's home and the test log."""
  def make(name='digits'):
    config = load_config(name)
    config.runtime.compilation_cache_dir = ''
    config.runtime.progress = False
    return config
  return make
