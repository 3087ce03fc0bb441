"""Tests of experiments.data: every local format, the cache, TFDS, bad inputs, augmentation."""

from __future__ import annotations

import io
import os
import pickle
import socket
import sys
import tarfile
import threading
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments import data
from experiments.data import decoding, default, jpeg_npz

CIFAR10_NAMES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
                 'ship', 'truck')
REAL_NPZ = Path(__file__).resolve().parents[2].parent / 'shared' / 'data' / 'cifar10-jpeg.npz'


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
  """Every test caches into its own folder, unless it says otherwise."""
  monkeypatch.setenv('LRSCHED_CACHE', str(tmp_path / 'cache'))


# --------------------------------------------------------------------------------------
# Builders of tiny local copies


def random_images(n: int, seed: int) -> np.ndarray:
  """Smooth-ish random images (JPEG keeps them recognisable)."""
  coarse = np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 3))
  return coarse.repeat(8, axis=1).repeat(8, axis=2).astype(np.uint8)


def encode(image: np.ndarray, fmt: str, mode: str = 'RGB') -> bytes:
  im = Image.fromarray(image)
  if mode != 'RGB':
    im = im.convert(mode)
  out = io.BytesIO()
  im.save(out, format=fmt, **({'quality': 90} if fmt == 'JPEG' else {}))
  return out.getvalue()


def decode(blob: bytes) -> np.ndarray:
  """What the loader should produce for one encoded image."""
  with Image.open(io.BytesIO(blob)) as im:
    return np.asarray(im.convert('RGB'))


def class_sorted_labels(num_classes: int, per_class: int) -> np.ndarray:
  return np.repeat(np.arange(num_classes), per_class)


def write_packed_npz(path: Path, per_class=(3, 2), seed=0, **overrides) -> dict:
  """The packed JPEG format of the shared README, for 10 classes; returns what it holds."""
  arrays, expected = {}, {}
  for split, k in zip(('train', 'test'), per_class, strict=True):
    labels = class_sorted_labels(10, k)
    blobs = [encode(im, 'JPEG') for im in random_images(labels.size, seed + k)]
    arrays[f'{split}_jpeg'] = np.frombuffer(b''.join(blobs), np.uint8)
    arrays[f'{split}_offsets'] = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    arrays[f'{split}_labels'] = labels.astype(np.uint8)
    expected[split] = np.stack([decode(b) for b in blobs]), labels
  arrays['label_names'] = np.asarray(CIFAR10_NAMES)
  arrays.update(overrides)
  np.savez_compressed(path, **arrays)
  return expected


