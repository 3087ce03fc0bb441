"""LR suggestions read off a range-test curve: fastai's rules and Smith's bounds.

Each ``suggest_*`` rule takes (lrs, values) arrays and returns a `Suggestion`; the
`lrsched.RangeTestResult` methods of the same names apply them to a recorded test.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lrsched import _base

MIN_POINTS = 5
"""The fewest points a suggestion is read from."""



@dataclasses.dataclass(frozen=True)
class Suggestion:
  """An LR (or a pair of LR bounds) read off a range test.

  Attributes:
    method: the rule: 'valley', 'steep', 'minimum', 'clr_bounds' or 'super_convergence'.
    lr: the suggested learning rate; for the bounds rules, the upper bound (``max_lr``).
    min_lr: the lower bound of the bounds rules (CLR's ``base_lr``); None for the others.
    step: the index of the point the rule picked: for a `RangeTestResult` method, the step
      of the range test; for a ``suggest_*`` function, the index into its arrays.
    explanation: one line saying how the value was chosen.
  """

  method: str
  lr: float
  min_lr: float | None
  step: int
  explanation: str

  def __str__(self) -> str:
    return self.explanation


def _curve(where: str, lrs: Any, values: Any, *, finite: bool = True,
           minimum: int = MIN_POINTS) -> tuple[np.ndarray, np.ndarray]:
  """Checks a (lrs, values) curve: 1-D float arrays of one length, >= minimum points."""
  lrs = np.asarray(lrs, dtype=np.float64)
  values = np.asarray(values, dtype=np.float64)
  if lrs.ndim != 1 or values.shape != lrs.shape:
    raise _base.fail(where, f'lrs and values must be 1-D arrays of one length, got shapes '
                            f'{lrs.shape} and {values.shape}')
  if not np.all(np.isfinite(lrs)) or np.any(lrs < 0):
    raise _base.fail(where, 'lrs must be finite and >= 0')
  if finite and not np.all(np.isfinite(values)):
    raise _base.fail(where, 'the losses must be finite (cut the curve before it diverges)')
  if lrs.size < minimum:
    raise _base.fail(where, f'a suggestion needs at least {minimum} points, got {lrs.size}')
  return lrs, values


def _at_end(index: int, size: int, what: str) -> str:
  if index < size - 1:
    return ''
  return (f'; warning: this is the last point, the {what} was still improving: '
          'rerun with a larger max_lr')


def suggest_valley(lrs: Any, losses: Any) -> Suggestion:
  r"""fastai's ``valley`` (its default since 2.4, by ESRI): the middle of the longest valley.

  With :math:`d_i` the length of the longest strictly decreasing subsequence of the losses
  ending at point i, :math:`e` the first index of the largest :math:`d_i` (:math:`L`) and
  :math:`s = e - L`, the suggestion is the LR at index
  :math:`s + \lfloor L/3 \rfloor + \lfloor L/6 \rfloor`, about halfway from :math:`s`
  to :math:`e` (fastai's docs say "roughly 2/3 through"; this follows its code). Unlike
  fastai, an index that would be -1 (a valley of 2 points at the start) is clamped to 0
  instead of wrapping round to the last, largest LR.

  Args:
    lrs: the LRs of the curve, increasing.
    losses: the smoothed losses at those LRs (fastai's recorder holds smoothed losses).
  """
  lrs, losses = _curve('suggest_valley', lrs, losses)
  n = losses.size
  lengths = np.ones(n, dtype=np.int64)
  for i in range(1, n):
    higher = losses[:i] > losses[i]
    if higher.any():
      lengths[i] = 1 + lengths[:i][higher].max()
  end = int(np.argmax(lengths))  # The first longest, as fastai's strict '<' keeps it.
  length = int(lengths[end])
  start = end - length if end > 0 else 0
  index = max(0, start + int(length / 3) + int(length / 6))
  return Suggestion(
    'valley', float(lrs[index]), None, index,
    f'valley: lr={lrs[index]:.3g}, in the middle of the longest descent of the smoothed loss '
    f'({length} decreasing points up to lr={lrs[end]:.3g}; fastai\'s default)')


def suggest_steep(lrs: Any, losses: Any, *, new_lows_only: bool = True) -> Suggestion:
  r"""fastai's ``steep``: the LR where the loss falls fastest against :math:`\log \eta`.

  .. math:: i^* = \arg\min_i \frac{\ell_{i+1} - \ell_i}{\log \eta_{i+1} - \log \eta_i},
            \quad \text{suggestion } \eta_{i^*}

  With ``new_lows_only`` (the default, unlike fastai), only the segments that end in a new
  lowest loss count: the loss falling back after an early spike is a recovery, not the
  descent, but its slope can be the steepest of the curve (a one-step spike of 10x the loss
  decays through the moving average faster than a typical descent). On a curve without
  such a bump the two agree. Points with an LR of 0 (a linear sweep from 0) have no log and
  are left out.

  Args:
    lrs: the LRs of the curve, strictly increasing.
    losses: the smoothed losses at those LRs.
    new_lows_only: count only the segments that reach a new minimum; False is fastai's rule.
  """
  lrs, losses = _curve('suggest_steep', lrs, losses)
  first = int(np.argmax(lrs > 0)) if np.any(lrs > 0) else lrs.size
  lrs_pos, losses_pos = _curve('suggest_steep', lrs[first:], losses[first:])
  log_lrs = np.log(lrs_pos)
  if np.any(np.diff(log_lrs) <= 0):
    raise _base.fail('suggest_steep', 'lrs must be strictly increasing')
  slopes = np.diff(losses_pos) / np.diff(log_lrs)
  if new_lows_only:
    new_low = losses_pos[1:] < np.minimum.accumulate(losses_pos)[:-1]
    if not new_low.any():
      raise _base.fail('suggest_steep', 'the loss never falls below its first value: lower '
                                        'min_lr, or check the model and the optimizer')
    slopes = np.where(new_low, slopes, np.inf)
  index = first + int(np.argmin(slopes))
  return Suggestion(
    'steep', float(lrs[index]), None, index,
    f'steep: lr={lrs[index]:.3g}, where the smoothed loss falls fastest per unit of log(lr) '
    f'(slope {slopes.min():.3g})')


def suggest_minimum(lrs: Any, losses: Any, *, divisor: float = 10.0) -> Suggestion:
  """fastai's ``minimum``: the LR of the lowest loss, divided by ``divisor`` (10).

  At the minimum the loss has stopped falling, so the LR is already too high to train
  with; a tenth of it is a safe choice.

  Args:
    lrs: the LRs of the curve, increasing.
    losses: the smoothed losses at those LRs.
    divisor: >= 1.
  """
  _base.check_range('suggest_minimum', 'divisor', divisor, 1)
  lrs, losses = _curve('suggest_minimum', lrs, losses)
  index = int(np.argmin(losses))
  lr = float(lrs[index] / divisor)
  return Suggestion(
    'minimum', lr, None, index,
    f'minimum: lr={lr:.3g}, 1/{divisor:g} of the lr={lrs[index]:.3g} of the lowest smoothed '
    f'loss' + _at_end(index, lrs.size, 'loss'))


def smooth_metric(values: Any, window: int = 3) -> np.ndarray:
  """The centred moving average of a metric curve over ``window`` points (odd, >= 1),
  ignoring NaNs; the ends average the points they have. A range test's test accuracy is
  noisy (a model mid-training at a high LR): one lucky evaluation must not set the peak."""
  _base.check_steps('smooth_metric', 'window', window)
  if window % 2 == 0:
    raise _base.fail('smooth_metric', f'window must be odd (centred), got {window}')
  values = np.asarray(values, dtype=np.float64)
  finite = np.isfinite(values)
  half = window // 2
  kernel = np.ones(window)
  sums = np.convolve(np.pad(np.where(finite, values, 0.0), half), kernel, 'valid')
  counts = np.convolve(np.pad(finite.astype(np.float64), half), kernel, 'valid')
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(finite, sums / counts, np.nan)


def _peak(where: str, lrs: Any, values: Any, higher_is_better: bool,
          divisor: float, window: int) -> tuple[int, float, float, str]:
  _base.check_range(where, 'divisor', divisor, 1)
  lrs, values = _curve(where, lrs, values, finite=False, minimum=1)
  finite = np.isfinite(values)
  if finite.sum() < MIN_POINTS:
    raise _base.fail(where, f'a suggestion needs at least {MIN_POINTS} finite values, got '
                            f'{int(finite.sum())}')
  values = smooth_metric(values, window)
  masked = np.where(finite, values, -np.inf if higher_is_better else np.inf)
  index = int(np.argmax(masked) if higher_is_better else np.argmin(masked))
  end = _at_end(index, lrs.size, 'metric' if higher_is_better else 'loss')
  return index, float(lrs[index]), float(lrs[index] / divisor), end


def suggest_clr_bounds(lrs: Any, values: Any, *, divisor: float = 4.0,
                       higher_is_better: bool = True, window: int = 3) -> Suggestion:
  """Smith's CLR bounds (2017, §3.3): ``max_lr`` at the peak, ``base_lr = max_lr / divisor``.

  The paper reads ``max_lr`` where the accuracy "slows, becomes ragged, or starts to fall"
  and, by the rule of thumb that the best LR is within a factor of two of the largest that
  converges, sets ``base_lr`` to 1/3 or 1/4 of it. Here ``max_lr`` is the LR of the best
  value: the highest accuracy, or, with ``higher_is_better=False``, the lowest held-out
  loss. NaN values are ignored.

  ``values`` should be measured on held-out data, as in the paper. Do not pass the range
  test's own smoothed training loss: its lowest point is where fastai's ``minimum`` says the
  LR is already too high to train with (`suggest_minimum` takes a tenth of it), and the
  moving average puts it later still. For a loss-only test use `suggest_valley` or
  `suggest_steep`.

  Args:
    lrs: the LRs of the curve, increasing.
    values: the metric (e.g. test accuracy, or a test loss) at those LRs.
    divisor: ``max_lr / base_lr``, >= 1: 3 or 4 in the paper.
    higher_is_better: True for an accuracy, False for a loss.
    window: the peak is that of `smooth_metric` over this many points (odd; 1: the raw
      values). Smith reads the trend of the curve, not one evaluation.
  """
  index, max_lr, base_lr, end = _peak('suggest_clr_bounds', lrs, values, higher_is_better,
                                      divisor, window)
  best = 'highest metric' if higher_is_better else 'lowest metric'
  return Suggestion(
    'clr_bounds', max_lr, base_lr, index,
    f'CLR bounds: max_lr={max_lr:.3g} at the {best}, base_lr=max_lr/{divisor:g}='
    f'{base_lr:.3g}' + end)


def suggest_super_convergence(lrs: Any, values: Any, *, divisor: float = 1e3,
                              higher_is_better: bool = True, window: int = 3) -> Suggestion:
  """Smith & Topin's 1cycle bounds: ``max_lr`` at the peak of the test accuracy (Fig. 2b).

  Super-convergence uses the largest LR at which the range test's test accuracy still
  peaks as the 1cycle maximum and anneals to an LR orders of magnitude below it:
  ``min_lr = max_lr / divisor``, with ``divisor`` around 1e3 to 1e4. As for
  `suggest_clr_bounds`, ``values`` should be a held-out metric, not the range test's
  smoothed training loss.

  Args:
    lrs: the LRs of the curve, increasing.
    values: the metric (e.g. test accuracy, or a test loss) at those LRs.
    divisor: ``max_lr / min_lr``, >= 1.
    higher_is_better: True for an accuracy, False for a loss.
    window: as for `suggest_clr_bounds`.
  """
  index, max_lr, min_lr, end = _peak('suggest_super_convergence', lrs, values,
                                     higher_is_better, divisor, window)
  best = 'highest metric' if higher_is_better else 'lowest metric'
  return Suggestion(
    'super_convergence', max_lr, min_lr, index,
    f'1cycle bounds: max_lr={max_lr:.3g} at the {best}, min_lr=max_lr/{divisor:g}='
    f'{min_lr:.3g}' + end)
