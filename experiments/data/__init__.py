"""CIFAR-10/100 and synthetic data on the host, augmentation and normalisation on the device.

  ds = data.load('cifar10', 'data/cifar10-jpeg.npz', train_examples=20_000, seed=0)
  x = data.normalize(data.augment(images, key, 'flip'), ds.mean, ds.std, jnp.bfloat16)
"""

from experiments.data._common import LAYOUTS, DataError
from experiments.data.augment import (
    AUGMENTATIONS,
    PAD_MODES,
    augment,
    normalize,
    random_crop,
    random_flip,
)
from experiments.data.jpeg_npz import cache_dir
from experiments.data.sources import DATASETS, Dataset, channel_stats, load
