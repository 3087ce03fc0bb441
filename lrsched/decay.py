"""Classic decays: constant, linear, step, multistep, exponential, inverse-time, poly, cosine.

Each constructor returns a `lrsched.Schedule` (a valid ``optax.Schedule``). Steps are
int32 and clamped at 0 by the caller (`lrsched._base.as_step`); finite schedules hold their
final value after ``total_steps``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from lrsched import _base
from lrsched._base import Numeric, Shape
from lrsched._interpolate import ramp


@_base.register
def constant(lr: Numeric) -> Shape:
  r"""A fixed learning rate: :math:`\eta_t = \eta`.

  The fixed-LR baseline of the super-convergence comparisons (Smith & Topin, 2017).

  Args:
    lr: the learning rate, >= 0.
  """
  _base.check_lr('constant', 'lr', lr)
  return Shape(lambda step: lr + jnp.zeros(jnp.shape(step), jnp.result_type(float, lr)))


@_base.register
def linear(init_lr: Numeric, end_lr: Numeric, total_steps: int) -> Shape:
  r"""Linear interpolation from ``init_lr`` to ``end_lr`` over ``total_steps`` steps.

  .. math:: \eta_t = \eta_0 + (\eta_{end} - \eta_0) \min(t, T) / T

  Args:
    init_lr: the value at step 0, >= 0.
    end_lr: the value at step ``total_steps`` and after, >= 0.
    total_steps: T, >= 1.
  """
  _base.check_lr('linear', 'init_lr', init_lr)
  _base.check_lr('linear', 'end_lr', end_lr)
  _base.check_steps('linear', 'total_steps', total_steps)
  return Shape(lambda step: ramp(init_lr, end_lr, step, total_steps), boundaries=(0, total_steps),
               total_steps=total_steps)


# The gamma of a decay: (0, 1]. A factor above 1 would make the "decay" grow the LR.
_GAMMA_HINT = 'a decay multiplies the LR by gamma <= 1; gamma > 1 would increase it'


def power(base: Numeric, exponent: jnp.ndarray) -> jnp.ndarray:
  """``base ** exponent`` for a decay factor ``base`` > 0, as ``exp(exponent * log(base))``.

  For a Python ``base`` the log is taken in float64: float32(0.9999) is off by 1e-8,
  which ``0.9999 ** 100_000`` would turn into a 1e-3 relative error.
  """
  if _base.is_python_number(base):
    return jnp.exp(exponent * math.log(base))
  return jnp.power(base, exponent)


def _multiples(period: int, count: int = 5) -> tuple[int, ...]:
  """The first ``count`` multiples of ``period`` (0 included) that are valid steps."""
  return tuple(k * period for k in range(count) if k * period <= _base.INT32_MAX)


def _ratio(step: jnp.ndarray, divisor: int, staircase: bool) -> jnp.ndarray:
  """``step / divisor`` (floored when ``staircase``), with the integer part done in int32.

  ``q + r / divisor`` keeps the quotient exact for every int32 step, where a float32
  ``step / divisor`` would already round the step itself above 2**24.
  """
  q, r = step // divisor, step % divisor
  if staircase:
    return _base.to_float(q)
  return _base.to_float(q) + _base.to_float(r) / divisor


@_base.register
def step_decay(lr: Numeric, step_size: int, gamma: Numeric = 0.1) -> Shape:
  r"""Multiplies the LR by ``gamma`` every ``step_size`` steps (PyTorch ``StepLR``).

  .. math:: \eta_t = \eta \, \gamma^{\lfloor t / s \rfloor}

  Args:
    lr: the initial learning rate, >= 0.
    step_size: s, the number of steps between two drops, >= 1.
    gamma: the factor of each drop, in (0, 1].
  """
  _base.check_lr('step_decay', 'lr', lr)
  _base.check_steps('step_decay', 'step_size', step_size)
  _base.check_range('step_decay', 'gamma', gamma, 0, 1, low_open=True, hint=_GAMMA_HINT)

  def fn(step):
    return lr * power(gamma, _base.to_float(step // step_size))

  return Shape(fn, boundaries=_multiples(step_size))


@_base.register
def multistep(lr: Numeric, milestones: Sequence[int], gamma: Numeric = 0.1) -> Shape:
  r"""Multiplies the LR by ``gamma`` at each milestone (PyTorch ``MultiStepLR``).

  .. math:: \eta_t = \eta \, \gamma^{|\{i : t \ge m_i\}|}

  Caffe's ``multistep`` policy; the piecewise-constant baseline of super-convergence
  (Smith & Topin, 2017), e.g. ``multistep(0.35, [50_000, 70_000])``. The value is
  constant from the last milestone on, which is therefore ``total_steps``.

  Args:
    lr: the learning rate before the first milestone, >= 0.
    milestones: the steps m_i of the drops, strictly increasing ints >= 1 (at least one).
    gamma: the factor of each drop, in (0, 1].
  """
  _base.check_lr('multistep', 'lr', lr)
  _base.check_increasing('multistep', 'milestones', milestones, minimum=1)
  milestones = tuple(int(m) for m in milestones)
  if not milestones:
    raise _base.fail('multistep', 'milestones must hold at least one step; '
                                  'use constant(lr) for a fixed learning rate')
  _base.check_range('multistep', 'gamma', gamma, 0, 1, low_open=True, hint=_GAMMA_HINT)
  table = np.asarray(milestones, dtype=np.int32)

  def fn(step):
    # The number of milestones <= step, counted exactly in int32.
    passed = jnp.searchsorted(table, step, side='right')
    return lr * power(gamma, _base.to_float(passed))

  return Shape(fn, boundaries=(0, *milestones), total_steps=milestones[-1])


@_base.register
def exponential(lr: Numeric, gamma: Numeric, decay_steps: int = 1,
                staircase: bool = False) -> Shape:
  r"""Exponential decay (PyTorch ``ExponentialLR`` when ``decay_steps=1``).

  .. math:: \eta_t = \eta \, \gamma^{t / d}

  with :math:`\lfloor t / d \rfloor` in the exponent when ``staircase``. Never ends.

  Args:
    lr: the learning rate at step 0, >= 0.
    gamma: the factor per ``decay_steps`` steps, in (0, 1].
    decay_steps: d, >= 1.
    staircase: decay in whole multiples of ``decay_steps`` (a step decay).
  """
  _base.check_lr('exponential', 'lr', lr)
  _base.check_range('exponential', 'gamma', gamma, 0, 1, low_open=True, hint=_GAMMA_HINT)
  _base.check_steps('exponential', 'decay_steps', decay_steps)

  def fn(step):
    return lr * power(gamma, _ratio(step, decay_steps, staircase))

  return Shape(fn, boundaries=_multiples(decay_steps) if staircase else (0,))


@_base.register
def inverse_time(lr: Numeric, decay_rate: Numeric, decay_steps: int = 1,
                 staircase: bool = False) -> Shape:
  r"""Inverse-time decay: Keras's time-based decay (the ``decay`` argument of its SGD).

  .. math:: \eta_t = \frac{\eta}{1 + r \, t / d}

  with :math:`\lfloor t / d \rfloor` in place of :math:`t / d` when ``staircase``.
  Never ends.

  Args:
    lr: the learning rate at step 0, >= 0.
    decay_rate: r, >= 0.
    decay_steps: d, >= 1.
    staircase: decay in whole multiples of ``decay_steps``.
  """
  _base.check_lr('inverse_time', 'lr', lr)
  _base.check_range('inverse_time', 'decay_rate', decay_rate, 0)
  _base.check_steps('inverse_time', 'decay_steps', decay_steps)

  def fn(step):
    return lr / (1.0 + decay_rate * _ratio(step, decay_steps, staircase))

  return Shape(fn, boundaries=_multiples(decay_steps) if staircase else (0,))


@_base.register
def polynomial(lr: Numeric, total_steps: int, power: Numeric = 1.0,
               end_lr: Numeric = 0.0) -> Shape:
  r"""Polynomial decay: DeepLab's "poly" policy, PyTorch ``PolynomialLR`` (``end_lr=0``).

  .. math:: \eta_t = (\eta - \eta_{end}) (1 - \min(t, T) / T)^p + \eta_{end}

  DeepLab (Chen et al., 2017) trains with ``power=0.9``.

  Args:
    lr: the learning rate at step 0, >= 0.
    total_steps: T, the step from which the value is ``end_lr``, >= 1.
    power: p, > 0.
    end_lr: the final value, in [0, lr].
  """
  _base.check_lr('polynomial', 'lr', lr)
  _base.check_steps('polynomial', 'total_steps', total_steps)
  _base.check_range('polynomial', 'power', power, 0, low_open=True)
  _base.check_lr('polynomial', 'end_lr', end_lr)
  _base.check_order('polynomial', 'end_lr', end_lr, 'lr', lr)

  def fn(step):
    # 1 - t/T as (T - t) / T: the integer difference is exact.
    left = _base.to_float(total_steps - jnp.minimum(step, total_steps)) / total_steps
    return (lr - end_lr) * jnp.power(left, power) + end_lr

  return Shape(fn, boundaries=(0, total_steps), total_steps=total_steps)


@_base.register
def cosine(lr: Numeric, total_steps: int, min_lr: Numeric = 0.0) -> Shape:
  r"""Cosine annealing (PyTorch ``CosineAnnealingLR``; Loshchilov & Hutter, 2017).

  .. math:: \eta_t = \eta_{min} + \tfrac12 (\eta - \eta_{min})
            \left(1 + \cos\left(\pi \min(t, T) / T\right)\right)

  Unlike PyTorch, which continues the cosine back up after ``T_max``, the value holds
  at ``min_lr`` from step T on.

  Args:
    lr: the learning rate at step 0, >= 0.
    total_steps: T, >= 1.
    min_lr: the final value, in [0, lr].
  """
  _base.check_lr('cosine', 'lr', lr)
  _base.check_steps('cosine', 'total_steps', total_steps)
  _base.check_lr('cosine', 'min_lr', min_lr)
  _base.check_order('cosine', 'min_lr', min_lr, 'lr', lr)

  def fn(step):
    return ramp(lr, min_lr, step, total_steps, 'cos')

  return Shape(fn, boundaries=(0, total_steps), total_steps=total_steps)
