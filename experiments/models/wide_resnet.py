"""Wide ResNets (Zagoruyko & Komodakis, 2016, "Wide Residual Networks").

WRN-d-k: a 3x3 conv with 16 channels, three stages of n = (d - 4) / 6 pre-activation blocks
at 16k, 32k and 64k channels (the first block of stages 2 and 3 has stride 2), then
BN -> ReLU -> global average pooling -> fully connected. A block is

  BN -> ReLU -> conv3x3 (stride) -> BN -> ReLU -> dropout -> conv3x3, + shortcut,

where the shortcut is the identity, or, where the shape changes, a 1x1 conv (with the
block's stride) of the pre-activated input, as in the authors' code. Parameter counts
(CIFAR-10): WRN-16-4 2.7M, WRN-16-8 11.0M, WRN-28-10 36.5M, WRN-40-2 2.2M.

Initialisation as in the authors' Lua/Torch7 code (``models/utils.lua``: ``MSRinit`` and
``FCinit``; their later PyTorch port differs): convs He normal with fan_out (untruncated,
no bias), batch-norm scale 1 and shift 0, classifier weights Torch's default
U(+-1/sqrt(fan_in)) with a zero bias.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments.models import conv as convs
from experiments.models import layers

STAGE_WIDTHS = (16, 32, 64)

ModuleDef = Any


class WideBlock(nn.Module):
  """A pre-activation wide basic block (BN-ReLU-conv-BN-ReLU-dropout-conv + shortcut).

  Attributes:
    features: the number of output channels.
    strides: 1, or 2 in the first block of stages 2 and 3.
    dropout_rate: the dropout rate between the two convs.
    train: True to apply dropout (with the 'dropout' rng).
    conv: a partial of `flax.linen.Conv` (dtype and initialiser set).
    norm: a partial of `layers.GhostBatchNorm` (everything set but the input).
  """

  features: int
  strides: int
  dropout_rate: float
  train: bool
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = (self.strides, self.strides)
    o = self.norm(name='bn1')(x, relu=True)
    y = self.conv(self.features, (3, 3), s, name='conv1')(o)
    y = self.norm(name='bn2')(y, relu=True)
    y = nn.Dropout(self.dropout_rate, deterministic=not self.train)(y)
    y = self.conv(self.features, (3, 3), name='conv2')(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = self.conv(self.features, (1, 1), s, padding='VALID', name='proj_conv')(o)
    return x + y


class WideResNet(nn.Module):
  """WRN-``depth``-``widen_factor`` for 32x32 images.

  Attributes:
    depth: d, of the form 6n + 4 (n blocks per stage).
    widen_factor: k, the width multiplier.
    num_classes: the number of logits.
    dropout_rate: dropout between the convs of each block (only with ``train=True``;
      uses the 'dropout' rng).
    dtype: the compute dtype (float32 or bfloat16). Parameters and batch-norm statistics
      are float32; the logits are returned in float32.
    bn_group_size: examples per group of the batch-norm statistics in training
      (`layers.GhostBatchNorm`); None for the whole batch.
    bn_momentum: decay of the batch-norm running averages.
    bn_debias: Caffe's running averages, free of their initial values
      (`layers.GhostBatchNorm`'s ``debias``).
    conv: the convolutions' kernels: 'xla', or 'onednn' for oneDNN's on CPU, which also
      runs batch norm in training (`experiments.models.conv`).
  """

  depth: int
  widen_factor: int
  num_classes: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  bn_group_size: int | None = None
  bn_momentum: float = 0.9
  bn_debias: bool = False
  conv: str = 'xla'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps normalised NHWC images (batch, 32, 32, 3) to float32 logits (batch, classes)."""
    if self.depth < 10 or (self.depth - 4) % 6:
      raise ValueError(f'WideResNet depth must be 6n + 4 with n >= 1, got {self.depth}')
    blocks_per_stage = (self.depth - 4) // 6
    conv = functools.partial(
      nn.Conv,
      padding=((1, 1), (1, 1)),
      use_bias=False,
      kernel_init=layers.he_normal_fan_out,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      conv_general_dilated=convs.conv_general_dilated(self.conv),
    )
    norm = functools.partial(
      layers.GhostBatchNorm,
      use_running_average=not train,
      group_size=self.bn_group_size,
      momentum=self.bn_momentum,
      debias=self.bn_debias,
      dtype=self.dtype,
      onednn=self.conv == 'onednn',
    )
    x = conv(STAGE_WIDTHS[0], (3, 3), name='stem_conv')(x.astype(self.dtype))
    for i, width in enumerate(STAGE_WIDTHS):
      for j in range(blocks_per_stage):
        x = WideBlock(
          width * self.widen_factor,
          strides=2 if i > 0 and j == 0 else 1,
          dropout_rate=self.dropout_rate,
          train=train,
          conv=conv,
          norm=norm,
          name=f'stage{i + 1}_block{j + 1}',
        )(x)
    x = norm(name='final_bn')(x, relu=True)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(
      self.num_classes,
      kernel_init=layers.torch_linear,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name='classifier',
    )(x)
    return x.astype(jnp.float32)
