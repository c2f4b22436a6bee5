"""Datasets for n2n_jax: where images come from, how they are split, normalised and augmented.

Four sources, chosen by ``data_config.source``:

* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images). Always available offline.
* ``idx``: MNIST-format IDX files in a local folder (e.g. Debian's ``dataset-fashion-mnist``).
* ``tfds``: a TensorFlow Datasets dataset read with ``tfds.data_source``, which needs no
  TensorFlow once the data is prepared.
* ``folder``: one sub-folder of image files per class, resized to ``image_size`` squares;
  made for Caltech-256's ``256_ObjectCategories/`` (TFDS has no Caltech-256 builder).

Whatever the source, the validation split is held out of the training split (rewards are
driven by validation accuracy, never test), every split is normalised with per-channel
statistics of the training images, and the arrays are placed on the default device once:
MNIST/CIFAR-size data fits, so training never waits on a host input pipeline.

Caltech-256 is bigger: its 29,780 images (256 classes, without ``257.clutter``) take 4.5 GB
as uint8 at ``image_size=224``, which is how the ``folder`` source holds them while loading,
and the float32 device arrays need about 4x that (18 GB), plus the uint8 copy until loading
ends. ``image_size=64`` (1.5 GB of float32) or a ``max_train_examples`` cap (only the images
actually used are decoded) make it fit a CPU machine.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import difflib
import gzip
import hashlib
import importlib.util
import math
import os
import struct
import threading
import typing
import urllib.error
import urllib.parse
import urllib.request
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from n2n_jax.data_config import _FOLDER_HINT
from n2n_jax.data_config import _IDX_HINT
from n2n_jax.data_config import ARRAYS_HINT as ARRAYS_HINT
from n2n_jax.data_config import DOWNLOAD_MODES as DOWNLOAD_MODES
from n2n_jax.data_config import FOLDER_IMAGE_EXTENSIONS as FOLDER_IMAGE_EXTENSIONS
from n2n_jax.data_config import MAX_IMAGE_SIZE as MAX_IMAGE_SIZE

# The config section (fields, defaults, checks) lives in data_config.py, free of
# JAX; its public names are re-exported here.
from n2n_jax.data_config import SOURCES as SOURCES
from n2n_jax.data_config import TFDS_DATASETS as TFDS_DATASETS
from n2n_jax.data_config import DataError as DataError
from n2n_jax.data_config import TfdsEntry as TfdsEntry
from n2n_jax.data_config import _field
from n2n_jax.data_config import default_data_config as default_data_config
from n2n_jax.data_config import download_mode as download_mode
from n2n_jax.data_config import validate_data_config as validate_data_config

DIGITS_INPUT_SHAPE = (8, 8, 1)
DIGITS_NUM_CLASSES = 10
# load_digits stores ink as integer counts 0..16 (4x4 blocks of a 32x32 bitmap).
_DIGITS_MAX_VALUE = 16.0
# The digits test split must not move when split_seed changes, or runs with different
# validation seeds would be scored on different test images.
_DIGITS_TEST_SPLIT_SEED = 20_170_101

IDX_FILES = {
  'train_images': 'train-images-idx3-ubyte',
  'train_labels': 'train-labels-idx1-ubyte',
  'test_images': 't10k-images-idx3-ubyte',
  'test_labels': 't10k-labels-idx1-ubyte',
}
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
# Deflate cannot expand data by more than about 1032:1, so a .gz file whose header
# promises more than this many bytes per compressed byte is lying.
_MAX_DEFLATE_RATIO = 1032
_READ_CHUNK_BYTES = 1 << 20

_TFDS_READ_BATCH = 1024
_TFDS_EXTRA_HINT = "pip install 'n2n_jax[tfds]'"
_NETWORK_CHECK_TIMEOUT_S = 3.0
# TFDS first tries its own GCS mirror; probed when a builder lists no download URLs.
_TFDS_MIRROR_URL = 'https://storage.googleapis.com/tfds-data/'

# The folder source: Caltech-256 and anything laid out like it.
_MAX_DECODE_THREADS = 8

_STD_FLOOR = 1e-6
# Statistics are accumulated in float64 over chunks of about this many values, so a large
# dataset (Caltech-256 at 224x224: 3.2e9 training values) needs no full-size float64 copy.
_STATS_CHUNK_VALUES = 1 << 24


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """All three splits, normalised and resident on the default device.

  ``eq=False`` because arrays have no single truth value; datasets compare by identity.
  """

  name: str
  train_images: jax.Array
  train_labels: jax.Array
  val_images: jax.Array
  val_labels: jax.Array
  test_images: jax.Array
  test_labels: jax.Array
  num_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]

  @property
  def input_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])


# --------------------------------------------------------------------------- public entry points


def describe_source(data_config) -> tuple[tuple[int, int, int], int]:
  """(input_shape, num_classes) without loading images, to validate a config before any work.

  For ``idx`` this reads the 16-byte header of the training images and the training labels
  (60 KB for MNIST): the class count is only known from the labels. For ``folder`` it lists
  the class sub-folders and their files (so empty classes fail here) but decodes no image.
  """
  validate_data_config(data_config)
  source = _field(data_config, 'source')
  if source == 'arrays':
    raise DataError(ARRAYS_HINT + '.')
  if source == 'digits':
    return DIGITS_INPUT_SHAPE, DIGITS_NUM_CLASSES
  if source == 'idx':
    files = _idx_files(_field(data_config, 'path'))
    header = read_idx_header(files['train_images'])
    count, rows, cols = _expect_idx_rank(files['train_images'], header, 3)
    # Only the header is read, but a shape the file cannot hold must not pass for the input.
    _check_declared_size(files['train_images'], header)
    labels = read_idx(files['train_labels'])
    # The same checks load() makes, so a folder describe accepts is one load can read.
    _expect_idx_rank(files['train_labels'], labels.shape, 1)
    _expect_same_count(files['train_images'], count, files['train_labels'], len(labels))
    return (rows, cols, 1), _num_classes(labels, files['train_labels'])
  if source == 'folder':
    size = _field(data_config, 'image_size')
    classes = _folder_index(_field(data_config, 'path'), _excluded_classes(data_config))
    return (size, size, 3), len(classes)
  entry = TFDS_DATASETS[_field(data_config, 'name')]
  return entry.input_shape, entry.num_classes


def load(data_config) -> Dataset:
  """Loads, splits, normalises and device-puts the dataset that ``data_config`` describes.

  The normalisation statistics come from the training images actually returned (after
  the validation hold-out and ``max_train_examples``), never from validation or test.
  A ``folder`` source draws every split from file names first and decodes only the images
  the splits keep.
  """
  validate_data_config(data_config)
  source = _field(data_config, 'source')
  if source == 'arrays':
    raise DataError(ARRAYS_HINT + '.')
  if source == 'digits':
    name, (train, test), num_classes = 'digits', _load_digits(data_config), DIGITS_NUM_CLASSES
  elif source == 'idx':
    path = _field(data_config, 'path')
    name = _field(data_config, 'name') or os.path.basename(os.path.normpath(path))
    (train, test), num_classes = _load_idx_folder(path)
  elif source == 'folder':
    path = _field(data_config, 'path')
    name = _field(data_config, 'name') or os.path.basename(os.path.normpath(path))
    (train, test), num_classes = _folder_splits(data_config)
  else:
    name = _field(data_config, 'name')
    train, test = _load_tfds(name, _field(data_config, 'data_dir'), download_mode(data_config))
    num_classes = TFDS_DATASETS[name].num_classes

  train, val = _split_validation(
    train, _field(data_config, 'validation_fraction'), _field(data_config, 'split_seed')
  )
  train = _subsample(
    train, _field(data_config, 'max_train_examples'), _field(data_config, 'split_seed')
  )
  train, val, test = (_decode_if_files(split) for split in (train, val, test))
  mean, std = _channel_stats(train[0])
  train_x, train_y = _to_device(train, mean, std)
  val_x, val_y = _to_device(val, mean, std)
  test_x, test_y = _to_device(test, mean, std)
  return Dataset(
    name=name,
    train_images=train_x,
    train_labels=train_y,
    val_images=val_x,
    val_labels=val_y,
    test_images=test_x,
    test_labels=test_y,
    num_classes=int(num_classes),
    mean=tuple(float(m) for m in mean),
    std=tuple(float(s) for s in std),
  )


# --------------------------------------------------------------------------- arrays


def from_arrays(
  train,
  test,
  val=None,
  *,
  validation_fraction: float = 0.1,
  normalize: bool = True,
  num_classes: int | None = None,
  split_seed: int = 0,
  name: str = 'arrays',
) -> Dataset:
  """A Dataset from your own arrays: each split an (images, labels) pair,
  images N x H x W x C (or N x H x W, one channel) in any real dtype, labels
  N integers in 0..num_classes-1 (num_classes: the largest label + 1 unless
  given). Without `val`, `validation_fraction` of `train` is held out (seeded
  by `split_seed`).

  normalize=True scales uint8 images to [0, 1] and standardises every split
  with the training images' per-channel mean and std, as the loaders do;
  normalize=False takes the images exactly as given (float32), which a
  teacher trained elsewhere needs to see its own inputs. Bad arrays raise
  DataError with one line naming the split and the problem."""
  splits = {'train': _checked_split('train', train), 'test': _checked_split('test', test)}
  if val is not None:
    splits['val'] = _checked_split('val', val)
  shapes = {k: v[0].shape[1:] for k, v in splits.items()}
  if len(set(shapes.values())) > 1:
    raise DataError(f"the splits' images differ in shape: {shapes}.")
  largest = max(int(labels.max()) for _, labels in splits.values())
  if num_classes is None:
    num_classes = largest + 1
  if num_classes < 2 or largest >= num_classes:
    raise DataError(
      f'labels must lie in 0..num_classes-1 with num_classes >= 2; found '
      f'labels up to {largest} for num_classes={num_classes}.'
    )
  if val is None:
    if not 0.0 < validation_fraction < 1.0:
      raise DataError(
        f'validation_fraction must lie strictly between 0 and 1, got {validation_fraction!r}.'
      )
    splits['train'], splits['val'] = _split_validation(
      splits['train'], validation_fraction, split_seed
    )
  if normalize:
    mean, std = _channel_stats(splits['train'][0])
  else:
    channels = splits['train'][0].shape[-1]
    mean, std = np.zeros(channels), np.ones(channels)
    # As given: no scaling of uint8 either.
    splits = {k: (x.astype(np.float32), y) for k, (x, y) in splits.items()}
  (train_x, train_y), (val_x, val_y), (test_x, test_y) = (
    _to_device(splits[k], mean, std) for k in ('train', 'val', 'test')
  )
  return Dataset(
    name=name,
    train_images=train_x,
    train_labels=train_y,
    val_images=val_x,
    val_labels=val_y,
    test_images=test_x,
    test_labels=test_y,
    num_classes=int(num_classes),
    mean=tuple(float(m) for m in mean),
    std=tuple(float(v) for v in std),
  )


def _checked_split(which: str, split) -> Split:
  try:
    images, labels = split
  except (TypeError, ValueError):
    raise DataError(
      f'{which} must be an (images, labels) pair, got {type(split).__name__}.'
    ) from None
  images, labels = np.asarray(images), np.asarray(labels)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or min(images.shape, default=0) < 1:
    raise DataError(
      f'{which} images must be N x H x W x C (or N x H x W), got shape {images.shape}.'
    )
  if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
    raise DataError(f'{which} images must be numbers, got dtype {images.dtype}.')
  if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
    raise DataError(f'{which} images hold NaN or infinite values.')
  if labels.shape != (len(images),):
    raise DataError(
      f'{which} labels must be one per image ({len(images)}), got shape {labels.shape}.'
    )
  if np.issubdtype(labels.dtype, np.floating) and np.all(np.mod(labels, 1) == 0):
    labels = labels.astype(np.int64)
  if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
    raise DataError(
      f'{which} labels must be integers >= 0, got dtype {labels.dtype} (smallest {labels.min()}).'
    )
  return images, labels.astype(np.int32)


def fingerprint(dataset: Dataset) -> str:
  """A short digest of a dataset's arrays: equal for the same data."""
  digest = hashlib.sha256()
  for array in (
    dataset.train_images,
    dataset.train_labels,
    dataset.val_images,
    dataset.val_labels,
    dataset.test_images,
    dataset.test_labels,
  ):
    array = np.asarray(array)
    digest.update(str((array.shape, array.dtype.str)).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
  return digest.hexdigest()[:24]


# --------------------------------------------------------------------------- splits and statistics

# A split is (images, labels int) as host numpy arrays, the images NHWC and either float32 in
# [0, 1] or uint8 in 0..255 (4x less host memory; scaled in _channel_stats and _to_device).
# Until load() decodes them, a folder source's images are an _ImageFiles list of paths,
# which the split functions index like an array.
Split = tuple[np.ndarray, np.ndarray]


def _split_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
  images, labels = train
  n = len(labels)
  num_val = int(round(n * fraction))
  if num_val < 1 or num_val >= n:
    raise DataError(
      f'data.validation_fraction={fraction} leaves {num_val} of {n} training examples for '
      'validation; both splits need at least one. Change data.validation_fraction.'
    )
  order = np.random.default_rng(seed).permutation(n)
  # Sorting keeps the source's order within each split, so a split is a set, not a shuffle.
  val_idx, train_idx = np.sort(order[:num_val]), np.sort(order[num_val:])
  return (images[train_idx], labels[train_idx]), (images[val_idx], labels[val_idx])


def _subsample(train: Split, max_examples: int, seed: int) -> Split:
  images, labels = train
  if not max_examples or max_examples >= len(labels):
    return train
  # `train` is back in source order, whose head may be one writer or class; draw a
  # fresh permutation so the subset is a random sample (seeded apart from validation's).
  keep = np.sort(np.random.default_rng([seed, 1]).permutation(len(labels))[:max_examples])
  return images[keep], labels[keep]


def _max_value(images: np.ndarray) -> float:
  return 255.0 if images.dtype == np.uint8 else 1.0


def _chunks(images: np.ndarray):
  per_image = max(1, math.prod(images.shape[1:]))
  step = max(1, _STATS_CHUNK_VALUES // per_image)
  for start in range(0, len(images), step):
    yield images[start : start + step]


def _channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std in [0, 1] units, in two chunked float64 passes."""
  # float64 accumulation: float32 sums over ~50M CIFAR pixels lose digits.
  count = math.prod(images.shape[:3])
  total = sum(chunk.sum(axis=(0, 1, 2), dtype=np.float64) for chunk in _chunks(images))
  mean = total / count
  squares = sum(
    np.square(chunk.astype(np.float64) - mean).sum(axis=(0, 1, 2)) for chunk in _chunks(images)
  )
  std = np.sqrt(squares / count)
  scale = _max_value(images)
  # A constant channel (e.g. in a synthetic test set) must not divide by zero.
  return mean / scale, np.maximum(std / scale, _STD_FLOOR)


def _to_device(split: Split, mean: np.ndarray, std: np.ndarray) -> tuple[jax.Array, jax.Array]:
  images, labels = split
  # One float32 copy, normalised in place: no full-size temporaries.
  normalised = images.astype(np.float32)
  if images.dtype == np.uint8:
    normalised /= np.float32(255.0)
  normalised -= mean.astype(np.float32)
  normalised /= std.astype(np.float32)
  return jax.device_put(normalised), jax.device_put(labels.astype(np.int32))


def _to_unit_nhwc(images: np.ndarray, max_value: float) -> np.ndarray:
  images = images.astype(np.float32) / np.float32(max_value)
  return images[..., None] if images.ndim == 3 else images


def _num_classes(labels: np.ndarray, where: str) -> int:
  if labels.size == 0:
    raise DataError(f'{where} holds no labels.')
  num_classes = int(labels.max()) + 1
  if num_classes < 2:
    # Every label 0: a one-class "classifier" would train to 100 % and compress to nothing.
    raise DataError(
      f'{where} labels every example 0, so there is only one class; a classifier needs at '
      'least two. The file is damaged or is not the training labels.'
    )
  return num_classes


# --------------------------------------------------------------------------- digits


def _load_digits(data_config) -> tuple[Split, Split]:
  from sklearn.datasets import load_digits  # scikit-learn is slow to import; only digits needs it

  bunch = load_digits()
  images = _to_unit_nhwc(bunch.images, _DIGITS_MAX_VALUE)
  labels = bunch.target.astype(np.int32)
  n = len(labels)
  num_test = int(round(n * _field(data_config, 'test_fraction')))
  order = np.random.default_rng(_DIGITS_TEST_SPLIT_SEED).permutation(n)
  test_idx, train_idx = np.sort(order[:num_test]), np.sort(order[num_test:])
  return (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx])


# --------------------------------------------------------------------------- IDX files


def _open_idx(path: str) -> typing.BinaryIO:
  if not os.path.isfile(path):
    raise DataError(f'IDX file {path} does not exist. {_IDX_HINT}')
  return gzip.open(path, 'rb') if path.endswith('.gz') else open(path, 'rb')


def _parse_idx_header(stream: typing.BinaryIO, path: str) -> tuple[int, ...]:
  magic_bytes = stream.read(4)
  if len(magic_bytes) < 4:
    raise DataError(f'IDX file {path} is truncated: it ends inside its 4-byte magic number.')
  (magic,) = struct.unpack('>I', magic_bytes)
  if magic not in (_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC):
    raise DataError(
      f'{path} is not an MNIST-format IDX file: magic number 0x{magic:08x}, expected '
      f'0x{_IDX_IMAGES_MAGIC:08x} (uint8 images) or 0x{_IDX_LABELS_MAGIC:08x} (uint8 labels). '
      'A gzip-compressed file needs the .gz suffix.'
    )
  rank = magic & 0xFF
  dim_bytes = stream.read(4 * rank)
  if len(dim_bytes) < 4 * rank:
    raise DataError(f'IDX file {path} is truncated: it ends inside its header.')
  dims = struct.unpack(f'>{rank}I', dim_bytes)
  if 0 in dims:
    raise DataError(f'IDX file {path} declares an empty array of shape {dims}.')
  return dims


def _max_payload_bytes(path: str, header_bytes: int) -> int:
  size = os.path.getsize(path)
  if path.endswith('.gz'):
    return size * _MAX_DEFLATE_RATIO
  return size - header_bytes


def _check_declared_size(path: str, dims: tuple[int, ...]) -> int:
  """The data bytes the header declares, once the file is known to be big enough to hold them."""
  num_bytes = math.prod(dims)
  if num_bytes > _max_payload_bytes(path, 4 + 4 * len(dims)):
    raise DataError(
      f'IDX file {path} declares shape {dims} ({num_bytes} bytes), more than the file '
      f'can hold ({os.path.getsize(path)} bytes on disk); it is truncated or corrupt.'
    )
  return num_bytes


def _read_exactly(stream: typing.BinaryIO, num_bytes: int, path: str) -> bytearray:
  # Grows with what the stream really holds, so a lying header cannot make us
  # allocate its declared size up front (BufferedReader.read(n) would).
  payload = bytearray()
  while len(payload) <= num_bytes:
    chunk = stream.read(min(_READ_CHUNK_BYTES, num_bytes + 1 - len(payload)))
    if not chunk:
      break
    payload += chunk
  if len(payload) < num_bytes:
    raise DataError(
      f'IDX file {path} is truncated: its header promises {num_bytes} data bytes, '
      f'it holds {len(payload)}. Re-download or re-copy it.'
    )
  if len(payload) > num_bytes:
    raise DataError(
      f'IDX file {path} has data after the {num_bytes} bytes its header promises; '
      'it is corrupt or not an IDX file.'
    )
  return payload


def _unreadable_error(path: str, error: Exception) -> DataError:
  # gzip reports a damaged .gz as OSError (BadGzipFile), EOFError or zlib.error.
  return DataError(f'Cannot read IDX file {path}: {error}. Re-download or re-copy it.')


def read_idx_header(path: str) -> tuple[int, ...]:
  """The dimensions declared by an IDX file's header, without reading its data."""
  try:
    with _open_idx(path) as stream:
      return _parse_idx_header(stream, path)
  except (OSError, EOFError, zlib.error) as error:
    raise _unreadable_error(path, error) from error


def read_idx(path: str) -> np.ndarray:
  """Reads an uint8 IDX file (raw or .gz) strictly: magic, header and size must all agree."""
  try:
    with _open_idx(path) as stream:
      dims = _parse_idx_header(stream, path)
      num_bytes = _check_declared_size(path, dims)
      payload = _read_exactly(stream, num_bytes, path)
  except (OSError, EOFError, zlib.error) as error:
    raise _unreadable_error(path, error) from error
  return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _idx_files(folder: str) -> dict[str, str]:
  if not os.path.isdir(folder):
    raise DataError(f'IDX folder {folder} does not exist (data.path). {_IDX_HINT}')
  found = {}
  for role, base in IDX_FILES.items():
    candidates = [os.path.join(folder, base), os.path.join(folder, base + '.gz')]
    existing = [c for c in candidates if os.path.isfile(c)]
    if not existing:
      raise DataError(
        f'IDX file missing: neither {candidates[0]} nor {candidates[1]} exists. {_IDX_HINT}'
      )
    found[role] = existing[0]
  return found


def _expect_idx_rank(path: str, dims: tuple[int, ...], rank: int) -> tuple[int, ...]:
  if len(dims) != rank:
    kind = 'images (N, rows, cols)' if rank == 3 else 'labels (N,)'
    raise DataError(f'{path} holds an array of shape {dims}, but {kind} were expected there.')
  return dims


def _read_idx_split(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
  images = read_idx(images_path)
  labels = read_idx(labels_path)
  _expect_idx_rank(images_path, images.shape, 3)
  _expect_idx_rank(labels_path, labels.shape, 1)
  _expect_same_count(images_path, len(images), labels_path, len(labels))
  return images, labels


def _expect_same_count(
  images_path: str, num_images: int, labels_path: str, num_labels: int
) -> None:
  if num_images != num_labels:
    raise DataError(
      f'{images_path} holds {num_images} images but {labels_path} holds {num_labels} '
      'labels; the files do not belong together.'
    )


def _load_idx_folder(folder: str) -> tuple[tuple[Split, Split], int]:
  files = _idx_files(folder)
  train_images, train_labels = _read_idx_split(files['train_images'], files['train_labels'])
  test_images, test_labels = _read_idx_split(files['test_images'], files['test_labels'])
  if train_images.shape[1:] != test_images.shape[1:]:
    raise DataError(
      f'{files["train_images"]} holds {train_images.shape[1:]} images but '
      f'{files["test_images"]} holds {test_images.shape[1:]}; they must match.'
    )
  num_classes = _num_classes(train_labels, files['train_labels'])
  if test_labels.max() >= num_classes:
    raise DataError(
      f'{files["test_labels"]} contains label {int(test_labels.max())}, but the training '
      f'labels only go up to {num_classes - 1}; the files do not belong together.'
    )
  train = (_to_unit_nhwc(train_images, 255.0), train_labels.astype(np.int32))
  test = (_to_unit_nhwc(test_images, 255.0), test_labels.astype(np.int32))
  return (train, test), num_classes


# --------------------------------------------------------------------------- TFDS


def _import_tfds():
  try:
    import tensorflow_datasets as tfds  # optional dependency, ~0.6 s to import
  except ImportError as error:
    raise DataError(
      f"data.source='tfds' needs tensorflow-datasets: {_TFDS_EXTRA_HINT}. "
      "Or use data.source='idx' or 'digits', which need nothing extra."
    ) from error
  return tfds


def _tfds_alternatives(name: str) -> str:
  return (
    f"Either install TensorFlow ({_TFDS_EXTRA_HINT}) and run with data.download='auto' (the "
    f'default) where there is internet to prepare {name!r}, copy a prepared TFDS folder '
    "(data.data_dir= if it lives elsewhere), or use data.source='idx' with local "
    "MNIST-format files (apt-get install dataset-fashion-mnist) or data.source='digits' "
    '(bundled, offline).'
  )


def _url_answers(url: str, timeout_s: float) -> bool:
  """Whether a HEAD request to ``url`` gets any HTTP answer within ``timeout_s``.

  Any status counts, so a server that refuses HEAD never blocks a working download; what
  this catches is no DNS, no route, or TLS interception, where TFDS would retry for
  minutes. DNS lookups ignore socket timeouts, hence the daemon thread we stop waiting for.
  """
  answered = []

  def probe():
    try:
      urllib.request.urlopen(urllib.request.Request(url, method='HEAD'), timeout=timeout_s).close()
      answered.append(True)
    except urllib.error.HTTPError:
      answered.append(True)
    except (OSError, ValueError):
      answered.append(False)

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout_s)
  return bool(answered and answered[0])


def _download_probe_urls(builder) -> list[str]:
  """One download URL per host the builder fetches from (TFDS's checksums list them)."""
  by_host = {}
  for url in sorted(getattr(builder, 'url_infos', None) or {}):
    by_host.setdefault(urllib.parse.urlparse(url).hostname, url)
  return list(by_host.values()) or [_TFDS_MIRROR_URL]


def _check_can_prepare(name: str, builder, download: str) -> None:
  if importlib.util.find_spec('tensorflow') is None:
    raise DataError(
      f'TFDS dataset {name!r} is not prepared in {builder.data_dir}, and preparing it '
      f'(data.download={download!r}) needs TensorFlow, which is not installed: '
      f'{_TFDS_EXTRA_HINT}. Or copy a prepared TFDS folder there (data.data_dir= if it '
      "lives elsewhere), or use data.source='idx' (apt-get install dataset-fashion-mnist) "
      "or 'digits'."
    )
  for url in _download_probe_urls(builder):
    if not _url_answers(url, _NETWORK_CHECK_TIMEOUT_S):
      raise DataError(
        f'TFDS dataset {name!r} is not prepared in {builder.data_dir} and cannot be '
        f'downloaded: {url} did not answer within {_NETWORK_CHECK_TIMEOUT_S:.0f} s. '
        'Prepare it on a machine with network access and copy that data_dir over, or use '
        "data.source='idx' (apt-get install dataset-fashion-mnist) or 'digits'."
      )


def _tfds_error(
  tfds, name: str, data_dir: str | None, download: str, error: Exception
) -> DataError:
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    where, prepared = builder.data_dir, builder.is_prepared()
  except Exception:  # the report must not hide the original failure
    where, prepared = data_dir or 'the TFDS default data_dir', False
  if not prepared and download == 'off':
    return DataError(
      f'TFDS dataset {name!r} is not prepared in {where} (looked there because data.data_dir='
      f"{data_dir or ''!r}) and data.download is 'off'. {_tfds_alternatives(name)}"
    )
  if not prepared:
    return DataError(
      f'TFDS could not download and prepare {name!r} into {where}: '
      f"{type(error).__name__}: {error} Or use data.source='idx' or 'digits'."
    )
  return DataError(
    f'TFDS dataset {name!r} in {where} cannot be read with tfds.data_source: '
    f'{type(error).__name__}: {error} If tfds.load prepared it (TFRecord format), re-prepare '
    "it with file_format='array_record' or point data.data_dir elsewhere. "
    f'{_tfds_alternatives(name)}'
  )


def _read_records(source, keys: list[int]) -> list[dict]:
  try:
    return source.__getitems__(keys)
  except TypeError:
    # tfds.testing.mock_data (4.9.x) installs an unbound __getitems__ that cannot be
    # called; single-record reads work there.
    return [source[k] for k in keys]


def _tfds_split_to_numpy(source, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  expected_shape = TFDS_DATASETS[name].input_shape
  n = len(source)
  images = np.empty((n, *expected_shape), dtype=np.uint8)
  labels = np.empty((n,), dtype=np.int32)
  # Batched reads let array_record fetch records in parallel; decoding stays per record.
  for start in range(0, n, _TFDS_READ_BATCH):
    keys = list(range(start, min(start + _TFDS_READ_BATCH, n)))
    for offset, record in enumerate(_read_records(source, keys)):
      image = np.asarray(record['image'])
      if image.shape != expected_shape:
        raise DataError(
          f'TFDS {name}/{split} example {start + offset} has shape {image.shape}, but '
          f'TFDS_DATASETS says {expected_shape}; this dataset cannot be stacked as is.'
        )
      images[start + offset] = image
      labels[start + offset] = record['label']
  return images, labels


def _load_tfds(name: str, data_dir: str, download: str) -> tuple[Split, Split]:
  from n2n_jax import distributed  # pylint: disable=g-import-not-at-top

  tfds = _import_tfds()
  data_dir = data_dir or None

  def read():
    return {
      split: tfds.data_source(name, split=split, data_dir=data_dir, download=False)
      for split in ('train', 'test')
    }

  try:
    sources = read()
  except Exception as error:  # TFDS raises assorted types for "not there"
    builder = None if download == 'off' else tfds.builder(name, data_dir=data_dir)
    if builder is None or builder.is_prepared():
      raise _tfds_error(tfds, name, data_dir, download, error) from error
    if distributed.is_primary():
      _check_can_prepare(name, builder, download)
    # Process 0 prepares it, in a folder every process must see; the others
    # wait for it, then read.
    try:
      distributed.on_primary(
        f'prepare TFDS {name}',
        lambda: tfds.data_source(name, split='train', data_dir=data_dir, download=True),
      )
      sources = read()
    except Exception as error:  # pylint: disable=broad-except
      raise _tfds_error(tfds, name, data_dir, download, error) from error
  num_classes = TFDS_DATASETS[name].num_classes
  splits = []
  for split, source in sources.items():
    images, labels = _tfds_split_to_numpy(source, name, split)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise DataError(f'TFDS {name}/{split} has labels outside 0..{num_classes - 1}.')
    splits.append((_to_unit_nhwc(images, 255.0), labels))
  return splits[0], splits[1]


# --------------------------------------------------------------------------- image folders
#
# Layout: data.path holds one sub-folder per class, the class names sorted (Caltech-256's
# zero-padded "001.ak47" ... "257.clutter" sort in numeric order), label = position in that
# order. Images are the files directly inside each class folder whose names end in one of
# FOLDER_IMAGE_EXTENSIONS (any case); nested folders, other files and hidden entries (names
# starting with ".", such as macOS "._x.jpg" resource forks) are ignored.
#
# Caltech-256 has no official train/test split. The test split holds data.test_fraction of
# every class (at least one image, and at least one stays for training), so every class is
# in both splits. Which files are held out depends only on their names (ranked by a hash),
# so the test set does not move with split_seed, exclude_classes, other classes or the
# folder's location; validation is then drawn from the rest, as for every source.


@dataclasses.dataclass(frozen=True)
class _ImageFiles:
  """Image files not decoded yet. Indexing with an index array selects files, as numpy would
  select images, so the split functions work on them before anything is decoded."""

  paths: tuple[str, ...]
  image_size: int

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index) -> _ImageFiles:
    return _ImageFiles(tuple(self.paths[i] for i in np.asarray(index)), self.image_size)


def _excluded_classes(data_config) -> set[str]:
  names = _field(data_config, 'exclude_classes').split(',')
  return {name.strip().strip('/') for name in names if name.strip().strip('/')}


def _scan(folder: str) -> list[os.DirEntry]:
  try:
    with os.scandir(folder) as entries:
      return list(entries)
  except OSError as error:
    raise DataError(f'Cannot list {folder}: {error}.') from error


def _class_image_files(class_dir: str) -> list[str]:
  names = sorted(
    entry.name
    for entry in _scan(class_dir)
    if not entry.name.startswith('.')
    and entry.is_file()
    and entry.name.lower().endswith(FOLDER_IMAGE_EXTENSIONS)
  )
  return [os.path.join(class_dir, name) for name in names]


def _folder_index(folder: str, excluded: set[str]) -> list[tuple[str, list[str]]]:
  """[(class name, sorted image paths)] in label order, checked without decoding anything."""
  if not os.path.isdir(folder):
    raise DataError(f'Image folder {folder} does not exist (data.path). {_FOLDER_HINT}')
  subfolders = sorted(
    entry.name for entry in _scan(folder) if not entry.name.startswith('.') and entry.is_dir()
  )
  unknown = sorted(excluded - set(subfolders))
  if unknown:
    close = {name: difflib.get_close_matches(name, subfolders, n=1) for name in unknown}
    described = ', '.join(
      f'{name!r}' + (f' (did you mean {close[name][0]!r}?)' if close[name] else '')
      for name in unknown
    )
    raise DataError(f'data.exclude_classes names {described}, not a class sub-folder of {folder}.')
  classes = [name for name in subfolders if name not in excluded]
  if not subfolders:
    raise DataError(
      f'Image folder {folder} (data.path) holds no class sub-folders; it must hold one '
      f'sub-folder of images per class. {_FOLDER_HINT}'
    )
  if len(classes) < 2:
    if not classes:
      raise DataError(f'data.exclude_classes excludes every class sub-folder of {folder}.')
    raise DataError(
      f'Image folder {folder} (data.path) holds only one class sub-folder, {classes[0]!r}; '
      'a classifier needs at least two. If that is the dataset folder itself, set data.path '
      f'to {os.path.join(folder, classes[0])}.'
    )
  index = []
  for name in classes:
    class_dir = os.path.join(folder, name)
    files = _class_image_files(class_dir)
    if len(files) < 2:
      found = 'only one image file' if files else 'no image files'
      raise DataError(
        f'Class folder {class_dir} holds {found} ({", ".join(FOLDER_IMAGE_EXTENSIONS)}, any '
        'case); every class needs at least two, one for training and one for test. Add '
        f'images, delete the folder, or add {name!r} to data.exclude_classes.'
      )
    index.append((name, files))
  return index


def _held_out_rank(path: str) -> bytes:
  return hashlib.sha256(os.path.basename(path).encode('utf-8', 'surrogateescape')).digest()


def _folder_splits(data_config) -> tuple[tuple[Split, Split], int]:
  index = _folder_index(_field(data_config, 'path'), _excluded_classes(data_config))
  fraction = _field(data_config, 'test_fraction')
  size = _field(data_config, 'image_size')
  paths: dict[str, list[str]] = {'train': [], 'test': []}
  labels: dict[str, list[int]] = {'train': [], 'test': []}
  for label, (_, files) in enumerate(index):
    num_test = min(max(int(round(len(files) * fraction)), 1), len(files) - 1)
    held_out = set(sorted(files, key=_held_out_rank)[:num_test])
    for path in files:
      split = 'test' if path in held_out else 'train'
      paths[split].append(path)
      labels[split].append(label)
  train, test = (
    (_ImageFiles(tuple(paths[split]), size), np.asarray(labels[split], np.int32))
    for split in ('train', 'test')
  )
  return (train, test), len(index)


def _read_image(path: str, size: int) -> np.ndarray:
  from PIL import Image  # only the folder source needs Pillow

  try:
    with Image.open(path) as image:
      # A plain resize of the whole image to size x size with PIL's bilinear filter: no crop,
      # so the aspect ratio is not kept. RGB because Caltech-256 has some grayscale files.
      resized = image.convert('RGB').resize((size, size), Image.Resampling.BILINEAR)
  except Exception as error:  # PIL raises assorted types for damaged or foreign files
    raise DataError(
      f'Cannot read image file {path}: {type(error).__name__}: {error}. It is corrupt or '
      'not an image; delete it (or replace it with a good copy) and load again.'
    ) from error
  return np.asarray(resized)


def _decode_images(files: _ImageFiles) -> np.ndarray:
  """uint8 NHWC images, decoded by a few threads (PIL releases the GIL to decode and resize)."""
  images = np.empty((len(files), files.image_size, files.image_size, 3), np.uint8)

  def decode(i: int) -> None:
    images[i] = _read_image(files.paths[i], files.image_size)

  threads = min(_MAX_DECODE_THREADS, os.cpu_count() or 1, len(files))
  if threads <= 1:
    for i in range(len(files)):
      decode(i)
    return images
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    try:
      for _ in pool.map(decode, range(len(files))):
        pass
    except BaseException:
      # Fail on the first bad file without decoding the rest.
      pool.shutdown(wait=True, cancel_futures=True)
      raise
  return images


def _decode_if_files(split: Split) -> Split:
  images, labels = split
  return (_decode_images(images), labels) if isinstance(images, _ImageFiles) else split


# --------------------------------------------------------------------------- augmentation


def augment_batch(
  key: jax.Array, images: jax.Array, *, crop_padding: int = 4, flip: bool = True
) -> jax.Array:
  """CIFAR-style augmentation of a NHWC batch: pad, random crop, random horizontal flip.

  Pure and jittable (``crop_padding`` and ``flip`` are static), so it can run inside a
  compiled train step. Padding is with zeros, which after normalisation is the mean colour.
  Each image gets its own crop offset and flip decision.
  """
  if images.ndim != 4:
    raise ValueError(f'augment_batch expects NHWC images, got shape {images.shape}.')
  n, height, width, channels = images.shape
  crop_key, flip_key = jax.random.split(key)
  if crop_padding > 0:
    pad = crop_padding
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)
    crop = lambda image, offset: jax.lax.dynamic_slice(
      image, (offset[0], offset[1], 0), (height, width, channels)
    )
    images = jax.vmap(crop)(padded, offsets)
  if flip:
    flipped = jax.random.bernoulli(flip_key, 0.5, (n,))
    images = jnp.where(flipped[:, None, None, None], images[:, :, ::-1, :], images)
  return images
