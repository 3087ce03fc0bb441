"""The loss curve of a range test: its moving average and the divergence rule.

Written once for the two places that apply them: the compiled sweep (`range_test`, on
device, in float32) and the host (`RangeTestResult.from_losses`, on a curve recorded
elsewhere, in float64). Both pass their array module: ``numpy`` or ``jax.numpy``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lrsched import _base


def smoothing_step(avg: Any, loss: Any, count: Any, smoothing: float) -> tuple[Any, Any]:
  r"""One step of the bias-corrected moving average of the loss (fastai's smooth loss).

  .. math:: a_t = \beta a_{t-1} + (1 - \beta) \ell_t, \quad a_{-1} = 0, \qquad
            \bar\ell_t = a_t / (1 - \beta^{t+1})

  Args:
    avg: :math:`a_{t-1}`, the un-corrected average so far (0 before the first step).
    loss: :math:`\ell_t`.
    count: t + 1, the number of losses averaged so far, this one included.
    smoothing: :math:`\beta`.

  Returns:
    ``(a_t, smoothed loss)``.
  """
  avg = smoothing * avg + (1 - smoothing) * loss
  return avg, avg / (1 - smoothing ** count)


def diverged(loss: Any, smoothed: Any, best: Any, diverge_factor: float, xp: Any = np) -> Any:
  r"""The divergence rule of `range_test`: True where step t counts as diverged.

  Step t diverges when its loss or smoothed loss is NaN or infinite, or when

  .. math:: \bar\ell_t - b_{t-1} > (k - 1) \, |b_{t-1}|, \qquad
            b_{t-1} = \min_{s < t} \bar\ell_s

  with k = ``diverge_factor``: the smoothed loss has risen above the best so far by
  more than k - 1 times the best's magnitude. For a positive best this is fastai's
  :math:`\bar\ell_t > k \, b`. Unlike fastai's form it stays right for negative losses
  (a log-likelihood, a loss with a constant offset), for which :math:`k \, b` lies far
  *below* b, so that fastai's test fires at the first step. Step 0 has no best
  (``best = inf``) to compare with. Like any relative rule, it is sensitive when the best
  loss is close to 0.
  """
  rising = xp.isfinite(best) & (smoothed - best > (diverge_factor - 1) * xp.abs(best))
  return ~xp.isfinite(loss) | ~xp.isfinite(smoothed) | rising


def check_hyper(where: str, smoothing: Any, diverge_factor: Any) -> None:
  _base.check_range(where, 'smoothing', smoothing, 0, 1, high_open=True)
  _base.check_number(where, 'diverge_factor', diverge_factor)
  factor = float(diverge_factor)
  if not factor > 1:  # inf is allowed: stop on NaN/inf only.
    raise _base.fail(where, f'diverge_factor must be > 1 (inf stops on NaN/inf only), got '
                            f'{diverge_factor!r}')


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
      avg, out[t] = smoothing_step(avg, loss, t + 1, smoothing)
  return out


def divergence_step(smoothed: Any, losses: Any | None = None,
                    diverge_factor: float = 4.0) -> int | None:
  """The first step whose loss counts as diverged (see `diverged`), or None.

  Args:
    smoothed: the smoothed losses.
    losses: the raw losses (checked for NaN/inf too), or None.
    diverge_factor: k, > 1 (``inf`` stops on NaN/inf only).
  """
  smoothed = np.asarray(smoothed, dtype=np.float64)
  losses = smoothed if losses is None else np.asarray(losses, dtype=np.float64)
  best = np.inf
  with np.errstate(invalid='ignore', over='ignore'):
    for t, (loss, value) in enumerate(zip(losses, smoothed, strict=True)):
      if diverged(loss, value, best, diverge_factor):
        return t
      best = min(best, value)
  return None
