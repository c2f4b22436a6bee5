"""The data section of an experiment config: its fields with their defaults and
the checks that need no data. Kept apart from n2n_jax/data.py, which loads the
images with JAX, so that config files load without importing JAX.
"""

from __future__ import annotations

import numbers
import typing

import ml_collections

SOURCES = ('digits', 'idx', 'tfds', 'folder', 'arrays')
# data.source='arrays' stands for arrays handed to from_arrays (and to
# n2n_jax.compress): data.name then holds their fingerprint, so that a stored
# teacher or search knows them again, but a config alone cannot load them.
ARRAYS_HINT = (
  "data.source='arrays' describes arrays given to n2n_jax.compress or "
  'data.from_arrays; a config cannot load them by itself'
)


class TfdsEntry(typing.NamedTuple):
  input_shape: tuple[int, int, int]
  num_classes: int


# Only fixed-size image datasets belong here: every split must stack into one NHWC array.
# The values match the builders' own feature specs (a test checks them against TFDS).
# TFDS 4.9.10 registers no Caltech-256 builder (only `caltech101`, whose images vary in
# size, and the `caltech_birds*` sets), so the paper's Caltech-256 experiments cannot use
# this source; they use data.source='folder' instead.
TFDS_DATASETS: dict[str, TfdsEntry] = {
  'mnist': TfdsEntry((28, 28, 1), 10),
  'fashion_mnist': TfdsEntry((28, 28, 1), 10),
  'kmnist': TfdsEntry((28, 28, 1), 10),
  'cifar10': TfdsEntry((32, 32, 3), 10),
  'cifar100': TfdsEntry((32, 32, 3), 100),
  'svhn_cropped': TfdsEntry((32, 32, 3), 10),
}

_IDX_HINT = (
  'For Fashion-MNIST run `apt-get install dataset-fashion-mnist` (files land in '
  '/usr/share/datasets/fashion-mnist) and set data.path to that folder, or copy the MNIST '
  'files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, '
  't10k-labels-idx1-ubyte, raw or .gz) into it.'
)
FOLDER_IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')  # matched case-insensitively
_FOLDER_HINT = (
  'For Caltech-256 download 256_ObjectCategories.tar (1.2 GB) from the Caltech data site '
  "(https://data.caltech.edu, dataset 'Caltech 256'), unpack it with "
  '`tar xf 256_ObjectCategories.tar` and set data.path to the 256_ObjectCategories folder '
  '(the one holding 001.ak47/, 002.american-flag/, ...).'
)
_IMAGE_SIZE_HINT = "e.g. 224 (the paper's Caltech-256 input) or 64 (fits a CPU machine)"

# Far above any input a network here is built for; beyond it one image alone needs over
# 50 MB and the uint8 array of the whole split is allocated up front.
MAX_IMAGE_SIZE = 4096


class DataError(ValueError):
  """A dataset cannot be loaded as configured; the message says what to change."""


def default_data_config() -> ml_collections.ConfigDict:
  """The data section of an experiment config, with every field at its default."""
  return ml_collections.ConfigDict(
    {
      'source': 'digits',
      'name': '',
      'path': '',
      'data_dir': '',
      # TFDS datasets that are not prepared yet: 'auto' prepares them when
      # TensorFlow is installed and the network answers, else fails within
      # seconds saying what to do; 'on' the same; 'off' never downloads.
      'download': 'auto',
      'validation_fraction': 0.1,
      'split_seed': 0,
      'test_fraction': 0.2,
      'max_train_examples': 0,
      'augment': False,
      # Only for source='folder': the side of the square every image is resized to.
      'image_size': 0,
      # Only for source='folder': comma-separated class sub-folders to skip, e.g.
      # "257.clutter" for the paper's 256 Caltech classes.
      'exclude_classes': '',
    }
  )


_DEFAULTS = default_data_config().to_dict()


def _field(data_config, name: str):
  # Missing fields take their defaults so a partial config (or a plain namespace) works.
  return getattr(data_config, name, _DEFAULTS[name])


