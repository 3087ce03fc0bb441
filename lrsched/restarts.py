"""Cosine annealing with warm restarts (SGDR)."""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from lrsched import _base, compose, decay
from lrsched._base import Numeric, Shape
from lrsched._interpolate import cosine_weight

MAX_RESTARTS = 10_000
"""The most restarts below step 2**31 that `sgdr` tabulates for a growing period."""

_MIN_GROWTH = 1.0001

# Longer periods are cut to this length: such a period starts below 2**31 but outlasts
# every int32 step, and its cosine differs from the cut one by less than float32 precision.
_LONGEST = 2**62


def restart_steps(t0: int, t_mult: float) -> tuple[list[int], list[int]]:
  """The start and length of every period of SGDR that starts at or below step 2**31-1.

  Period i lasts ``floor(t0 * t_mult**i)`` steps: in exact integer arithmetic when
  ``t_mult`` is integral (PyTorch's ``T_0 * T_mult**i``), otherwise in Python float64.
  Lengths are >= t0 >= 1, so the starts strictly increase; a last length above 2**62 is
  cut to 2**62. Raises a ValueError beyond `MAX_RESTARTS` periods (``t_mult=1`` needs no
  table: `sgdr` uses modular arithmetic).
  """
  integral = float(t_mult).is_integer()
  starts, lengths, start, i = [], [], 0, 0
  while start <= _base.INT32_MAX:
    if len(starts) == MAX_RESTARTS:
      raise _base.fail('sgdr', f'with t0={t0} and t_mult={t_mult!r} there are more than '
                               f'{MAX_RESTARTS} restarts before step 2**31; use a larger '
                               't_mult or t0, or t_mult=1 (a fixed period)')
    if integral:
      length = min(t0 * int(t_mult)**i, _LONGEST)
    else:
      length = math.floor(min(t0 * float(t_mult)**i, _LONGEST))
    starts.append(start)
    lengths.append(length)
    start += length
    i += 1
  return starts, lengths


def _check_t_mult(t_mult: Any) -> None:
  if isinstance(t_mult, (np.integer, np.floating)):
    t_mult = t_mult.item()
  if not _base.is_python_number(t_mult):
    raise _base.fail('sgdr', 't_mult must be a Python int or float >= 1 (it fixes the '
                             f'restart steps, so it cannot be an array), got {t_mult!r}')
  if t_mult < 1:
    raise _base.fail('sgdr', f't_mult must be >= 1 (periods never shrink), got {t_mult!r}')
  if 1 < t_mult < _MIN_GROWTH:
    raise _base.fail('sgdr', f't_mult must be 1 or >= {_MIN_GROWTH} (a period growth under '
                             f'0.01% is indistinguishable from t_mult=1), got {t_mult!r}')


@_base.register
def sgdr(max_lr: Numeric, t0: int, t_mult: float = 1, min_lr: Numeric = 0.0,
         peak_decay: Numeric = 1.0, warmup_steps: int = 0) -> Shape:
  r"""Cosine annealing with warm restarts (Loshchilov & Hutter, 2017, "SGDR: Stochastic
  Gradient Descent with Warm Restarts").

  .. math:: \eta_t = \eta_{min} + \tfrac12 (\eta^{(i)}_{max} - \eta_{min})
            \left(1 + \cos(\pi \, t_{cur} / T_i)\right), \qquad
            \eta^{(i)}_{max} = \eta_{min} + (\eta_{max} - \eta_{min}) \, \delta^i

  where period :math:`i` lasts :math:`T_i = \lfloor T_0 \, m^i \rfloor` steps and
  :math:`t_{cur}` is the step inside it. Each restart jumps back to the period's peak.
  With ``peak_decay=1`` and no warmup this is PyTorch's
  ``CosineAnnealingWarmRestarts(T_0=t0, T_mult=t_mult, eta_min=min_lr)``; unlike PyTorch,
  ``t_mult`` may be a float (see `restart_steps` for the exact rule). The restart steps are
  tabulated in Python and looked up in int32, so the position in a period is exact for
  every step up to 2**31-1. Never ends.

  Args:
    max_lr: the value at each (first) restart, >= ``min_lr``.
    t0: T_0, the length of the first period, >= 1.
    t_mult: m, the growth of each next period: 1, or a Python int or float >= 1.0001.
    min_lr: the value each period anneals towards, >= 0.
    peak_decay: delta, the factor on the height of each next peak, in (0, 1].
    warmup_steps: a linear warmup from ``min_lr`` to ``max_lr`` before the first period
      (`lrsched.warmup`), >= 0.
  """
  _base.check_lr('sgdr', 'max_lr', max_lr)
  _base.check_steps('sgdr', 't0', t0)
  _check_t_mult(t_mult)
  _base.check_lr('sgdr', 'min_lr', min_lr)
  _base.check_order('sgdr', 'min_lr', min_lr, 'max_lr', max_lr)
  _base.check_range('sgdr', 'peak_decay', peak_decay, 0, 1, low_open=True,
                    hint='each restart peaks at most as high as the previous one')
  _base.check_steps('sgdr', 'warmup_steps', warmup_steps, minimum=0)
  if warmup_steps:
    restarts = sgdr(max_lr, t0, t_mult, min_lr, peak_decay)
    return compose.with_warmup(restarts, warmup_steps, min_lr)

  if t_mult == 1:
    boundaries = tuple(k * t0 for k in range(5) if k * t0 <= _base.INT32_MAX)

    def locate(step):
      return step // t0, _base.to_float(t0 - step % t0) / t0
  else:
    starts, lengths = restart_steps(t0, t_mult)
    boundaries = tuple(starts[:5])
    # Tables are padded to a few fixed sizes (64, then powers of two) so that configs share
    # compiled code; padding starts at 2**31-1 and the period index is clamped to the last
    # real one. A 64-entry table (every integral t_mult) is one vectorised comparison; a
    # binary search keeps longer ones from taking steps * len(starts) memory.
    n = len(starts)
    size = max(64, 1 << (n - 1).bit_length())
    method = 'compare_all' if size == 64 else 'scan'
    pad = [_base.INT32_MAX] * (size - n)
    start_table = jnp.asarray(starts + pad, dtype=jnp.int32)
    # The last period may run past 2**31-1 and its length not fit in int32; where it fits
    # (every other period), the steps left in the period are an exact int32 difference.
    fits = jnp.asarray([m <= _base.INT32_MAX for m in lengths] + [True] * len(pad))
    int_lengths = jnp.asarray([min(m, _base.INT32_MAX) for m in lengths] + [1] * len(pad),
                              dtype=jnp.int32)
    float_lengths = jnp.asarray(lengths + [1] * len(pad), dtype=jnp.result_type(float))

    def locate(step):
      found = jnp.searchsorted(start_table, step, side='right', method=method)
      period = jnp.minimum(found, n) - 1
      position = step - start_table[period]
      length = float_lengths[period]
      left = jnp.where(fits[period], _base.to_float(int_lengths[period] - position),
                       length - _base.to_float(position))
      return period, left / length

  def fn(step):
    # left: the fraction of the current period still to go, in (0, 1].
    period, left = locate(step)
    peak = min_lr + (max_lr - min_lr) * decay.power(peak_decay, _base.to_float(period))
    return min_lr + (peak - min_lr) * cosine_weight(left)

  return Shape(fn, boundaries=boundaries)