def official_pickles(num_classes: int, per_class=(2, 1), seed=0) -> tuple[dict, dict]:
  """The files of cifar-10-batches-py / cifar-100-python (name -> pickle bytes), and the
  expected (images, labels) per split. Source order is shuffled, as in the official files."""
  rng = np.random.default_rng(seed)
  expected, batches = {}, {}
  for split, k in zip(('train', 'test'), per_class, strict=True):
    labels = rng.permutation(class_sorted_labels(num_classes, k))
    images = random_images(labels.size, seed + k)
    rows = images.transpose(0, 3, 1, 2).reshape(labels.size, 3072)  # R, G, B planes
    order = np.argsort(labels, kind='stable')
    expected[split] = images[order], labels[order]
    batches[split] = rows, labels
  dump = lambda obj: pickle.dumps(obj, protocol=2)
  names = [f'class{c:03d}'.encode() for c in range(num_classes)]
  if num_classes == 10:
    rows, labels = batches['train']
    parts = np.array_split(np.arange(labels.size), 5)
    files = {f'data_batch_{i + 1}': dump({
        b'batch_label': f'training batch {i + 1} of 5'.encode(), b'labels': labels[p].tolist(),
        b'data': rows[p], b'filenames': [b'x.png'] * p.size}) for i, p in enumerate(parts)}
    rows, labels = batches['test']
    files['test_batch'] = dump({b'batch_label': b'testing batch 1 of 1',
                                b'labels': labels.tolist(), b'data': rows})
    files['batches.meta'] = dump({b'num_cases_per_batch': 10000, b'label_names': names,
                                  b'num_vis': 3072})
  else:
    files = {}
    for split in ('train', 'test'):
      rows, labels = batches[split]
      files[split] = dump({b'filenames': [b'x.png'] * labels.size, b'batch_label': b'x',
                           b'fine_labels': labels.tolist(),
                           b'coarse_labels': (labels // 5).tolist(), b'data': rows})
    files['meta'] = dump({b'fine_label_names': names,
                          b'coarse_label_names': [b'c%d' % i for i in range(20)]})
  return files, expected


def write_official(root: Path, num_classes: int, as_tar: bool, **kwargs) -> tuple[Path, dict]:
  files, expected = official_pickles(num_classes, **kwargs)
  folder = 'cifar-10-batches-py' if num_classes == 10 else 'cifar-100-python'
  (root / folder).mkdir(parents=True)
  for name, blob in files.items():
    (root / folder / name).write_bytes(blob)
  if not as_tar:
    return root / folder, expected
  archive = root / ('cifar-10-python.tar.gz' if num_classes == 10 else 'cifar-100-python.tar.gz')
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(root / folder, arcname=folder)
  return archive, expected


def write_image_folder(root: Path, classes=CIFAR10_NAMES[::-1], per_class=(2, 1),
                       modes=('RGB', 'L', 'RGBA'), fmt='PNG') -> dict:
  """``root/{train,test}/<class>/*.png``; returns the expected arrays (classes sorted)."""
  expected = {}
  for split, k in zip(('train', 'test'), per_class, strict=True):
    images, labels = [], []
    for label, name in enumerate(sorted(classes)):
      (root / split / name).mkdir(parents=True)
      for j, im in enumerate(random_images(k, hash((split, name)) % 1000)):
        blob = encode(im, fmt, modes[j % len(modes)])
        (root / split / name / f'{j:03d}.{fmt.lower()}').write_bytes(blob)
        images.append(decode(blob))
        labels.append(label)
    expected[split] = np.stack(images), np.asarray(labels)
  return expected


def check_dataset(ds: data.Dataset, expected: dict, names) -> None:
  for split in ('train', 'test'):
    images, labels = getattr(ds, f'{split}_images'), getattr(ds, f'{split}_labels')
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, expected[split][1])
    np.testing.assert_array_equal(images, expected[split][0])
  assert ds.label_names == tuple(names) and ds.num_classes == len(names)
  pixels = expected['train'][0].reshape(-1, 3).astype(np.float64)
  assert ds.mean.dtype == np.float32 and ds.std.dtype == np.float32
  np.testing.assert_allclose(ds.mean, pixels.mean(0), rtol=1e-6)
  np.testing.assert_allclose(ds.std, pixels.std(0), rtol=1e-6)


# --------------------------------------------------------------------------------------
# Local formats


@pytest.mark.parametrize('point_at', ['file', 'directory'])
def test_packed_npz(tmp_path, point_at):
  expected = write_packed_npz(tmp_path / 'cifar10-jpeg.npz')
  (tmp_path / 'unrelated.npz').write_bytes(io.BytesIO().getvalue())  # ignored: not a zip
  np.savez(tmp_path / 'other.npz', x=np.zeros(3))  # ignored: not the packed format
  path = tmp_path / 'cifar10-jpeg.npz' if point_at == 'file' else tmp_path
  ds = data.load('cifar10', str(path))
  check_dataset(ds, expected, CIFAR10_NAMES)
  assert ds.source.startswith('CIFAR-10 (JPEG copy) from ') and ds.source.endswith('.npz')


@pytest.mark.parametrize('num_classes', [10, 100])
@pytest.mark.parametrize('layout', ['tar', 'extracted', 'parent'])
def test_official_python_version(tmp_path, num_classes, layout):
  path, expected = write_official(tmp_path, num_classes, as_tar=layout == 'tar')
  ds = data.load('cifar10' if num_classes == 10 else 'cifar100',
                 tmp_path if layout == 'parent' else path)
  check_dataset(ds, expected, [f'class{c:03d}' for c in range(num_classes)])
  assert f'CIFAR-{num_classes} (python version)' in ds.source


def test_image_folder(tmp_path):
  expected = write_image_folder(tmp_path)
  (tmp_path / 'train' / 'cat' / 'notes.txt').write_text('not an image: ignored')
  ds = data.load('cifar10', tmp_path)
  check_dataset(ds, expected, sorted(CIFAR10_NAMES))
  assert ds.source == f'image folder {tmp_path}'


def test_image_folder_jpeg_and_100_classes(tmp_path):
  names = [f'c{i:02d}' for i in range(100)]
  expected = write_image_folder(tmp_path, names, per_class=(1, 1), fmt='JPEG', modes=('RGB',))
  check_dataset(data.load('cifar100', tmp_path), expected, names)


def test_parallel_decoding_matches_serial(tmp_path):
  """Worker processes (spawned) decode exactly as this process, and name bad images."""
  blobs = [encode(im, 'JPEG') for im in random_images(40, 1)]
  blob = np.frombuffer(b''.join(blobs), np.uint8)
  offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
  parts = [(blob, offsets, str), (blob[:offsets[5]], offsets[:6], str)]
  serial = decoding._decode_all(parts, workers=1)
  parallel = decoding._decode_all(parts, workers=2)
  for s, p in zip(serial, parallel, strict=True):
    np.testing.assert_array_equal(s, p)
  np.testing.assert_array_equal(serial[0], np.stack([decode(b) for b in blobs]))
  bad = blob.copy()
  bad[offsets[17]:offsets[18]] = 0
  with pytest.raises(data.DataError, match=r'^image 17 cannot be decoded'):
    decoding._decode_all([(bad, offsets, lambda i: f'image {i}')], workers=2)


@pytest.mark.skipif(not REAL_NPZ.is_file(), reason=f'{REAL_NPZ} is not here')
def test_real_packed_cifar10(monkeypatch):
  """The shared JPEG CIFAR-10. Uses the real cache folder: it decodes once per machine."""
  monkeypatch.delenv('LRSCHED_CACHE')
  if os.environ.get('LRSCHED_TEST_CACHE'):
    monkeypatch.setenv('LRSCHED_CACHE', os.environ['LRSCHED_TEST_CACHE'])
  first = data.load('cifar10', REAL_NPZ)
  # The second load reads the cache (about 0.5 s on an idle machine), never the JPEGs.
  monkeypatch.setattr(jpeg_npz, '_decode_jpeg_npz', lambda *a: pytest.fail('not cached'))
  ds = data.load('cifar10', REAL_NPZ.parent)
  assert ds.train_images.shape == (50000, 32, 32, 3) and ds.test_images.shape == (10000, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(ds.train_labels), [5000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test_labels), [1000] * 10)
  np.testing.assert_allclose(ds.mean, [125.3, 123.0, 113.9], atol=2.0)
  np.testing.assert_allclose(ds.std, [63.0, 62.1, 66.7], atol=2.0)
  assert ds.label_names == CIFAR10_NAMES
  np.testing.assert_array_equal(first.train_images[::997], ds.train_images[::997])


# --------------------------------------------------------------------------------------
# The cache


def cache_files(tmp_path) -> list[Path]:
  return sorted((tmp_path / 'cache').glob('cifar10-jpeg-*.npz'))


def test_cache_is_used_and_keyed_by_the_content(tmp_path, monkeypatch):
  path = tmp_path / 'c.npz'
  expected = write_packed_npz(path)
  first = data.load('cifar10', path)
  assert len(cache_files(tmp_path)) == 1
  calls = []
  decode_npz = jpeg_npz._decode_jpeg_npz
  monkeypatch.setattr(jpeg_npz, '_decode_jpeg_npz',
                      lambda *a: calls.append(a) or decode_npz(*a))
  second = data.load('cifar10', path)
  assert not calls  # served from the cache
  for a, b in zip(first, second, strict=True):
    np.testing.assert_array_equal(a, b)
  # A copy elsewhere is the same content: the same entry.
  copy = tmp_path / 'elsewhere' / 'c.npz'
  copy.parent.mkdir()
  copy.write_bytes(path.read_bytes())
  data.load('cifar10', copy)
  assert not calls and len(cache_files(tmp_path)) == 1
  # New content at the same path, even with the old modification time, is decoded again.
  stat = path.stat()
  expected = write_packed_npz(path, per_class=(2, 1), seed=5)
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  check_dataset(data.load('cifar10', path), expected, CIFAR10_NAMES)
  assert len(calls) == 1 and len(cache_files(tmp_path)) == 2


@pytest.mark.parametrize('damage', ['truncate', 'flip_bytes', 'garbage', 'wrong_key'])
def test_damaged_cache_is_rebuilt(tmp_path, damage, caplog):
  path = tmp_path / 'c.npz'
  expected = write_packed_npz(path)
  data.load('cifar10', path)
  (entry,) = cache_files(tmp_path)
  blob = bytearray(entry.read_bytes())
  if damage == 'truncate':
    blob = blob[:len(blob) // 2]
  elif damage == 'flip_bytes':  # inside the image data: caught by the zip's CRC-32
    middle = len(blob) // 2
    blob[middle:middle + 16] = bytes(255 - b for b in blob[middle:middle + 16])
  elif damage == 'garbage':
    blob = bytearray(b'not a cache')
  else:
    other = tmp_path / 'other.npz'
    with np.load(entry) as z:
      np.savez(other, **{k: z[k] for k in z.files if k != 'key'}, key=np.asarray('x'))
    blob = bytearray(other.read_bytes())
  entry.write_bytes(bytes(blob))
  check_dataset(data.load('cifar10', path), expected, CIFAR10_NAMES)
  assert 'ignoring the damaged cache file' in caplog.text
  caplog.clear()
  check_dataset(data.load('cifar10', path), expected, CIFAR10_NAMES)  # rebuilt: read back
  assert 'damaged' not in caplog.text


def test_unwritable_cache_only_warns(tmp_path, monkeypatch, caplog):
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  monkeypatch.setenv('LRSCHED_CACHE', str(blocker / 'cache'))
  expected = write_packed_npz(tmp_path / 'c.npz')
  check_dataset(data.load('cifar10', tmp_path / 'c.npz'), expected, CIFAR10_NAMES)
  assert 'could not write the cache file' in caplog.text


def test_cache_dir_default(monkeypatch):
  monkeypatch.delenv('LRSCHED_CACHE')
  monkeypatch.delenv('XDG_CACHE_HOME', raising=False)
  assert data.cache_dir() == Path.home() / '.cache' / 'lrsched'
  monkeypatch.setenv('LRSCHED_CACHE', '~/x')
  assert data.cache_dir() == Path.home() / 'x'


# --------------------------------------------------------------------------------------
# tensorflow-datasets


def fake_tfds(prepared: bool) -> types.ModuleType:
  module = types.ModuleType('tensorflow_datasets')

  class Builder:
    data_dir = '/nonexistent/tensorflow_datasets/cifar10/3.0.2'

    def is_prepared(self):
      return prepared

    def download_and_prepare(self, **kwargs):
      raise AssertionError('must not start a download')

  module.builder = lambda name: Builder()
  return module


def assert_points_elsewhere(error: data.DataError) -> None:
  message = str(error)
  assert '--data_dir' in message and '--dataset=synthetic' in message
  assert '\n' not in message


def _no_tfds_copy(monkeypatch, tmp_path):
  monkeypatch.setenv('LRSCHED_CACHE', str(tmp_path / 'cache'))
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)  # makes the import fail


def test_without_data_or_network_fails_fast(monkeypatch, tmp_path):
  _no_tfds_copy(monkeypatch, tmp_path)
  probes = []
  monkeypatch.setattr(default, '_network_reachable', lambda: probes.append(1) or False)
  start = time.perf_counter()
  with pytest.raises(data.DataError, match='unreachable') as error:
    data.load('cifar10')
  assert time.perf_counter() - start < 1.0 and probes == [1]
  assert_points_elsewhere(error.value)


def test_an_unprepared_tfds_copy_is_not_prepared_with_tensorflow(monkeypatch, tmp_path):
  monkeypatch.setenv('LRSCHED_CACHE', str(tmp_path / 'cache'))
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', fake_tfds(prepared=False))
  monkeypatch.setattr(default, '_network_reachable', lambda: False)
  with pytest.raises(data.DataError, match='nor prepared for tensorflow-datasets'):
    data.load('cifar100')


def _fake_archive(path, dataset='cifar10'):
  """A tiny cifar-10-python.tar.gz: the official layout, 4 images a batch."""
  rng = np.random.default_rng(0)
  with tarfile.open(path, 'w:gz') as tar:
    def add(name, obj):
      payload = pickle.dumps(obj)
      info = tarfile.TarInfo(f'cifar-10-batches-py/{name}')
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
    for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
      add(name, {b'data': rng.integers(0, 256, (10, 3072), dtype=np.uint8),
                 b'labels': list(range(10))})
    add('batches.meta', {b'label_names': [f'c{i}'.encode() for i in range(10)]})


@pytest.fixture
def http_server(tmp_path):
  """A loopback HTTP server over tmp_path/www (no test touches the internet)."""
  import functools
  import http.server
  root = tmp_path / 'www'
  root.mkdir()
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
  handler.log_message = lambda *args: None
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield root, f'http://127.0.0.1:{server.server_address[1]}'
  server.shutdown()


def test_the_official_archive_is_downloaded_verified_and_cached(monkeypatch, tmp_path,
                                                                http_server):
  import hashlib

  from experiments.data import download
  root, base = http_server
  _fake_archive(root / 'cifar-10-python.tar.gz')
  checksum = hashlib.md5((root / 'cifar-10-python.tar.gz').read_bytes()).hexdigest()
  monkeypatch.setitem(download.SOURCES, 'cifar10',
                      (f'{base}/cifar-10-python.tar.gz', checksum))
  _no_tfds_copy(monkeypatch, tmp_path)
  monkeypatch.setattr(default, '_network_reachable', lambda: True)
  ds = data.load('cifar10')
  assert ds.train_images.shape == (50, 32, 32, 3) and ds.test_images.shape == (10, 32, 32, 3)
  cached = tmp_path / 'cache' / 'downloads' / 'cifar-10-python.tar.gz'
  assert cached.exists() and not list(cached.parent.glob('*.partial*'))
  (root / 'cifar-10-python.tar.gz').unlink()  # the second load reads the cache only
  np.testing.assert_array_equal(data.load('cifar10').train_images, ds.train_images)


def test_a_download_that_fails_its_checksum_is_never_cached(monkeypatch, tmp_path,
                                                            http_server):
  from experiments.data import download
  root, base = http_server
  _fake_archive(root / 'cifar-10-python.tar.gz')
  monkeypatch.setitem(download.SOURCES, 'cifar10',
                      (f'{base}/cifar-10-python.tar.gz', '0' * 32))
  _no_tfds_copy(monkeypatch, tmp_path)
  monkeypatch.setattr(default, '_network_reachable', lambda: True)
  with pytest.raises(data.DataError, match='is not the published') as error:
    data.load('cifar10')
  assert_points_elsewhere(error.value)
  assert not list((tmp_path / 'cache' / 'downloads').iterdir())
  monkeypatch.setitem(download.SOURCES, 'cifar10', (f'{base}/missing.tar.gz', '0' * 32))
  with pytest.raises(data.DataError, match='404'):
    data.load('cifar10')


def test_network_probe():
  with socket.socket() as server:
    server.bind(('127.0.0.1', 0))
    server.listen()
    assert default._network_reachable(server.getsockname(), timeout=3.0)
  with socket.socket() as closed:
    closed.bind(('127.0.0.1', 0))  # bound, never listening: refused
    assert not default._network_reachable(closed.getsockname(), timeout=3.0)


def test_probe_address_from_the_environment(monkeypatch):
  assert default._probe_address() == ('www.cs.toronto.edu', 443)
  monkeypatch.setenv('LRSCHED_TFDS_PROBE_HOST', '127.0.0.1:9')
  assert default._probe_address() == ('127.0.0.1', 9)
  assert not default._network_reachable(timeout=3.0)  # the discard port: closed
  monkeypatch.setenv('LRSCHED_TFDS_PROBE_HOST', 'no-port')
  with pytest.raises(data.DataError, match='must read host:port'):
    default._probe_address()


def test_network_probe_never_hangs(monkeypatch):
  """A name lookup that hangs (it ignores the socket timeout) still returns in time."""
  def hang(*args, **kwargs):
    time.sleep(2)
    raise OSError('timed out')

  monkeypatch.setattr(socket, 'create_connection', hang)
  start = time.perf_counter()
  assert not default._network_reachable(('example.invalid', 443), timeout=0.2)
  assert time.perf_counter() - start < 1.0


try:
  import tensorflow_datasets as tfds
except ImportError:
  tfds = None
needs_tfds = pytest.mark.skipif(tfds is None, reason='tensorflow-datasets is not installed')


@needs_tfds
@pytest.mark.parametrize('dataset, num_classes', [('cifar10', 10), ('cifar100', 100)])
def test_tfds_mock_end_to_end(monkeypatch, dataset, num_classes):
  """tfds.testing.mock_data serves random examples through the TensorFlow-free data source."""
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'is_prepared', lambda self: True)
  monkeypatch.setattr(default, '_network_reachable', lambda: pytest.fail('probed'))
  with tfds.testing.mock_data(num_examples=30):
    ds = data.load(dataset)
  assert ds.train_images.shape == (30, 32, 32, 3) and ds.train_images.dtype == np.uint8
  assert ds.test_images.shape == (30, 32, 32, 3) and ds.test_labels.dtype == np.int32
  assert ds.num_classes == num_classes == len(ds.label_names)
  assert np.all(np.diff(ds.train_labels) >= 0) and ds.train_labels.max() < num_classes
  assert 'tensorflow-datasets' in ds.source


# --------------------------------------------------------------------------------------
# Synthetic data and subsets


def test_synthetic_is_deterministic_balanced_and_learnable():
  ds = data.load('synthetic', seed=3, synthetic_size=(500, 200))
  again = data.load('synthetic', seed=3, synthetic_size=(500, 200))
  other = data.load('synthetic', seed=4, synthetic_size=(500, 200))
  for a, b in zip(ds, again, strict=True):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(ds.train_images, other.train_images)
  assert ds.train_images.shape == (500, 32, 32, 3) and ds.test_images.shape == (200, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(ds.train_labels), [50] * 10)
  assert ds.num_classes == 10 and ds.label_names[0] == 'class_0'
  # Learnable: the nearest class mean of the training images classifies the test set.
  flat = lambda x: x.reshape(len(x), -1).astype(np.float32)
  centroids = np.stack([flat(ds.train_images)[ds.train_labels == c].mean(0) for c in range(10)])
  distance = ((flat(ds.test_images)[:, None] - centroids[None]) ** 2).sum(-1)
  assert (distance.argmin(1) == ds.test_labels).mean() > 0.9
  # ... but no single pixel does: per pixel the noise is larger than the class signal.
  assert ds.std.min() > 40


def test_train_subset_is_balanced_and_chosen_with_the_seed():
  full = data.load('synthetic', seed=0, synthetic_size=(300, 20))
  sub = data.load('synthetic', seed=0, train_examples=60, synthetic_size=(300, 20))
  np.testing.assert_array_equal(np.bincount(sub.train_labels), [6] * 10)
  assert np.all(np.diff(sub.train_labels) >= 0)
  rows = {im.tobytes() for im in full.train_images}
  assert all(im.tobytes() in rows for im in sub.train_images)
  np.testing.assert_array_equal(sub.test_images, full.test_images)
  mean, std = data.channel_stats(sub.train_images)
  np.testing.assert_array_equal(sub.mean, mean)
  np.testing.assert_array_equal(sub.std, std)
  assert 'subset of 60 training images' in sub.source
  same = data.load('synthetic', seed=0, train_examples=60, synthetic_size=(300, 20))
  np.testing.assert_array_equal(same.train_images, sub.train_images)


def test_train_subset_of_a_fixed_source_differs_with_the_seed(tmp_path):
  write_image_folder(tmp_path, per_class=(6, 1), modes=('RGB',))
  a = data.load('cifar10', tmp_path, train_examples=30, seed=0)
  b = data.load('cifar10', tmp_path, train_examples=30, seed=1)
  np.testing.assert_array_equal(a.train_labels, b.train_labels)
  assert not np.array_equal(a.train_images, b.train_images)


# --------------------------------------------------------------------------------------
# Bad inputs


def test_missing_path_lists_layouts(tmp_path):
  with pytest.raises(data.DataError, match='does not exist; accepted: the packed JPEG') as e:
    data.load('cifar10', tmp_path / 'nope')
  assert 'image folder' in str(e.value) and 'cifar-100-python' in str(e.value)


def test_unknown_layouts(tmp_path):
  with pytest.raises(data.DataError, match='holds no recognised CIFAR copy; accepted'):
    data.load('cifar10', tmp_path)
  (tmp_path / 'notes.txt').write_text('hello')
  with pytest.raises(data.DataError, match='not a recognised CIFAR file; accepted'):
    data.load('cifar10', tmp_path / 'notes.txt')
  with tarfile.open(tmp_path / 'other.tar.gz', 'w:gz') as tar:
    tar.add(tmp_path / 'notes.txt', arcname='notes.txt')
  with pytest.raises(data.DataError, match=r'is an archive but not cifar-10-python\.tar\.gz'):
    data.load('cifar10', tmp_path / 'other.tar.gz')


def test_several_copies_in_one_directory(tmp_path):
  write_packed_npz(tmp_path / 'a.npz')
  write_packed_npz(tmp_path / 'b.npz')
  with pytest.raises(data.DataError, match=r'several CIFAR copies \(a.npz, b.npz\)'):
    data.load('cifar10', tmp_path)


def test_directory_with_both_cifars_picks_by_dataset(tmp_path):
  """Where the archives were downloaded (and CIFAR-10's extracted beside its archive)."""
  write_official(tmp_path, 10, as_tar=True)
  write_official(tmp_path / 'x', 100, as_tar=True)
  (tmp_path / 'x' / 'cifar-100-python.tar.gz').rename(tmp_path / 'cifar-100-python.tar.gz')
  ten = data.load('cifar10', tmp_path)
  assert ten.num_classes == 10 and ten.source.endswith('cifar-10-batches-py')
  hundred = data.load('cifar100', tmp_path)
  assert hundred.num_classes == 100 and hundred.source.endswith('cifar-100-python.tar.gz')


@pytest.mark.parametrize('corruption', ['truncated', 'offsets', 'label_count', 'names'])
def test_corrupt_npz(tmp_path, corruption):
  path = tmp_path / 'c.npz'
  if corruption == 'truncated':
    write_packed_npz(path)
    path.write_bytes(path.read_bytes()[:-200])
    match = 'cannot read the .npz'
  elif corruption == 'offsets':
    write_packed_npz(path, train_offsets=np.array([0, 5, 3, 9], np.int64))
    match = 'train_offsets must be 1-D integers, one more than the 30 labels'
  elif corruption == 'label_count':
    write_packed_npz(path, test_labels=np.zeros(3, np.uint8))
    match = 'test_offsets must be 1-D integers, one more than the 3 labels'
  else:
    write_packed_npz(path, label_names=np.asarray(['a', 'b']))
    match = 'train_labels go up to 9 but there are 2 label_names'
  with pytest.raises(data.DataError, match=match):
    data.load('cifar10', path)


def test_offsets_not_covering_the_bytes(tmp_path):
  write_packed_npz(tmp_path / 'c.npz')
  with np.load(tmp_path / 'c.npz') as z:
    arrays = dict(z)
  arrays['test_jpeg'] = arrays['test_jpeg'][:-10]  # a truncated blob
  np.savez(tmp_path / 'c.npz', **arrays)
  with pytest.raises(data.DataError, match='must rise strictly from 0 to the'):
    data.load('cifar10', tmp_path / 'c.npz')


def test_truncated_jpeg(tmp_path):
  write_packed_npz(tmp_path / 'c.npz')
  with np.load(tmp_path / 'c.npz') as z:
    arrays = dict(z)
  lo, hi = arrays['train_offsets'][7:9]
  blob = arrays['train_jpeg']
  arrays['train_jpeg'] = np.concatenate([blob[:lo + (hi - lo) // 2], blob[hi:]])
  arrays['train_offsets'][8:] -= (hi - lo) - (hi - lo) // 2
  np.savez(tmp_path / 'c.npz', **arrays)
  with pytest.raises(data.DataError, match=r'c.npz: train image 7 cannot be decoded'):
    data.load('cifar10', tmp_path / 'c.npz')


def test_truncated_and_wrong_size_files_in_image_folder(tmp_path):
  write_image_folder(tmp_path, modes=('RGB',))
  bad = tmp_path / 'test' / 'dog' / '000.png'
  bad.write_bytes(bad.read_bytes()[:60])
  with pytest.raises(data.DataError, match=f'^{bad} cannot be decoded'):
    data.load('cifar10', tmp_path)
  Image.new('RGB', (31, 32)).save(bad)
  with pytest.raises(data.DataError, match=f'^{bad} is 31x32, not 32x32'):
    data.load('cifar10', tmp_path)


def test_image_folder_structure_errors(tmp_path):
  write_image_folder(tmp_path, modes=('RGB',))
  (tmp_path / 'test' / 'zebra').mkdir()
  with pytest.raises(data.DataError, match='test/ has the classes'):
    data.load('cifar10', tmp_path)
  (tmp_path / 'train' / 'zebra').mkdir()
  with pytest.raises(data.DataError, match=r'zebra holds no \.png, \.jpg or \.jpeg image'):
    data.load('cifar10', tmp_path)


def test_class_count_must_match_the_dataset(tmp_path):
  write_image_folder(tmp_path / 'ten')
  with pytest.raises(data.DataError, match=r'dataset=cifar100 needs 100 classes, but image '
                     r'folder .* has 10 '):
    data.load('cifar100', tmp_path / 'ten')
  path, _ = write_official(tmp_path / 'hundred', 100, as_tar=False)
  with pytest.raises(data.DataError, match='dataset=cifar10 needs 10 classes, but CIFAR-100'):
    data.load('cifar10', path)


def test_refuses_pickles_that_run_code(tmp_path):
  path, _ = write_official(tmp_path, 10, as_tar=False)
  (path / 'test_batch').write_bytes(pickle.dumps(types.SimpleNamespace(), protocol=2))
  with pytest.raises(data.DataError, match=r'refusing to load the global types\.SimpleNamespace'):
    data.load('cifar10', path)


def test_damaged_python_version(tmp_path):
  path, _ = write_official(tmp_path, 10, as_tar=True)
  path.write_bytes(path.read_bytes()[:1000])
  with pytest.raises(data.DataError, match='cannot read the archive'):
    data.load('cifar10', path)
  files, _ = official_pickles(10)
  folder = tmp_path / 'x' / 'cifar-10-batches-py'
  folder.mkdir(parents=True)
  for name, blob in files.items():
    (folder / name).write_bytes(blob)
  (folder / 'data_batch_2').write_bytes(pickle.dumps({b'data': np.zeros((2, 5), np.uint8),
                                                      b'labels': [0, 1]}, protocol=2))
  with pytest.raises(data.DataError, match=r'data_batch_2: data must be uint8 \[N, 3072\]'):
    data.load('cifar10', folder)


@pytest.mark.parametrize('n, match', [
    (15, 'must be divisible by the 10 classes'),
    (40, 'is more than the 30 training images'),
    (0, 'must be a positive integer'),
    (True, 'must be a positive integer'),
    (2.5, 'must be a positive integer'),
])
def test_bad_train_examples(tmp_path, n, match):
  write_image_folder(tmp_path, per_class=(3, 1), modes=('RGB',))
  with pytest.raises(data.DataError, match=match):
    data.load('cifar10', tmp_path, train_examples=n)


def test_train_examples_needs_enough_of_every_class(tmp_path):
  write_image_folder(tmp_path, per_class=(4, 1), modes=('RGB',))
  for name in ('000.png', '001.png'):
    (tmp_path / 'train' / 'cat' / name).unlink()
  with pytest.raises(data.DataError, match='needs 3 images per class, but class 3 has only 2'):
    data.load('cifar10', tmp_path, train_examples=30)


def test_bad_dataset_arguments(tmp_path):
  with pytest.raises(data.DataError, match=r"unknown dataset 'imagenet'; valid: cifar10, "
                     r'cifar100, synthetic'):
    data.load('imagenet')
  with pytest.raises(data.DataError, match='not used with dataset=synthetic'):
    data.load('synthetic', tmp_path, synthetic_size=(10, 10))
  for size in [(0, 10), (10,), (10, 2.5), 'big']:
    with pytest.raises(data.DataError, match='synthetic_size must be two positive integers'):
      data.load('synthetic', synthetic_size=size)
  with pytest.raises(data.DataError, match='seed must be a non-negative integer'):
    data.load('synthetic', seed=-1, synthetic_size=(10, 10))
  assert issubclass(data.DataError, ValueError)


def test_empty_data_dir_means_no_data_dir(monkeypatch, tmp_path):
  _no_tfds_copy(monkeypatch, tmp_path)
  monkeypatch.setattr(default, '_network_reachable', lambda: False)
  with pytest.raises(data.DataError, match='neither in the cache'):
    data.load('cifar10', '')


# --------------------------------------------------------------------------------------
# Augmentation and normalisation


@pytest.fixture(scope='module')
def batch() -> np.ndarray:
  return np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)


def flip_state(out: np.ndarray, images: np.ndarray) -> np.ndarray:
  """Per image: 0 unchanged, 1 mirrored; fails if neither."""
  same = np.all(out == images, axis=(1, 2, 3))
  mirrored = np.all(out == images[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same | mirrored)
  return mirrored.astype(int)


def test_flip(batch):
  key = jax.random.key(0)
  out = np.asarray(data.augment(batch, key, 'flip'))
  assert out.dtype == np.uint8 and out.shape == batch.shape
  flipped = flip_state(out, batch)
  assert 0 < flipped.sum() < len(batch)  # per image: both outcomes occur
  np.testing.assert_array_equal(out, data.augment(batch, key, 'flip'))  # same key, same result
  other = flip_state(np.asarray(data.augment(batch, jax.random.key(1), 'flip')), batch)
  assert not np.array_equal(flipped, other)


@pytest.mark.parametrize('pad_mode', ['zero', 'reflect'])
def test_crop_and_flip_translates_the_padded_image(batch, pad_mode):
  images = batch[:16]
  out = np.asarray(data.augment(images, jax.random.PRNGKey(3), 'crop+flip', pad_mode=pad_mode))
  assert out.dtype == np.uint8 and out.shape == images.shape
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)),
                  mode='constant' if pad_mode == 'zero' else 'reflect')
  found = []
  for i in range(len(images)):
    matches = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)
               if np.array_equal(out[i], (padded[i][:, ::-1] if f else padded[i])
                                 [dy:dy + 32, dx:dx + 32])]
    assert matches, f'image {i} is no crop of its padded image'
    found.append(matches[0])
  assert len({(dy, dx) for dy, dx, _ in found}) > 4  # the offsets vary per image
  assert 0 < sum(f for _, _, f in found) < len(found)