def _require_type(data_config, name: str, kinds: tuple[type, ...], what: str):
  value = _field(data_config, name)
  # bool is an int subclass, but `validation_fraction=True` is a mistake, not 1.
  if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
    raise DataError(f'data.{name} must be {what}, got {value!r}.')
  return value


DOWNLOAD_MODES = ('auto', 'on', 'off')


def download_mode(data_config) -> str:
  """data.download as 'auto', 'on' or 'off'; True and False (and 'True',
  'False' from the command line) are taken as 'on' and 'off'."""
  value = _field(data_config, 'download')
  if isinstance(value, bool):
    return 'on' if value else 'off'
  legacy = {'true': 'on', 'false': 'off'}
  if isinstance(value, str) and (value in DOWNLOAD_MODES or value.lower() in legacy):
    return legacy.get(value.lower(), value)
  raise DataError(
    f'data.download must be one of {", ".join(map(repr, DOWNLOAD_MODES))}, got {value!r}.'
  )


def _require_open_fraction(data_config, name: str) -> float:
  value = _require_type(data_config, name, (numbers.Real,), 'a number')
  if not 0.0 < value < 1.0:
    raise DataError(f'data.{name} must lie strictly between 0 and 1, got {value!r}.')
  return float(value)


def validate_data_config(data_config) -> None:
  """Checks every field without touching any data; raises DataError naming the field."""
  source = _field(data_config, 'source')
  if source not in SOURCES:
    raise DataError(
      f'data.source={source!r} is not a known source; choose one of {", ".join(SOURCES)}.'
    )
  name = _require_type(data_config, 'name', (str,), 'a string')
  path = _require_type(data_config, 'path', (str,), 'a string')
  _require_type(data_config, 'data_dir', (str,), 'a string')
  download_mode(data_config)
  _require_type(data_config, 'augment', (bool,), 'True or False')
  _require_open_fraction(data_config, 'validation_fraction')
  _require_open_fraction(data_config, 'test_fraction')
  for field in ('split_seed', 'max_train_examples', 'image_size'):
    value = _require_type(data_config, field, (numbers.Integral,), 'an integer')
    if value < 0:
      raise DataError(f'data.{field} must be >= 0, got {value}.')
  image_size = _field(data_config, 'image_size')
  exclude = _require_type(data_config, 'exclude_classes', (str,), 'a comma-separated string')
  if source == 'folder':
    if not path:
      raise DataError(
        f"data.path is empty, but data.source='folder' needs the folder of class "
        f'sub-folders. {_FOLDER_HINT}'
      )
    if image_size == 0:
      raise DataError(
        "data.image_size is 0, but data.source='folder' resizes every image to an "
        f'image_size x image_size square; set it, {_IMAGE_SIZE_HINT}.'
      )
    if image_size > MAX_IMAGE_SIZE:
      raise DataError(
        f'data.image_size={image_size} is over the limit of {MAX_IMAGE_SIZE}; every image '
        f'is resized to an image_size x image_size square, {_IMAGE_SIZE_HINT}.'
      )
  else:
    # Silently ignoring these would train on something other than what the config says.
    if image_size:
      raise DataError(
        f"data.image_size={image_size} only applies to data.source='folder'; "
        f"data.source={source!r} keeps its images' own size, so leave it at 0."
      )
    if exclude.strip():
      raise DataError(
        f"data.exclude_classes={exclude!r} only applies to data.source='folder'; "
        f'leave it empty for data.source={source!r}.'
      )
  if source == 'idx' and not path:
    raise DataError(f"data.path is empty, but data.source='idx' needs the IDX folder. {_IDX_HINT}")
  if source == 'tfds' and name not in TFDS_DATASETS:
    raise DataError(
      f'data.name={name!r} is not a supported TFDS dataset; choose one of '
      f'{", ".join(sorted(TFDS_DATASETS))}.'
    )
