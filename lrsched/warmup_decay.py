r"""The warmup-then-decay schedules of current practice: warmup-stable-decay and rsqrt.

* `wsd`: warmup, a long stable phase at the peak, then a short decay (Hu et al. 2024,
  "MiniCPM"; Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed
  Training Durations"). The stable phase does not depend on the run's length, so one
  stable-phase checkpoint can branch into decays of several lengths.
* `rsqrt`: the inverse square root with a linear warmup (Vaswani et al. 2017; T5's
  "rsqrt"), optionally with a linear cooldown to 0 (Zhai et al. 2022).

Linear decay to zero with warmup is ``wsd(peak, T, warmup_steps=W, decay_steps=T - W)``
(no stable phase), or ``warmup(linear(peak, 0.0, T - W), W)``.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from lrsched import _base
from lrsched._base import Numeric, Shape
from lrsched._interpolate import ramp

WSD_DECAYS = ('linear', 'cosine', 'sqrt', 'exponential')
"""The decay shapes of `wsd`."""


@_base.register
def wsd(peak_lr: Numeric, total_steps: int, warmup_steps: int = 0,
        decay_steps: int | None = None, decay_fraction: float = 0.2, decay: str = 'sqrt',
        init_lr: Numeric = 0.0, final_lr: Numeric = 0.0) -> Shape:
  r"""Warmup-stable-decay: a linear warmup, the peak held, then a decay of chosen shape.

  With :math:`W` = ``warmup_steps``, :math:`D` the decay length, :math:`T` =
  ``total_steps`` and :math:`u = (t - (T - D)) / D` the fraction of the decay done:

  .. math:: \eta_t = \begin{cases}
            \eta_0 + (\eta_{peak} - \eta_0) \, t / W & t < W \\
            \eta_{peak} & W \le t < T - D \\
            \eta_{f} + (\eta_{peak} - \eta_{f}) \, g(u) & T - D \le t \le T \\
            \eta_{f} & t > T \end{cases}

  with :math:`g(u) = 1 - u` (``'linear'``), :math:`\cos^2(\pi u / 2)` (``'cosine'``),
  :math:`1 - \sqrt u` (``'sqrt'``, Hägele et al. 2024's "1 - sqrt" cooldown, the default),
  or, for ``'exponential'`` (MiniCPM's), :math:`\eta_t = \eta_{peak} (\eta_f /
  \eta_{peak})^u`, which needs :math:`\eta_f > 0`.

  Args:
    peak_lr: the stable value, >= 0.
    total_steps: T, the step at which the decay ends, >= 1; the value holds after.
    warmup_steps: W, >= 0.
    decay_steps: D, in [1, T - W]; None: ``max(1, round(decay_fraction * T))``, at most
      T - W.
    decay_fraction: D / T when ``decay_steps`` is None, in (0, 1] (Hägele et al.: 0.2).
    decay: one of `WSD_DECAYS`.
    init_lr: the value at step 0, in [0, peak_lr].
    final_lr: the value at T and after, in [0, peak_lr] (> 0 for 'exponential').
  """
  where = 'wsd'
  _base.check_lr(where, 'peak_lr', peak_lr)
  _base.check_steps(where, 'total_steps', total_steps)
  _base.check_steps(where, 'warmup_steps', warmup_steps, minimum=0)
  _base.check_choice(where, 'decay', decay, WSD_DECAYS)
  _base.check_lr(where, 'init_lr', init_lr)
  _base.check_lr(where, 'final_lr', final_lr, positive=decay == 'exponential')
  _base.check_order(where, 'init_lr', init_lr, 'peak_lr', peak_lr)
  _base.check_order(where, 'final_lr', final_lr, 'peak_lr', peak_lr)
  if warmup_steps >= total_steps:
    raise _base.fail(where, f'warmup_steps must be < total_steps (the decay needs a step), '
                            f'got warmup_steps={warmup_steps} and total_steps={total_steps}')
  room = total_steps - warmup_steps
  if decay_steps is None:
    _base.check_range(where, 'decay_fraction', decay_fraction, 0, 1, low_open=True)
    decay_steps = min(room, max(1, round(float(decay_fraction) * total_steps)))
  else:
    _base.check_steps(where, 'decay_steps', decay_steps)
    if decay_steps > room:
      raise _base.fail(where, f'decay_steps must be <= total_steps - warmup_steps = {room}, '
                              f'got {decay_steps}')
  decay_start = total_steps - decay_steps

  def fn(step):
    warm = ramp(init_lr, peak_lr, step, warmup_steps) if warmup_steps else peak_lr
    t = jnp.clip(step - decay_start, 0, decay_steps)
    done = _base.to_float(t) / decay_steps
    left = _base.to_float(decay_steps - t) / decay_steps
    if decay in ('linear', 'cosine'):
      falling = ramp(peak_lr, final_lr, t, decay_steps, 'linear' if decay == 'linear' else 'cos')
    elif decay == 'sqrt':
      # 1 - sqrt(u) = (1 - u) / (1 + sqrt(u)): no cancellation near the end, exactly 0 there.
      falling = final_lr + (peak_lr - final_lr) * (left / (1.0 + jnp.sqrt(done)))
    else:  # exponential: geometric from peak to final
      falling = peak_lr * jnp.exp(done * jnp.log(jnp.asarray(final_lr) / peak_lr))
      falling = jnp.where(t >= decay_steps, final_lr, falling)
    falling = jnp.clip(falling, jnp.minimum(peak_lr, final_lr), peak_lr)
    value = jnp.where(step < decay_start, peak_lr, falling)
    return jnp.where(step < warmup_steps, warm, value)

  boundaries = tuple(sorted({0, warmup_steps, decay_start, total_steps}))
  return Shape(fn, boundaries=boundaries, total_steps=total_steps)


@_base.register
def rsqrt(peak_lr: Numeric, warmup_steps: int, total_steps: int | None = None,
          cooldown_steps: int = 0) -> Shape:
  r"""The inverse square root with a linear warmup (Vaswani et al. 2017; T5's "rsqrt").

  .. math:: \eta_t = \eta_{peak} \min\left(\frac{t}{W}, \sqrt{\frac{W}{t}}\right)
            \cdot c_t, \qquad
            c_t = \min\left(1, \frac{T - t}{C}\right)^+

  It rises linearly from 0 to ``peak_lr`` at :math:`W` = ``warmup_steps`` and then falls as
  :math:`1/\sqrt t` (Vaswani et al.'s :math:`d^{-1/2} \min(t^{-1/2}, t W^{-3/2})` with the
  constant folded into ``peak_lr``). With :math:`C` = ``cooldown_steps`` > 0 the last C
  steps before :math:`T` = ``total_steps`` scale it linearly down to 0, as in Zhai et al.
  2022 ("Scaling Vision Transformers"). Without a ``total_steps`` it decays for ever
  (never below 0).

  Args:
    peak_lr: the value at step W, >= 0.
    warmup_steps: W, >= 1.
    total_steps: T, > W; needed with a cooldown; the value holds from T on.
    cooldown_steps: C, in [0, T - W].
  """
  where = 'rsqrt'
  _base.check_lr(where, 'peak_lr', peak_lr)
  _base.check_steps(where, 'warmup_steps', warmup_steps)
  _base.check_steps(where, 'cooldown_steps', cooldown_steps, minimum=0)
  if total_steps is None:
    if cooldown_steps:
      raise _base.fail(where, 'a cooldown needs total_steps (where it ends)')
  else:
    _base.check_steps(where, 'total_steps', total_steps)
    if total_steps <= warmup_steps:
      raise _base.fail(where, f'total_steps must be > warmup_steps={warmup_steps}, got '
                              f'{total_steps}')
    if cooldown_steps > total_steps - warmup_steps:
      raise _base.fail(where, f'cooldown_steps must be <= total_steps - warmup_steps = '
                              f'{total_steps - warmup_steps}, got {cooldown_steps}')
  root_w = math.sqrt(warmup_steps)

  def fn(step):
    if total_steps is not None:
      step = jnp.minimum(step, total_steps)
    t = _base.to_float(step)
    rising = ramp(0.0, peak_lr, step, warmup_steps)
    falling = peak_lr * (root_w / jnp.sqrt(jnp.maximum(t, float(warmup_steps))))
    value = jnp.where(step < warmup_steps, rising, jnp.minimum(falling, peak_lr))
    if cooldown_steps:
      left = _base.to_float(total_steps - step) / cooldown_steps
      value = value * jnp.clip(left, 0.0, 1.0)
    return value

  ends = () if total_steps is None else (total_steps,)
  starts = () if not cooldown_steps else (total_steps - cooldown_steps,)
  return Shape(fn, boundaries=tuple(sorted({0, warmup_steps, *starts, *ends})),
               total_steps=total_steps)
