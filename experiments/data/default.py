"""CIFAR without a ``data_dir``: the official archive in the cache, else a copy that
tensorflow-datasets has prepared, else the official archive downloaded into the cache
(`experiments.data.download`), once a network probe has found its host reachable."""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import threading
from typing import Any

import numpy as np

from experiments.data import download
from experiments.data._common import LAYOUTS, DataError, _reason, _Splits
from experiments.data.cifar_python import _read_python_tar
from experiments.data.jpeg_npz import cache_dir

log = logging.getLogger(__name__)

_NO_DATA_HINT = (
    'pass --data_dir=<a local copy> (accepted: {layouts}), or use --dataset=synthetic'
)

# The host the official archives come from (`download.SOURCES`; TFDS uses it too), probed
# before any download starts. $LRSCHED_TFDS_PROBE_HOST (host:port) probes another (a proxy;
# tests use a closed port).
_DOWNLOAD_HOST = ('www.cs.toronto.edu', 443)
_PROBE_TIMEOUT_S = 3.0


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