def test_augment_under_jit_and_vmap(batch):
  """As the training step uses it: jitted, vmapped over examples with a key each."""
  key = jax.random.key(7)
  for mode in data.AUGMENTATIONS:
    eager = data.augment(batch, key, mode)
    jitted = jax.jit(data.augment, static_argnames='mode')(batch, key, mode=mode)
    np.testing.assert_array_equal(eager, jitted)
  keys = jax.random.split(key, len(batch))
  per_example = jax.jit(jax.vmap(lambda im, k: data.augment(im[None], k, 'crop+flip')[0]))
  out = np.asarray(per_example(batch, keys))
  assert out.shape == batch.shape and out.dtype == np.uint8
  assert not np.array_equal(out, batch)
  for i in range(4):
    np.testing.assert_array_equal(out[i], data.augment(batch[i:i + 1], keys[i], 'crop+flip')[0])


def test_augment_keeps_float_and_none_is_identity(batch):
  x = jnp.asarray(batch, jnp.bfloat16)
  assert data.augment(x, jax.random.key(0), 'crop+flip').dtype == jnp.bfloat16
  assert data.augment(x, jax.random.key(0), 'none') is x


def test_augment_bad_arguments(batch):
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="unknown augmentation 'crop'; valid: flip, crop\\+flip, "
                     'none'):
    data.augment(batch, key, 'crop')
  with pytest.raises(ValueError, match='unknown pad_mode'):
    data.augment(batch, key, 'crop+flip', pad_mode='edge')
  with pytest.raises(ValueError, match=r'must be a batch \[B, H, W, C\]'):
    data.augment(batch[0], key, 'flip')
  with pytest.raises(ValueError, match='pad must be a non-negative int'):
    data.augment(batch, key, 'crop+flip', pad=-1)


def test_normalize(batch):
  mean = np.array([125.3, 123.0, 113.9], np.float32)
  std = np.array([63.0, 62.1, 66.7], np.float32)
  x = data.normalize(batch, mean, std)
  assert x.dtype == jnp.float32 and x.shape == batch.shape
  np.testing.assert_allclose(x, (batch.astype(np.float64) - mean) / std, rtol=1e-6, atol=1e-6)
  y = data.normalize(batch, jnp.asarray(mean), jnp.asarray(std), dtype=jnp.bfloat16)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32), x, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize('kwargs, match', [
    (dict(pad_mode='zeros'), "unknown pad_mode 'zeros'"),
    (dict(pad=-1), 'pad must be a non-negative int'),
    (dict(pad=2.0), 'pad must be a non-negative int'),
])
def test_random_crop_checks_its_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    data.random_crop(jnp.zeros((2, 8, 8, 3)), jax.random.key(0), **kwargs)
