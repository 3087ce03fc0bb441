"""``--conv=onednn``: oneDNN's convolutions inside XLA on CPU, the same results as XLA's."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import lrsched
from experiments import models, parallel, setup
from experiments.config import Config, ConfigError
from experiments.models import conv
from experiments.models.conv import onednn

needs_onednn = pytest.mark.skipif(onednn.unavailable() is not None,
                                  reason=str(onednn.unavailable()))

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _uses_onednn(fn, *args) -> bool:
  return 'lrsched_conv_' in str(jax.make_jaxpr(fn)(*args))


def _close(got, want, rtol):
  assert got.dtype == want.dtype and got.shape == want.shape
  got, want = got.astype(jnp.float32), want.astype(jnp.float32)
  err, scale = float(jnp.abs(got - want).max()), float(jnp.abs(want).max())
  assert err <= rtol * scale, (err, scale)


@needs_onednn
@pytest.mark.parametrize('dtype, rtol', [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize('kernel, stride, padding', [
    (3, 1, ((1, 1), (1, 1))), (3, 2, ((1, 1), (1, 1))), (1, 2, ((0, 0), (0, 0))),
    (3, 1, ((0, 2), (1, 0))), (3, 2, 'SAME'), (2, 1, 'VALID')])
def test_forward_and_gradients_match_xla(dtype, rtol, kernel, stride, padding):
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (4, 9, 10, 5), dtype)
  w = (jax.random.normal(kw, (kernel, kernel, 5, 7)) * 0.3).astype(dtype)
  conv_with = lambda fn: lambda x, w: fn(x, w, (stride,) * 2, padding, dimension_numbers=NHWC)
  ours = conv_with(onednn.conv_general_dilated)
  assert _uses_onednn(ours, x, w)
  want, vjp_xla = jax.vjp(conv_with(lax.conv_general_dilated), x, w)
  got, vjp_ours = jax.vjp(ours, x, w)
  _close(got, want, rtol)
  g = jax.random.normal(kg, want.shape, dtype)
  for a, b in zip(jax.jit(vjp_ours)(g), vjp_xla(g), strict=True):
    _close(a, b, rtol)


@needs_onednn
@pytest.mark.parametrize('dtype, rtol', [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize('channels', [(16, 16), (16, 32), (32, 64), (16, 48), (64, 160)])
def test_kernels_match_xla_whether_oneDNN_reads_them_in_place_or_reordered(dtype, rtol,
                                                                           channels):
  # oneDNN's kernel layouts with blocks of the whole output width are HWIO's in memory and
  # read in place; 48 and 160 outputs take blocks narrower than the width: a reorder.
  c, o = channels
  kx, kw, kg = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(kx, (2, 8, 8, c), dtype)
  w = (jax.random.normal(kw, (3, 3, c, o)) * 0.1).astype(dtype)
  conv_with = lambda fn: lambda x, w: fn(x, w, (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=NHWC)
  want, vjp_xla = jax.vjp(conv_with(lax.conv_general_dilated), x, w)
  got, vjp_ours = jax.vjp(conv_with(onednn.conv_general_dilated), x, w)
  _close(got, want, rtol)
  g = jax.random.normal(kg, want.shape, dtype)
  for a, b in zip(jax.jit(vjp_ours)(g), vjp_xla(g), strict=True):
    _close(a, b, rtol)


@needs_onednn
@pytest.mark.parametrize('given, loaded', [
    ({}, ("OMP_WAIT_POLICY = 'ACTIVE'", "GOMP_SPINCOUNT = '10000000'")),
    ({'GOMP_SPINCOUNT': '5'}, ("GOMP_SPINCOUNT = '5'",)),
    ({'OMP_WAIT_POLICY': 'PASSIVE'}, ("OMP_WAIT_POLICY = 'PASSIVE'", "GOMP_SPINCOUNT = '0'"))])
def test_onednn_threads_spin_a_while_unless_told_and_the_environment_is_left_alone(given,
                                                                                   loaded):
  # OMP_DISPLAY_ENV=VERBOSE makes libgomp print the settings it loaded with.
  env = {k: v for k, v in os.environ.items() if k not in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')}
  env.update(OMP_DISPLAY_ENV='VERBOSE', JAX_PLATFORMS='cpu', **given)
  script = ('import os; from experiments.models.conv import onednn; '
            'assert onednn.unavailable() is None; '
            'print(sorted(k for k in os.environ if k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")))')
  run = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                       text=True, timeout=120, check=True)
  assert all(setting in run.stderr for setting in loaded)
  assert run.stdout.strip() == str(sorted(given))


@needs_onednn
def test_under_vmap_each_example_is_its_own_convolution():
  x = jax.random.normal(jax.random.key(0), (3, 2, 8, 8, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 4, 6))
  conv_with = lambda fn: jax.vmap(lambda x: fn(x, w, (1, 1), 'SAME', dimension_numbers=NHWC))
  _close(jax.jit(conv_with(onednn.conv_general_dilated))(x),
         conv_with(lax.conv_general_dilated)(x), 1e-5)


@needs_onednn
@pytest.mark.parametrize('w_shape, kwargs', [
    ((3, 3, 4, 4), {'rhs_dilation': (2, 2)}), ((3, 3, 4, 4), {'lhs_dilation': (2, 2)}),
    ((3, 3, 2, 4), {'feature_group_count': 2}),
    ((4, 8, 3, 3), {'dimension_numbers': ('NCHW', 'OIHW', 'NCHW')}),
    ((3, 3, 4, 4), {'dtype': jnp.bfloat16, 'preferred_element_type': jnp.float32})])
def test_uncovered_convolutions_are_xla_s(w_shape, kwargs):
  kwargs = {'dimension_numbers': NHWC, **kwargs}
  dtype = kwargs.pop('dtype', jnp.float32)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4), dtype)
  w = jax.random.normal(jax.random.key(1), w_shape, dtype)

  def loss(fn, x, w):
    y = fn(x, w, (1, 1), ((1, 1), (1, 1)), **kwargs)
    return jnp.sum(y.astype(jnp.float32) ** 2)

  ours = functools.partial(loss, onednn.conv_general_dilated)
  assert not _uses_onednn(ours, x, w)
  want = jax.grad(functools.partial(loss, lax.conv_general_dilated), (0, 1))(x, w)
  for a, b in zip(jax.grad(ours, (0, 1))(x, w), want, strict=True):
    np.testing.assert_array_equal(a, b)


@needs_onednn
@pytest.mark.parametrize('group_size', [None, 2])
@pytest.mark.parametrize('relu', [False, True])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_batch_norm_matches_xla_s_with_its_statistics_and_gradients(group_size, relu, dtype):
  """GhostBatchNorm with ``onednn``: the output, the running averages and the gradients of
  a loss through a residual sum (as in a block) are XLA's to float rounding."""
  kx, kr, kg, ks = jax.random.split(jax.random.key(0), 4)
  x = (jax.random.normal(kx, (6, 5, 4, 7)) * 3.0 + 1.0).astype(dtype)
  residual = jax.random.normal(kr, x.shape, dtype)
  g = jax.random.normal(kg, x.shape)

  def run(use_onednn):
    bn = models.layers.GhostBatchNorm(group_size=group_size, onednn=use_onednn)
    variables = bn.init(ks, x, use_running_average=False)
    params = {'scale': jax.random.uniform(ks, (7,)) + 0.5, 'bias': jnp.arange(7.0) / 7}

    def loss(params, x):
      y, stats = bn.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                          use_running_average=False, relu=relu, mutable=['batch_stats'])
      return jnp.sum((y + residual).astype(jnp.float32) * g), (y, stats)

    fn = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))
    if use_onednn:
      assert 'lrsched_norm_' in str(jax.make_jaxpr(fn)(params, x))
    return fn(params, x)

  (_, (y, stats)), grads = run(True)
  (_, (y_want, stats_want)), grads_want = run(False)
  rtol = 1e-5 if dtype == jnp.float32 else 1e-2
  _close(y, y_want, rtol)
  if relu:
    assert float(y.min()) == 0.0
  for got, want in zip(jax.tree.leaves((stats, grads)), jax.tree.leaves((stats_want, grads_want)),
                       strict=True):
    _close(got, want, 1e-4 if dtype == jnp.float32 else 1e-2)


