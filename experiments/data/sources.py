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
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib
import importlib.util
import io
import logging
import multiprocessing
import os
import pickle
import socket
import tarfile
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from experiments.data import download

log = logging.getLogger(__name__)

DATASETS = ('cifar10', 'cifar100', 'synthetic')
"""The names `load` accepts."""

IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = {'cifar10': 10, 'cifar100': 100, 'synthetic': 10}

LAYOUTS = (
    'the packed JPEG CIFAR-10 .npz (or a directory holding exactly one); '
    'cifar-10-python.tar.gz or cifar-100-python.tar.gz, or their extracted folders '
    'cifar-10-batches-py/ or cifar-100-python/ (or a directory holding one of these); '
    'an image folder with train/<class>/*.png|jpg|jpeg and test/<class>/*'
)
_NO_DATA_HINT = (
    'pass --data_dir=<a local copy> (accepted: {layouts}), or use --dataset=synthetic'
)

# The host the official archives come from (`download.SOURCES`; TFDS uses it too), probed
# before any download starts. $LRSCHED_TFDS_PROBE_HOST (host:port) probes another (a proxy;
# tests use a closed port).
_DOWNLOAD_HOST = ('www.cs.toronto.edu', 443)
_PROBE_TIMEOUT_S = 3.0

_NPZ_KEYS = ('train_jpeg', 'train_offsets', 'train_labels', 'test_jpeg', 'test_offsets',
             'test_labels', 'label_names')
_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
_CONVERTIBLE_MODES = ('1', 'L', 'LA', 'P', 'PA', 'RGB', 'RGBA', 'RGBX', 'CMYK', 'YCbCr')
_CACHE_VERSION = 1
# Below this many images, decoding in-process beats starting worker processes.
_MIN_IMAGES_PER_WORKER = 4096


class DataError(ValueError):
  """A data source is missing, unrecognised or inconsistent, or an argument of `load` is bad.

  The message is one line, fit to show a user without a traceback.
  """


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


class _Splits(NamedTuple):
  """What a reader returns, before the checks and statistics `load` adds."""
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  label_names: tuple[str, ...]
  source: str


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


def _short_list(names: Sequence[str], limit: int = 5) -> str:
  names = list(names)
  more = f', ... ({len(names) - limit} more)' if len(names) > limit else ''
  return ', '.join(names[:limit]) + more


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


# --------------------------------------------------------------------------------------
# Local copies: recognising the layout


def _load_local(dataset: str, path: Path) -> _Splits:
  if not path.exists():
    raise DataError(f'data_dir {path} does not exist; accepted: {LAYOUTS}')
  kind, target = _recognise(dataset, path)
  reader: Callable[[Path], _Splits] = {
      'jpeg-npz': _read_jpeg_npz,
      'python-tar': _read_python_tar,
      'cifar10-python-dir': _read_cifar10_python_dir,
      'cifar100-python-dir': _read_cifar100_python_dir,
      'image-folder': _read_image_folder,
  }[kind]
  return reader(target)


def _recognise(dataset: str, path: Path) -> tuple[str, Path]:
  """(kind, path) of the local copy at ``path``, from what the path holds."""
  if path.is_file():
    kind = _file_kind(path)
    if kind is None:
      raise DataError(f'{path} is not a recognised CIFAR file; accepted: {LAYOUTS}')
    return kind, path
  kind = _dir_kind(path)
  if kind is not None:
    return kind, path
  # A directory holding one of the layouts, e.g. where the official archive was extracted.
  candidates, damaged = [], []
  for child in sorted(path.iterdir()):
    if child.is_dir() and child.name in ('cifar-10-batches-py', 'cifar-100-python'):
      kind = _dir_kind(child)
    elif child.is_file() and (child.name in ('cifar-10-python.tar.gz', 'cifar-100-python.tar.gz')
                              or child.suffix == '.npz'):
      try:
        kind = _file_kind(child)
      except DataError as e:  # reported only if nothing else is usable
        damaged.append(e)
        continue
    else:
      continue
    if kind is not None:
      candidates.append((kind, child))
  if not candidates and damaged:
    raise damaged[0]
  if len(candidates) > 1:  # prefer the one made for this dataset, extracted if it is there
    candidates = [c for c in candidates if _made_for(c, dataset)] or candidates
    if any(kind.endswith('-python-dir') for kind, _ in candidates):
      candidates = [c for c in candidates if c[0] != 'python-tar']
  if len(candidates) == 1:
    return candidates[0]
  if candidates:
    names = ', '.join(c.name for _, c in candidates)
    raise DataError(f'{path} holds several CIFAR copies ({names}); pass the path of one')
  raise DataError(f'{path} holds no recognised CIFAR copy; accepted: {LAYOUTS}')


