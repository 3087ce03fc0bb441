"""Per-batch augmentation and normalisation, on the device.

Both are pure functions of arrays and a key, fit for `jax.jit`, `jax.vmap` and
`jax.shard_map`. Every image gets its own random draw, with no Python loop over the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

AUGMENTATIONS = ('flip', 'crop+flip', 'none')
"""The modes `augment` accepts."""

PAD_MODES = ('zero', 'reflect')
"""How `augment` pads before a random crop."""


def augment(images: jax.Array, key: jax.Array, mode: str = 'flip', *, pad: int = 4,
            pad_mode: str = 'zero') -> jax.Array:
  """Randomly flips (and crops) each image of a batch.

  * ``'flip'``: each image is mirrored left-right with probability 1/2. This is all that
    Smith & Topin (2017, "Super-Convergence", arXiv:1708.07120) use on CIFAR.
  * ``'crop+flip'``: each image is padded by ``pad`` pixels on every side and a random
    window of its original size is cut out, i.e. it is translated by
    ``(dy, dx) ~ U{-pad..pad}^2`` with the uncovered border filled by the padding; then it
    is flipped as above. This is the standard CIFAR augmentation of He et al. (2016, "Deep
    Residual Learning", arXiv:1512.03385), with zero padding.
  * ``'none'``: the images, unchanged.

  Args:
    images: ``[B, H, W, C]``, any dtype (uint8 stays uint8).
    key: a PRNG key; the same key gives the same result.
    mode: one of `AUGMENTATIONS`; a Python string (it selects the computation).
    pad: the padding of ``'crop+flip'``, in pixels (a Python int, >= 0).
    pad_mode: ``'zero'`` (the standard) or ``'reflect'`` (mirror the border, without
      repeating the edge pixel), for ``'crop+flip'``.

  Returns:
    Augmented images of the same shape and dtype.

  Raises:
    ValueError: an unknown ``mode`` or ``pad_mode``, a bad ``pad``, or ``images`` not of
      rank 4; raised at once, before anything is traced.
  """
  if mode not in AUGMENTATIONS:
    raise ValueError(f'unknown augmentation {mode!r}; valid: {", ".join(AUGMENTATIONS)}')
  _check_crop(pad, pad_mode)
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f'images must be a batch [B, H, W, C], got shape {images.shape}')
  if mode == 'none':
    return images
  if mode == 'crop+flip':
    crop_key, key = jax.random.split(key)
    images = random_crop(images, crop_key, pad=pad, pad_mode=pad_mode)
  return random_flip(images, key)


def random_flip(images: jax.Array, key: jax.Array) -> jax.Array:
  """Mirrors each image of ``[B, H, W, C]`` left-right with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, images.shape[:1])
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def _check_crop(pad: int, pad_mode: str) -> None:
  if pad_mode not in PAD_MODES:
    raise ValueError(f'unknown pad_mode {pad_mode!r}; valid: {", ".join(PAD_MODES)}')
  if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
    raise ValueError(f'pad must be a non-negative int, got {pad!r}')


def random_crop(images: jax.Array, key: jax.Array, *, pad: int = 4,
                pad_mode: str = 'zero') -> jax.Array:
  """Pads each image of ``[B, H, W, C]`` by ``pad`` (``pad_mode`` 'zero' or 'reflect') and
  cuts a random ``H x W`` window; ValueError for another ``pad_mode`` or a bad ``pad``."""
  _check_crop(pad, pad_mode)
  if pad == 0:
    return images
  _, height, width, channels = images.shape
  if pad_mode == 'reflect' and pad >= min(height, width):
    raise ValueError(f'reflect padding needs pad < the image size, got pad={pad} for '
                     f'{height}x{width} images')
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                   mode='constant' if pad_mode == 'zero' else 'reflect')
  corners = jax.random.randint(key, (images.shape[0], 2), 0, 2 * pad + 1)
  crop = lambda image, corner: jax.lax.dynamic_slice(
      image, (corner[0], corner[1], 0), (height, width, channels))
  return jax.vmap(crop)(padded, corners)


def normalize(images: ArrayLike, mean: ArrayLike, std: ArrayLike,
              dtype: DTypeLike = jnp.float32) -> jax.Array:
  r"""Standardises images channel by channel: :math:`x = (\text{images} - \mu) / \sigma`.

  Computed in float32 and then cast, so that a bfloat16 result is the rounded exact
  value (bfloat16 cannot even hold a mean of 125.3).

  Args:
    images: ``[..., C]``, e.g. uint8 in 0..255.
    mean: ``[C]``, in the units of ``images`` (`Dataset.mean`).
    std: ``[C]`` (`Dataset.std`).
    dtype: the result's dtype.

  Returns:
    ``(images - mean) / std`` as ``dtype``, of the shape of ``images``.
  """
  x = jnp.asarray(images).astype(jnp.float32)
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return ((x - mean) / std).astype(dtype)
