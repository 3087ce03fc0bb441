"""What the CIFAR model families share: ghost batch norm and the initialisers.

Ghost batch norm (Hoffer et al., 2017, "Train longer, generalize better") computes the
batch-norm statistics over fixed-size groups of the batch. It reproduces the per-GPU
statistics of multi-GPU training (Smith & Topin: 8 GPUs x 125 images, statistics over 125)
whatever the number of devices this code runs on.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from experiments.models import vma

Dtype = Any
Initializer = Any

# Initialisers. JAX's `he_normal` is a truncated normal; these are the untruncated ones of
# PyTorch and Caffe. Conv kernels are (kh, kw, in, out): fan_in = kh*kw*in, fan_out = kh*kw*out.

he_normal_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
"""N(0, 2 / fan_out): torch ``kaiming_normal_(mode='fan_out')`` as in torchvision's ResNets
and the Wide ResNet authors' code (std sqrt(2 / (k*k*out)))."""

caffe_msra = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
"""N(0, 2 / fan_in): Caffe's ``msra`` filler with its default ``variance_norm: FAN_IN``."""

torch_linear = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')
"""U(-1/sqrt(fan_in), 1/sqrt(fan_in)): the default weight init of torch ``nn.Linear``."""

caffe_xavier = nn.initializers.variance_scaling(1.0, 'fan_in', 'uniform')
"""U(-sqrt(3/fan_in), sqrt(3/fan_in)): Caffe's ``xavier`` filler with its default
``variance_norm: FAN_IN`` (variance 1/fan_in, not Glorot's 2/(fan_in+fan_out))."""


