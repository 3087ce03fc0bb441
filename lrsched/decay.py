"""Classic decays: constant, linear, step, multistep, exponential, inverse-time, poly, cosine.

Each constructor returns a `lrsched.Schedule` (a valid ``optax.Schedule``). Steps are
int32 and clamped at 0 by the caller (`lrsched._base.as_step`); finite schedules hold their
final value after ``total_steps``.
"""

from __future__ import annotations

import jax.numpy as jnp

from lrsched import _base
from lrsched._base import Numeric, Shape


@_base.register
def constant(lr: Numeric) -> Shape:
  r"""A fixed learning rate: :math:`\eta_t = \eta`.

  The fixed-LR baseline of the super-convergence comparisons (Smith & Topin, 2017).

  Args:
    lr: the learning rate, >= 0.
  """
  _base.check_lr('constant', 'lr', lr)
  return Shape(lambda step: jnp.full(jnp.shape(step), lr, dtype=jnp.result_type(float, lr)))


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

  def fn(step):
    frac = _base.to_float(jnp.minimum(step, total_steps)) / total_steps
    return init_lr + (end_lr - init_lr) * frac

  return Shape(fn, boundaries=(0, total_steps), total_steps=total_steps)
