"""Optax optimizers whose learning rate and momentum follow schedules: SGD, AdamW, LARS.

The super-convergence recipe (Smith & Topin, 2017; Smith, 2018) cycles the learning rate
and, inversely, the momentum::

  tx = lrsched.sgd(lrsched.one_cycle(max_lr=3.0, total_steps=10_000),
                   momentum=lrsched.one_cycle_momentum(total_steps=10_000),
                   weight_decay=1e-4)

Each constructor is built on ``optax.inject_hyperparams``, so

* learning_rate and momentum may be floats or schedules (any callable ``step -> value``:
  a `lrsched.Schedule`, an optax schedule, or `lrsched.reduce_lr_on_plateau`);
* the values in use are part of the optimizer state: `hyperparams` reads them for logging;
* the result is an ordinary ``optax.GradientTransformation`` whose state is a pytree of
  arrays, that composes with ``optax.chain``, ``optax.clip_by_global_norm``,
  ``optax.MultiSteps`` and checkpoints with Orbax.

Schedules are evaluated at the optimizer's update count: the k-th update applied to the
parameters uses ``schedule(k)``, k = 0, 1, ... Inside ``optax.MultiSteps`` this counts the
applied (emitted) updates, not the micro-steps that accumulate gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lrsched import _base, plateau
from lrsched._base import Numeric
from lrsched.states import INJECT_STATES, CaffeMomentumState, find_states

ScalarOrSchedule = Numeric | Callable[[Any], Any]
Mask = Any | Callable[[optax.Params], Any] | None


# --------------------------------------------------------------------------------------
# Argument checks


def _check_lr(where: str, name: str, value: Any) -> None:
  """A learning rate: a schedule, or a finite number >= 0."""
  if not callable(value):
    _base.check_lr(where, name, value)


def _check_rate(where: str, name: str, value: Any) -> None:
  """A momentum or an Adam beta: a schedule, or a number in [0, 1)."""
  if not callable(value):
    _base.check_range(where, name, value, 0.0, 1.0, high_open=True)


def _check_bool(where: str, name: str, value: Any) -> None:
  if not isinstance(value, bool):
    raise _base.fail(where, f'{name} must be a bool, got {value!r}')


def _check_momentum(where: str, momentum: Any, nesterov: bool) -> None:
  _check_bool(where, 'nesterov', nesterov)
  if momentum is None:
    if nesterov:
      raise _base.fail(where, 'nesterov=True needs a momentum; momentum=None is plain SGD')
  else:
    _check_rate(where, 'momentum', momentum)


def _has_weight_decay(weight_decay: Any) -> bool:
  """False only for a weight decay known to be 0 (a tracer may be anything)."""
  # numpy, not jnp: under a jit trace jnp would turn even a constant into a tracer.
  return not (_base.is_concrete(weight_decay) and not np.any(np.asarray(weight_decay)))


# --------------------------------------------------------------------------------------
# Transforms


def _caffe_momentum(learning_rate: jax.Array, momentum: jax.Array,
                    nesterov: bool) -> optax.GradientTransformation:
  """Caffe's momentum: v <- m v - lr u; the step is v (nesterov: m v - lr u)."""

  def init_fn(params):
    return CaffeMomentumState(optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    del params
    f = lambda u, v: (momentum * v - learning_rate * u).astype(v.dtype)
    velocity = jax.tree.map(f, updates, state.velocity)
    steps = jax.tree.map(f, updates, velocity) if nesterov else velocity
    return steps, CaffeMomentumState(velocity)

  return optax.GradientTransformation(init_fn, update_fn)


def _velocity(learning_rate: Any, momentum: Any, nesterov: bool,
              velocity: str) -> list[optax.GradientTransformation]:
  """Momentum then LR: u -> -lr * u, -lr * trace(u), or the Caffe velocity."""
  if momentum is None:
    return [optax.scale_by_learning_rate(learning_rate)]
  if velocity == 'caffe':
    return [_caffe_momentum(learning_rate, momentum, nesterov)]
  return [optax.trace(decay=momentum, nesterov=nesterov),
          optax.scale_by_learning_rate(learning_rate)]


def _sgd(learning_rate, momentum, weight_decay, *, nesterov, decoupled_weight_decay,
         weight_decay_mask, velocity) -> optax.GradientTransformation:
  """The SGD chain for given hyper-parameter values (called by inject_hyperparams)."""
  parts = _velocity(learning_rate, momentum, nesterov, velocity)
  if weight_decay is None:
    return optax.chain(*parts)
  if not decoupled_weight_decay:
    return optax.chain(optax.add_decayed_weights(weight_decay, weight_decay_mask), *parts)
  if velocity == 'caffe' and momentum is not None:
    # w <- w + v - lr * wd * w: the decay is added to the step, outside the velocity.
    decay = optax.add_decayed_weights(-learning_rate * weight_decay, weight_decay_mask)
    return optax.chain(*parts, decay)
  # w <- w - lr * (trace + wd * w), as AdamW: the decay is scaled by the LR only.
  decay = optax.add_decayed_weights(weight_decay, weight_decay_mask)
  return optax.chain(*parts[:-1], decay, parts[-1])


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule | None = None,
    *,
    nesterov: bool = False,
    weight_decay: Numeric = 0.0,
    decoupled_weight_decay: bool = False,
    weight_decay_mask: Mask = None,
    velocity: str = 'optax',
) -> optax.GradientTransformationExtraArgs:
  r"""SGD with scheduled learning rate and momentum (cyclical momentum, Smith 2018).

  With gradient :math:`g_t`, parameters :math:`w_t`, LR :math:`\eta_t` and momentum
  :math:`\mu_t` (both evaluated at the update count t), ``velocity='optax'`` (as
  ``optax.sgd`` and PyTorch) computes

  .. math::
     u_t = g_t + \lambda w_t, \qquad \tau_t = \mu_t \tau_{t-1} + u_t, \qquad
     w_{t+1} = w_t - \eta_t \tau_t

  (Nesterov: :math:`w_{t+1} = w_t - \eta_t (\mu_t \tau_t + u_t)`), and
  ``velocity='caffe'`` Caffe's form (Jia et al., 2014), used by the super-convergence
  experiments (Smith & Topin, 2017):

  .. math:: v_t = \mu_t v_{t-1} - \eta_t u_t, \qquad w_{t+1} = w_t + v_t

  (Nesterov: :math:`w_{t+1} = w_t + \mu_t v_t - \eta_t u_t`). The two are the same while
  the LR is constant; when the LR changes, Caffe's velocity still carries the past LRs
  (:math:`v_t = -\eta_t \tau_t` no longer holds), so an LR change acts gradually rather
  than at once.

  Weight decay is coupled L2 by default (:math:`u_t = g_t + \lambda w_t`, as Caffe and the
  paper). With ``decoupled_weight_decay=True`` it is kept out of the momentum (Loshchilov &
  Hutter, 2019): :math:`w_{t+1} = w_t - \eta_t \tau_t - \eta_t \lambda w_t` (Caffe form:
  :math:`w_t + v_t - \eta_t \lambda w_t`). The decoupled decay is scaled by the LR, as in
  ``optax.adamw`` and PyTorch's AdamW/SGD, so it follows the LR schedule.

  Args:
    learning_rate: :math:`\eta`, a float >= 0 or a schedule (``step -> LR``), e.g. a
      `lrsched.Schedule` or `lrsched.reduce_lr_on_plateau`.
    momentum: :math:`\mu`, a float in [0, 1) or a schedule; None (the default) for plain
      SGD without a velocity.
    nesterov: Nesterov momentum; needs a momentum.
    weight_decay: :math:`\lambda`, a float >= 0.
    decoupled_weight_decay: keep the decay out of the momentum (see above).
    weight_decay_mask: which parameters decay: a pytree of bools with the structure of
      (a prefix of) the params, or a function ``params -> such a pytree``; None: all.
    velocity: 'optax' or 'caffe' (see above).

  Returns:
    An ``optax.GradientTransformationExtraArgs``. Its ``update`` needs ``params`` when
    ``weight_decay`` is not 0. `hyperparams` of its state has 'learning_rate',
    'momentum' (unless momentum is None) and 'weight_decay' (unless it is 0).
  """
  where = 'sgd'
  _check_lr(where, 'learning_rate', learning_rate)
  _check_momentum(where, momentum, nesterov)
  _base.check_range(where, 'weight_decay', weight_decay, 0.0)
  _check_bool(where, 'decoupled_weight_decay', decoupled_weight_decay)
  _base.check_choice(where, 'velocity', velocity, ('optax', 'caffe'))
  return optax.inject_hyperparams(_sgd, static_args='weight_decay_mask')(
      learning_rate, momentum, weight_decay if _has_weight_decay(weight_decay) else None,
      nesterov=nesterov, decoupled_weight_decay=decoupled_weight_decay,
      weight_decay_mask=weight_decay_mask, velocity=velocity)


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: Numeric = 0.999,
    eps: Numeric = 1e-8,
    weight_decay: Numeric = 1e-4,
    *,
    mask: Mask = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamW (Loshchilov & Hutter, 2019) with scheduled learning rate and :math:`\beta_1`.

  ``optax.adamw`` with ``learning_rate`` and ``b1`` evaluated at the update count:
  cycling :math:`\beta_1` inversely to the LR is the cyclical momentum of Smith (2018)
  for Adam. At each step the update is the one ``optax.adamw`` makes with that step's
  :math:`\beta_1` (bias correction :math:`1 - \beta_1^{t+1}` uses the current value).
  The decay is decoupled and scaled by the LR: :math:`w \leftarrow w - \eta_t
  (\hat m_t / (\sqrt{\hat v_t} + \epsilon) + \lambda w)`.

  Args:
    learning_rate: :math:`\eta`, a float >= 0 or a schedule.
    b1: :math:`\beta_1`, a float in [0, 1) or a schedule.
    b2: :math:`\beta_2`, in [0, 1).
    eps: :math:`\epsilon`, >= 0.
    weight_decay: :math:`\lambda`, >= 0.
    mask: which parameters decay (as ``optax.adamw``'s mask); None: all.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; `hyperparams` of its state has
    'learning_rate', 'momentum' (= b1), 'b1', 'b2', 'eps', 'weight_decay'.
  """
  where = 'adamw'
  _check_lr(where, 'learning_rate', learning_rate)
  _check_rate(where, 'b1', b1)
  _base.check_range(where, 'b2', b2, 0.0, 1.0, high_open=True)
  _base.check_range(where, 'eps', eps, 0.0)
  _base.check_range(where, 'weight_decay', weight_decay, 0.0)
  return optax.inject_hyperparams(optax.adamw, static_args='mask')(
      learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
      mask=mask)


def _lars(learning_rate, momentum, weight_decay, trust_coefficient, eps, *, nesterov,
          weight_decay_mask, trust_ratio_mask) -> optax.GradientTransformation:
  """optax.lars's chain, with its LR-and-trace ending as a Caffe velocity (the same)."""
  trust = optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps)
  if trust_ratio_mask is not None:
    trust = optax.masked(trust, trust_ratio_mask)
  return optax.chain(optax.add_decayed_weights(weight_decay, weight_decay_mask), trust,
                     *_velocity(learning_rate, momentum, nesterov, 'caffe'))


