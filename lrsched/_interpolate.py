"""The one interpolation primitive under every schedule that moves between two values.

Every linear or cosine segment of the library (`linear`, `cosine`, `warmup`, the decays of
`wsd`, the windows of `cyclic`, the phases of every 1cycle) is `blend` of its two end
values, through one of two entry points:

* `ramp`: one segment over the integer steps ``[0, length]``, held after;
* `piecewise`: segments through knots at float steps (PyTorch's ``OneCycleLR`` puts its
  phase ends at ``pct_start * T - 1``), with a rule for which segment a step belongs to.

`blend` is exact at both ends, never outside ``[start, end]`` and relatively accurate near
either end, even when one end is ~1e-6 of the other (1cycle's final LR): each half of the
segment is computed from its own endpoint, with a fraction that is exactly 0 there. The
plain ``start + (end - start) * t / T`` misses ``end`` once XLA turns ``/ T`` into
``* (1 / T)``, and can then go negative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lrsched import _base

KINDS = ('cos', 'linear')
"""The shapes of a segment: a straight line, or a half cosine (flat at both ends)."""

_F32_TINY = float(np.finfo(np.float32).tiny)


def cosine_weight(fraction: jax.Array) -> jax.Array:
  r"""The half-cosine weight :math:`\tfrac12 (1 - \cos \pi f) = \sin^2(\pi f / 2)`.

  0 at ``f = 0``, 1 at ``f = 1``, and ``cosine_weight(f) + cosine_weight(1 - f) = 1``. The
  sine form has no cancellation near ``f = 0`` (where ``1 - cos`` keeps only a few bits
  in float32), provided ``f`` comes from an exact integer difference such as ``t / T`` or
  ``(T - t) / T``.
  """
  return jnp.square(jnp.sin((0.5 * jnp.pi) * fraction))


def blend(kind: str, start: Any, end: Any, done: jax.Array, left: jax.Array) -> jax.Array:
  r"""From ``start`` (``done = 0``) to ``end`` (``left = 0``), where ``done + left = 1``.

  With :math:`w` the identity (``'linear'``) or `cosine_weight` (``'cos'``): the value is
  :math:`start + (end - start) \, w(done)` in the first half and
  :math:`end + (start - end) \, w(left)` in the second, clipped to ``[start, end]``.
  """
  weight = (lambda f: f) if kind == 'linear' else cosine_weight
  value = jnp.where(done <= left, start + (end - start) * weight(done),
                    end + (start - end) * weight(left))
  return jnp.clip(value, jnp.minimum(start, end), jnp.maximum(start, end))


def ramp(start: Any, end: Any, step: jax.Array, length: int,
         kind: str = 'linear') -> jax.Array:
  """``start`` -> ``end`` over the integer steps [0, length] (int32 ``step``), held after."""
  t = jnp.clip(step, 0, length)
  return blend(kind, start, end, _base.to_float(t) / length,
               _base.to_float(length - t) / length)


def _full(value: Any, step: jax.Array) -> jax.Array:
  """A hyper-parameter (maybe a tracer) as a float array of the step's shape."""
  return _base.to_float(jnp.zeros_like(step)) + value


def _offset(step: jax.Array, origin: float) -> jax.Array:
  """``step - origin`` as a float, with the integer part of the difference done in int32.

  Subtracting the integer part of the Python float ``origin`` from the int32 step first
  keeps the difference exact near the origin for every step up to 2**31-1, where a
  float32 step alone would be off by up to 128.
  """
  k = min(max(math.floor(origin), 0), _base.INT32_MAX)
  return _base.to_float(step - k) - (origin - k)


def _at_or_before(step: jax.Array, point: float) -> jax.Array:
  """``step <= point`` for an int32 step and a Python float, compared exactly."""
  k = math.floor(point)
  if k < 0:
    return jnp.zeros(jnp.shape(step), dtype=bool)
  if k >= _base.INT32_MAX:
    return jnp.ones(jnp.shape(step), dtype=bool)
  return step <= k


def _segment(step: jax.Array, start: float, end: float, kind: str, first: Any,
             last: Any) -> jax.Array:
  """The value of the segment [start, end] (float steps) at an int32 step, clipped to it."""
  length = end - start
  if length <= 0:
    # Only the last segment gets here with zero length (`piecewise` skips the others):
    # the value is its end, the limit of the value as the segment shrinks to nothing.
    return _full(last, step)
  # The length floored at float32's smallest normal: a segment of, say, 1e-40 steps (a
  # tiny pct_start) is a denormal in float32, which XLA flushes to zero (0/0 = NaN).
  done = jnp.clip(_offset(step, start) / max(length, _F32_TINY), 0.0, 1.0)
  if length < 1:  # at most one step inside: no accuracy to gain from the far end
    left = 1.0 - done
  else:
    left = jnp.clip(-_offset(step, end) / length, 0.0, 1.0)
  return blend(kind, first, last, done, left)


def piecewise(step: jax.Array, knots: Sequence[float], values: Sequence[Any], kind: str,
              *, closed: str = 'right') -> jax.Array:
  """Segments through ``(knots[i], values[i])`` at an int32 step.

  Segment i runs from ``knots[i]`` to ``knots[i + 1]`` (non-decreasing float steps, the
  first usually 0) and blends ``values[i]`` into ``values[i + 1]``. A step belongs to the
  first segment whose end it does not pass (``closed='right'``: ``step <= end``, PyTorch's
  ``OneCycleLR``; ``'left'``: ``step < end``, fastai's ``combined_cos`` and Caffe's
  cycles), or else to the last, which holds its end value after it.

  A segment of zero length (a repeated knot) is skipped: its steps fall to the next one,
  which starts where it ends. So a repeated knot is a jump, and PyTorch's divisions by
  zero in a phase of zero length have their limit as the value.
  """
  starts, ends = knots[:-1], knots[1:]
  out = _segment(step, starts[-1], ends[-1], kind, values[-2], values[-1])
  for i in reversed(range(len(ends) - 1)):
    if ends[i] <= starts[i]:
      continue  # zero length; or negative, and then no step is inside anyway
    point = ends[i] if closed == 'right' else math.ceil(ends[i]) - 1
    out = jnp.where(_at_or_before(step, point),
                    _segment(step, starts[i], ends[i], kind, values[i], values[i + 1]), out)
  return out
