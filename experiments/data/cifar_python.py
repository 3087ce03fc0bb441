"""The official "python version" of CIFAR-10 and CIFAR-100: the archive, read without
extracting it, and its extracted folders; the pickles are read with a restricted unpickler."""

from __future__ import annotations

import importlib
import io
import pickle
import tarfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from experiments.data._common import LAYOUTS, DataError, _reason, _Splits

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