def lars(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule | None = 0.9,
    weight_decay: Numeric = 0.0,
    *,
    trust_coefficient: Numeric = 0.001,
    eps: Numeric = 0.0,
    nesterov: bool = False,
    weight_decay_mask: Mask = None,
    trust_ratio_mask: Mask = None,
) -> optax.GradientTransformationExtraArgs:
  r"""LARS (You et al., 2017) with scheduled learning rate and momentum.

  The update of ``optax.lars`` (same arguments and defaults), with ``learning_rate`` and
  ``momentum`` evaluated at the update count:

  .. math::
     u_t = \text{trust}(g_t + \lambda w_t), \qquad v_t = \mu_t v_{t-1} - \eta_t u_t,
     \qquad w_{t+1} = w_t + v_t

  where trust multiplies each parameter array's update by
  :math:`c \|w\| / (\|g + \lambda w\| + \epsilon)` (1 when a norm is 0). This is
  ``optax.lars``'s ratio, not the paper's :math:`c \|w\| / (\|g\| + \lambda \|w\|)`: the
  denominator is the norm of the decayed gradient, not the sum of the two norms. As in the
  paper and ``optax.lars``, the velocity holds the LR (Caffe form, see `sgd`), so scale this
  LR with `lrsched.reduce_lr_on_plateau`, not by scaling the updates.

  Args:
    learning_rate: :math:`\eta`, a float >= 0 or a schedule.
    momentum: :math:`\mu`, a float in [0, 1) or a schedule; None for no velocity.
    weight_decay: :math:`\lambda`, >= 0 (coupled, inside the trust ratio).
    trust_coefficient: c, >= 0.
    eps: :math:`\epsilon`, >= 0.
    nesterov: Nesterov momentum; needs a momentum.
    weight_decay_mask: which parameters decay (a pytree of bools or a function of the
      params); None: all.
    trust_ratio_mask: which parameters get the trust ratio; None: all.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (``update`` needs ``params``);
    `hyperparams` of its state has 'learning_rate', 'momentum', 'weight_decay',
    'trust_coefficient', 'eps'.
  """
  where = 'lars'
  _check_lr(where, 'learning_rate', learning_rate)
  _check_momentum(where, momentum, nesterov)
  _base.check_range(where, 'weight_decay', weight_decay, 0.0)
  _base.check_range(where, 'trust_coefficient', trust_coefficient, 0.0)
  _base.check_range(where, 'eps', eps, 0.0)
  return optax.inject_hyperparams(
      _lars, static_args=('weight_decay_mask', 'trust_ratio_mask'))(
          learning_rate, momentum, weight_decay, trust_coefficient, eps, nesterov=nesterov,
          weight_decay_mask=weight_decay_mask, trust_ratio_mask=trust_ratio_mask)


