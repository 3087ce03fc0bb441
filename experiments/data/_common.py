"""What the readers share: `DataError`, `_Splits` (what a reader returns), the image shape,
the accepted layouts (for messages) and short reasons for errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

IMAGE_SHAPE = (32, 32, 3)

LAYOUTS = (
    'the packed JPEG CIFAR-10 .npz (or a directory holding exactly one); '
    'cifar-10-python.tar.gz or cifar-100-python.tar.gz, or their extracted folders '
    'cifar-10-batches-py/ or cifar-100-python/ (or a directory holding one of these); '
    'an image folder with train/<class>/*.png|jpg|jpeg and test/<class>/*'
)


class DataError(ValueError):
  """A data source is missing, unrecognised or inconsistent, or an argument of `load` is bad.

  The message is one line, fit to show a user without a traceback.
  """


class _Splits(NamedTuple):
  """What a reader returns, before the checks and statistics `load` adds."""
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  label_names: tuple[str, ...]
  source: str


def _short_list(names: Sequence[str], limit: int = 5) -> str:
  names = list(names)
  more = f', ... ({len(names) - limit} more)' if len(names) > limit else ''
  return ', '.join(names[:limit]) + more


def _reason(e: BaseException) -> str:
  """An exception as a short single-line reason."""
  text = ' '.join(str(e).split()) or type(e).__name__
  return text if len(text) <= 200 else text[:197] + '...'
