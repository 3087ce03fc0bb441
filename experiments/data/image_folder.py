"""Image folders: ``train/<class>/*.png|jpg|jpeg`` and ``test/<class>/*``, classes in sorted
order."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.data._common import DataError, _short_list, _Splits
from experiments.data.decoding import _decode_all

_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')


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
