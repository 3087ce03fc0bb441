"""A local copy (``data_dir``): its layout recognised by its content, then read by the reader
of that layout."""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from experiments.data._common import LAYOUTS, DataError, _reason, _Splits
from experiments.data.cifar_python import (
    _CIFAR10_FILES,
    _CIFAR100_FILES,
    _read_cifar10_python_dir,
    _read_cifar100_python_dir,
    _read_python_tar,
)
from experiments.data.image_folder import _read_image_folder
from experiments.data.jpeg_npz import _NPZ_KEYS, _read_jpeg_npz


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
