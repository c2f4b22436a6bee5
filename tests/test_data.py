"""Tests for n2n_jax.data on real data: sklearn digits, IDX files and image folders written
here, TFDS mocks."""

import functools
import gzip
import io
import os
import shutil
import struct
import time
import tracemalloc
import types

import jax
import numpy as np
import pytest
from PIL import Image

from n2n_jax import data

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'


def make_config(**overrides):
  config = data.default_data_config()
  config.update(overrides)
  return config


def denormalise(images, dataset, max_value):
  """Back to the source's integer pixel values."""
  raw = np.asarray(images) * np.asarray(dataset.std) + np.asarray(dataset.mean)
  return np.rint(raw * max_value).astype(np.int64)


def sorted_rows(images):
  flat = np.asarray(images).reshape(len(images), -1)
  return flat[np.lexsort(flat.T[::-1])]


def assert_train_normalised(dataset):
  pixels = np.asarray(dataset.train_images)
  np.testing.assert_allclose(pixels.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
  np.testing.assert_allclose(pixels.std(axis=(0, 1, 2)), 1.0, atol=1e-4)


# --------------------------------------------------------------------------- digits


@pytest.fixture(scope='module')
def digits():
  return data.load(make_config())


def test_digits_shapes_and_split_sizes(digits):
  assert digits.input_shape == (8, 8, 1)
  assert digits.num_classes == 10
  assert digits.test_images.shape == (359, 8, 8, 1)  # round(0.2 * 1797)
  assert digits.val_images.shape == (144, 8, 8, 1)  # round(0.1 * 1438)
  assert digits.train_images.shape == (1294, 8, 8, 1)
  sizes = [len(digits.train_labels), len(digits.val_labels), len(digits.test_labels)]
  assert sum(sizes) == 1797
  for images, labels in [
    (digits.train_images, digits.train_labels),
    (digits.val_images, digits.val_labels),
    (digits.test_images, digits.test_labels),
  ]:
    assert images.dtype == np.float32 and labels.dtype == np.int32
    assert len(images) == len(labels)
    assert isinstance(images, jax.Array)
  # The three splits hold scikit-learn's labels, each image once: the same
  # count per class.
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  every = np.concatenate([digits.train_labels, digits.val_labels, digits.test_labels])
  np.testing.assert_array_equal(np.bincount(every), np.bincount(load_digits().target))


def test_digits_splits_partition_the_dataset(digits):
  from sklearn.datasets import load_digits

  bunch = load_digits()
  original = sorted_rows(bunch.images.astype(np.int64))
  splits = [digits.train_images, digits.val_images, digits.test_images]
  recovered = np.concatenate([denormalise(s, digits, 16.0) for s in splits])
  # Same multiset of 1,797 images: no example is lost or lands in two splits.
  np.testing.assert_array_equal(sorted_rows(recovered), original)
  label_counts = np.bincount(
    np.concatenate(
      [
        np.asarray(digits.train_labels),
        np.asarray(digits.val_labels),
        np.asarray(digits.test_labels),
      ]
    ),
    minlength=10,
  )
  np.testing.assert_array_equal(label_counts, np.bincount(bunch.target, minlength=10))


def test_digits_normalised_with_training_statistics(digits):
  assert_train_normalised(digits)
  raw_train = denormalise(digits.train_images, digits, 16.0) / 16.0
  np.testing.assert_allclose(digits.mean, [raw_train.mean()], rtol=1e-5)
  np.testing.assert_allclose(digits.std, [raw_train.std()], rtol=1e-5)
  # Validation and test share the training statistics, so they are only roughly centred.
  assert abs(float(np.asarray(digits.val_images).mean())) < 0.2


def test_digits_deterministic_and_seed_moves_only_validation(digits):
  again = data.load(make_config())
  for field in ('train_images', 'train_labels', 'val_images', 'val_labels', 'test_images'):
    np.testing.assert_array_equal(getattr(again, field), getattr(digits, field))
  reseeded = data.load(make_config(split_seed=1))
  np.testing.assert_array_equal(reseeded.test_labels, digits.test_labels)
  assert not np.array_equal(reseeded.val_labels, digits.val_labels)


def test_max_train_examples_takes_a_subset():
  small = data.load(make_config(max_train_examples=100))
  assert small.train_images.shape == (100, 8, 8, 1)
  assert small.val_images.shape == (144, 8, 8, 1)
  assert_train_normalised(small)


def test_describe_source_digits_accepts_partial_config():
  assert data.describe_source(types.SimpleNamespace(source='digits')) == ((8, 8, 1), 10)


# --------------------------------------------------------------------------- IDX


def idx_bytes(array, magic=None, dims=None):
  array = np.asarray(array, dtype=np.uint8)
  dims = array.shape if dims is None else dims
  magic = (0x800 | array.ndim) if magic is None else magic
  return struct.pack('>I', magic) + struct.pack(f'>{len(dims)}I', *dims) + array.tobytes()


def write_file(path, payload, compress):
  if compress:
    path = str(path) + '.gz'
    with gzip.open(path, 'wb') as f:
      f.write(payload)
  else:
    path = str(path)
    with open(path, 'wb') as f:
      f.write(payload)
  return path


def tiny_idx_arrays(seed=0):
  rng = np.random.default_rng(seed)
  # Non-square images so a rows/cols mix-up shows.
  return {
    'train_images': rng.integers(0, 256, (30, 5, 4), dtype=np.uint8),
    'train_labels': np.arange(30, dtype=np.uint8) % 3,
    'test_images': rng.integers(0, 256, (10, 5, 4), dtype=np.uint8),
    'test_labels': np.arange(10, dtype=np.uint8) % 3,
  }


def write_idx_folder(folder, arrays, compress=False, raw_payloads=None):
  os.makedirs(folder, exist_ok=True)
  paths = {}
  for role, base in data.IDX_FILES.items():
    payload = (raw_payloads or {}).get(role) or idx_bytes(arrays[role])
    paths[role] = write_file(os.path.join(folder, base), payload, compress)
  return paths


@pytest.mark.parametrize('compress', [False, True], ids=['raw', 'gz'])
def test_idx_folder_loads(tmp_path, compress):
  arrays = tiny_idx_arrays()
  write_idx_folder(tmp_path, arrays, compress)
  config = make_config(source='idx', path=str(tmp_path), name='tiny')
  assert data.describe_source(config) == ((5, 4, 1), 3)
  dataset = data.load(config)
  assert dataset.name == 'tiny'
  assert dataset.input_shape == (5, 4, 1)
  assert dataset.num_classes == 3
  assert dataset.train_images.shape == (27, 5, 4, 1)
  assert dataset.val_images.shape == (3, 5, 4, 1)
  np.testing.assert_array_equal(
    denormalise(dataset.test_images, dataset, 255.0)[..., 0], arrays['test_images']
  )
  np.testing.assert_array_equal(dataset.test_labels, arrays['test_labels'])
  train_and_val = np.concatenate(
    [
      denormalise(dataset.train_images, dataset, 255.0),
      denormalise(dataset.val_images, dataset, 255.0),
    ]
  )
  np.testing.assert_array_equal(
    sorted_rows(train_and_val), sorted_rows(arrays['train_images'].astype(np.int64))
  )
  assert_train_normalised(dataset)


@pytest.mark.parametrize('compress', [False, True], ids=['raw', 'gz'])
def test_read_idx_round_trip(tmp_path, compress):
  labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
  path = write_file(tmp_path / 'labels', idx_bytes(labels), compress)
  np.testing.assert_array_equal(data.read_idx(path), labels)


def test_idx_missing_folder_names_path_and_apt_hint(tmp_path):
  missing = str(tmp_path / 'nowhere')
  for call in (data.load, data.describe_source):
    with pytest.raises(data.DataError) as info:
      call(make_config(source='idx', path=missing))
    assert missing in str(info.value)
    assert 'apt-get install dataset-fashion-mnist' in str(info.value)
    assert '/usr/share/datasets/fashion-mnist' in str(info.value)


def test_idx_missing_file_names_both_candidates(tmp_path):
  write_idx_folder(tmp_path, tiny_idx_arrays())
  os.remove(tmp_path / 't10k-labels-idx1-ubyte')
  with pytest.raises(data.DataError) as info:
    data.load(make_config(source='idx', path=str(tmp_path)))
  message = str(info.value)
  assert str(tmp_path / 't10k-labels-idx1-ubyte') in message
  assert str(tmp_path / 't10k-labels-idx1-ubyte.gz') in message


def test_idx_wrong_magic(tmp_path):
  arrays = tiny_idx_arrays()
  bad = idx_bytes(arrays['train_images'], magic=0x00000D03)  # 0x0D: float32, not uint8
  paths = write_idx_folder(tmp_path, arrays, raw_payloads={'train_images': bad})
  with pytest.raises(data.DataError) as info:
    data.load(make_config(source='idx', path=str(tmp_path)))
  assert paths['train_images'] in str(info.value)
  assert 'magic number 0x00000d03' in str(info.value)


def test_idx_gzip_without_suffix_is_explained(tmp_path):
  path = str(tmp_path / 'labels')
  with open(path, 'wb') as f:
    f.write(gzip.compress(idx_bytes(np.zeros(4, np.uint8))))
  with pytest.raises(data.DataError, match=r'\.gz suffix'):
    data.read_idx(path)


@pytest.mark.parametrize('compress', [False, True], ids=['raw', 'gz'])
def test_idx_truncated_payload(tmp_path, compress):
  images = np.ones((10, 5, 4), np.uint8)
  path = write_file(tmp_path / 'images', idx_bytes(images)[:-7], compress)
  with pytest.raises(data.DataError) as info:
    data.read_idx(path)
  assert path in str(info.value) and 'truncated' in str(info.value)


def test_idx_truncated_header(tmp_path):
  path = write_file(tmp_path / 'images', idx_bytes(np.ones((2, 2, 2), np.uint8))[:9], False)
  with pytest.raises(data.DataError, match='truncated'):
    data.read_idx(path)


def test_idx_damaged_gzip_stream(tmp_path):
  payload = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)))
  path = str(tmp_path / 'labels.gz')
  with open(path, 'wb') as f:
    f.write(payload[: len(payload) // 2])
  with pytest.raises(data.DataError) as info:
    data.read_idx(path)
  assert path in str(info.value)


def test_idx_trailing_bytes_rejected(tmp_path):
  path = write_file(tmp_path / 'labels', idx_bytes(np.arange(5, dtype=np.uint8)) + b'xx', False)
  with pytest.raises(data.DataError, match='after the 5 bytes'):
    data.read_idx(path)


def test_idx_count_mismatch(tmp_path):
  arrays = tiny_idx_arrays()
  arrays['train_labels'] = arrays['train_labels'][:29]
  paths = write_idx_folder(tmp_path, arrays)
  with pytest.raises(data.DataError) as info:
    data.load(make_config(source='idx', path=str(tmp_path)))
  message = str(info.value)
  assert '30 images' in message and '29 labels' in message
  assert paths['train_images'] in message and paths['train_labels'] in message


def test_idx_labels_and_images_swapped(tmp_path):
  arrays = tiny_idx_arrays()
  paths = write_idx_folder(
    tmp_path, arrays, raw_payloads={'train_images': idx_bytes(arrays['train_labels'])}
  )
  with pytest.raises(data.DataError, match='images'):
    data.load(make_config(source='idx', path=str(tmp_path)))
  with pytest.raises(data.DataError) as info:
    data.describe_source(make_config(source='idx', path=str(tmp_path)))
  assert paths['train_images'] in str(info.value)


def test_idx_test_label_beyond_training_classes(tmp_path):
  arrays = tiny_idx_arrays()
  arrays['test_labels'] = arrays['test_labels'].copy()
  arrays['test_labels'][4] = 7
  write_idx_folder(tmp_path, arrays)
  with pytest.raises(data.DataError, match='label 7'):
    data.load(make_config(source='idx', path=str(tmp_path)))


@pytest.mark.parametrize('compress', [False, True], ids=['raw', 'gz'])
def test_idx_absurd_header_rejected_without_allocating(tmp_path, compress):
  # Declares 2**93 bytes; only 64 are there.
  payload = idx_bytes(np.zeros(64, np.uint8), magic=0x803, dims=(2**31, 2**31, 2**31))
  path = write_file(tmp_path / 'images', payload, compress)
  tracemalloc.start()
  try:
    with pytest.raises(data.DataError) as info:
      data.read_idx(path)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert peak < 8 * 2**20  # nothing near the declared size was allocated or read
  assert path in str(info.value)


def test_idx_zero_sized_header_rejected(tmp_path):
  path = write_file(tmp_path / 'images', idx_bytes(np.zeros((0, 3, 3), np.uint8)), False)
  with pytest.raises(data.DataError, match='empty'):
    data.read_idx(path)


@pytest.mark.skipif(
  not os.path.isdir(FASHION_MNIST_DIR), reason='apt-get install dataset-fashion-mnist to run'
)
def test_debian_fashion_mnist():
  config = make_config(source='idx', path=FASHION_MNIST_DIR)
  assert data.describe_source(config) == ((28, 28, 1), 10)
  # The full load takes ~2 s on the project's 2-core machines.
  dataset = data.load(config)
  assert dataset.name == 'fashion-mnist'
  assert dataset.train_images.shape == (54000, 28, 28, 1)
  assert dataset.val_images.shape == (6000, 28, 28, 1)
  assert dataset.test_images.shape == (10000, 28, 28, 1)
  assert dataset.num_classes == 10
  np.testing.assert_array_equal(np.bincount(np.asarray(dataset.test_labels)), [1000] * 10)


# --------------------------------------------------------------------------- TFDS


@pytest.fixture(scope='module')
def tfds():
  import tensorflow_datasets  # pylint: disable=g-import-not-at-top  # a dependency; slow to import

  return tensorflow_datasets


@pytest.mark.parametrize('name, shape', [('mnist', (28, 28, 1)), ('cifar10', (32, 32, 3))])
def test_tfds_mock_data(tfds, name, shape):
  config = make_config(source='tfds', name=name)
  with tfds.testing.mock_data(num_examples=40):
    dataset = data.load(config)
  assert data.describe_source(config) == (shape, 10)
  assert dataset.name == name
  assert dataset.input_shape == shape
  assert dataset.num_classes == 10
  assert dataset.train_images.shape == (36, *shape)
  assert dataset.val_images.shape == (4, *shape)
  assert dataset.test_images.shape == (40, *shape)
  assert len(dataset.mean) == len(dataset.std) == shape[-1]
  assert_train_normalised(dataset)
  for labels in (dataset.train_labels, dataset.val_labels, dataset.test_labels):
    assert labels.dtype == np.int32
  # The test split is the source's, in its order: read it back directly.
  with tfds.testing.mock_data(num_examples=40):
    source = tfds.data_source(name, split='test')
    expected = [int(source[i]['label']) for i in range(len(source))]
  np.testing.assert_array_equal(dataset.test_labels, expected)


@pytest.mark.parametrize('download', ['off', 'auto', 'on', 'False'])
def test_tfds_not_prepared_fails_fast_with_alternatives(tfds, tmp_path, download):
  if (
    download != 'off'
    and download != 'False'
    and __import__('importlib').util.find_spec('tensorflow') is not None
  ):
    pytest.skip("TensorFlow is installed: 'auto' and 'on' would download")
  start = time.perf_counter()
  with pytest.raises(data.DataError) as info:
    data.load(make_config(source='tfds', name='mnist', data_dir=str(tmp_path), download=download))
  # The time is the behaviour: TFDS itself would retry for ~205 s offline.
  # The margin is wide (this takes well under a second).
  assert time.perf_counter() - start < 30.0
  message = str(info.value)
  for expected in (
    "'mnist'",
    str(tmp_path),
    'not prepared',
    'data.download',
    'n2n_jax[tfds]',
    "'idx'",
    "'digits'",
  ):
    assert expected in message


@pytest.mark.parametrize('download', ['auto', 'on'])
def test_tfds_download_without_tensorflow_fails_fast(tfds, tmp_path, download):
  if __import__('importlib').util.find_spec('tensorflow') is not None:
    pytest.skip('TensorFlow is installed; this checks the message for when it is not')
  start = time.perf_counter()
  with pytest.raises(data.DataError) as info:
    data.load(make_config(source='tfds', name='mnist', data_dir=str(tmp_path), download=download))
  assert time.perf_counter() - start < 30.0  # fails fast, as above
  message = str(info.value)
  assert 'needs TensorFlow' in message and 'n2n_jax[tfds]' in message
  assert f'data.download={download!r}' in message and str(tmp_path) in message
  assert 'copy a prepared TFDS folder' in message and "'idx'" in message


def test_download_is_auto_by_default_and_takes_the_old_booleans():
  assert data.default_data_config().download == 'auto'
  # Booleans from Python (a plain namespace: a ConfigDict's field is a string),
  # their spelling from the command line.
  for value, mode in (
    ('auto', 'auto'),
    ('on', 'on'),
    ('off', 'off'),
    (True, 'on'),
    (False, 'off'),
    ('True', 'on'),
    ('False', 'off'),
  ):
    config = types.SimpleNamespace(**{**data.default_data_config().to_dict(), 'download': value})
    assert data.download_mode(config) == mode


def test_download_probe_gives_up_fast_on_an_unresolvable_host():
  # .invalid never resolves (RFC 2606), online or off.
  start = time.perf_counter()
  assert not data._url_answers('https://tfds-host.invalid/mnist.gz', timeout_s=3.0)
  # The behaviour is giving up within the 3 s asked for; the rest is margin.
  assert time.perf_counter() - start < 10.0


def test_tfds_table_matches_tfds_feature_specs(tfds, tmp_path):
  for name, (shape, num_classes) in data.TFDS_DATASETS.items():
    features = tfds.builder(name, data_dir=str(tmp_path)).info.features
    assert tuple(features['image'].shape) == shape, name
    assert features['label'].num_classes == num_classes, name


# --------------------------------------------------------------------------- image folders

CLASS_NAMES = ('001.ak47', '002.american-flag', '003.backpack')
IMAGES_PER_CLASS = 6


def class_colour(label, index):
  # Solid colours survive JPEG and resizing to within a few levels, so every decoded image
  # tells which class and file it came from.
  return (30 + 80 * label, 20 + 35 * index, 220 - 60 * label)


def write_image_folder(root, class_names=CLASS_NAMES, per_class=IMAGES_PER_CLASS):
  """A Caltech-256-like tree: varied sizes, one grayscale JPEG, one PNG, one upper-case
  extension, and entries the loader must ignore. Returns {class name: [RGB colours]}."""
  colours = {}
  for label, name in enumerate(class_names):
    class_dir = os.path.join(root, name)
    os.makedirs(class_dir)
    colours[name] = []
    for index in range(per_class):
      colour = class_colour(label, index)
      size = (11 + 7 * index + label, 9 + 5 * ((index + label) % 3))  # (width, height)
      image = Image.new('RGB', size, colour)
      base = os.path.join(class_dir, f'{label + 1:03d}_{index + 1:04d}')
      if label == 0 and index == 1:
        image = image.convert('L')
        colour = (image.getpixel((0, 0)),) * 3
        image.save(base + '.jpg', quality=95)
      elif label == 1 and index == 2:
        image.save(base + '.png')
      elif label == 2 and index == 3:
        image.save(base + '.JPG', quality=95)
      else:
        image.save(base + '.jpg', quality=95)
      colours[name].append(colour)
    # Not images of this class: macOS resource fork, a text file, a nested folder.
    with open(os.path.join(class_dir, '._junk.jpg'), 'wb') as f:
      f.write(b'\x00\x05\x16\x07 resource fork')
    with open(os.path.join(class_dir, 'notes.txt'), 'w') as f:
      f.write('not an image')
    os.makedirs(os.path.join(class_dir, 'nested'))
    Image.new('RGB', (5, 5)).save(os.path.join(class_dir, 'nested', 'extra.jpg'))
  with open(os.path.join(root, 'README'), 'w') as f:
    f.write('top-level files are not classes')
  os.makedirs(os.path.join(root, '.hidden_class'))
  return colours


def folder_config(path, **overrides):
  return make_config(source='folder', path=str(path), image_size=8, **overrides)


def decoded_colours(images, dataset):
  """Each image's mean colour back in 0..255, checking the image is (nearly) solid."""
  raw = denormalise(images, dataset, 255.0)
  assert np.ptp(raw, axis=(1, 2)).max() <= 6
  return raw.mean(axis=(1, 2))


def assert_colours_match_labels(images, labels, dataset, colours_by_label):
  for colour, label in zip(decoded_colours(images, dataset), np.asarray(labels)):
    distances = np.abs(np.asarray(colours_by_label[int(label)]) - colour).max(axis=1)
    assert distances.min() <= 4, (label, colour)


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('folder') / '256_ObjectCategories'
  colours = write_image_folder(root)
  return root, colours


@pytest.fixture(scope='module')
def folder_dataset(image_folder):
  root, _ = image_folder
  return data.load(folder_config(root))


def test_folder_loads(image_folder, folder_dataset):
  root, colours = image_folder
  dataset = folder_dataset
  assert data.describe_source(folder_config(root)) == ((8, 8, 3), 3)
  assert dataset.name == '256_ObjectCategories'
  assert dataset.num_classes == 3
  assert dataset.input_shape == (8, 8, 3)
  # Per class: round(0.2 * 6) = 1 test image; validation: round(0.1 * 15) = 2 of the rest.
  assert dataset.test_images.shape == (3, 8, 8, 3)
  assert dataset.val_images.shape == (2, 8, 8, 3)
  assert dataset.train_images.shape == (13, 8, 8, 3)
  np.testing.assert_array_equal(dataset.test_labels, [0, 1, 2])
  all_labels = np.concatenate(
    [
      np.asarray(dataset.train_labels),
      np.asarray(dataset.val_labels),
      np.asarray(dataset.test_labels),
    ]
  )
  np.testing.assert_array_equal(np.bincount(all_labels), [IMAGES_PER_CLASS] * 3)
  assert len(dataset.mean) == len(dataset.std) == 3
  assert_train_normalised(dataset)
  by_label = [colours[name] for name in CLASS_NAMES]
  splits = [
    (dataset.train_images, dataset.train_labels),
    (dataset.val_images, dataset.val_labels),
    (dataset.test_images, dataset.test_labels),
  ]
  for images, labels in splits:
    assert images.dtype == np.float32 and labels.dtype == np.int32
    assert_colours_match_labels(images, labels, dataset, by_label)
  # Every file was loaded exactly once (colours are distinct within a class); the grayscale
  # one came back as R = G = B.
  recovered = np.concatenate([decoded_colours(x, dataset) for x, _ in splits])
  expected = np.asarray([c for name in CLASS_NAMES for c in colours[name]], np.float64)
  distances = np.abs(recovered[:, None, :] - expected[None, :, :]).max(axis=2)
  nearest = distances.argmin(axis=1)
  assert distances.min(axis=1).max() <= 4
  assert sorted(nearest) == list(range(len(expected)))
  assert colours[CLASS_NAMES[0]][1][0] == colours[CLASS_NAMES[0]][1][2]


def test_folder_split_is_deterministic_and_test_ignores_seed(image_folder, folder_dataset):
  root, _ = image_folder
  again = data.load(folder_config(root))
  for field in ('train_images', 'train_labels', 'val_images', 'val_labels', 'test_images'):
    np.testing.assert_array_equal(getattr(again, field), getattr(folder_dataset, field))
  reseeded = data.load(folder_config(root, split_seed=3))
  np.testing.assert_array_equal(
    decoded_colours(reseeded.test_images, reseeded).round(),
    decoded_colours(folder_dataset.test_images, folder_dataset).round(),
  )
  assert not np.array_equal(
    decoded_colours(reseeded.val_images, reseeded).round(),
    decoded_colours(folder_dataset.val_images, folder_dataset).round(),
  )


def test_folder_test_fraction_is_per_class(image_folder):
  root, colours = image_folder
  dataset = data.load(folder_config(root, test_fraction=0.5))
  np.testing.assert_array_equal(np.bincount(np.asarray(dataset.test_labels)), [3, 3, 3])
  # A fraction that rounds to all of a class still leaves one image for training.
  dataset = data.load(folder_config(root, test_fraction=0.95, validation_fraction=0.5))
  np.testing.assert_array_equal(np.bincount(np.asarray(dataset.test_labels)), [5, 5, 5])
  assert len(dataset.train_labels) + len(dataset.val_labels) == 3


def test_folder_exclude_classes(image_folder, folder_dataset):
  root, colours = image_folder
  config = folder_config(root, exclude_classes=' 002.american-flag/ ,')
  assert data.describe_source(config) == ((8, 8, 3), 2)
  dataset = data.load(config)
  assert dataset.num_classes == 2
  np.testing.assert_array_equal(dataset.test_labels, [0, 1])
  # 003.backpack is now label 1; its test image is the same file as with three classes.
  assert_colours_match_labels(
    dataset.test_images,
    dataset.test_labels,
    dataset,
    [colours['001.ak47'], colours['003.backpack']],
  )
  np.testing.assert_array_equal(
    decoded_colours(dataset.test_images, dataset).round(),
    decoded_colours(folder_dataset.test_images, folder_dataset)[[0, 2]].round(),
  )


def test_folder_exclude_unknown_class_suggests_a_name(image_folder):
  root, _ = image_folder
  with pytest.raises(data.DataError) as info:
    data.describe_source(folder_config(root, exclude_classes='003.backpak'))
  assert "'003.backpak'" in str(info.value) and "'003.backpack'" in str(info.value)
  assert str(root) in str(info.value)


def test_folder_max_train_examples_decodes_only_what_is_used(image_folder, monkeypatch):
  root, _ = image_folder
  decoded = []
  read_image = data._read_image
  monkeypatch.setattr(
    data, '_read_image', lambda path, size: decoded.append(path) or read_image(path, size)
  )
  dataset = data.load(folder_config(root, max_train_examples=4))
  assert dataset.train_images.shape == (4, 8, 8, 3)
  assert len(decoded) == len(set(decoded)) == 4 + 2 + 3  # train + validation + test


@pytest.fixture
def folder_copy(image_folder, tmp_path):
  root = tmp_path / '256_ObjectCategories'
  shutil.copytree(image_folder[0], root)
  return root


@pytest.mark.parametrize('damage', ['garbage', 'truncated'])
def test_folder_corrupt_image_fails_naming_it(folder_copy, damage):
  bad = folder_copy / '002.american-flag' / '002_0004.jpg'
  if damage == 'garbage':
    bad.write_bytes(b'this is not a JPEG file at all' * 10)
  else:
    bad.write_bytes(bad.read_bytes()[:200])
  config = folder_config(folder_copy, test_fraction=0.5)
  # describe_source decodes nothing, so it does not notice.
  assert data.describe_source(config) == ((8, 8, 3), 3)
  with pytest.raises(data.DataError) as info:
    data.load(config)
  assert str(bad) in str(info.value)
  assert 'delete it' in str(info.value)


@pytest.mark.parametrize('keep', [0, 1])
def test_folder_class_without_enough_images(folder_copy, keep):
  class_dir = folder_copy / '003.backpack'
  images = [
    path
    for path in sorted(class_dir.iterdir())
    if path.suffix.lower() in ('.jpg', '.png') and not path.name.startswith('.')
  ]
  assert len(images) == IMAGES_PER_CLASS
  for path in images[keep:]:
    path.unlink()
  for call in (data.describe_source, data.load):
    with pytest.raises(data.DataError) as info:
      call(folder_config(folder_copy))
    message = str(info.value)
    assert str(class_dir) in message
    assert ('only one image file' if keep else 'no image files') in message
    assert 'data.exclude_classes' in message
  assert data.describe_source(folder_config(folder_copy, exclude_classes='003.backpack')) == (
    (8, 8, 3),
    2,
  )


def test_folder_missing_names_path_and_caltech_download(tmp_path):
  missing = str(tmp_path / '256_ObjectCategories')
  for call in (data.load, data.describe_source):
    with pytest.raises(data.DataError) as info:
      call(folder_config(missing))
    message = str(info.value)
    for expected in (missing, '256_ObjectCategories.tar', 'data.caltech.edu', 'data.path'):
      assert expected in message


def test_folder_without_class_subfolders(tmp_path):
  (tmp_path / 'photo.jpg').write_bytes(b'')
  with pytest.raises(data.DataError) as info:
    data.describe_source(folder_config(tmp_path))
  assert str(tmp_path) in str(info.value) and 'no class sub-folders' in str(info.value)


def test_folder_parent_of_dataset_folder_is_explained(image_folder):
  root, _ = image_folder
  with pytest.raises(data.DataError) as info:
    data.describe_source(folder_config(root.parent))
  assert 'only one class sub-folder' in str(info.value)
  assert f'set data.path to {root}' in str(info.value)


def test_folder_needs_image_size_and_path():
  with pytest.raises(data.DataError) as info:
    data.validate_data_config(make_config(source='folder', path='/data/256_ObjectCategories'))
  message = str(info.value)
  assert 'data.image_size' in message and '224' in message and '64' in message
  with pytest.raises(data.DataError, match='data.path') as info:
    data.validate_data_config(make_config(source='folder', image_size=64))
  assert '256_ObjectCategories' in str(info.value)


@pytest.mark.parametrize('field, value', [('image_size', 64), ('exclude_classes', '257.clutter')])
def test_folder_fields_refused_for_other_sources(field, value):
  with pytest.raises(data.DataError, match=f'data.{field}'):
    data.validate_data_config(make_config(**{field: value}))


@pytest.mark.parametrize('dtype', [np.float32, np.uint8])
def test_channel_stats_in_chunks_match_numpy(monkeypatch, dtype):
  monkeypatch.setattr(data, '_STATS_CHUNK_VALUES', 100)  # 48 values per image: 2 per chunk
  images = np.random.default_rng(0).integers(0, 256, (7, 4, 4, 3)).astype(dtype)
  scale = 255.0 if dtype == np.uint8 else 1.0
  mean, std = data._channel_stats(images)
  np.testing.assert_allclose(mean, images.mean(axis=(0, 1, 2), dtype=np.float64) / scale)
  np.testing.assert_allclose(std, images.std(axis=(0, 1, 2), dtype=np.float64) / scale)


# --------------------------------------------------------------------------- config validation


def test_default_config_is_valid():
  data.validate_data_config(data.default_data_config())


def test_unknown_source_lists_valid_ones():
  with pytest.raises(data.DataError) as info:
    data.validate_data_config(make_config(source='imagenet'))
  assert 'data.source' in str(info.value)
  for source in data.SOURCES:
    assert source in str(info.value)


def test_unknown_tfds_name_lists_valid_ones():
  for call in (data.validate_data_config, data.describe_source, data.load):
    with pytest.raises(data.DataError) as info:
      call(make_config(source='tfds', name='caltech256'))
    assert 'data.name' in str(info.value)
    for name in data.TFDS_DATASETS:
      assert name in str(info.value)


@pytest.mark.parametrize(
  'field, value',
  [
    ('validation_fraction', 0.0),
    ('validation_fraction', 1.0),
    ('validation_fraction', -0.5),
    ('validation_fraction', True),
    ('validation_fraction', '0.1'),
    ('test_fraction', 1.5),
    ('max_train_examples', -1),
    ('max_train_examples', 2.5),
    ('split_seed', -3),
    ('download', 'yes'),
    ('augment', 1),
    ('path', None),
    ('image_size', -8),
    ('image_size', 64.0),
    ('exclude_classes', ['257.clutter']),
  ],
)
def test_bad_field_is_named(field, value):
  config = types.SimpleNamespace(**{**data.default_data_config().to_dict(), field: value})
  with pytest.raises(data.DataError, match=f'data.{field}'):
    data.validate_data_config(config)


def test_idx_without_path_is_refused():
  with pytest.raises(data.DataError, match='data.path'):
    data.validate_data_config(make_config(source='idx'))


def test_tiny_validation_fraction_that_leaves_no_validation_data(tmp_path):
  write_idx_folder(tmp_path, tiny_idx_arrays())
  with pytest.raises(data.DataError, match='data.validation_fraction'):
    data.load(make_config(source='idx', path=str(tmp_path), validation_fraction=0.01))


# --------------------------------------------------------------------------- augmentation


@pytest.fixture(scope='module')
def batch():
  # Random content makes every shifted/flipped crop distinct, so each output identifies
  # its crop offset and flip uniquely.
  return np.random.default_rng(0).normal(size=(64, 6, 5, 2)).astype(np.float32)


def reference_crops(image, padding):
  padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  height, width = image.shape[:2]
  for dy in range(2 * padding + 1):
    for dx in range(2 * padding + 1):
      crop = padded[dy : dy + height, dx : dx + width]
      yield (dy, dx, False), crop
      yield (dy, dx, True), crop[:, ::-1]


def test_augment_matches_numpy_reference(batch):
  padding = 2
  out = np.asarray(data.augment_batch(jax.random.key(7), batch, crop_padding=padding))
  assert out.shape == batch.shape and out.dtype == batch.dtype
  choices = []
  for image, augmented in zip(batch, out):
    matches = [
      choice for choice, crop in reference_crops(image, padding) if np.array_equal(crop, augmented)
    ]
    assert len(matches) == 1
    choices.append(matches[0])
  offsets = {(dy, dx) for dy, dx, _ in choices}
  flips = [flipped for _, _, flipped in choices]
  assert len(offsets) > 5  # independent offsets per image, not one for the batch
  assert 0 < sum(flips) < len(flips)


def test_augment_jits_and_is_deterministic(batch):
  augment = jax.jit(functools.partial(data.augment_batch, crop_padding=2))
  key = jax.random.key(3)
  first = augment(key, batch)
  np.testing.assert_array_equal(first, augment(key, batch))
  np.testing.assert_array_equal(first, data.augment_batch(key, batch, crop_padding=2))
  assert not np.array_equal(first, augment(jax.random.key(4), batch))


def test_augment_switches(batch):
  key = jax.random.key(0)
  np.testing.assert_array_equal(data.augment_batch(key, batch, crop_padding=0, flip=False), batch)
  flipped_only = np.asarray(data.augment_batch(key, batch, crop_padding=0))
  for image, augmented in zip(batch, flipped_only):
    assert np.array_equal(augmented, image) or np.array_equal(augmented, image[:, ::-1])


def test_augment_rejects_unbatched_input(batch):
  with pytest.raises(ValueError, match='NHWC'):
    data.augment_batch(jax.random.key(0), batch[0])


# --------------------------------------------------------------------------- prepare_data


def test_prepare_data_reads_what_is_prepared(tfds):
  from n2n_jax import prepare_data  # pylint: disable=g-import-not-at-top

  out = io.StringIO()
  with tfds.testing.mock_data(num_examples=20):
    sizes = prepare_data.prepare(['mnist', 'cifar10'], out=out)
  assert sizes == {'mnist': (20, 20), 'cifar10': (20, 20)}
  assert out.getvalue().splitlines() == [
    'mnist: ready (20 training and 20 test images)',
    'cifar10: ready (20 training and 20 test images)',
  ]


def test_prepare_data_fails_in_one_line(tmp_path, capsys):
  from n2n_jax import prepare_data  # pylint: disable=g-import-not-at-top

  assert prepare_data.main(['mnist', 'imagenet']) == 2
  assert 'unknown TFDS dataset(s) imagenet; valid: mnist, ' in capsys.readouterr().err
  if __import__('importlib').util.find_spec('tensorflow') is None:
    assert prepare_data.main(['mnist', f'--data_dir={tmp_path}']) == 2
    err = capsys.readouterr().err
    assert (
      err.startswith("error: TFDS dataset 'mnist' is not prepared") and 'needs TensorFlow' in err
    )
