"""CIFAR-10/100 (and a synthetic stand-in) as uint8 NumPy arrays, from local copies or TFDS.

`load` returns a whole dataset in host memory: 50,000 CIFAR images take 154 MB, so the
training loop keeps them on the device and shuffles, batches and augments there.

A ``data_dir`` is recognised by its content, not by a flag. Accepted layouts:

* The packed JPEG copy of CIFAR-10 (``cifar10-jpeg.npz``: keys ``train_jpeg``,
  ``train_offsets``, ``train_labels``, the same for ``test``, and ``label_names``), or a
  directory holding exactly one such file. It is decoded with Pillow in parallel processes,
  once: the decoded arrays are cached in ``$LRSCHED_CACHE`` (default
  ``$XDG_CACHE_HOME/lrsched``, i.e. ``~/.cache/lrsched``), keyed by the SHA-256 of the
  file's content, so that later loads take well under a second. The worker processes
  are spawned (forking a process running JAX can deadlock), so a script that calls `load`
  needs the usual ``if __name__ == '__main__':`` guard.
* The official "python version" of CIFAR-10 or CIFAR-100 (Krizhevsky, 2009):
  ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``, their extracted folders
  ``cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
  ``batches.meta``) and ``cifar-100-python/`` (``train``, ``test``, ``meta``; fine labels),
  or a directory holding one of these.
* An image folder: ``train/<class>/*.png|jpg|jpeg`` and ``test/<class>/*``; classes are the
  sorted folder names; images must be 32x32 (grey and RGBA images are converted to RGB).

Without a ``data_dir``: the official archive in the cache (``downloads/``), else a copy that
tensorflow-datasets (optional) has prepared, else the official archive, downloaded into the
cache and checked against its published MD5 (`experiments.data.download`; no TensorFlow).

Every image array is ``uint8 [N, 32, 32, 3]`` (HWC, RGB), every label array ``int32 [N]``,
and each split is sorted by class (stable, so the source's order within a class is kept):
every source gives the same layout, and the training loop shuffles on the device anyway.

The readers live beside this module: `local` recognises a ``data_dir`` and hands it to
`jpeg_npz`, `cifar_python` or `image_folder` (the last two decode with `decoding`);
`default` is the path without one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from experiments.data._common import IMAGE_SHAPE, DataError, _short_list, _Splits
from experiments.data.default import _load_default
from experiments.data.local import _load_local

DATASETS = ('cifar10', 'cifar100', 'synthetic')
"""The names `load` accepts."""

NUM_CLASSES = {'cifar10': 10, 'cifar100': 100, 'synthetic': 10}


class Dataset(NamedTuple):
  """A whole dataset in host memory.

  Attributes:
    train_images: uint8 ``[N, 32, 32, 3]``, sorted by class.
    train_labels: int32 ``[N]``.
    test_images: uint8 ``[M, 32, 32, 3]``, sorted by class.
    test_labels: int32 ``[M]``.
    num_classes: the number of classes.
    label_names: one name per class.
    mean: float32 ``[3]``, the per-channel mean of ``train_images`` in 0..255 units.
    std: float32 ``[3]``, the per-channel standard deviation of ``train_images``.
    source: where the data came from, in words (for logs and reports).
  """
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  label_names: tuple[str, ...]
  mean: np.ndarray
  std: np.ndarray
  source: str

  def fingerprint(self) -> str:
    """A short hash of the examples (all labels, a strided sample of 256 images per split,
    the shapes), that tells two datasets apart whatever path they were read from."""
    digest = hashlib.sha256()
    for images, labels in ((self.train_images, self.train_labels),
                           (self.test_images, self.test_labels)):
      digest.update(repr((images.shape, labels.shape)).encode())
      digest.update(np.ascontiguousarray(labels, np.int64).tobytes())
      stride = max(1, len(images) // 256)
      digest.update(np.ascontiguousarray(images[::stride]).tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------
# The entry point


def load(dataset: str, data_dir: str | os.PathLike[str] | None = None, *,
         train_examples: int | None = None, seed: int = 0,
         synthetic_size: tuple[int, int] | None = None) -> Dataset:
  """Loads a whole dataset as NumPy arrays.

  Args:
    dataset: one of `DATASETS`: ``'cifar10'``, ``'cifar100'`` or ``'synthetic'`` (random,
      learnable data of CIFAR-10's shapes, for tests and smoke runs).
    data_dir: a local copy of CIFAR (see the module docstring for the accepted layouts).
      None or '': load it with tensorflow-datasets, which needs the data already prepared in its
      data dir or a network connection (and then TensorFlow, to prepare it). Must be None
      for ``'synthetic'``.
    train_examples: keep a class-balanced subset of this many training images
      (``train_examples / num_classes`` per class, chosen with ``seed``), as in the paper's
      reduced-data experiments. The test set is kept whole.
    seed: chooses the subset, and the data of ``'synthetic'``.
    synthetic_size: ``(train, test)`` sizes of ``'synthetic'``; default ``(50000, 10000)``.
      Ignored for the other datasets.

  Returns:
    A `Dataset`; ``mean`` and ``std`` are those of the training images it holds.

  Raises:
    DataError: a bad argument, or data that is missing, unrecognised or inconsistent.
  """
  if dataset not in DATASETS:
    raise DataError(f'unknown dataset {dataset!r}; valid: {", ".join(DATASETS)}')
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise DataError(f'seed must be a non-negative integer, got {seed!r}')
  if data_dir is not None and not os.fspath(data_dir):
    data_dir = None  # an empty --data_dir= means: not given
  if train_examples is not None and (
      isinstance(train_examples, bool) or not isinstance(train_examples, (int, np.integer))
      or train_examples < 1):
    raise DataError(f'train_examples must be a positive integer, got {train_examples!r}')
  if dataset == 'synthetic':
    if data_dir is not None:
      raise DataError(f'data_dir ({data_dir}) is not used with dataset=synthetic; drop it')
    splits = _synthetic(seed, (50_000, 10_000) if synthetic_size is None else synthetic_size)
  elif data_dir is None:
    splits = _load_default(dataset)
  else:
    splits = _load_local(dataset, Path(os.path.expanduser(os.fspath(data_dir))))

  num_classes = len(splits.label_names)
  if num_classes != NUM_CLASSES[dataset]:
    raise DataError(
        f'dataset={dataset} needs {NUM_CLASSES[dataset]} classes, but {splits.source} has '
        f'{num_classes} ({_short_list(splits.label_names)})')
  train_images, train_labels = _by_class(splits.train_images, splits.train_labels,
                                         num_classes, 'training set of ' + splits.source)
  test_images, test_labels = _by_class(splits.test_images, splits.test_labels,
                                       num_classes, 'test set of ' + splits.source)
  source = splits.source
  if train_examples is not None:
    keep = _balanced_subset(train_labels, num_classes, int(train_examples), seed)
    train_images, train_labels = train_images[keep], train_labels[keep]
    source += f'; class-balanced subset of {train_examples} training images (seed {seed})'
  mean, std = channel_stats(train_images)
  return Dataset(train_images, train_labels, test_images, test_labels, num_classes,
                 tuple(splits.label_names), mean, std, source)


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and standard deviation of uint8 images, exactly, in 0..255 units.

  Counts each channel's 256 values instead of converting the images to float, which would
  take 8 bytes per pixel (1.2 GB for CIFAR's training set).

  Args:
    images: uint8 ``[..., C]``.

  Returns:
    ``(mean, std)``, float32 ``[C]`` each.
  """
  if images.dtype != np.uint8:
    raise TypeError(f'images must be uint8, got {images.dtype}')
  channels = images.reshape(-1, images.shape[-1])
  counts = np.zeros((channels.shape[1], 256), np.int64)
  for lo in range(0, channels.shape[0], 1 << 22):  # bincount copies its input to intp
    chunk = channels[lo:lo + (1 << 22)]
    for c in range(channels.shape[1]):
      counts[c] += np.bincount(chunk[:, c], minlength=256)
  values = np.arange(256, dtype=np.float64)
  total = counts.sum(axis=1)
  mean = (counts @ values) / total
  std = np.sqrt(np.sum(counts * (values - mean[:, None]) ** 2, axis=1) / total)
  return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def _by_class(images: np.ndarray, labels: np.ndarray, num_classes: int,
              what: str) -> tuple[np.ndarray, np.ndarray]:
  """Checks one split and sorts it by class (stably)."""
  labels = np.asarray(labels)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
    raise DataError(f'{what}: images must be uint8 [N, 32, 32, 3], got {images.dtype} '
                    f'{list(images.shape)}')
  if labels.shape != images.shape[:1]:
    raise DataError(f'{what}: {images.shape[0]} images but {labels.size} labels')
  if images.shape[0] == 0:
    raise DataError(f'{what}: no images')
  if labels.min() < 0 or labels.max() >= num_classes:
    raise DataError(f'{what}: labels must lie in [0, {num_classes}), found '
                    f'{labels.min()}..{labels.max()}')
  labels = labels.astype(np.int32)
  order = np.argsort(labels, kind='stable')
  if np.all(order[1:] > order[:-1]):  # already sorted (the packed npz): no copy
    return np.ascontiguousarray(images), labels
  return np.ascontiguousarray(images[order]), labels[order]


def _balanced_subset(labels: np.ndarray, num_classes: int, n: int, seed: int) -> np.ndarray:
  """Sorted indices of ``n / num_classes`` examples of each class, chosen with ``seed``."""
  if n % num_classes:
    raise DataError(f'train_examples={n} must be divisible by the {num_classes} classes, '
                    f'for a class-balanced subset')
  if n > labels.size:
    raise DataError(f'train_examples={n} is more than the {labels.size} training images')
  per_class = n // num_classes
  counts = np.bincount(labels, minlength=num_classes)
  if counts.min() < per_class:
    c = int(counts.argmin())
    raise DataError(f'train_examples={n} needs {per_class} images per class, but class {c} '
                    f'has only {counts[c]}')
  rng = np.random.default_rng(seed)
  keep = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
          for c in range(num_classes)]
  return np.sort(np.concatenate(keep))


