"""Cyclical learning rates and cyclical momentum (Smith, 2017).

L. N. Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017
(arXiv:1506.01186). The LR moves between ``base_lr`` and ``max_lr`` in cycles of
``step_size_up + step_size_down`` steps; the momentum moves the opposite way.

`cyclic` and `cyclic_momentum` give exactly the values of PyTorch's
``torch.optim.lr_scheduler.CyclicLR`` (its LR and, with ``cycle_momentum=True``, its
momentum) for the same arguments, plus the window shapes that the CLR paper compares.
The cycle number and the position inside a cycle are computed in int32, so they are exact
for every step up to ``2**31 - 1``; only the fraction inside a half-cycle is a float.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lrsched import _base, decay
from lrsched._base import Numeric, Shape
from lrsched._interpolate import cosine_weight

MODES = ('triangular', 'triangular2', 'exp_range')
WINDOWS = ('triangular', 'welch', 'hann')
SCALE_MODES = ('cycle', 'iterations')

ScaleFn = Callable[[jax.Array], Any]
"""A custom amplitude scale: int32 cycle number (1-based) or int32 step -> value in [0, 1]."""


# --------------------------------------------------------------------------------------
# The shared core


def window_height(frac: jax.Array, window: str) -> jax.Array:
  r"""The height of a half-cycle at fraction ``frac`` in [0, 1] of the way to the peak.

  Every window rises from 0 at the cycle's start (``frac = 0``) to 1 at its peak
  (``frac = 1``), so all have the same endpoints and peak and differ only in shape:

  * ``'triangular'`` (linear): :math:`w(f) = f`;
  * ``'welch'`` (parabolic): :math:`w(f) = 1 - (1 - f)^2`, the Welch window
    :math:`1 - u^2` of the position :math:`u = 1 - f` relative to the peak;
  * ``'hann'`` (sinusoidal): :math:`w(f) = \tfrac12 (1 - \cos \pi f) = \sin^2(\pi f / 2)`,
    the Hann window.
  """
  if window == 'triangular':
    return frac
  if window == 'welch':
    return frac * (2.0 - frac)  # = 1 - (1 - f)^2, without its cancellation near f = 0
  return cosine_weight(frac)


def _cycle_position(step: jax.Array, up: int, down: int) -> tuple[jax.Array, jax.Array]:
  """(cycle number from 1, height fraction in [0, 1]) of an int32 step; exact integers."""
  total = up + down
  if total > _base.INT32_MAX:
    # No int32 step reaches the second cycle (and total itself would not fit in int32).
    cycle, position = jnp.ones_like(step), step
  else:
    cycle, position = step // total + 1, step % total
  rising = _base.to_float(position) / up
  # Steps left to the next cycle, C - p, as down - (p - up): every term fits in int32.
  falling = _base.to_float(down - jnp.maximum(position - up, 0)) / down
  return cycle, jnp.where(position <= up, rising, falling)


def _scale_fn(mode: str, gamma: Numeric, scale_fn: ScaleFn | None,
              scale_mode: str) -> tuple[ScaleFn, str]:
  """PyTorch's amplitude scale and what it is a function of ('cycle' or 'iterations')."""
  if scale_fn is not None:
    return scale_fn, scale_mode
  if mode == 'triangular':
    return (lambda cycle: 1.0), 'cycle'
  if mode == 'triangular2':
    # 1 / 2**(cycle - 1), as an exact power of two (it underflows to 0, never to NaN).
    return (lambda cycle: jnp.ldexp(1.0, 1 - cycle)), 'cycle'
  # gamma**step with gamma in (0, 1]: tends to 0 for huge steps, never overflows. decay.power
  # takes a Python gamma's log in float64: float32(0.99994) would be 2.3e-3 off at 1e5 steps.
  return (lambda step: decay.power(gamma, _base.to_float(step))), 'iterations'


