"""Which kernels run the models' convolutions (``--conv``): XLA's own, or oneDNN's on CPU.

``'xla'`` (the default) is whatever XLA compiles the convolution to on the devices: cuDNN on
GPU, the MXU on TPU, Eigen on CPU. ``'onednn'`` runs the forward and both gradients by
oneDNN's kernels as XLA custom calls inside the compiled step (`onednn`; CPU only, 1.6-5x
faster training than Eigen's on the CPUs measured, WORKSPACE.md); the models then also run
batch norm in training, with its ReLU, by oneDNN (`onednn.batch_norm`). Either is a drop-in for
`lax.conv_general_dilated`, `flax.linen.Conv`'s ``conv_general_dilated``.
"""

from __future__ import annotations

from collections.abc import Callable

CONVS = ('xla', 'onednn')
"""'xla': XLA's convolutions; 'onednn': oneDNN's (CPU only; ``pip install 'lrsched[onednn]'``)."""


def check_available(conv: str, platform: str) -> str | None:
  """Why ``conv`` (a checked value: Config and the flags validate it) cannot run on
  ``platform`` (one line naming the fix), or None if it can."""
  if conv == 'onednn':
    if platform != 'cpu':
      return f'--conv=onednn runs on CPU only (the devices are {platform}); use --conv=xla'
    from experiments.models.conv import onednn
    return onednn.unavailable()
  return None


def conv_general_dilated(conv: str) -> Callable | None:
  """The ``conv_general_dilated`` for `flax.linen.Conv`: None (Flax's default, XLA's) for
  ``'xla'``, oneDNN's for ``'onednn'``."""
  if conv not in CONVS:
    raise ValueError(f'conv must be one of {CONVS}, got {conv!r}')
  if conv == 'xla':
    return None
  from experiments.models.conv import onednn
  return onednn.conv_general_dilated