def _made_for(candidate: tuple[str, Path], dataset: str) -> bool:
  kind, path = candidate
  if kind in ('jpeg-npz', 'cifar10-python-dir') or path.name == 'cifar-10-python.tar.gz':
    return dataset == 'cifar10'
  return dataset == 'cifar100'


def _file_kind(path: Path) -> str | None:
  """'jpeg-npz', 'python-tar' or None, from the file's content."""
  with open(path, 'rb') as f:
    magic = f.read(4)
  if magic == b'PK\x03\x04' or path.suffix == '.npz':
    try:
      with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
    except (zipfile.BadZipFile, OSError) as e:
      if path.suffix == '.npz':  # a damaged packed file: say so rather than "unrecognised"
        raise DataError(f'{path}: cannot read the .npz ({_reason(e)}); is it truncated?') from e
      return None
    return 'jpeg-npz' if {k + '.npy' for k in _NPZ_KEYS} <= names else None
  if tarfile.is_tarfile(path):
    return 'python-tar'
  return None


def _dir_kind(path: Path) -> str | None:
  """The layout of the directory ``path`` itself, or None."""
  if all((path / name).is_file() for name in _CIFAR10_FILES):
    return 'cifar10-python-dir'
  if all((path / name).is_file() for name in _CIFAR100_FILES):
    return 'cifar100-python-dir'
  if (path / 'train').is_dir() and (path / 'test').is_dir():
    return 'image-folder'
  return None


def _reason(e: BaseException) -> str:
  """An exception as a short single-line reason."""
  text = ' '.join(str(e).split()) or type(e).__name__
  return text if len(text) <= 200 else text[:197] + '...'


# --------------------------------------------------------------------------------------
# The packed JPEG CIFAR-10 (.npz)


def _read_jpeg_npz(path: Path) -> _Splits:
  """Decodes the packed JPEG CIFAR-10, through the cache."""
  source = f'CIFAR-10 (JPEG copy) from {path}'
  # Keyed by content (hashing 18 MB takes tens of ms): copies of the file share one cache,
  # and a changed file never meets a stale one.
  digest = hashlib.sha256(f'{_CACHE_VERSION}|'.encode())
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  key = digest.hexdigest()[:24]
  cache_file = cache_dir() / f'cifar10-jpeg-{key}.npz'
  cached = _read_cache(cache_file, key)
  if cached is not None:
    return _Splits(*cached, source=source)
  splits = _decode_jpeg_npz(path, source)
  _write_cache(cache_file, key, splits)
  return splits


def _decode_jpeg_npz(path: Path, source: str) -> _Splits:
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in _NPZ_KEYS}
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
    raise DataError(f'{path}: cannot read the .npz ({_reason(e)}); is it truncated?') from e
  names = arrays['label_names']
  if names.ndim != 1 or names.dtype.kind != 'U':
    raise DataError(f'{path}: label_names must be a 1-D string array, got {names.dtype} '
                    f'{list(names.shape)}')
  parts = []
  for split in ('train', 'test'):
    blob, offsets, labels = (arrays[f'{split}_{k}'] for k in ('jpeg', 'offsets', 'labels'))
    where = f'{path}: {split}'
    if blob.dtype != np.uint8 or blob.ndim != 1:
      raise DataError(f'{where}_jpeg must be 1-D uint8, got {blob.dtype} {list(blob.shape)}')
    if labels.ndim != 1 or labels.dtype.kind not in 'iu':
      raise DataError(f'{where}_labels must be 1-D integers, got {labels.dtype} '
                      f'{list(labels.shape)}')
    if offsets.ndim != 1 or offsets.dtype.kind not in 'iu' or offsets.size != labels.size + 1:
      raise DataError(f'{where}_offsets must be 1-D integers, one more than the '
                      f'{labels.size} labels; got {offsets.dtype} {list(offsets.shape)}')
    if offsets[0] != 0 or offsets[-1] != blob.size or np.any(np.diff(offsets) <= 0):
      raise DataError(f'{where}_offsets must rise strictly from 0 to the {blob.size} bytes of '
                      f'{split}_jpeg; is the file truncated?')
    if labels.size and labels.max() >= names.size:
      raise DataError(f'{where}_labels go up to {labels.max()} but there are {names.size} '
                      f'label_names')
    parts.append((blob, offsets.astype(np.int64),
                  lambda i, where=where: f'{where} image {i}'))
  train_images, test_images = _decode_all(parts)
  return _Splits(train_images, arrays['train_labels'].astype(np.int32), test_images,
                 arrays['test_labels'].astype(np.int32), tuple(str(n) for n in names), source)