# --------------------------------------------------------------------------------------
# Synthetic data


def _synthetic(seed: int, size: tuple[int, int]) -> _Splits:
  """Learnable random data: per class a smooth colour pattern, plus Gaussian noise.

  The pattern (4x4 random colours blown up to 32x32) has a pixel standard deviation of
  about 28 around 128 and the noise one of 48: no single pixel tells the class, the
  whole image does, so a falling loss is meaningful and accuracy can approach 100%.
  """
  try:
    train_size, test_size = (int(s) for s in size)
    ok = all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size)
  except (TypeError, ValueError):
    ok = False
  if not ok or train_size < 1 or test_size < 1:
    raise DataError(f'synthetic_size must be two positive integers (train, test), got {size!r}')
  num_classes = NUM_CLASSES['synthetic']
  pattern_seed, train_seed, test_seed = np.random.SeedSequence(seed).spawn(3)
  coarse = np.random.default_rng(pattern_seed).uniform(-48.0, 48.0, (num_classes, 4, 4, 3))
  patterns = (128.0 + coarse.repeat(8, axis=1).repeat(8, axis=2)).astype(np.float32)

  def split(n: int, seq: np.random.SeedSequence) -> tuple[np.ndarray, np.ndarray]:
    labels = np.sort(np.arange(n) % num_classes).astype(np.int32)
    rng = np.random.default_rng(seq)
    images = np.empty((n, *IMAGE_SHAPE), np.uint8)
    for lo in range(0, n, 4096):  # bounded float32 scratch memory
      hi = min(lo + 4096, n)
      noise = rng.standard_normal((hi - lo, *IMAGE_SHAPE), dtype=np.float32) * 48.0
      images[lo:hi] = np.clip(np.rint(patterns[labels[lo:hi]] + noise), 0, 255)
    return images, labels

  train_images, train_labels = split(train_size, train_seed)
  test_images, test_labels = split(test_size, test_seed)
  return _Splits(train_images, train_labels, test_images, test_labels,
                 tuple(f'class_{c}' for c in range(num_classes)),
                 f'synthetic data (seed {seed}; {num_classes} classes, each a colour '
                 'pattern plus Gaussian noise)')