def cyclic_fraction(up: int, down: int, mode: str = 'triangular', gamma: Numeric = 1.0,
                    scale_fn: ScaleFn | None = None, scale_mode: str = 'cycle',
                    window: str = 'triangular') -> Callable[[jax.Array], jax.Array]:
  """int32 step -> the fraction in [0, 1] of the amplitude that CLR adds at that step.

  The LR is ``base_lr + (max_lr - base_lr) * fraction`` and the momentum
  ``max_momentum - (max_momentum - base_momentum) * fraction``. Arguments are unchecked;
  the public constructors check them.
  """
  scale, of = _scale_fn(mode, gamma, scale_fn, scale_mode)

  def fraction(step):
    cycle, frac = _cycle_position(step, up, down)
    amount = jnp.asarray(scale(cycle if of == 'cycle' else step))
    # PyTorch requires 0 <= scale_fn(x) <= 1; clipping keeps a custom scale that breaks
    # the contract from taking the LR outside [base_lr, max_lr] or negative.
    return window_height(frac, window) * jnp.clip(amount, 0.0, 1.0)

  return fraction


def _check_cycle(where: str, step_size_up: Any, step_size_down: Any, mode: Any, gamma: Any,
                 scale_fn: Any, scale_mode: Any, window: Any) -> int:
  """Checks the arguments shared by every cyclic constructor; returns step_size_down."""
  _base.check_steps(where, 'step_size_up', step_size_up)
  if step_size_down is None:
    step_size_down = step_size_up
  _base.check_steps(where, 'step_size_down', step_size_down)
  _base.check_choice(where, 'mode', mode, MODES)
  _base.check_choice(where, 'scale_mode', scale_mode, SCALE_MODES)
  _base.check_choice(where, 'window', window, WINDOWS)
  _base.check_finite(where, 'gamma', gamma)
  if scale_fn is None:
    if mode == 'exp_range':
      _base.check_range(where, 'gamma', gamma, 0, 1, low_open=True,
                        hint="exp_range's scale gamma**step must not grow")
  else:
    _check_scale_fn(where, scale_fn)
  return int(step_size_down)


def _check_scale_fn(where: str, scale_fn: Any) -> None:
  """A custom scale must be a jnp-traceable function of an int32 scalar to a number."""
  if not callable(scale_fn):
    raise _base.fail(where, f'scale_fn must be None or a function of the cycle number or '
                            f'step, got {scale_fn!r}')
  try:
    out = jax.eval_shape(lambda x: jnp.asarray(scale_fn(x)),
                         jax.ShapeDtypeStruct((), jnp.int32))
  except Exception as e:  # Any failure to trace is a bug in scale_fn: report it now.
    raise _base.fail(where, 'scale_fn must be traceable by JAX (use jnp, not math or numpy, '
                            f'on its int32 argument); calling it on a tracer raised '
                            f'{type(e).__name__}: {e}') from None
  if out.shape != () or not (jnp.issubdtype(out.dtype, jnp.floating)
                              or jnp.issubdtype(out.dtype, jnp.integer)):
    raise _base.fail(where, f'scale_fn must map a scalar to a real scalar, got shape '
                            f'{out.shape} and dtype {out.dtype}')


def _cyclic_lr(where: str, base_lr: Numeric, max_lr: Numeric, step_size_up: int,
               step_size_down: int | None, mode: str, gamma: Numeric,
               scale_fn: ScaleFn | None, scale_mode: str, window: str) -> Shape:
  """The one implementation behind `cyclic` and its shortcuts."""
  _base.check_lr(where, 'base_lr', base_lr)
  _base.check_lr(where, 'max_lr', max_lr)
  _base.check_order(where, 'base_lr', base_lr, 'max_lr', max_lr)
  down = _check_cycle(where, step_size_up, step_size_down, mode, gamma, scale_fn,
                      scale_mode, window)
  fraction = cyclic_fraction(step_size_up, down, mode, gamma, scale_fn, scale_mode, window)

  def fn(step):
    return base_lr + (max_lr - base_lr) * fraction(step)

  return Shape(fn, boundaries=_cycle_boundaries(step_size_up, down))


def _cycle_boundaries(up: int, down: int) -> tuple[int, ...]:
  return tuple(b for b in (0, up, up + down) if b <= _base.INT32_MAX)


# --------------------------------------------------------------------------------------
# Public constructors