def _group_statistics(xg: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The mean and the biased two-pass variance of each group (axis 0) and channel (last)."""
  axes = tuple(range(1, xg.ndim - 1))  # within a group: examples and spatial positions
  mean = jnp.mean(xg, axis=axes, keepdims=True)
  return mean, jnp.mean(jnp.square(xg - mean), axis=axes, keepdims=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _normalize_groups(xg: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
                      ) -> jax.Array:
  """``(xg - mean) / sqrt(var + epsilon) * scale + bias`` with each group's statistics.

  The backward pass is batch norm's closed form, dx = scale / sigma * (dy - mean(dy) - x^ *
  mean(dy * x^)) per group, x^ the normalised input: one reduction of (dy, dy * x^) and one
  elementwise pass. Autodiff through the two-pass statistics takes several more passes over
  the activations, which XLA:CPU materialises (5-13% of a CPU training step, WORKSPACE.md).
  """
  return _normalize_groups_fwd(xg, scale, bias, epsilon)[0]


def _normalize_groups_fwd(xg, scale, bias, epsilon):
  mean, var = _group_statistics(xg)
  rstd = lax.rsqrt(var + epsilon)
  return (xg - mean) * (rstd * scale) + bias, (xg, mean, rstd, scale)


def _normalize_groups_bwd(epsilon, residuals, dy):
  del epsilon
  xg, mean, rstd, scale = residuals
  axes = tuple(range(1, xg.ndim - 1))
  count = math.prod(xg.shape[a] for a in axes)
  x_hat = (xg - mean) * rstd
  sum_dy = jnp.sum(dy, axis=axes, keepdims=True)
  sum_dy_x_hat = jnp.sum(dy * x_hat, axis=axes, keepdims=True)
  dx = (rstd * scale) * (dy - (sum_dy + x_hat * sum_dy_x_hat) / count)
  per_channel = lambda a: jnp.sum(a, axis=(0, *axes)).reshape(scale.shape)
  return dx, per_channel(sum_dy_x_hat).astype(scale.dtype), per_channel(sum_dy).astype(
      scale.dtype)


_normalize_groups.defvjp(_normalize_groups_fwd, _normalize_groups_bwd)


class GhostBatchNorm(nn.Module):
  r"""Batch norm whose training statistics come from groups of ``group_size`` examples.

  In training (``use_running_average=False``) the batch of B examples is split into
  B / g consecutive groups of g = ``group_size`` examples, and each group is normalised with
  its own statistics over (group, height, width), per channel:

  .. math:: y = \gamma \, (x - \mu_k) / \sqrt{\sigma_k^2 + \epsilon} + \beta
     \quad \text{for } x \text{ in group } k

  where :math:`\sigma_k^2` is the biased (divide by the number of values) variance of group k,
  computed in float32 with two passes, :math:`E[(x - \mu_k)^2]`, as Caffe does. A group's
  output therefore depends on that group's examples only. ``group_size=None`` uses the whole
  batch as one group: `flax.linen.BatchNorm` (with ``use_fast_variance=False``, up to float
  rounding), with the same variable names.

  "The batch" is the array this module sees: the per-device batch under ``shard_map``/``pmap``,
  the global batch under ``jit`` with a sharded batch axis. Either way, with groups that
  don't straddle devices (g divides the per-device batch), the outputs are the same on any
  number of devices. Under ``jit`` the normalisation then needs no cross-device
  communication (only the running-average update reduces a per-channel vector across
  devices); under ``shard_map``/``pmap`` each device updates its own running averages, which
  must be averaged over devices (``lax.pmean``) to give the single-device values.

  The running averages (used when ``use_running_average=True``) are updated with the mean
  over groups of the group means and the mean over groups of the biased group variances:

  .. math:: m \leftarrow \rho\, m + (1 - \rho) \tfrac{1}{K}\sum_k \mu_k, \qquad
            v \leftarrow \rho\, v + (1 - \rho) \tfrac{1}{K}\sum_k \sigma_k^2

  That is what K independent replicas, each updating its own running averages with its own
  batch (as Caffe's per-GPU batch-norm layers do), would hold once averaged. The mean of the
  group variances is smaller than the variance of the whole batch by the variance of the
  group means. The running averages start at mean 0 and variance 1 and are not updated
  during ``init``, as in `flax.linen.BatchNorm`.

  By default the running averages are plain exponential moving averages, biased towards
  their initial values for about 1 / (1 - rho) updates: with rho = 0.999 the initial
  (0, 1) still weigh 61% after 500 steps, and evaluations early in training are near
  chance. ``debias=True`` keeps them as Caffe's BatchNorm layer does, which the
  super-convergence experiments used: decayed sums divided by their decayed weight,

  .. math:: w \leftarrow \rho\, w + (1 - \rho), \qquad
            \hat m = m / w, \quad \hat v = v / w \quad (m = v = w = 0 \text{ at first}),

  so that the average holds only the batches seen (Caffe's ``scale_factor``; a ``weight``
  variable in ``batch_stats``; before any update, mean 0 and variance 1 are used). The
  variance is averaged without Caffe's unbiasing factor n / (n - 1), n the number of values
  per channel (negligible here: n >= 125 * 8 * 8).

  Attributes:
    use_running_average: True for evaluation, False for training; may instead be given to
      ``__call__`` (exactly one of the two).
    group_size: g, the number of examples per group; None for the whole batch. The batch
      must be divisible by g in training (a ValueError at trace time otherwise).
    momentum: rho, the decay of the running averages (Flax's ``momentum``, Caffe's
      ``moving_average_fraction``), in [0, 1).
    epsilon: added to the variance.
    dtype: the dtype of the output; None for the dtype of the input. The statistics and the
      normalisation are computed in (at least) float32 either way.
    param_dtype: the dtype of ``scale`` and ``bias``.
    scale_init: initialiser of the scale gamma (ones).
    bias_init: initialiser of the shift beta (zeros).
    debias: keep the running averages as Caffe does, free of their initial values (above).
    onednn: normalise 4-D float32 inputs in training by oneDNN's batch norm, its ReLU fused
      (`experiments.models.conv.onednn.batch_norm`; CPU only, ``--conv=onednn``); the same
      statistics to float rounding.
  """

  use_running_average: bool | None = None
  group_size: int | None = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  scale_init: Initializer = nn.initializers.ones
  bias_init: Initializer = nn.initializers.zeros
  debias: bool = False
  onednn: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None,
               relu: bool = False) -> jax.Array:
    """Normalises ``x`` (batch first, features last) and applies the learned scale and shift.

    Args:
      x: an array of shape (batch, ..., features).
      use_running_average: True to normalise with the running averages (evaluation), False
        to normalise with group statistics and update the running averages (training; make
        the ``batch_stats`` collection mutable). Give it here or as the attribute, not
        both.
      relu: apply a ReLU to the result (fused into the normalisation by oneDNN).

    Returns:
      The normalised array, of shape ``x.shape`` and dtype ``self.dtype`` (or ``x.dtype``).
    """
    use_running_average = nn.merge_param(
      'use_running_average', self.use_running_average, use_running_average
    )
    features = x.shape[-1]
    # Same variable names and dtypes as nn.BatchNorm, so that checkpoints are interchangeable
    # (debias adds a scalar 'weight').
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.zeros if self.debias else jnp.ones,
                           (features,), jnp.float32)
    weight = (self.variable('batch_stats', 'weight', jnp.zeros, (), jnp.float32)
              if self.debias else None)
    scale = self.param('scale', self.scale_init, (features,), self.param_dtype)
    bias = self.param('bias', self.bias_init, (features,), self.param_dtype)
    stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
    out_dtype = x.dtype if self.dtype is None else self.dtype

    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
      if weight is not None:
        seen = weight.value > 0
        w = jnp.where(seen, weight.value, 1.0)
        mean, var = jnp.where(seen, mean / w, 0.0), jnp.where(seen, var / w, 1.0)
      y = (x.astype(stat_dtype) - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias
      return (nn.relu(y) if relu else y).astype(out_dtype)

    batch = x.shape[0]
    group = batch if self.group_size is None else self.group_size
    if not isinstance(group, numbers.Integral) or group < 1:
      raise ValueError(f'GhostBatchNorm: bn_group_size must be a positive int, got {group!r}')
    if batch % group:
      raise ValueError(
        f'GhostBatchNorm: the batch of {batch} examples is not divisible by '
        f'bn_group_size={group}; use a per-device batch that is a multiple of it.'
      )
    if self.onednn and x.ndim == 4 and stat_dtype == scale.dtype == bias.dtype == jnp.float32:
      from experiments.models.conv import onednn
      y, mean, var = onednn.batch_norm(x.astype(stat_dtype), scale, bias, group, self.epsilon,
                                       relu)
    else:
      xg = x.reshape(batch // group, group, *x.shape[1:]).astype(stat_dtype)
      y = _normalize_groups(*vma.match(xg, scale, bias), self.epsilon)
      y = nn.relu(y) if relu else y
      # The same statistics again, for the running averages: XLA computes them once.
      mean, var = lax.stop_gradient(_group_statistics(xg))

    if not self.is_initializing():
      group_mean = jnp.mean(mean, axis=0).reshape(features)
      group_var = jnp.mean(var, axis=0).reshape(features)
      ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * group_mean
      ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * group_var
      if weight is not None:
        weight.value = self.momentum * weight.value + (1.0 - self.momentum)
    return y.reshape(x.shape).astype(out_dtype)
