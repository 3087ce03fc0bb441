"""The convolutions' backward pass on CPU through PyTorch's oneDNN kernels (``--conv_backward``).

On CPU, XLA runs a convolution's weight gradient 2-4x slower than its forward (Eigen), and
no XLA:CPU flag or JAX formulation changes that (WORKSPACE.md, issue 10), while PyTorch's
oneDNN kernels run the same backward 2-3x faster. `conv_general_dilated('torch')` is a
drop-in for `lax.conv_general_dilated` (`flax.linen.Conv`'s ``conv_general_dilated``):
the forward stays XLA's own (fused with its neighbours, bit-identical to ``'xla'``, and the
whole evaluation path), and the VJP calls ``torch.ops.aten.convolution_backward`` on the
host through `jax.pure_callback`, reading JAX's NHWC buffers as channels-last tensors
without a copy. The gradients agree with XLA's to float rounding (about 1e-6 relative in
float32). Convolutions this path does not cover (dilations, groups, asymmetric padding,
layouts other than NHWC/HWIO) use XLA's backward.

PyTorch is an optional dependency (``pip install torch``); `check_available` says so in one
line. Under ``shard_map`` each replica runs its own callback; the result is typed varying
over the replica axes as its input is.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

CONV_BACKWARDS = ('xla', 'torch')
"""'xla': XLA's own backward; 'torch': PyTorch's oneDNN kernels on the host (CPU only)."""

_NHWC = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def check_available(conv_backward: str, platform: str) -> str | None:
  """Why ``conv_backward`` (a checked value: Config and the flags validate it) cannot run
  on ``platform`` (one line), or None if it can."""
  if conv_backward == 'torch':
    if platform != 'cpu':
      return (f'--conv_backward=torch runs on CPU only (the devices are {platform}); use '
              '--conv_backward=xla')
    try:
      import torch  # noqa: F401
    except ImportError:
      return '--conv_backward=torch needs PyTorch: pip install torch (or --conv_backward=xla)'
  return None


def conv_general_dilated(conv_backward: str):
  """The ``conv_general_dilated`` for `flax.linen.Conv`: None (Flax's default, XLA's) for
  ``'xla'``, the PyTorch-backward convolution for ``'torch'``."""
  if conv_backward not in CONV_BACKWARDS:
    raise ValueError(f'conv_backward must be one of {CONV_BACKWARDS}, got {conv_backward!r}')
  return None if conv_backward == 'xla' else _conv_with_torch_backward


def _conv_with_torch_backward(lhs, rhs, window_strides, padding, lhs_dilation=None,
                              rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                              batch_group_count=1, precision=None, preferred_element_type=None):
  xla = functools.partial(
      lax.conv_general_dilated, window_strides=window_strides, padding=padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)
  covered = (lhs.ndim == 4
             and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC
             and not isinstance(padding, str) and all(lo == hi for lo, hi in padding)
             and all(d in (None, (1, 1), [1, 1]) for d in (lhs_dilation, rhs_dilation))
             and feature_group_count == 1 and batch_group_count == 1
             and lhs.dtype == rhs.dtype and lhs.dtype in (jnp.float32, jnp.bfloat16)
             and preferred_element_type in (None, lhs.dtype))
  if not covered:
    return xla(lhs, rhs)
  # Autodiff of an invariant (replicated) kernel under shard_map sums its gradient over the
  # replicas when it is cast to varying here; the custom VJP then sees two varying inputs.
  axes = _varying_axes(lhs)
  extra = tuple(a for a in axes if a not in _varying_axes(rhs))
  if extra:
    rhs = lax.pcast(rhs, extra, to='varying')
  return _conv(lhs, rhs, tuple(window_strides), tuple(lo for lo, _ in padding), axes, xla)


def _varying_axes(x) -> tuple[str, ...]:
  """The mesh axes over which ``x`` varies inside ``shard_map`` (() outside)."""
  aval = jax.typeof(x)
  manual = getattr(aval, 'manual_axis_type', None)  # jax 0.10
  names = manual.varying if manual is not None else getattr(aval, 'vma', ())  # jax >= 0.11
  return tuple(sorted(names))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, w, stride, pad, axes, xla):
  return xla(x, w)


def _conv_fwd(x, w, stride, pad, axes, xla):
  return xla(x, w), (x, w)


def _conv_bwd(stride, pad, axes, xla, residuals, g):
  x, w = residuals
  shapes = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(w.shape, w.dtype))
  grads = jax.pure_callback(functools.partial(_host_backward, stride=stride, pad=pad),
                            shapes, x, w, g)
  if axes:  # the callback's results are typed invariant; the primal inputs were varying
    grads = tuple(lax.pcast(t, axes, to='varying') for t in grads)
  return grads


_conv.defvjp(_conv_fwd, _conv_bwd)


def _to_torch(a: np.ndarray) -> Any:
  """A tensor over the callback's (read-only) buffer: no copy; nothing writes to it."""
  import torch
  a = np.asarray(a)
  with warnings.catch_warnings():
    warnings.filterwarnings('ignore', 'The given NumPy array is not writable')
    if a.dtype == np.float32:
      return torch.from_numpy(a)
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)  # numpy has no bfloat16


def _to_numpy(t: Any, dtype: np.dtype) -> np.ndarray:
  import torch
  t = t.contiguous()
  if t.dtype == torch.float32:
    return t.numpy()
  return t.view(torch.int16).numpy().view(dtype)


def _host_backward(x, w, g, *, stride, pad):
  """(dx, dw) of the NHWC/HWIO convolution, by PyTorch (channels-last views, no copy in)."""
  import torch
  dtype = np.asarray(x).dtype
  nchw = lambda a: _to_torch(a).permute(0, 3, 1, 2)
  weight = _to_torch(w).permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
  with torch.no_grad():
    dx, dw, _ = torch.ops.aten.convolution_backward(
        nchw(g), nchw(x), weight, None, list(stride), list(pad), [1, 1], False, [0, 0], 1,
        [True, True, False])
  return _to_numpy(dx.permute(0, 2, 3, 1), dtype), _to_numpy(dw.permute(2, 3, 1, 0), dtype)
