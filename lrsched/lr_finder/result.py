"""`RangeTestResult`: the recorded curve of a range test, its suggestions and its JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

from lrsched import _base
from lrsched.lr_finder.curve import check_hyper, divergence_step, smooth
from lrsched.lr_finder.suggest import (
  MIN_POINTS,
  Suggestion,
  suggest_clr_bounds,
  suggest_minimum,
  suggest_steep,
  suggest_super_convergence,
  suggest_valley,
)

_FORMAT = 'lrsched.RangeTestResult'
_VERSION = 1


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
    check_hyper('from_losses', smoothing, diverge_factor)
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
