"""Accuracy-driven decay: lower the learning rate when a monitored metric stops improving.

PyTorch's ``ReduceLROnPlateau`` for Optax, with the metric reported at evaluation time::

  lr = lrsched.reduce_lr_on_plateau(lrsched.constant(0.1), factor=0.1, patience=10)
  tx = lrsched.sgd(lr, momentum=0.9)             # or any optax.inject_hyperparams optimizer
  opt_state = tx.init(params)
  for step in range(num_steps):
    params, opt_state = train_step(params, opt_state, batch)   # jitted, unchanged
    if step % eval_every == 0:
      opt_state = lrsched.report_metric(opt_state, eval_loss)  # pure, jittable

Two ways to apply the reduction, sharing one state machine (`PlateauState`):

* `reduce_lr_on_plateau` wraps a learning rate (a float or any schedule) into a stateful
  learning rate (an ``optax.StatefulSchedule``): the LR used at step t is
  ``base(t) * scale``. It goes wherever a learning rate goes under
  ``optax.inject_hyperparams`` (`lrsched.sgd`, `lrsched.adamw`, `lrsched.lars`,
  ``optax.inject_hyperparams(optax.adam)``...), so the reduction is applied to the LR
  itself (right for every optimizer, including those whose velocity holds the LR), the
  logged LR is the effective one, and ``min_lr``/``eps`` are in LR units as in PyTorch.
* `reduce_on_plateau` is a transform that multiplies the final updates by ``scale``; chain
  it after any optimizer, e.g. ``optax.chain(optax.adam(1e-3), reduce_on_plateau())``.
  Scaling the updates equals scaling the LR only when the LR is applied last (optax-form
  SGD and momentum, Adam(W)); not when the LR is folded into a velocity
  (``lrsched.sgd(..., velocity='caffe')``, ``lrsched.lars``, ``optax.lars``), where a
  reduction would only take effect gradually. `report_metric` rejects that combination
  for lrsched's optimizers (it cannot see inside ``optax.lars``).

The difference from ``optax.contrib.reduce_on_plateau``: that transform takes the metric as
``update(..., value=loss)`` at every step, so the train step must compute and pass a value
on every step (typically the noisy training loss, averaged over ``accumulation_size``).
Here the metric is a validation metric known only every N steps, reported by a separate
pure function; the train step's signature and its jit cache are unchanged by a report.
Semantics follow PyTorch exactly (``mode``, ``threshold_mode``, ``cooldown``, ``min_lr``,
``eps``), which makes results comparable with PyTorch baselines.

The hyper-parameters of a plateau rule are Python numbers: they live in a static node of
the state (part of its tree structure, not of its leaves), which is what lets
`report_metric` be a function of the optimizer state alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lrsched import _base
from lrsched._base import Numeric
from lrsched.states import CaffeMomentumState, find_states


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class PlateauConfig:
  """The hyper-parameters of a plateau rule: static (no leaves), hashable.

  ``learning_rate`` is the base LR that ``scale`` multiplies (a float or a schedule) for
  `reduce_lr_on_plateau`; None for `reduce_on_plateau`, whose ``scale`` multiplies the
  updates and whose floor ``min_lr`` is then ``min_scale`` (a base of 1).
  """

  factor: float
  patience: int
  mode: str
  threshold: float
  threshold_mode: str
  cooldown: int
  min_lr: float
  eps: float
  learning_rate: float | Callable[[Any], Any] | None


class PlateauState(NamedTuple):
  """The state of a plateau rule: arrays, plus the static `PlateauConfig`.

  Attributes:
    count: the number of updates applied so far (int32). The base LR of the next update
      is ``learning_rate(count)``.
    scale: the multiplier of the base LR (or of the updates), 1 until the first reduction.
    best: the best metric reported so far (+inf in mode 'min', -inf in mode 'max' before
      the first report).
    num_bad_reports: reports since the last improvement (PyTorch's ``num_bad_epochs``).
    cooldown_counter: reports left in the cooldown after a reduction.
    config: the static hyper-parameters.
  """

  count: jax.Array
  scale: jax.Array
  best: jax.Array
  num_bad_reports: jax.Array
  cooldown_counter: jax.Array
  config: PlateauConfig


def _python_float(where: str, name: str, value: Any) -> float:
  """A hyper-parameter that becomes part of the static state: a concrete scalar."""
  _base.check_finite(where, name, value)
  if isinstance(value, (str, bytes)) or not _base.is_concrete(value) or jnp.ndim(value) != 0:
    raise _base.fail(where, f'{name} must be a Python number (plateau hyper-parameters '
                            f'are static), got {value!r}')
  return float(value)


def _config(where: str, factor: Numeric, patience: int, mode: str, threshold: Numeric,
            threshold_mode: str, cooldown: int, min_lr: Numeric, eps: Numeric,
            learning_rate: Any) -> PlateauConfig:
  _base.check_range(where, 'factor', factor, 0.0, 1.0, high_open=True,
                    hint='the LR is multiplied by factor at each reduction')
  _base.check_steps(where, 'patience', patience, minimum=0)
  _base.check_choice(where, 'mode', mode, ('min', 'max'))
  _base.check_choice(where, 'threshold_mode', threshold_mode, ('rel', 'abs'))
  if threshold_mode == 'rel':
    _base.check_range(where, 'threshold', threshold, 0.0, 1.0, high_open=True,
                      hint="with threshold_mode='rel' an improvement is a change by a "
                           'fraction threshold of the best value')
  else:
    _base.check_range(where, 'threshold', threshold, 0.0)
  _base.check_steps(where, 'cooldown', cooldown, minimum=0)
  _base.check_range(where, 'eps', eps, 0.0)
  return PlateauConfig(
      factor=_python_float(where, 'factor', factor), patience=int(patience), mode=mode,
      threshold=_python_float(where, 'threshold', threshold),
      threshold_mode=threshold_mode, cooldown=int(cooldown),
      min_lr=_python_float(where, 'min_lr', min_lr), eps=_python_float(where, 'eps', eps),
      learning_rate=learning_rate)


def _init(config: PlateauConfig) -> PlateauState:
  dtype = jnp.result_type(float)
  worst = jnp.inf if config.mode == 'min' else -jnp.inf
  return PlateauState(
      count=jnp.zeros([], jnp.int32), scale=jnp.ones([], dtype),
      best=jnp.asarray(worst, dtype), num_bad_reports=jnp.zeros([], jnp.int32),
      cooldown_counter=jnp.zeros([], jnp.int32), config=config)


def _base_lr(config: PlateauConfig, count: jax.Array) -> jax.Array:
  if config.learning_rate is None:
    return jnp.ones([], jnp.result_type(float))
  if callable(config.learning_rate):
    return jnp.asarray(config.learning_rate(count))
  return jnp.asarray(config.learning_rate, jnp.result_type(float))


def _is_better(config: PlateauConfig, value: jax.Array, best: jax.Array) -> jax.Array:
  """PyTorch's ``_is_better``: a NaN metric is never better."""
  if config.threshold_mode == 'rel':
    if config.mode == 'min':
      return value < best * (1.0 - config.threshold)
    return value > best * (1.0 + config.threshold)
  if config.mode == 'min':
    return value < best - config.threshold
  return value > best + config.threshold


def _report(state: PlateauState, value: jax.Array) -> PlateauState:
  """One ``ReduceLROnPlateau.step(value)``, in the order PyTorch does it."""
  config = state.config
  value = jnp.asarray(value, state.best.dtype)
  better = _is_better(config, value, state.best)
  best = jnp.where(better, value, state.best)
  saturated = state.num_bad_reports == _base.INT32_MAX
  num_bad = jnp.where(better, 0, state.num_bad_reports + jnp.where(saturated, 0, 1))
  # During a cooldown bad reports are not counted.
  in_cooldown = state.cooldown_counter > 0
  cooldown_counter = jnp.where(in_cooldown, state.cooldown_counter - 1,
                               state.cooldown_counter)
  num_bad = jnp.where(in_cooldown, 0, num_bad)
  reduce = num_bad > config.patience
  # PyTorch: new_lr = max(old_lr * factor, min_lr), applied if old_lr - new_lr > eps. The
  # old LR is the one the next update would use: base(count) * scale.
  base = _base_lr(config, state.count).astype(state.scale.dtype)
  old_lr = base * state.scale
  new_lr = jnp.maximum(old_lr * config.factor, config.min_lr)
  apply = reduce & (old_lr - new_lr > config.eps)
  # apply implies base > 0 (old_lr > new_lr >= 0); the where keeps the division finite.
  scale = jnp.where(apply, new_lr / jnp.where(base > 0, base, 1.0), state.scale)
  return PlateauState(
      count=state.count, scale=scale.astype(state.scale.dtype), best=best,
      num_bad_reports=jnp.where(reduce, 0, num_bad).astype(jnp.int32),
      cooldown_counter=jnp.where(reduce, config.cooldown, cooldown_counter).astype(jnp.int32),
      config=config)


def _is_plateau(x: Any) -> bool:
  return isinstance(x, PlateauState)


def report_metric(opt_state: optax.OptState, value: Numeric) -> optax.OptState:
  """Reports an evaluation metric to every plateau rule inside an optimizer state.

  Pure and jittable: returns a new state in which each `PlateauState` (from
  `reduce_on_plateau` or `reduce_lr_on_plateau`, anywhere inside ``optax.chain``,
  ``optax.MultiSteps``, ``optax.inject_hyperparams``, masked states...) has taken one
  PyTorch ``ReduceLROnPlateau.step(value)``. A reduction applies from the next update on;
  ``lrsched.hyperparams(opt_state)['learning_rate']`` is the LR used by the last update,
  so it shows the reduction after the next update.

  The tree structure of the state is unchanged, so a jitted train step is not retraced.

  Args:
    opt_state: an optimizer state holding at least one plateau rule.
    value: the metric, a scalar (a loss in mode 'min', an accuracy in mode 'max'). NaN
      counts as no improvement, as in PyTorch.

  Returns:
    The optimizer state with its plateau states updated.

  Raises:
    ValueError: if ``opt_state`` holds no plateau state, if ``value`` is not a scalar, or if
      a `reduce_on_plateau` transform (which scales the final updates) is combined with an
      optimizer that folds the LR into its velocity.
  """
  if jnp.ndim(value) != 0:
    raise ValueError(f'report_metric: value must be a scalar, got shape {jnp.shape(value)}')
  states = [s for _, s in find_states(opt_state, PlateauState)]
  if not states:
    raise ValueError('report_metric: no plateau state in opt_state; use '
                     'lrsched.reduce_lr_on_plateau(...) as the learning rate, or chain '
                     'lrsched.plateau.reduce_on_plateau(...) after the optimizer')
  if (any(s.config.learning_rate is None for s in states)
      and find_states(opt_state, CaffeMomentumState)):
    raise ValueError(
        'report_metric: reduce_on_plateau() scales the final updates, which is not the '
        "same as scaling the LR for an optimizer whose velocity holds the LR (velocity='caffe'"
        ', lars): pass lrsched.reduce_lr_on_plateau(learning_rate, ...) as its learning '
        'rate instead')
  return jax.tree.map(lambda s: _report(s, value) if _is_plateau(s) else s, opt_state,
                      is_leaf=_is_plateau)


def reduce_on_plateau(
    factor: Numeric = 0.1,
    patience: int = 10,
    *,
    mode: str = 'min',
    threshold: Numeric = 1e-4,
    threshold_mode: str = 'rel',
    cooldown: int = 0,
    min_scale: Numeric = 0.0,
    eps: Numeric = 1e-8,
) -> optax.GradientTransformation:
  r"""A transform that scales the updates down when a reported metric stops improving.

  Every update is multiplied by ``scale`` (1 at first). Each `report_metric` call takes one
  step of PyTorch's ``ReduceLROnPlateau`` (Paszke et al., 2019) with the LR replaced by
  the scale: after more than ``patience`` reports without improvement,

  .. math:: s' = \max(s \cdot \text{factor}, s_{min}), \qquad
     s \leftarrow s' \quad \text{if } s - s' > \text{eps}.

  The state machine is PyTorch's, so with a constant LR :math:`\eta` the effective LR
  :math:`\eta s` is PyTorch's with ``min_lr`` :math:`= \eta s_{min}` and ``eps``
  :math:`\cdot \eta`.

  Chain it after an optimizer that applies its LR last (optax-form SGD/momentum, Adam,
  AdamW), where scaling the updates is scaling the LR. For an optimizer whose velocity
  holds the LR (``lrsched.sgd(..., velocity='caffe')``, LARS), use
  `reduce_lr_on_plateau` as its learning rate instead. Also use that one to floor the LR
  itself (``min_lr``) rather than the multiplier.

  Args:
    factor: the scale is multiplied by factor at each reduction, in [0, 1).
    patience: the number of reports without improvement that are tolerated; the scale
      is reduced at the next one. An int >= 0.
    mode: 'min' (the metric is a loss) or 'max' (an accuracy).
    threshold: the least change that counts as an improvement, >= 0 (< 1 if 'rel').
    threshold_mode: 'rel': an improvement is ``value < best * (1 - threshold)`` ('min')
      or ``value > best * (1 + threshold)`` ('max'); 'abs': ``value < best - threshold``
      or ``value > best + threshold``.
    cooldown: the number of reports after a reduction during which bad reports are not
      counted, an int >= 0.
    min_scale: the smallest scale, in [0, 1].
    eps: a reduction of the scale by eps or less is skipped, >= 0.

  Returns:
    An ``optax.GradientTransformation`` whose state is a `PlateauState`.
  """
  _base.check_range('reduce_on_plateau', 'min_scale', min_scale, 0.0, 1.0)
  config = _config('reduce_on_plateau', factor, patience, mode, threshold, threshold_mode,
                   cooldown, min_scale, eps, learning_rate=None)

  def init_fn(params: optax.Params) -> PlateauState:
    del params
    return _init(config)

  def update_fn(updates: optax.Updates, state: PlateauState,
                params: optax.Params | None = None) -> tuple[optax.Updates, PlateauState]:
    del params
    updates = jax.tree.map(lambda u: (state.scale * u).astype(u.dtype), updates)
    return updates, state._replace(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


class ReduceLROnPlateau:
  """A learning rate that drops when a reported metric stops improving.

  An ``optax.StatefulSchedule`` (``init``, ``update``, ``__call__(state)``), built by
  `reduce_lr_on_plateau`. Use it where ``optax.inject_hyperparams`` takes a learning rate.
  """

  def __init__(self, config: PlateauConfig):
    self.config = config

  def init(self) -> PlateauState:
    return _init(self.config)

  def update(self, state: PlateauState, **extra_args: Any) -> PlateauState:
    del extra_args
    return state._replace(count=optax.safe_increment(state.count))

  def __call__(self, state: PlateauState, **extra_args: Any) -> jax.Array:
    del extra_args
    if not isinstance(state, PlateauState):
      raise TypeError(
          'reduce_lr_on_plateau(...) is a stateful learning rate: pass it to '
          'lrsched.sgd/adamw/lars or optax.inject_hyperparams(...), which keep its state; '
          f'it cannot be called with a step ({state!r})')
    return _base_lr(self.config, state.count) * state.scale

  def __repr__(self) -> str:
    c = self.config
    return (f'reduce_lr_on_plateau({c.learning_rate!r}, factor={c.factor!r}, '
            f'patience={c.patience}, mode={c.mode!r}, threshold={c.threshold!r}, '
            f'threshold_mode={c.threshold_mode!r}, cooldown={c.cooldown}, '
            f'min_lr={c.min_lr!r}, eps={c.eps!r})')


def reduce_lr_on_plateau(
    learning_rate: Numeric | optax.Schedule,
    factor: Numeric = 0.1,
    patience: int = 10,
    *,
    mode: str = 'min',
    threshold: Numeric = 1e-4,
    threshold_mode: str = 'rel',
    cooldown: int = 0,
    min_lr: Numeric = 0.0,
    eps: Numeric = 1e-8,
) -> ReduceLROnPlateau:
  r"""A learning rate that is reduced when a reported metric stops improving.

  The LR at step t is :math:`\eta_t = \eta^{base}_t \cdot s`, where ``learning_rate``
  gives :math:`\eta^{base}` and the scale :math:`s` starts at 1. Each `report_metric` call
  takes one step of PyTorch's ``ReduceLROnPlateau`` (Paszke et al., 2019) on the LR of the
  next update, :math:`\eta = \eta^{base}_t s`: after more than ``patience`` reports
  without improvement,

  .. math:: \eta' = \max(\eta \cdot \text{factor}, \eta_{min}), \qquad
     s \leftarrow \eta' / \eta^{base}_t \quad \text{if } \eta - \eta' > \text{eps}.

  With a constant ``learning_rate`` this is PyTorch's LR sequence exactly, ``min_lr`` and
  ``eps`` included. With a varying base schedule, ``min_lr`` bounds the LR at each
  reduction, as PyTorch does when its schedulers are combined; between reductions the LR
  follows the base schedule times the scale (a decaying base may take it under min_lr).

  Pass it as the learning rate of `lrsched.sgd`, `lrsched.adamw`, `lrsched.lars` or of any
  ``optax.inject_hyperparams(optimizer)``; the LR in the optimizer's hyper-parameters is
  then the effective one. The reduction applies to the LR itself, so it is right for every
  optimizer (velocity='caffe' and LARS included).

  Args:
    learning_rate: the base LR, a float >= 0 or a schedule (``step -> LR``).
    factor: the LR is multiplied by factor at each reduction, in [0, 1).
    patience: the number of reports without improvement that are tolerated; the LR is
      reduced at the next one. An int >= 0.
    mode: 'min' (the metric is a loss) or 'max' (an accuracy).
    threshold: the least change that counts as an improvement, >= 0 (< 1 if 'rel').
    threshold_mode: 'rel': an improvement is ``value < best * (1 - threshold)`` ('min')
      or ``value > best * (1 + threshold)`` ('max'); 'abs': ``value < best - threshold``
      or ``value > best + threshold``.
    cooldown: the number of reports after a reduction during which bad reports are not
      counted, an int >= 0.
    min_lr: a reduction never takes the LR below min_lr, >= 0.
    eps: a reduction of the LR by eps or less is skipped, >= 0.

  Returns:
    A `ReduceLROnPlateau`, an ``optax.StatefulSchedule`` whose state is a `PlateauState`.
  """
  where = 'reduce_lr_on_plateau'
  if not callable(learning_rate):
    _base.check_lr(where, 'learning_rate', learning_rate)
    learning_rate = _python_float(where, 'learning_rate', learning_rate)
  _base.check_lr(where, 'min_lr', min_lr)
  config = _config(where, factor, patience, mode, threshold, threshold_mode, cooldown, min_lr,
                   eps, learning_rate=learning_rate)
  return ReduceLROnPlateau(config)

