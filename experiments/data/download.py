"""The official CIFAR "python version" archives, downloaded once into the cache.

As Keras and torchvision do, without TensorFlow: ``cifar-10-python.tar.gz`` (163 MB) or
``cifar-100-python.tar.gz`` (161 MB) from the dataset's home page, checked against its
published MD5, into ``cache_dir()/downloads``. The download streams into a ``.partial`` file
that becomes the cached file only once its checksum matches, so a broken or interrupted
download never passes for the archive. Progress is logged every few seconds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

SOURCES = {
    'cifar10': ('https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz',
                'c58f30108f718f92721af3b95e74349a'),
    'cifar100': ('https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz',
                 'eb9058c3a382ffc7106e4002c42a8d85'),
}
"""Per dataset: the archive's address and its published MD5."""
_CHUNK = 1 << 20
_PROGRESS_S = 5.0


class DownloadError(OSError):
  """The archive could not be fetched, or what arrived is not the archive."""


def cached_path(dataset: str, cache: Path) -> Path:
  """Where the archive of ``dataset`` is kept once downloaded."""
  return cache / 'downloads' / os.path.basename(SOURCES[dataset][0])


def fetch(dataset: str, cache: Path, *, timeout: float = 30.0) -> Path:
  """The verified archive of ``dataset`` in ``cache``, downloading it if it is not there."""
  url, expected = SOURCES[dataset]
  target = cached_path(dataset, cache)
  if target.exists():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  partial = target.with_name(f'{target.name}.partial-{os.getpid()}')
  digest = hashlib.md5()
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, 'wb') as f:
      total = int(response.headers.get('Content-Length') or 0)
      done, last = 0, time.time()
      log.info('downloading %s (%s) into %s', url,
               f'{total / 1e6:.0f} MB' if total else 'size unknown', target.parent)
      while block := response.read(_CHUNK):
        f.write(block)
        digest.update(block)
        done += len(block)
        if time.time() - last > _PROGRESS_S:
          last = time.time()
          log.info('  %.0f of %s MB', done / 1e6, f'{total / 1e6:.0f}' if total else '?')
    if total and done != total:
      raise DownloadError(f'{url}: the connection closed after {done} of {total} bytes')
    if digest.hexdigest() != expected:
      raise DownloadError(f'{url}: MD5 {digest.hexdigest()} is not the published {expected} '
                          '(a changed or damaged file); nothing was cached')
    os.replace(partial, target)
  except OSError as e:
    raise DownloadError(str(e) if isinstance(e, DownloadError) else
                        f'{url}: {type(e).__name__}: {e}') from e
  finally:
    if partial.exists():
      partial.unlink()
  log.info('downloaded and verified %s', target)
  return target