def cache_dir() -> Path:
  """Where decoded arrays are cached: ``$LRSCHED_CACHE``, else ``~/.cache/lrsched``."""
  if os.environ.get('LRSCHED_CACHE'):
    return Path(os.path.expanduser(os.environ['LRSCHED_CACHE']))
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join('~', '.cache')
  return Path(os.path.expanduser(base)) / 'lrsched'


def _read_cache(cache_file: Path, key: str) -> tuple | None:
  """The cached arrays, or None when missing or damaged (then the caller rebuilds it)."""
  if not cache_file.is_file():
    return None
  try:
    # Every member is read in full, so zipfile checks its CRC-32: damage is detected.
    with np.load(cache_file, allow_pickle=False) as z:
      if str(z['key']) != key:
        raise ValueError('key mismatch')
      train_images, train_labels = z['train_images'], z['train_labels']
      test_images, test_labels = z['test_images'], z['test_labels']
      names = tuple(str(n) for n in z['label_names'])
    for images, labels in ((train_images, train_labels), (test_images, test_labels)):
      if (images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE
          or labels.shape != images.shape[:1] or labels.dtype != np.int32):
        raise ValueError('unexpected shapes')
  except Exception as e:  # any damage at all means: rebuild
    log.warning('ignoring the damaged cache file %s (%s); decoding again', cache_file,
                _reason(e))
    return None
  return train_images, train_labels, test_images, test_labels, names


def _write_cache(cache_file: Path, key: str, splits: _Splits) -> None:
  """Writes the cache atomically (a temporary file, then a rename); failures only warn."""
  tmp = None
  try:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_file.parent, prefix=cache_file.stem,
                                     suffix='.tmp', delete=False) as f:
      tmp = f.name
      np.savez(f, key=np.asarray(key), train_images=splits.train_images,
               train_labels=splits.train_labels, test_images=splits.test_images,
               test_labels=splits.test_labels, label_names=np.asarray(splits.label_names))
    os.replace(tmp, cache_file)
  except OSError as e:
    log.warning('could not write the cache file %s (%s); the next load decodes again',
                cache_file, _reason(e))
    if tmp is not None and os.path.exists(tmp):
      os.unlink(tmp)


# --------------------------------------------------------------------------------------
# Decoding images in parallel


def _decode_chunk(data: bytes, offsets: np.ndarray) -> tuple[np.ndarray, tuple[int, str] | None]:
  """Decodes the images ``data[offsets[i]:offsets[i+1]]`` to uint8 ``[n, 32, 32, 3]``.

  Runs in worker processes. Returns the images and, on the first failure, ``(index,
  reason)`` instead of raising (the caller names the file).
  """
  from PIL import Image  # Pillow is only needed when decoding

  n = len(offsets) - 1
  out = np.empty((n, *IMAGE_SHAPE), np.uint8)
  for i in range(n):
    try:
      with Image.open(io.BytesIO(data[offsets[i]:offsets[i + 1]])) as im:
        if im.size != IMAGE_SHAPE[:2]:
          return out, (i, f'is {im.size[0]}x{im.size[1]}, not 32x32')
        if im.mode not in _CONVERTIBLE_MODES:
          return out, (i, f'has the unsupported image mode {im.mode}')
        out[i] = np.asarray(im if im.mode == 'RGB' else im.convert('RGB'))
    except Exception as e:  # Pillow raises many types on bad data
      return out, (i, f'cannot be decoded ({_reason(e)})')
  return out, None


