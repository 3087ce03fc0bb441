"""The packed JPEG CIFAR-10 (``cifar10-jpeg.npz``): its reader, and the cache of the decoded
arrays (`cache_dir`), keyed by the SHA-256 of the file's content."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from experiments.data._common import IMAGE_SHAPE, DataError, _reason, _Splits
from experiments.data.decoding import _decode_all

log = logging.getLogger(__name__)

_NPZ_KEYS = ('train_jpeg', 'train_offsets', 'train_labels', 'test_jpeg', 'test_offsets',
             'test_labels', 'label_names')
_CACHE_VERSION = 1


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