def _train(conv_name: str, num_devices: int, steps: int = 2):
  model = models.create_model('resnet8', num_classes=10, bn_group_size=4, conv=conv_name)
  tx = lrsched.sgd(lrsched.constant(0.1), 0.9, weight_decay=5e-4)
  mesh = parallel.make_mesh(jax.devices()[:num_devices])
  train = parallel.make_train_steps(model, tx, mesh, parallel.StepConfig(16, 'crop+flip',
                                                                          jnp.float32),
                                    jax.random.key(1))
  state = setup.create_state(model, tx, mesh, jax.random.key(0))
  rng = np.random.default_rng(0)
  put = lambda a: parallel.put_replicated(mesh, a)
  data = (put(rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)),
          put(rng.integers(0, 10, 64, dtype=np.int32)), put(np.full(3, 120.0, np.float32)),
          put(np.full(3, 60.0, np.float32)))
  return jax.device_get(train(state, *data, steps).params)


@needs_onednn
def test_a_data_parallel_training_step_matches_xla():
  """Under shard_map over 4 replicas: each replica's own custom calls, the kernel's gradient
  summed over the replicas as autodiff sums XLA's. (oneDNN's batch-norm gradients are off
  float64's by about 1e-6 relative, XLA's by 1e-7; two steps at lr 0.1 make that 2e-5.)"""
  want = _train('xla', 4)
  for got in (_train('onednn', 4), _train('onednn', 1)):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5)