# --------------------------------------------------------------------------------------
# Reading the state


def hyperparams(opt_state: optax.OptState) -> dict[str, jax.Array]:
  """The current hyper-parameters in an optimizer state, for logging.

  Finds every ``optax.inject_hyperparams`` state inside ``opt_state`` (an
  ``optax.chain``'s tuple, ``optax.MultiSteps``' inner state, masked states...) and
  returns its numeric hyper-parameters by name: 'learning_rate', 'momentum' (for
  `adamw`, :math:`\\beta_1`; absent for SGD without momentum), 'weight_decay', ... When
  several states have the same name, the first (outermost, then in tree order) gets the
  plain key and the others the key prefixed by their path, e.g.
  ``"[1].inner_state.learning_rate"``. A plateau rule's multiplier is under
  'plateau_scale' (for `reduce_lr_on_plateau` it is already in 'learning_rate').

  "Current" means the values of the last update: right after ``init``, the values at
  step 0 (those the first update will use); after k updates, the values the k-th update
  used, i.e. the schedules at step k - 1 (``optax.inject_hyperparams`` evaluates them at
  its count before incrementing it). A `lrsched.report_metric` reduction shows after the
  next update.

  Args:
    opt_state: the state of an optimizer built with `sgd`, `adamw`, `lars` or any
      ``optax.inject_hyperparams``, possibly inside other transforms.

  Returns:
    A dict of scalar arrays (empty if the state holds no injected hyper-parameters).
  """
  out: dict[str, jax.Array] = {}

  def put(path: Any, name: str, value: Any) -> None:
    key = name if name not in out else f'{jax.tree_util.keystr(path)}.{name}'
    out[key] = jnp.asarray(value)

  for path, state in find_states(opt_state, INJECT_STATES):
    values = dict(state.hyperparams)
    if 'b1' in values and 'momentum' not in values:
      values = {'momentum': values['b1'], **values}
    for name, value in values.items():
      put(path, name, value)
  for path, state in find_states(opt_state, plateau.PlateauState):
    put(path, 'plateau_scale', state.scale)
  # learning_rate and momentum first, then alphabetical: a stable order for loggers.
  first = ('learning_rate', 'momentum')
  rank = lambda k: (first.index(k) if k in first else len(first), k)
  return {k: out[k] for k in sorted(out, key=rank)}
