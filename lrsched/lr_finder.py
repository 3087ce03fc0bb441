"""The LR range test: train briefly while the LR sweeps up, and read LR bounds off the curve.

L. N. Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017
(arXiv:1506.01186), §3.3; L. N. Smith and N. Topin, "Super-Convergence: Very Fast Training
of Neural Networks Using Large Learning Rates", 2017 (arXiv:1708.07120), Fig. 2b; fastai's
``Learner.lr_find``.

`range_test` runs the whole sweep as one compiled ``lax.scan`` (or as a few scans of
``chunk_size`` steps, so that the host can stop after divergence), on its own copy of the
parameters, and returns a `RangeTestResult` of NumPy arrays whose methods turn the curve into
LR suggestions::

  result = lrsched.range_test(loss_fn, params, batches, min_lr=1e-7, max_lr=10.0,
                              num_steps=100, metric_fn=test_accuracy, metric_every=5)
  result.valley().lr                  # fastai's default suggestion, from the loss
  result.clr_bounds()                 # Smith's (base_lr, max_lr), from the test accuracy

The suggestions also work on a curve recorded elsewhere (`RangeTestResult.from_losses`, or
the ``suggest_*`` functions on arrays).

The sweep itself is an lrsched schedule: `log_linear` (``mode='exp'``, fastai's default) or
`lrsched.linear` (``mode='linear'``, Smith's tests, e.g. from 0 to 3).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from lrsched import _base
from lrsched._base import Numeric, Shape
from lrsched.decay import linear

MODES = ('exp', 'linear')

MIN_POINTS = 5
"""The fewest points a suggestion is read from."""

_FORMAT = 'lrsched.RangeTestResult'
_VERSION = 1


# --------------------------------------------------------------------------------------
# The sweep schedule


@_base.register
def log_linear(init_lr: Numeric, end_lr: Numeric, total_steps: int) -> Shape:
  r"""Geometric interpolation from ``init_lr`` to ``end_lr`` over ``total_steps`` steps.

  .. math:: \eta_t = \eta_0 \, (\eta_{end} / \eta_0)^{\min(t, T) / T}

  The LR is linear in log scale: the exponential sweep of an LR range test (fastai's
  ``SchedExp``; Smith, 2017, §3.3, sweeps linearly instead, see `lrsched.linear`). It grows
  when ``end_lr > init_lr`` and decays otherwise. Step 0 gives exactly ``init_lr`` and
  steps from ``T`` on exactly ``end_lr``.

  Args:
    init_lr: the value at step 0, > 0.
    end_lr: the value at step ``total_steps`` and after, > 0.
    total_steps: T, >= 1.
  """
  _base.check_lr('log_linear', 'init_lr', init_lr, positive=True)
  _base.check_lr('log_linear', 'end_lr', end_lr, positive=True)
  _base.check_steps('log_linear', 'total_steps', total_steps)
  dtype = jnp.result_type(float, init_lr, end_lr)

  def fn(step):
    frac = _base.to_float(jnp.minimum(step, total_steps)) / total_steps
    if _base.is_python_number(init_lr) and _base.is_python_number(end_lr):
      # The log of the ratio in float64: float32 would put a 1e-7 relative error in it.
      value = init_lr * jnp.exp(frac * math.log(end_lr / init_lr))
    else:
      value = init_lr * jnp.power(jnp.asarray(end_lr) / init_lr, frac)
    return jnp.where(step >= total_steps, end_lr, value).astype(dtype)

  return Shape(fn, boundaries=(0, total_steps), total_steps=total_steps)


# --------------------------------------------------------------------------------------
# The result and its suggestions


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


def smooth(losses: Any, smoothing: float = 0.98) -> np.ndarray:
  r"""The bias-corrected exponential moving average of a loss curve (fastai's smooth loss).

  .. math:: a_t = \beta a_{t-1} + (1 - \beta) \ell_t, \quad a_{-1} = 0, \qquad
            \bar\ell_t = a_t / (1 - \beta^{t+1})

  Args:
    losses: the raw losses.
    smoothing: beta, in [0, 1).
  """
  _base.check_range('smooth', 'smoothing', smoothing, 0, 1, high_open=True)
  losses = np.asarray(losses, dtype=np.float64)
  out = np.empty_like(losses)
  avg = 0.0
  with np.errstate(invalid='ignore', over='ignore'):
    for t, loss in enumerate(losses):
      avg = smoothing * avg + (1 - smoothing) * loss
      out[t] = avg / (1 - smoothing ** (t + 1))
  return out


def divergence_step(smoothed: Any, losses: Any | None = None,
                    diverge_factor: float = 4.0) -> int | None:
  r"""The first step whose loss counts as diverged, or None; the rule of `range_test`.

  Step t diverges when its loss or smoothed loss is NaN or infinite, or when

  .. math:: \bar\ell_t - b_{t-1} > (k - 1) \, |b_{t-1}|, \qquad
            b_{t-1} = \min_{s < t} \bar\ell_s

  with k = ``diverge_factor``: the smoothed loss has risen above the best so far by
  more than k - 1 times the best's magnitude. For a positive best this is fastai's
  :math:`\bar\ell_t > k \, b`. Unlike fastai's form it stays right for negative losses
  (a log-likelihood, a loss with a constant offset), for which :math:`k \, b` lies far
  *below* b, so that fastai's test fires at the first step. Step 0 has no best to compare
  with. Like any relative rule, it is sensitive when the best loss is close to 0.

  Args:
    smoothed: the smoothed losses.
    losses: the raw losses (checked for NaN/inf too), or None.
    diverge_factor: k, > 1 (``inf`` stops on NaN/inf only).
  """
  smoothed = np.asarray(smoothed, dtype=np.float64)
  bad = ~np.isfinite(smoothed)
  if losses is not None:
    bad |= ~np.isfinite(np.asarray(losses, dtype=np.float64))
  best = np.inf
  with np.errstate(invalid='ignore', over='ignore'):
    for t, value in enumerate(smoothed):
      if bad[t] or (np.isfinite(best) and value - best > (diverge_factor - 1) * abs(best)):
        return t
      best = min(best, value)
  return None


def _float_list(values: np.ndarray | None) -> list[float | None] | None:
  """Floats for JSON: NaN and inf (not valid JSON) become null."""
  if values is None:
    return None
  return [float(v) if math.isfinite(v) else None for v in values.tolist()]


def _from_float_list(values: list[float | None] | None) -> np.ndarray | None:
  if values is None:
    return None
  return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


@dataclasses.dataclass(frozen=True, eq=False)
class RangeTestResult:
  """The recorded curve of an LR range test, up to (not including) divergence.

  Attributes:
    lrs: the LR of each recorded step (float64, length n).
    losses: the raw loss of each step, computed before its update (length n).
    smoothed_losses: their bias-corrected moving average (see `smooth`).
    metrics: ``metric_fn`` after the update of each step in ``metric_steps``, or None.
    metric_steps: the steps (indices into ``lrs``) where the metric was evaluated, or None.
    diverged_at: the first step that diverged (see `divergence_step`), not recorded:
      n == diverged_at; None if the sweep ran to its end (n == num_steps).
    stopped_early: True if a chunked run skipped its remaining chunks after divergence.
    steps_run: how many steps the compiled scans iterated over: num_steps, or fewer when
      stopped early.
    num_steps: the length of the sweep that was asked for.
  """

  lrs: np.ndarray
  losses: np.ndarray
  smoothed_losses: np.ndarray
  metrics: np.ndarray | None = None
  metric_steps: np.ndarray | None = None
  diverged_at: int | None = None
  stopped_early: bool = False
  steps_run: int = 0
  num_steps: int = 0

  def __post_init__(self):
    for name in ('lrs', 'losses', 'smoothed_losses'):
      object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
    n = self.lrs.size
    if self.lrs.ndim != 1 or self.losses.shape != (n,) or self.smoothed_losses.shape != (n,):
      raise ValueError('RangeTestResult: lrs, losses and smoothed_losses must be 1-D arrays '
                       'of one length')
    if (self.metrics is None) != (self.metric_steps is None):
      raise ValueError('RangeTestResult: give both metrics and metric_steps, or neither')
    if self.metrics is not None:
      metrics = np.asarray(self.metrics, dtype=np.float64)
      steps = np.asarray(self.metric_steps, dtype=np.int64)
      if metrics.ndim != 1 or steps.shape != metrics.shape or np.any(steps < 0) or np.any(
          steps >= n):
        raise ValueError('RangeTestResult: metrics and metric_steps must be 1-D arrays of one '
                         'length, with steps in [0, len(lrs))')
      object.__setattr__(self, 'metrics', metrics)
      object.__setattr__(self, 'metric_steps', steps)
    if self.diverged_at is not None:
      object.__setattr__(self, 'diverged_at', int(self.diverged_at))
    object.__setattr__(self, 'stopped_early', bool(self.stopped_early))
    object.__setattr__(self, 'steps_run', int(self.steps_run))
    object.__setattr__(self, 'num_steps', int(self.num_steps) or n)

  @classmethod
  def from_losses(cls, lrs: Any, losses: Any, *, smoothing: float = 0.98,
                  diverge_factor: float = 4.0, metrics: Any | None = None,
                  metric_steps: Any | None = None) -> RangeTestResult:
    """A result from a raw loss curve recorded elsewhere, cut with `range_test`'s rule.

    Smooths the losses (`smooth`), finds the divergence step (`divergence_step`) and keeps
    the steps before it, so that the suggestions work on any (lrs, losses) curve.
    """
    _check_hyper('from_losses', smoothing, diverge_factor)
    lrs = np.asarray(lrs, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    if lrs.ndim != 1 or losses.shape != lrs.shape:
      raise _base.fail('from_losses', f'lrs and losses must be 1-D arrays of one length, got '
                                      f'shapes {lrs.shape} and {losses.shape}')
    smoothed = smooth(losses, smoothing)
    diverged_at = divergence_step(smoothed, losses, diverge_factor)
    n = lrs.size if diverged_at is None else diverged_at
    if (metrics is None) != (metric_steps is None):
      raise _base.fail('from_losses', 'give both metrics and metric_steps, or neither')
    if metrics is not None:
      metrics = np.asarray(metrics, dtype=np.float64)
      metric_steps = np.asarray(metric_steps, dtype=np.int64)
      if metrics.ndim != 1 or metric_steps.shape != metrics.shape:
        raise _base.fail('from_losses', f'metrics and metric_steps must be 1-D arrays of one '
                                        f'length, got shapes {metrics.shape} and '
                                        f'{metric_steps.shape}')
      keep = metric_steps < n
      metrics, metric_steps = metrics[keep], metric_steps[keep]
    return cls(lrs[:n], losses[:n], smoothed[:n], metrics, metric_steps, diverged_at,
               stopped_early=False, steps_run=lrs.size, num_steps=lrs.size)

  def __repr__(self) -> str:
    n = self.lrs.size
    lrs = f'{self.lrs[0]:.3g}..{self.lrs[-1]:.3g}' if n else 'none'
    metrics = 'None' if self.metrics is None else f'<{self.metrics.size} values>'
    return (f'RangeTestResult(valid_steps={n}/{self.num_steps}, lrs={lrs}, '
            f'diverged_at={self.diverged_at}, stopped_early={self.stopped_early}, '
            f'steps_run={self.steps_run}, metrics={metrics})')

  # ------------------------------------------------------------------------------------
  # Suggestions

  def _window(self, method: str, skip_start: int | None,
              skip_end: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The smoothed curve without its first and last steps, as fastai's ``lr_find`` cuts it."""
    if skip_start is None:
      skip_start = self.num_steps // 10
    _base.check_steps(method, 'skip_start', skip_start, 0)
    _base.check_steps(method, 'skip_end', skip_end, 0)
    n = self.lrs.size
    stop = max(n - skip_end, 0)
    left = max(stop - skip_start, 0)
    if left < MIN_POINTS:
      how = (f'it diverged at step {self.diverged_at}' if self.diverged_at is not None else
             'it did not diverge')
      raise _base.fail(method, (
        f'only {left} points to suggest from: the test recorded {n} valid steps of '
        f'{self.num_steps} ({how}), less skip_start={skip_start} and skip_end={skip_end}; '
        f'it needs at least {MIN_POINTS}. Run more steps (num_steps), or lower max_lr so '
        'that the loss diverges later'))
    return self.lrs[skip_start:stop], self.smoothed_losses[skip_start:stop], skip_start

  @staticmethod
  def _shift(suggestion: Suggestion, offset: int) -> Suggestion:
    return dataclasses.replace(suggestion, step=suggestion.step + offset)

  def valley(self, *, skip_start: int | None = None, skip_end: int = 5) -> Suggestion:
    """fastai's default suggestion (`suggest_valley`) on the smoothed losses.

    Like fastai's ``lr_find``, it leaves out the first ``skip_start`` steps (default:
    ``num_steps // 10``) and the last ``skip_end`` recorded steps.
    """
    lrs, losses, offset = self._window('valley', skip_start, skip_end)
    return self._shift(suggest_valley(lrs, losses), offset)

  def steep(self, *, new_lows_only: bool = True, skip_start: int | None = None,
            skip_end: int = 5) -> Suggestion:
    """fastai's ``steep`` (`suggest_steep`) on the smoothed losses; skips as `valley`.

    The default ``new_lows_only=True`` differs from fastai, which counts every segment;
    pass ``new_lows_only=False`` for fastai's value (see `suggest_steep`).
    """
    lrs, losses, offset = self._window('steep', skip_start, skip_end)
    return self._shift(suggest_steep(lrs, losses, new_lows_only=new_lows_only), offset)

  def minimum(self, *, divisor: float = 10.0, skip_start: int | None = None,
              skip_end: int = 5) -> Suggestion:
    """fastai's ``minimum`` (`suggest_minimum`) on the smoothed losses; skips as `valley`."""
    lrs, losses, offset = self._window('minimum', skip_start, skip_end)
    return self._shift(suggest_minimum(lrs, losses, divisor=divisor), offset)

  def _metric_curve(self, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lrs, metrics, steps) of the recorded metric; a clear error without one.

    The bounds rules read a held-out metric, as Smith's papers do. Without one they refuse
    rather than fall back on the lowest smoothed training loss: `minimum` says that LR is
    already too high to train with, so it is no ``max_lr``.
    """
    if self.metrics is None:
      raise _base.fail(method, (
        'no metric was recorded, and the LR of the lowest smoothed training loss is '
        'already too high to train with (see minimum), so it is no max_lr: pass metric_fn '
        'to range_test to record a held-out accuracy, as Smith does, or use valley() or '
        'steep() on this loss-only test'))
    finite = int(np.isfinite(self.metrics).sum())
    if finite < MIN_POINTS:
      raise _base.fail(method, (
        f'only {finite} finite metric values in {self.lrs.size} valid steps; it needs at '
        f'least {MIN_POINTS}: lower metric_every, run more steps or lower max_lr'))
    return self.lrs[self.metric_steps], self.metrics, self.metric_steps

  def clr_bounds(self, *, divisor: float = 4.0, higher_is_better: bool = True,
                 window: int = 3) -> Suggestion:
    """Smith's CLR bounds (`suggest_clr_bounds`) from the recorded metric: ``max_lr`` at its
    best value, ``base_lr = max_lr / divisor``.

    Needs a metric (``metric_fn`` of `range_test`); without one it raises a ValueError that
    names the fix (record a metric, or use `valley` or `steep`): the lowest smoothed training
    loss is where `minimum` says the LR is already too high, so it gives no ``max_lr``.

    Args:
      divisor: ``max_lr / base_lr``, 3 or 4 in the paper.
      higher_is_better: True for an accuracy, False for a held-out loss.
      window: the metric's moving-average window (`smooth_metric`); 1 for the raw values.
    """
    lrs, values, steps = self._metric_curve('clr_bounds')
    s = suggest_clr_bounds(lrs, values, divisor=divisor, higher_is_better=higher_is_better,
                           window=window)
    return dataclasses.replace(s, step=int(steps[s.step]))

  def super_convergence(self, *, divisor: float = 1e3, higher_is_better: bool = True,
                        window: int = 3) -> Suggestion:
    """Smith & Topin's 1cycle bounds (`suggest_super_convergence`) from the recorded metric:
    ``max_lr`` at its best value (test accuracy, Fig. 2b), ``min_lr = max_lr / divisor``.
    Needs a metric, as `clr_bounds`; arguments as `clr_bounds`.
    """
    lrs, values, steps = self._metric_curve('super_convergence')
    s = suggest_super_convergence(lrs, values, divisor=divisor,
                                  higher_is_better=higher_is_better, window=window)
    return dataclasses.replace(s, step=int(steps[s.step]))

  # ------------------------------------------------------------------------------------
  # JSON

  def to_json(self) -> str:
    """The result as a JSON object (NaN/inf metric values become null)."""
    return json.dumps({
      'format': _FORMAT,
      'version': _VERSION,
      'lrs': _float_list(self.lrs),
      'losses': _float_list(self.losses),
      'smoothed_losses': _float_list(self.smoothed_losses),
      'metrics': _float_list(self.metrics),
      'metric_steps': None if self.metric_steps is None else self.metric_steps.tolist(),
      'diverged_at': self.diverged_at,
      'stopped_early': self.stopped_early,
      'steps_run': self.steps_run,
      'num_steps': self.num_steps,
    })

  @classmethod
  def from_json(cls, text: str) -> RangeTestResult:
    """The inverse of `to_json`."""
    data = json.loads(text)
    if not isinstance(data, dict) or data.get('format') != _FORMAT:
      raise ValueError(f'from_json: not a {_FORMAT} JSON object')
    if data.get('version') != _VERSION:
      raise ValueError(f'from_json: unsupported version {data.get("version")!r}; '
                       f'this lrsched reads version {_VERSION}')
    metric_steps = data['metric_steps']
    return cls(_from_float_list(data['lrs']), _from_float_list(data['losses']),
               _from_float_list(data['smoothed_losses']), _from_float_list(data['metrics']),
               None if metric_steps is None else np.asarray(metric_steps, dtype=np.int64),
               data['diverged_at'], data['stopped_early'], data['steps_run'],
               data['num_steps'])


# --------------------------------------------------------------------------------------
# The test itself


class _Carry(NamedTuple):
  params: Any
  opt_state: Any
  state: Any
  avg: jax.Array    # the un-corrected moving average of the loss
  best: jax.Array   # the lowest smoothed loss so far (inf before the first step)
  done: jax.Array   # diverged: every later step is skipped


class _Record(NamedTuple):
  lr: jax.Array
  loss: jax.Array
  smoothed: jax.Array
  valid: jax.Array
  metric: jax.Array


def _check_hyper(where: str, smoothing: Any, diverge_factor: Any) -> None:
  _base.check_range(where, 'smoothing', smoothing, 0, 1, high_open=True)
  _base.check_number(where, 'diverge_factor', diverge_factor)
  factor = float(diverge_factor)
  if not factor > 1:  # inf is allowed: stop on NaN/inf only.
    raise _base.fail(where, f'diverge_factor must be > 1 (inf stops on NaN/inf only), got '
                            f'{diverge_factor!r}')


def _scalar(where: str, name: str, value: Any) -> jax.Array:
  if jnp.shape(value) != ():
    raise TypeError(f'range_test: {where} must return a scalar {name}, got shape '
                    f'{jnp.shape(value)}')
  return value


def _check_batches(batches: Any, num_steps: int) -> Any:
  leaves = jax.tree.leaves(batches)
  if not leaves:
    raise _base.fail('range_test', 'batches must be a pytree of arrays with a leading axis '
                                   'of batches, or a function step -> batch; got no arrays')
  for leaf in leaves:
    shape = np.shape(leaf)
    if not shape or shape[0] < num_steps:
      raise _base.fail('range_test', (
        f'batches must hold at least num_steps={num_steps} batches along the leading axis of '
        f'every array, got an array of shape {shape}; pass more batches or lower num_steps'))
  return jax.device_put(batches)


def range_test(loss_fn: Callable[..., Any], params: optax.Params,
               batches: Any | Callable[[jax.Array], Any], *, min_lr: float, max_lr: float,
               num_steps: int, mode: str = 'exp',
               optimizer: Callable[[optax.ScalarOrSchedule],
                                   optax.GradientTransformation] | None = None,
               smoothing: float = 0.98, diverge_factor: float = 4.0, state: Any = None,
               metric_fn: Callable[[optax.Params, Any], jax.Array] | None = None,
               metric_every: int = 1, chunk_size: int | None = None) -> RangeTestResult:
  r"""The LR range test: trains while the LR sweeps from ``min_lr`` to ``max_lr``.

  Step t computes the loss of batch t, then updates the parameters with
  ``optimizer(schedule)`` at the sweep's LR

  .. math:: \eta_t = \eta_{min} (\eta_{max} / \eta_{min})^{t / (N - 1)} \text{ ('exp')}
            \quad\text{or}\quad
            \eta_t = \eta_{min} + (\eta_{max} - \eta_{min}) \, t / (N - 1) \text{ ('linear')}

  (`log_linear` or `lrsched.linear` over N - 1 steps, so that the last step uses exactly
  ``max_lr``), and records the LR, the loss, its bias-corrected moving average (see
  `smooth`) and, every ``metric_every`` steps, ``metric_fn`` after the update. The test
  stops at the first step that diverges (NaN/inf loss, or the smoothed loss risen above
  the best by more than (``diverge_factor`` - 1) times the best's magnitude; see
  `divergence_step`); that step and the later ones are not recorded and change nothing.

  The sweep is one compiled ``lax.scan`` (with ``chunk_size``, one compiled scan per
  chunk, so that the host stops after the chunk where the loss diverged). It trains a copy
  of ``params``: the caller's arrays are neither changed nor donated.

  The loss convention. Without ``state``, ``loss_fn(params, batch)`` returns the loss or
  ``(loss, aux)`` (aux is ignored). With ``state`` (e.g. Flax's batch statistics, or a
  PRNG key to split), ``loss_fn(params, state, batch)`` returns ``(loss, new_state)``,
  and the state is threaded through the steps; ``metric_fn(params, state)`` gets the
  current state (None without one). For a Flax Linen model with batch norm::

    variables = model.init(key, images[0], train=False)

    def loss_fn(params, batch_stats, batch):
      logits, updates = model.apply({'params': params, 'batch_stats': batch_stats},
                                    batch['image'], train=True, mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
      return loss, updates['batch_stats']

    def test_accuracy(params, batch_stats):
      logits = model.apply({'params': params, 'batch_stats': batch_stats},
                           test_images, train=False)
      return (logits.argmax(-1) == test_labels).mean()

    result = lrsched.range_test(
        loss_fn, variables['params'], batch_fn, state=variables['batch_stats'],
        min_lr=1e-3, max_lr=3.0, num_steps=400, mode='linear',
        metric_fn=test_accuracy, metric_every=20)
    result.super_convergence().lr     # Smith & Topin's 1cycle max_lr

  Args:
    loss_fn: the training loss, as above. It must be jittable.
    params: the initial parameters (a pytree of arrays); not modified.
    batches: a pytree of arrays whose leading axis indexes at least ``num_steps``
      batches (batch t is ``x[t]`` of every array), or a jittable ``batch_fn(step) ->
      batch`` called with an int32 step inside the scan, e.g. one that slices a dataset
      held on the device: ``lambda t: jax.tree.map(lambda x: x[perm[t]], data)``.
    min_lr: the LR of step 0: > 0 for 'exp', >= 0 for 'linear'.
    max_lr: the LR of the last step, > min_lr.
    num_steps: N, the length of the sweep, >= 2 (fastai: 100; Smith: a few epochs).
    mode: 'exp' (the LR grows geometrically; fastai's ``lr_find``) or 'linear' (Smith's
      tests, e.g. from 0 to 3).
    optimizer: ``lr -> optax.GradientTransformation``; it gets the sweep schedule as its
      learning rate (an ``optax.Schedule``), e.g. ``lambda lr: optax.adamw(lr, b1=0.9)``.
      Default: SGD with momentum 0.9, as in the papers.
    smoothing: beta of the loss's moving average, in [0, 1) (0: no smoothing).
    diverge_factor: k, > 1 (fastai: 4); ``inf`` stops on NaN/inf losses only.
    state: the model's mutable state (see above), or None.
    metric_fn: ``(params, state) -> scalar``, e.g. a test accuracy (Smith & Topin's
      Fig. 2b), evaluated after the update of steps t with (t + 1) % metric_every == 0.
    metric_every: >= 1.
    chunk_size: steps per compiled scan, >= 1; None: all N in one scan. The host checks for
      divergence between chunks; the steps after divergence inside a chunk are skipped
      (``lax.cond``) and cost almost nothing.

  Returns:
    A `RangeTestResult` with the steps before divergence.
  """
  where = 'range_test'
  _base.check_choice(where, 'mode', mode, MODES)
  _base.check_steps(where, 'num_steps', num_steps, 2)
  if mode == 'exp':
    _base.check_lr(where, 'min_lr', min_lr, positive=True)
  else:
    _base.check_lr(where, 'min_lr', min_lr)
  _base.check_lr(where, 'max_lr', max_lr, positive=True)
  if float(max_lr) <= float(min_lr):
    raise _base.fail(where, f'max_lr must be > min_lr (the LR sweeps up), got min_lr='
                            f'{min_lr!r} and max_lr={max_lr!r}')
  _check_hyper(where, smoothing, diverge_factor)
  _base.check_steps(where, 'metric_every', metric_every)
  if chunk_size is not None:
    _base.check_steps(where, 'chunk_size', chunk_size)
  for name, fn in (('loss_fn', loss_fn), ('optimizer', optimizer), ('metric_fn', metric_fn)):
    if fn is not None and not callable(fn):
      raise _base.fail(where, f'{name} must be callable, got {fn!r}')

  if callable(batches):
    batch_fn, data = batches, None
  else:
    batch_fn, data = None, _check_batches(batches, num_steps)

  sweep = (log_linear if mode == 'exp' else linear)(min_lr, max_lr, num_steps - 1)
  if optimizer is None:
    optimizer = lambda lr: optax.sgd(lr, momentum=0.9)
  tx = optimizer(sweep)
  dtype = jnp.result_type(float)
  beta, factor = float(smoothing), float(diverge_factor)
  state_tree = jax.tree.structure(state)

  def loss_and_state(p, s, batch):
    if state is None:
      out = loss_fn(p, batch)
      loss = out[0] if isinstance(out, (tuple, list)) else out
      return _scalar('loss_fn', 'loss', loss).astype(dtype), s
    out = loss_fn(p, s, batch)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
      raise TypeError('range_test: with state, loss_fn(params, state, batch) must return '
                      f'(loss, new_state), got {type(out).__name__}')
    loss, new_s = out
    if jax.tree.structure(new_s) != state_tree:
      raise TypeError(f'range_test: loss_fn returned a new state of structure '
                      f'{jax.tree.structure(new_s)}, expected {state_tree}')
    return _scalar('loss_fn', 'loss', loss).astype(dtype), new_s

  def get_batch(t, data):
    if batch_fn is not None:
      return batch_fn(t)
    return jax.tree.map(lambda x: lax.dynamic_index_in_dim(x, t, keepdims=False), data)

  def metric(p, s, t):
    if metric_fn is None:
      return jnp.asarray(jnp.nan, dtype)
    return lax.cond((t + 1) % metric_every == 0,
                    lambda: _scalar('metric_fn', 'metric', metric_fn(p, s)).astype(dtype),
                    lambda: jnp.asarray(jnp.nan, dtype))

  def run(carry, t, data):
    lr = jnp.asarray(sweep(t), dtype)
    (loss, new_state), grads = jax.value_and_grad(loss_and_state, has_aux=True)(
      carry.params, carry.state, get_batch(t, data))
    avg = beta * carry.avg + (1 - beta) * loss
    smoothed = avg / (1 - jnp.power(jnp.asarray(beta, dtype), _base.to_float(t + 1)))
    rising = jnp.isfinite(carry.best) & (smoothed - carry.best
                                         > (factor - 1) * jnp.abs(carry.best))
    bad = ~jnp.isfinite(loss) | ~jnp.isfinite(smoothed) | rising

    def update(_):
      updates, opt_state = tx.update(grads, carry.opt_state, carry.params)
      params = optax.apply_updates(carry.params, updates)
      new = _Carry(params, opt_state, new_state, avg, jnp.minimum(carry.best, smoothed),
                   jnp.asarray(False))
      return new, metric(params, new_state, t)

    def stop(_):
      return carry._replace(done=jnp.asarray(True)), jnp.asarray(jnp.nan, dtype)

    carry, m = lax.cond(bad, stop, update, None)
    return carry, _Record(lr, loss, smoothed, ~bad, m)

  def skip(carry, t, data):
    nan = jnp.asarray(jnp.nan, dtype)
    return carry, _Record(nan, nan, nan, jnp.asarray(False), nan)

  def step(data, carry, t):
    active = (t < num_steps) & ~carry.done
    return lax.cond(active, run, skip, carry, t, data)

  chunk = num_steps if chunk_size is None else min(chunk_size, num_steps)

  @jax.jit
  def init(params, state):
    # Copies, so that donating the carry to the chunks never frees the caller's arrays.
    carry = _Carry(params, tx.init(params), state, jnp.zeros((), dtype),
                   jnp.asarray(jnp.inf, dtype), jnp.asarray(False))
    return jax.tree.map(jnp.copy, carry)

  def scan_chunk(carry, start, data):
    steps = start + jnp.arange(chunk, dtype=jnp.int32)
    return lax.scan(lambda c, t: step(data, c, t), carry, steps)

  # The carry is the test's own copy (see init): donate it to save a copy of the model.
  run_chunk = jax.jit(scan_chunk, donate_argnums=0)

  carry = init(params, state)
  records, steps_run, stopped_early = [], 0, False
  for start in range(0, num_steps, chunk):
    carry, record = run_chunk(carry, jnp.asarray(start, jnp.int32), data)
    records.append(jax.device_get(record))
    steps_run = min(start + chunk, num_steps)
    if steps_run < num_steps and bool(carry.done):
      stopped_early = True
      break

  record = _Record(*(np.concatenate(field) for field in zip(*records, strict=True)))
  valid = record.valid[:steps_run]
  diverged_at = None if valid.all() else int(np.argmin(valid))
  n = steps_run if diverged_at is None else diverged_at
  metrics = metric_steps = None
  if metric_fn is not None:
    metric_steps = np.arange(metric_every - 1, n, metric_every)
    metrics = record.metric[metric_steps]
  return RangeTestResult(record.lr[:n], record.loss[:n], record.smoothed[:n], metrics,
                         metric_steps, diverged_at, stopped_early, steps_run, num_steps)