@_base.register
def cyclic(base_lr: Numeric, max_lr: Numeric, step_size_up: int = 2000,
           step_size_down: int | None = None, mode: str = 'triangular', gamma: Numeric = 1.0,
           scale_fn: ScaleFn | None = None, scale_mode: str = 'cycle',
           window: str = 'triangular') -> Shape:
  r"""Cyclical learning rate (CLR; Smith, 2017), PyTorch's ``CyclicLR``.

  With :math:`U` = ``step_size_up``, :math:`D` = ``step_size_down`` and :math:`C = U + D`,
  step :math:`t` lies in cycle :math:`c = \lfloor t / C \rfloor + 1` at position
  :math:`p = t \bmod C` (both exact int32). Its height fraction and the LR are

  .. math::
    f_t = \begin{cases} p / U & p \le U \\ (C - p) / D & p > U \end{cases}, \qquad
    \eta_t = \eta_{base} + (\eta_{max} - \eta_{base}) \, w(f_t) \, s

  where :math:`w` is the ``window`` (`window_height`; ``'triangular'`` is PyTorch's
  :math:`w(f) = f`) and :math:`s` the amplitude scale:

  * ``'triangular'``: :math:`s = 1`;
  * ``'triangular2'``: :math:`s = 2^{1 - c}` (the amplitude halves every cycle);
  * ``'exp_range'``: :math:`s = \gamma^t` (of the step, as in PyTorch; it tends to 0, so
    the LR tends to ``base_lr``, without overflow for any step);
  * a custom ``scale_fn`` (``mode`` is then ignored): :math:`s = \text{scale\_fn}(c)` with
    ``scale_mode='cycle'`` or :math:`\text{scale\_fn}(t)` with ``'iterations'``. It gets an
    int32 array and must be traceable with ``jnp`` (e.g. ``lambda c: 1 / (1 + 0.1 * c)``);
    PyTorch requires :math:`0 \le s \le 1`, and values outside are clipped to [0, 1].

  For the triangular window this is exactly PyTorch's
  ``CyclicLR(base_lr, max_lr, step_size_up, step_size_down, mode, gamma, scale_fn,
  scale_mode)``, whose LR at step :math:`t` is the one set after :math:`t` calls of
  ``scheduler.step()``. Never ends.

  Args:
    base_lr: the lower bound, and the LR at the start of every cycle; >= 0.
    max_lr: the upper bound, reached at the peak of a cycle when the scale is 1;
      >= ``base_lr``.
    step_size_up: U, the steps from the start of a cycle to its peak, >= 1.
    step_size_down: D, the steps from the peak back to the next start, >= 1; None for U.
    mode: 'triangular', 'triangular2' or 'exp_range'.
    gamma: the base of 'exp_range''s scale, in (0, 1]; unused by the other modes.
    scale_fn: a custom amplitude scale, or None for the ``mode``'s.
    scale_mode: what ``scale_fn`` is a function of: 'cycle' (the cycle number, from 1) or
      'iterations' (the step). Unused without ``scale_fn``.
    window: the shape of a half-cycle: 'triangular' (linear, PyTorch's), 'welch'
      (parabolic) or 'hann' (sinusoidal); the three shapes the CLR paper compares.
  """
  return _cyclic_lr('cyclic', base_lr, max_lr, step_size_up, step_size_down, mode, gamma,
                    scale_fn, scale_mode, window)


@_base.register
def triangular(base_lr: Numeric, max_lr: Numeric, step_size: int) -> Shape:
  r"""CLR's 'triangular' policy: base -> max over ``step_size`` steps and back, forever.

  ``cyclic(base_lr, max_lr, step_size, mode='triangular')``; Caffe's ``lr_policy:
  "triangular"`` as used by Smith (2017) and Smith & Topin (2017):

  .. math:: \eta_t = \eta_{base} + (\eta_{max} - \eta_{base})
            \max\left(0, 1 - \left|t / S - 2c + 1\right|\right), \qquad
            c = \lfloor 1 + t / (2S) \rfloor

  Args:
    base_lr: the LR at the start of every cycle, >= 0.
    max_lr: the LR at every peak, >= ``base_lr``.
    step_size: S, half a cycle, >= 1.
  """
  _base.check_steps('triangular', 'step_size', step_size)
  return _cyclic_lr('triangular', base_lr, max_lr, step_size, None, 'triangular', 1.0,
                    None, 'cycle', 'triangular')


