"""Decoding packed PNG/JPEG images to uint8 arrays with Pillow, in spawned worker processes
(used by the packed JPEG .npz and by image folders)."""

from __future__ import annotations

import concurrent.futures
import io
import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence

import numpy as np

from experiments.data._common import IMAGE_SHAPE, DataError, _reason

log = logging.getLogger(__name__)

_CONVERTIBLE_MODES = ('1', 'L', 'LA', 'P', 'PA', 'RGB', 'RGBA', 'RGBX', 'CMYK', 'YCbCr')
# Below this many images, decoding in-process beats starting worker processes.
_MIN_IMAGES_PER_WORKER = 4096


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
