"""Flax Linen models for the CIFAR experiments: He et al.'s ResNets and Wide ResNets.

>>> from experiments import models
>>> model = models.create_model('resnet56', num_classes=10, bn_group_size=125)
>>> variables = model.init({'params': key, 'dropout': key2}, images, train=False)
>>> logits, state = model.apply(variables, images, train=True, rngs={'dropout': key3},
...                             mutable=['batch_stats'])

``variables`` holds ``params`` and ``batch_stats`` (float32). ``images`` are normalised
NHWC float arrays of shape (batch, 32, 32, 3); logits are float32 whatever the compute dtype.
"""

from __future__ import annotations

import numbers
import re
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from experiments.models.conv import CONVS
from experiments.models.layers import GhostBatchNorm
from experiments.models.resnet import SHORTCUTS, BasicBlock, CifarResNet
from experiments.models.wide_resnet import WideBlock, WideResNet

NAMES = (
  'resnet8',
  'resnet20',
  'resnet32',
  'resnet44',
  'resnet56',
  'resnet110',
  'wrn-10-1',
  'wrn-16-4',
  'wrn-16-8',
  'wrn-28-10',
  'wrn-40-2',
)
"""The named models. ``create_model`` also accepts any 'resnetD' with D = 6n + 2 and any
'wrn-D-K' with D = 6n + 4 (n >= 1, K >= 1)."""

_RESNET = re.compile(r'resnet(\d+)')
_WRN = re.compile(r'wrn-(\d+)-(\d+)')


def _error(message: str) -> ValueError:
  names = ', '.join(NAMES)
  return ValueError(f'{message}. Valid models: {names} (or resnet<6n+2>, wrn-<6n+4>-<k>)')


def create_model(
  name: str,
  *,
  num_classes: int,
  dtype: Any = jnp.float32,
  bn_group_size: int | None = None,
  bn_momentum: float = 0.9,
  bn_debias: bool = False,
  dropout_rate: float = 0.0,
  shortcut: str | None = None,
  conv: str = 'xla',
) -> nn.Module:
  """Builds a CIFAR model by name.

  Args:
    name: 'resnetD' (He et al., 2016; depth D = 6n + 2, e.g. 'resnet56') or 'wrn-D-K'
      (Zagoruyko & Komodakis, 2016; depth D = 6n + 4, widen factor K, e.g. 'wrn-28-10').
      See ``NAMES``.
    num_classes: the number of logits, >= 1.
    dtype: the compute dtype, a floating dtype (float32 or bfloat16). Parameters and
      batch-norm statistics are float32 and logits float32 whatever it is.
    bn_group_size: ghost batch norm: in training, batch-norm statistics over consecutive
      groups of this many examples of the batch the model sees (e.g. 125 for Smith & Topin's
      8 GPUs x 125); None for the whole batch. See `GhostBatchNorm`.
    bn_momentum: decay of the batch-norm running averages, in [0, 1) (Caffe's
      ``moving_average_fraction``: Smith & Topin used 0.95 for CLR runs and 0.999 for the
      piecewise-constant baseline).
    bn_debias: keep the running averages as Caffe does, as decayed sums over their decayed
      weight, free of their initial values (see `GhostBatchNorm`).
    dropout_rate: dropout between the convs of each WRN block, in [0, 1); must be 0 for
      ResNets.
    shortcut: ResNets only: 'A' (default; zero-padded identity), 'B' (1x1 conv projection)
      or 'caffe' (Smith & Topin's Caffe ResNet). Must be None for WRNs.
    conv: the convolutions' kernels: 'xla' (default), or 'onednn': on CPU, oneDNN's for the
      forward and both gradients (`experiments.models.conv`).

  Returns:
    An uninitialised `flax.linen.Module`, called as ``model.apply(variables, images,
    train=...)``.

  Raises:
    ValueError: for an unknown name, a depth of the wrong form or an invalid argument.
  """
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f'num_classes must be a positive int, got {num_classes!r}')
  if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
    raise ValueError(f'dtype must be a floating dtype (float32, bfloat16), got {dtype!r}')
  if bn_group_size is not None:
    if not isinstance(bn_group_size, numbers.Integral) or bn_group_size < 1:
      raise ValueError(f'bn_group_size must be None or a positive int, got {bn_group_size!r}')
    bn_group_size = int(bn_group_size)
  if not 0.0 <= bn_momentum < 1.0:
    raise ValueError(f'bn_momentum must be in [0, 1), got {bn_momentum!r}')
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f'dropout_rate must be in [0, 1), got {dropout_rate!r}')
  if conv not in CONVS:
    raise ValueError(f'conv must be one of {CONVS}, got {conv!r}')

  if not isinstance(name, str):
    raise _error(f'The model name must be a str, got {name!r}')
  if match := _RESNET.fullmatch(name):
    depth = int(match.group(1))
    if depth < 8 or (depth - 2) % 6:
      raise _error(f'{name!r}: a ResNet depth must be 6n + 2 with n >= 1 (8, 20, 32, ...)')
    if shortcut is None:
      shortcut = 'A'
    if shortcut not in SHORTCUTS:
      raise ValueError(f'shortcut must be one of {SHORTCUTS} for {name!r}, got {shortcut!r}')
    if dropout_rate:
      raise ValueError(f'{name!r} has no dropout; dropout_rate must be 0 for ResNets')
    return CifarResNet(
      blocks_per_stage=(depth - 2) // 6,
      num_classes=num_classes,
      shortcut=shortcut,
      dtype=dtype,
      bn_group_size=bn_group_size,
      bn_momentum=bn_momentum,
      bn_debias=bn_debias,
      conv=conv,
    )

  if match := _WRN.fullmatch(name):
    depth, widen_factor = int(match.group(1)), int(match.group(2))
    if depth < 10 or (depth - 4) % 6:
      raise _error(f'{name!r}: a WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...)')
    if widen_factor < 1:
      raise _error(f'{name!r}: the widen factor must be >= 1')
    if shortcut is not None:
      raise _error(f'{name!r}: shortcut applies to ResNets only (WRNs use 1x1 projections)')
    return WideResNet(
      depth=depth,
      widen_factor=widen_factor,
      num_classes=num_classes,
      dropout_rate=dropout_rate,
      dtype=dtype,
      bn_group_size=bn_group_size,
      bn_momentum=bn_momentum,
      bn_debias=bn_debias,
      conv=conv,
    )

  raise _error(f'Unknown model {name!r}')


__all__ = [
  'CONVS',
  'NAMES',
  'SHORTCUTS',
  'BasicBlock',
  'CifarResNet',
  'GhostBatchNorm',
  'WideBlock',
  'WideResNet',
  'create_model',
]
