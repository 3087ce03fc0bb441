"""CIFAR ResNets (He et al., 2016, "Deep Residual Learning for Image Recognition", Sec. 4.2).

A 3x3 conv with 16 channels, three stages of n basic blocks at 16, 32 and 64 channels
(feature maps 32x32, 16x16, 8x8; the first block of stages 2 and 3 has stride 2), global
average pooling and a fully connected classifier: depth 6n + 2 (ResNet-20/32/44/56/110 for
n = 3/5/7/9/18). A basic block is conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut,
then ReLU.

Shortcuts where the shape changes (``shortcut``):

* ``'A'``: identity on every second pixel, zero channels appended (He et al.'s option A;
  no parameters). Parameter counts: 0.27M (ResNet-20), 0.85M (ResNet-56), 1.7M (ResNet-110).
* ``'B'``: 1x1 conv with stride 2 + BN (option B).
* ``'caffe'``: Smith & Topin's Caffe ResNet-56 (``Resnet56Cifar.prototxt`` of
  lnsmith54/super-convergence). In the first block of stages 2 and 3 both convs keep the old
  channel count (the first one has stride 2), the shortcut is a 3x3 stride-2 average pooling
  (Caffe rounds the output size up: the last window covers 2 rows or columns and averages
  over those only), and after the addition and ReLU zero channels are appended to double the
  width. Convs have biases.

Initialisation: convs He normal, untruncated, with fan_out (torchvision, ``'A'``/``'B'``) or
fan_in (Caffe's msra filler, ``'caffe'``); conv biases zero; batch-norm scale 1 and shift 0;
classifier weights torch ``nn.Linear``'s default U(+-1/sqrt(fan_in)) with a zero bias
(``'A'``/``'B'``) or Caffe's xavier filler U(+-sqrt(3/fan_in)) with a zero bias (``'caffe'``).

3x3 convs pad by 1 on every side (as PyTorch and Caffe do; Flax's ``'SAME'`` pads only at the
end for stride 2), so stride-2 convs and option A's subsampling see pixels 0, 2, 4, ...
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from experiments.models import conv as convs
from experiments.models import layers

SHORTCUTS = ('A', 'B', 'caffe')
STAGE_WIDTHS = (16, 32, 64)

ModuleDef = Any


def _pad_channels(x: jax.Array, features: int) -> jax.Array:
  """Appends zero channels to ``x`` up to ``features`` channels."""
  extra = features - x.shape[-1]
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])


class BasicBlock(nn.Module):
  """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, + shortcut, ReLU (He et al., 2016).

  Attributes:
    features: the number of output channels.
    strides: 1, or 2 in the first block of stages 2 and 3.
    shortcut: 'A', 'B' or 'caffe' (see the module docstring).
    conv: a partial of `flax.linen.Conv` (dtype and initialisers set).
    norm: a partial of `layers.GhostBatchNorm` (everything set but the input).
  """

  features: int
  strides: int
  shortcut: str
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_features = x.shape[-1]
    downsample = self.strides != 1 or in_features != self.features
    # The Caffe variant keeps the old width through the block and widens after it.
    width = in_features if self.shortcut == 'caffe' else self.features
    s = (self.strides, self.strides)
    y = self.conv(width, (3, 3), s, name='conv1')(x)
    y = self.norm(name='bn1')(y, relu=True)
    y = self.conv(width, (3, 3), name='conv2')(y)
    y = self.norm(name='bn2')(y)

    if not downsample:
      residual = x
    elif self.shortcut == 'A':
      residual = _pad_channels(x[:, :: self.strides, :: self.strides, :], self.features)
    elif self.shortcut == 'B':
      residual = self.conv(self.features, (1, 1), s, padding='VALID', name='proj_conv')(x)
      residual = self.norm(name='proj_bn')(residual)
    else:  # caffe
      residual = nn.avg_pool(x, (3, 3), s, padding=((0, 1), (0, 1)), count_include_pad=False)
    y = nn.relu(y + residual)
    if self.shortcut == 'caffe' and downsample:
      y = _pad_channels(y, self.features)
    return y


class CifarResNet(nn.Module):
  """He et al.'s CIFAR ResNet of depth 6 * ``blocks_per_stage`` + 2.

  Attributes:
    blocks_per_stage: n, the number of basic blocks in each of the three stages.
    num_classes: the number of logits.
    shortcut: 'A' (zero-padded identity), 'B' (1x1 conv projection) or 'caffe'
      (Smith & Topin's network); see the module docstring.
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

  blocks_per_stage: int
  num_classes: int
  shortcut: str = 'A'
  dtype: Any = jnp.float32
  bn_group_size: int | None = None
  bn_momentum: float = 0.9
  bn_debias: bool = False
  conv: str = 'xla'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps normalised NHWC images (batch, 32, 32, 3) to float32 logits (batch, classes)."""
    if self.shortcut not in SHORTCUTS:
      raise ValueError(f'shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}')
    caffe = self.shortcut == 'caffe'
    conv = functools.partial(
      nn.Conv,
      padding=((1, 1), (1, 1)),
      use_bias=caffe,
      kernel_init=layers.caffe_msra if caffe else layers.he_normal_fan_out,
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
    x = x.astype(self.dtype)
    x = conv(STAGE_WIDTHS[0], (3, 3), name='stem_conv')(x)
    x = norm(name='stem_bn')(x, relu=True)
    for i, width in enumerate(STAGE_WIDTHS):
      for j in range(self.blocks_per_stage):
        strides = 2 if i > 0 and j == 0 else 1
        name = f'stage{i + 1}_block{j + 1}'
        x = BasicBlock(width, strides, self.shortcut, conv, norm, name=name)(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(
      self.num_classes,
      kernel_init=layers.caffe_xavier if caffe else layers.torch_linear,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name='classifier',
    )(x)
    return x.astype(jnp.float32)
