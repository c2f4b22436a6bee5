"""Download and prepare TFDS datasets ahead of runs, in one command:

  python -m n2n_jax.prepare_data [NAME ...] [--data_dir=DIR]

NAME is any of data.TFDS_DATASETS (mnist, fashion_mnist, kmnist, cifar10,
cifar100, svhn_cropped); without names, all of them. Needs TensorFlow
(pip install -e '.[tfds]') and internet, and says so within seconds when
either is missing. Prepared datasets are read later without TensorFlow, so a
cloud machine can prepare once and copy the folder (~/tensorflow_datasets, or
DIR) to others. A run with data.download='auto' (the default) prepares a
missing dataset itself; this is for doing it up front.
"""

from __future__ import annotations

import argparse
import sys

from n2n_jax import data


def prepare(names, data_dir: str = '', out=sys.stdout) -> dict:
  """Prepare (or find prepared) each TFDS dataset in `names`; returns
  {name: (training images, test images)}. Raises data.DataError."""
  unknown = [n for n in names if n not in data.TFDS_DATASETS]
  if unknown:
    raise data.DataError(
      f'unknown TFDS dataset(s) {", ".join(unknown)}; valid: {", ".join(data.TFDS_DATASETS)}'
    )
  sizes = {}
  for name in names:
    config = data.default_data_config()
    config.update(source='tfds', name=name, data_dir=data_dir, download='on')
    dataset = data.load(config)
    sizes[name] = (
      dataset.train_images.shape[0] + dataset.val_images.shape[0],
      dataset.test_images.shape[0],
    )
    print(
      f'{name}: ready ({sizes[name][0]:,} training and {sizes[name][1]:,} test images)',
      file=out,
      flush=True,
    )
  return sizes


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog='python -m n2n_jax.prepare_data', description=__doc__.split('\n\n')[0]
  )
  parser.add_argument(
    'names',
    nargs='*',
    default=list(data.TFDS_DATASETS),
    help=f'datasets to prepare (default: all of {", ".join(data.TFDS_DATASETS)})',
  )
  parser.add_argument(
    '--data_dir',
    default='',
    help="TFDS data folder (default: TFDS's own, "
    '~/tensorflow_datasets); pass the same as --config.data.data_dir later',
  )
  args = parser.parse_args(argv)
  try:
    prepare(args.names, args.data_dir)
  except data.DataError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