def _worker_count(num_images: int) -> int:
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    cpus = os.cpu_count() or 1
  return max(1, min(cpus, num_images // _MIN_IMAGES_PER_WORKER))


def _decode_all(parts: Sequence[tuple[np.ndarray, np.ndarray, Callable[[int], str]]],
                workers: int | None = None) -> list[np.ndarray]:
  """Decodes several packed image sequences, all in one pool of processes.

  Args:
    parts: ``(blob, offsets, name_of)``: image ``i`` is ``blob[offsets[i]:offsets[i+1]]``
      and ``name_of(i)`` names it in errors.
    workers: processes to use; default one per CPU, at most one per 4096 images. 1 decodes
      in this process.

  Returns:
    uint8 ``[n, 32, 32, 3]`` per part.
  """
  total = sum(len(offsets) - 1 for _, offsets, _ in parts)
  workers = _worker_count(total) if workers is None else workers
  tasks = []  # (part, first index, data, relative offsets)
  for p, (blob, offsets, _) in enumerate(parts):
    n = len(offsets) - 1
    pieces = max(1, min(n, 4 * workers * n // max(total, 1)))  # ~4 tasks per worker
    for k in range(pieces):
      lo, hi = k * n // pieces, (k + 1) * n // pieces
      rel = offsets[lo:hi + 1] - offsets[lo]
      tasks.append((p, lo, blob[offsets[lo]:offsets[hi]].tobytes(), rel))
  results = None
  if workers > 1:
    # 'spawn': forking a process that runs JAX (multithreaded) can deadlock.
    try:
      with concurrent.futures.ProcessPoolExecutor(
          workers, mp_context=multiprocessing.get_context('spawn')) as pool:
        results = list(pool.map(_decode_chunk, [t[2] for t in tasks], [t[3] for t in tasks]))
    except (concurrent.futures.process.BrokenProcessPool, OSError) as e:
      log.warning('decoding in worker processes failed (%s); decoding in this process',
                  _reason(e))
  if results is None:
    results = [_decode_chunk(t[2], t[3]) for t in tasks]
  outputs = [np.empty((len(offsets) - 1, *IMAGE_SHAPE), np.uint8) for _, offsets, _ in parts]
  for (p, lo, _, rel), (images, error) in zip(tasks, results, strict=True):
    if error is not None:
      raise DataError(f'{parts[p][2](lo + error[0])} {error[1]}')
    outputs[p][lo:lo + len(rel) - 1] = images
  return outputs


# --------------------------------------------------------------------------------------
# The official python version


_CIFAR10_FILES = (*(f'data_batch_{i}' for i in range(1, 6)), 'test_batch', 'batches.meta')
_CIFAR100_FILES = ('train', 'test', 'meta')
_TAR_PREFIXES = {'cifar-10-batches-py': _CIFAR10_FILES, 'cifar-100-python': _CIFAR100_FILES}


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles dicts of lists, bytes and NumPy arrays, and refuses every other global.

  The official CIFAR files are pickles, and unpickling untrusted data can run arbitrary
  code; allowing only NumPy's array reconstruction closes that door.
  """

  _ALLOWED = frozenset({
      ('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode'),
      ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
      ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
  })

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f'refusing to load the global {module}.{name}')
    if module.startswith('numpy.core.'):  # the NumPy 1 name; NumPy 2 warns on it
      try:
        return getattr(importlib.import_module('numpy._core.' + module[11:]), name)
      except ImportError:
        pass
    return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict[bytes, Any]:
  """One official CIFAR pickle. These are trusted files, read with a restricted unpickler."""
  try:
    obj = _ArrayUnpickler(io.BytesIO(data), encoding='bytes').load()
  except Exception as e:  # a damaged pickle raises anything
    raise DataError(f'{where}: not a CIFAR python-version pickle ({_reason(e)})') from e
  if not isinstance(obj, dict):
    raise DataError(f'{where}: expected a dict, got {type(obj).__name__}')
  return obj


def _batch(obj: Mapping[bytes, Any], label_key: bytes, where: str) -> tuple[np.ndarray,
                                                                             np.ndarray]:
  """(images, labels) of one python-version batch."""
  if b'data' not in obj or label_key not in obj:
    raise DataError(f'{where}: expected the keys data and {label_key.decode()}, found '
                    f'{", ".join(sorted(k.decode(errors="replace") for k in obj))}')
  images = np.asarray(obj[b'data'])
  labels = np.asarray(obj[label_key])
  if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
    raise DataError(f'{where}: data must be uint8 [N, 3072], got {images.dtype} '
                    f'{list(images.shape)}')
  if labels.shape != images.shape[:1] or labels.dtype.kind not in 'iu':
    raise DataError(f'{where}: expected {images.shape[0]} integer labels, got {labels.dtype} '
                    f'{list(labels.shape)}')
  # Rows hold the red, green and blue 32x32 planes in turn.
  return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int32)


def _names(obj: Mapping[bytes, Any], key: bytes, where: str) -> tuple[str, ...]:
  names = obj.get(key)
  if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
    raise DataError(f'{where}: expected a list of names under {key.decode()}')
  return tuple(n.decode() if isinstance(n, bytes) else n for n in names)


def _python_splits(files: Mapping[str, bytes], prefix: str, source: str) -> _Splits:
  """Parses the files of ``cifar-10-batches-py`` or ``cifar-100-python`` (name -> bytes)."""
  where = lambda name: f'{source}: {name}'
  if prefix == 'cifar-10-batches-py':
    train = [_batch(_unpickle(files[f], where(f)), b'labels', where(f))
             for f in _CIFAR10_FILES[:5]]
    test = _batch(_unpickle(files['test_batch'], where('test_batch')), b'labels',
                  where('test_batch'))
    names = _names(_unpickle(files['batches.meta'], where('batches.meta')), b'label_names',
                   where('batches.meta'))
  else:
    train = [_batch(_unpickle(files['train'], where('train')), b'fine_labels', where('train'))]
    test = _batch(_unpickle(files['test'], where('test')), b'fine_labels', where('test'))
    names = _names(_unpickle(files['meta'], where('meta')), b'fine_label_names', where('meta'))
  return _Splits(np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train]),
                 test[0], test[1], names, source)


def _read_python_tar(path: Path) -> _Splits:
  """Reads the official archive without extracting it to disk."""
  files: dict[str, dict[str, bytes]] = {prefix: {} for prefix in _TAR_PREFIXES}
  try:
    with tarfile.open(path) as tar:
      for member in tar:
        prefix, _, name = member.name.removeprefix('./').partition('/')
        if member.isfile() and name in _TAR_PREFIXES.get(prefix, ()):
          files[prefix][name] = tar.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    raise DataError(f'{path}: cannot read the archive ({_reason(e)}); is it truncated?') from e
  for prefix, names in _TAR_PREFIXES.items():
    if set(names) <= files[prefix].keys():
      label = 'CIFAR-10' if prefix == 'cifar-10-batches-py' else 'CIFAR-100'
      return _python_splits(files[prefix], prefix, f'{label} (python version) from {path}')
  raise DataError(f'{path} is an archive but not cifar-10-python.tar.gz or '
                  f'cifar-100-python.tar.gz (expected cifar-10-batches-py/{{'
                  f'{",".join(_CIFAR10_FILES)}}} or cifar-100-python/{{train,test,meta}}); '
                  f'accepted: {LAYOUTS}')


def _read_python_dir(path: Path, prefix: str, label: str) -> _Splits:
  files = {name: (path / name).read_bytes() for name in _TAR_PREFIXES[prefix]}
  return _python_splits(files, prefix, f'{label} (python version) from {path}')


def _read_cifar10_python_dir(path: Path) -> _Splits:
  return _read_python_dir(path, 'cifar-10-batches-py', 'CIFAR-10')


def _read_cifar100_python_dir(path: Path) -> _Splits:
  return _read_python_dir(path, 'cifar-100-python', 'CIFAR-100')


# --------------------------------------------------------------------------------------
# Image folders


def _read_image_folder(path: Path) -> _Splits:
  """``train/<class>/*`` and ``test/<class>/*``, classes in sorted order."""
  classes = None
  parts, labels = [], []
  for split in ('train', 'test'):
    split_classes = sorted(d.name for d in (path / split).iterdir()
                           if d.is_dir() and not d.name.startswith('.'))
    if not split_classes:
      raise DataError(f'{path / split} has no class folders; expected {split}/<class>/*.png')
    if classes is None:
      classes = split_classes
    elif split_classes != classes:
      raise DataError(f'{path}: test/ has the classes {_short_list(split_classes)} but train/ '
                      f'has {_short_list(classes)}')
    files, split_labels = [], []
    for label, name in enumerate(classes):
      found = sorted(f for f in (path / split / name).iterdir()
                     if f.is_file() and f.suffix.lower() in _IMAGE_SUFFIXES)
      if not found:
        raise DataError(f'{path / split / name} holds no .png, .jpg or .jpeg image')
      files += found
      split_labels += [label] * len(found)
    blobs = [f.read_bytes() for f in files]
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    blob = np.frombuffer(b''.join(blobs), np.uint8)
    parts.append((blob, offsets, lambda i, files=files: str(files[i])))
    labels.append(np.asarray(split_labels, np.int32))
  train_images, test_images = _decode_all(parts)
  return _Splits(train_images, labels[0], test_images, labels[1], tuple(classes),
                 f'image folder {path}')


# --------------------------------------------------------------------------------------
# tensorflow-datasets


def _probe_address() -> tuple[str, int]:
  """The download host, or ``$LRSCHED_TFDS_PROBE_HOST`` (``host:port``) if set."""
  value = os.environ.get('LRSCHED_TFDS_PROBE_HOST')
  if not value:
    return _DOWNLOAD_HOST
  host, _, port = value.rpartition(':')
  if not host or not port.isdigit():
    raise DataError(f'LRSCHED_TFDS_PROBE_HOST must read host:port, got {value!r}')
  return host, int(port)


def _network_reachable(address: tuple[str, int] | None = None,
                       timeout: float = _PROBE_TIMEOUT_S) -> bool:
  """Whether a TCP connection to ``address`` (default: `_probe_address`) opens in time.

  Runs in a daemon thread, because the name lookup inside ``create_connection`` does not
  honour the socket timeout and can block for much longer on a machine with no network.
  """
  address = _probe_address() if address is None else address
  result: list[bool] = []

  def connect() -> None:
    try:
      with socket.create_connection(address, timeout=timeout):
        result.append(True)
    except OSError:
      result.append(False)

  thread = threading.Thread(target=connect, daemon=True, name='lrsched-network-probe')
  thread.start()
  thread.join(timeout)
  return bool(result) and result[0]


def _have_tensorflow() -> bool:
  return importlib.util.find_spec('tensorflow') is not None


def _load_default(dataset: str) -> _Splits:
  """CIFAR with no --data_dir: the official archive in the cache, else a copy that
  tensorflow-datasets has prepared, else the official archive downloaded into the cache
  (`experiments.data.download`; no TensorFlow needed). Offline, it fails within seconds."""
  cached = download.cached_path(dataset, cache_dir())
  if cached.exists():
    return _read_python_tar(cached)
  builder = _tfds_builder(dataset)
  if builder is not None:
    return _load_tfds(dataset, builder)
  hint = _NO_DATA_HINT.format(layouts=LAYOUTS)
  host = ':'.join(str(part) for part in _probe_address())
  if not _network_reachable():
    raise DataError(f'{dataset} is neither in the cache ({cached}) nor prepared for '
                    f'tensorflow-datasets, and {host} (where the official archive is '
                    f'downloaded from) is unreachable; {hint}')
  try:
    return _read_python_tar(download.fetch(dataset, cache_dir()))
  except download.DownloadError as e:
    raise DataError(f'downloading {dataset} failed ({e}); {hint}') from e


def _tfds_builder(dataset: str):
  """The tensorflow-datasets builder of ``dataset`` if TFDS is installed and has it
  prepared, else None (TFDS is optional; preparing needs TensorFlow, which we don't)."""
  try:
    import tensorflow_datasets as tfds  # optional and slow to import
  except ImportError:
    return None
  try:
    builder = tfds.builder(dataset)
    return builder if builder.is_prepared() else None
  except Exception as e:  # tfds raises many types
    log.info('tensorflow-datasets cannot open %s (%s)', dataset, _reason(e))
    return None


def _load_tfds(dataset: str, builder: Any) -> _Splits:
  """Reads a whole CIFAR copy that tensorflow-datasets has prepared (ArrayRecord files need
  no TensorFlow; an older TFRecord copy does)."""
  import tensorflow_datasets as tfds

  hint = _NO_DATA_HINT.format(layouts=LAYOUTS)
  where = f'tensorflow-datasets data dir {builder.data_dir}'
  splits = {}
  for split in ('train', 'test'):
    try:
      source = builder.as_data_source(split=split)
      examples = [source[i] for i in range(len(source))]
      images = np.stack([np.asarray(e['image'], np.uint8) for e in examples])
      labels = np.asarray([e['label'] for e in examples], np.int32)
    except (NotImplementedError, ValueError) as e:
      # Prepared earlier in TFRecord format: random access needs ArrayRecord, so read it
      # whole through tf.data, which needs TensorFlow.
      if not _have_tensorflow():
        raise DataError(f'{dataset} in the {where} is not in ArrayRecord format and reading '
                        f'it needs TensorFlow ({_reason(e)}); {hint}') from e
      arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
      images = np.asarray(arrays['image'], np.uint8)
      labels = np.asarray(arrays['label'], np.int32)
    splits[split] = images, labels
  names = tuple(builder.info.features['label'].names)
  return _Splits(*splits['train'], *splits['test'], names,
                 f'{dataset} {builder.version} from the {where}')
