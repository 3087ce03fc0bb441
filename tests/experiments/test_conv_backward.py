"""``--conv_backward=torch``: XLA's forward, PyTorch's backward, the same gradients."""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import lrsched
from experiments import models, parallel, setup
from experiments.config import Config, ConfigError
from experiments.models import conv_backward

needs_torch = pytest.mark.skipif(
    conv_backward.check_available('torch', 'cpu') is not None, reason='PyTorch not installed')

TORCH_CONV = conv_backward.conv_general_dilated('torch')


def _conv(fn, x, w, stride, padding=None, **kwargs):
  return fn(x, w, stride, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'), **kwargs)


@needs_torch
@pytest.mark.parametrize('dtype, rtol', [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize('kernel, stride, pad', [(3, 1, 1), (3, 2, 1), (1, 2, 0), (3, 1, 0)])
def test_gradients_match_xla(dtype, rtol, kernel, stride, pad, monkeypatch):
  calls = []
  host_backward = conv_backward._host_backward
  monkeypatch.setattr(conv_backward, '_host_backward',
                      lambda *a, **k: calls.append(1) or host_backward(*a, **k))
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (4, 9, 9, 5), dtype)
  w = (jax.random.normal(kw, (kernel, kernel, 5, 7)) * 0.3).astype(dtype)
  padding = ((pad, pad), (pad, pad))
  out_xla, vjp_xla = jax.vjp(lambda x, w: _conv(lax.conv_general_dilated, x, w, (stride,) * 2,
                                                 padding), x, w)
  out_torch, vjp_torch = jax.vjp(lambda x, w: _conv(TORCH_CONV, x, w, (stride,) * 2,
                                                     padding), x, w)
  np.testing.assert_array_equal(out_torch, out_xla)  # the forward is XLA's own
  g = jax.random.normal(kg, out_xla.shape, dtype)
  for got, want in zip(jax.jit(vjp_torch)(g), vjp_xla(g), strict=True):
    assert got.dtype == want.dtype and got.shape == want.shape
    scale = float(jnp.abs(want.astype(jnp.float32)).max())
    err = float(jnp.abs(got.astype(jnp.float32) - want.astype(jnp.float32)).max())
    assert err <= rtol * scale, (err, scale)
  assert calls == [1]  # PyTorch computed them


@needs_torch
def test_uncovered_convolutions_fall_back_to_xla(monkeypatch):
  monkeypatch.setattr(conv_backward, '_host_backward', None)  # never called
  x = jnp.ones((2, 8, 8, 3))
  w = jnp.ones((3, 3, 3, 4))
  for kwargs in ({'rhs_dilation': (2, 2), 'padding': ((1, 1), (1, 1))}, {'padding': 'SAME'}):
    def loss(fn, x, w, kwargs=kwargs):
      return jnp.sum(_conv(fn, x, w, (1, 1), **kwargs) ** 2)
    want = jax.grad(functools.partial(loss, lax.conv_general_dilated), (0, 1))(x, w)
    got = jax.jit(jax.grad(functools.partial(loss, TORCH_CONV), (0, 1)))(x, w)
    for a, b in zip(got, want, strict=True):
      np.testing.assert_array_equal(a, b)


def _train(conv: str, num_devices: int, steps: int = 2):
  model = models.create_model('resnet8', num_classes=10, bn_group_size=4, conv_backward=conv)
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


@needs_torch
def test_a_data_parallel_training_step_matches_xla():
  """Under shard_map over 4 replicas: each replica's callback, the kernel's gradient summed
  over the replicas as autodiff sums XLA's."""
  want = _train('xla', 4)
  for got in (_train('torch', 4), _train('torch', 1)):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_bad_value_is_one_error_before_anything_runs():
  with pytest.raises(ConfigError, match=r"unknown --conv_backward='onednn'; valid: xla, torch"):
    Config(conv_backward='onednn').validate()
  with pytest.raises(ValueError, match='conv_backward must be one of'):
    models.create_model('resnet8', num_classes=10, conv_backward='onednn')


def test_torch_is_for_cpu_and_needs_pytorch(monkeypatch):
  assert 'CPU only' in conv_backward.check_available('torch', 'gpu')
  assert conv_backward.check_available('xla', 'gpu') is None
  monkeypatch.setitem(sys.modules, 'torch', None)  # makes the import fail
  assert 'pip install torch' in conv_backward.check_available('torch', 'cpu')
  config = Config(conv_backward='torch', dataset='synthetic', model='resnet8',
                  batch_size=8, steps=2, synthetic_examples=64, workdir='/nonexistent/run')
  with pytest.raises(ConfigError, match='needs PyTorch'):
    setup.prepare(config, jax.devices()[:1])