@_base.register
def triangular2(base_lr: Numeric, max_lr: Numeric, step_size: int) -> Shape:
  r"""CLR's 'triangular2' policy: the triangle's amplitude halves every cycle.

  ``cyclic(base_lr, max_lr, step_size, mode='triangular2')``:
  :math:`\eta_t = \eta_{base} + (\eta_{max} - \eta_{base}) \, f_t \, 2^{1 - c}` in the
  notation of `cyclic` (Smith, 2017).

  Args:
    base_lr: the LR at the start of every cycle, >= 0.
    max_lr: the LR at the first peak, >= ``base_lr``.
    step_size: half a cycle, >= 1.
  """
  _base.check_steps('triangular2', 'step_size', step_size)
  return _cyclic_lr('triangular2', base_lr, max_lr, step_size, None, 'triangular2', 1.0,
                    None, 'cycle', 'triangular')


@_base.register
def exp_range(base_lr: Numeric, max_lr: Numeric, step_size: int, gamma: Numeric) -> Shape:
  r"""CLR's 'exp_range' policy: the triangle's amplitude decays as ``gamma**step``.

  ``cyclic(base_lr, max_lr, step_size, mode='exp_range', gamma=gamma)``:
  :math:`\eta_t = \eta_{base} + (\eta_{max} - \eta_{base}) \, f_t \, \gamma^t` in the
  notation of `cyclic` (Smith, 2017).

  Args:
    base_lr: the LR at the start of every cycle, and the limit; >= 0.
    max_lr: the upper bound, >= ``base_lr``.
    step_size: half a cycle, >= 1.
    gamma: the decay of the amplitude per step, in (0, 1] (e.g. 0.99994).
  """
  _base.check_steps('exp_range', 'step_size', step_size)
  return _cyclic_lr('exp_range', base_lr, max_lr, step_size, None, 'exp_range', gamma,
                    None, 'cycle', 'triangular')


@_base.register
def cyclic_momentum(base_momentum: Numeric = 0.8, max_momentum: Numeric = 0.9,
                    step_size_up: int = 2000, step_size_down: int | None = None,
                    mode: str = 'triangular', gamma: Numeric = 1.0,
                    scale_fn: ScaleFn | None = None, scale_mode: str = 'cycle',
                    window: str = 'triangular') -> Shape:
  r"""Cyclical momentum, opposite to `cyclic`'s LR: PyTorch ``CyclicLR``'s momentum.

  With the height fraction :math:`f_t`, window :math:`w` and scale :math:`s` of `cyclic`
  (same arguments), as PyTorch computes it with ``cycle_momentum=True``:

  .. math:: \beta_t = \beta_{max} - (\beta_{max} - \beta_{base}) \, w(f_t) \, s

  so the momentum is ``max_momentum`` at the start of every cycle (where the LR is
  ``base_lr``) and ``base_momentum`` at a full-height peak (Smith, 2018, "A disciplined
  approach to neural network hyper-parameters: Part 1"). Pair it with a `cyclic` LR of the
  same cycle arguments. Never ends.

  Args:
    base_momentum: the momentum at a full-height peak, in [0, 1).
    max_momentum: the momentum at the start of every cycle, in [0, 1),
      >= ``base_momentum``.
    step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode, window: as `cyclic`.
  """
  where = 'cyclic_momentum'
  _base.check_range(where, 'base_momentum', base_momentum, 0, 1, high_open=True)
  _base.check_range(where, 'max_momentum', max_momentum, 0, 1, high_open=True)
  _base.check_order(where, 'base_momentum', base_momentum, 'max_momentum', max_momentum)
  down = _check_cycle(where, step_size_up, step_size_down, mode, gamma, scale_fn,
                      scale_mode, window)
  fraction = cyclic_fraction(step_size_up, down, mode, gamma, scale_fn, scale_mode, window)

  def fn(step):
    return max_momentum - (max_momentum - base_momentum) * fraction(step)

  return Shape(fn, boundaries=_cycle_boundaries(step_size_up, down))