def test_a_bad_value_is_one_error_before_anything_runs():
  with pytest.raises(ConfigError, match=r"unknown --conv='torch'; valid: xla, onednn"):
    Config(conv='torch').validate()
  with pytest.raises(ValueError, match='conv must be one of'):
    models.create_model('resnet8', num_classes=10, conv='torch')


def test_onednn_is_for_cpu_and_says_what_is_missing(monkeypatch):
  assert 'CPU only' in conv.check_available('onednn', 'gpu')
  assert conv.check_available('xla', 'gpu') is None
  monkeypatch.setattr(onednn, 'unavailable', lambda: 'the reason; the fix')
  config = Config(conv='onednn', dataset='synthetic', model='resnet8', batch_size=8, steps=2,
                  synthetic_examples=64, workdir='/nonexistent/run')
  with pytest.raises(ConfigError, match=r'^the reason; the fix$'):
    setup.prepare(config, jax.devices()[:1])


def test_a_missing_package_or_compiler_is_one_line(monkeypatch, tmp_path):
  monkeypatch.setenv('LRSCHED_CACHE', str(tmp_path))

  def no_package(name):
    raise importlib.metadata.PackageNotFoundError(name)

  with monkeypatch.context() as m:
    m.setattr(importlib.metadata, 'files', no_package)
    with pytest.raises(onednn.Unavailable, match=r"needs oneDNN: pip install 'lrsched\[onednn\]'"):
      onednn._build()
  if onednn.unavailable() is not None:
    return  # the package is missing here: the compiler cannot be reached
  monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
  with pytest.raises(onednn.Unavailable, match='install g\\+\\+ \\(or set \\$CXX\\)'):
    onednn._build()


@needs_onednn
def test_a_failed_build_leaves_nothing_behind(monkeypatch, tmp_path):
  monkeypatch.setenv('LRSCHED_CACHE', str(tmp_path))
  monkeypatch.setenv('CXX', 'false')  # a "compiler" that fails without a word
  with pytest.raises(onednn.Unavailable, match=r'^compiling the oneDNN convolutions failed '
                     r'\(no output\); use --conv=xla$'):
    onednn._build()
  assert [p for p in tmp_path.rglob('*') if p.is_file()] == []
  monkeypatch.delenv('CXX')
  built = onednn._build()  # into the same cache, once; then read back
  assert built.is_file() and built.is_relative_to(tmp_path)
  assert onednn._build() == built and len(list(tmp_path.rglob('*.so'))) == 1


def test_a_run_saved_with_conv_backward_resumes(tmp_path):
  """--conv_backward became --conv: a workdir written before that resumes as it was."""
  config = Config(dataset='synthetic')
  saved = json.loads(config.to_json())
  del saved['conv']
  saved['conv_backward'] = 'xla'
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  setup.check_resumable(config, str(tmp_path))
  with pytest.raises(ConfigError, match="conv: 'xla' -> 'onednn'"):
    setup.check_resumable(config.replace(conv='onednn'), str(tmp_path))
