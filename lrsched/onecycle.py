"""The 1cycle family: one LR cycle per training run, with momentum moving the other way.

* `one_cycle`, `one_cycle_momentum`: PyTorch's ``OneCycleLR`` (two or three phases, cosine
  or linear), defined also where PyTorch divides by zero or raises.
* `super_convergence`: the single triangle of Smith & Topin's super-convergence runs.
* `smith_one_cycle`, `smith_one_cycle_momentum`: 1cycle as described in Smith (2018), a
  linear triangle followed by a linear annihilation of the LR.
* `caffe_one_cycle`: the ``lr_policy: "1cycle"`` of Smith's own Caffe, as its logs show.
* `fastai_one_cycle`, `fastai_one_cycle_momentum`: fastai's ``fit_one_cycle``.

Papers: L. N. Smith and N. Topin, "Super-Convergence: Very Fast Training of Neural
Networks Using Large Learning Rates" (2017, arXiv:1708.07120); L. N. Smith, "A disciplined
approach to neural network hyper-parameters: Part 1 -- learning rate, batch size, momentum,
and weight decay" (2018, arXiv:1803.09820).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lrsched import _base, cyclical
from lrsched._base import Numeric, Shape
from lrsched._interpolate import KINDS as ANNEALS
from lrsched._interpolate import piecewise

SMITH_STEP_FRACTION = 0.45
"""Default ``step_size`` of Smith's 1cycle as a fraction of ``total_steps``: the cycle takes
90% of training and the annihilation the last 10% (Smith, 2018, used about 10-13%)."""


# --------------------------------------------------------------------------------------
# Helpers


def _knot_steps(total_steps: int, knots: Sequence[float], last: int) -> tuple[int, ...]:
  """Integer boundaries for describe(): 0, the first step at or after each knot, ``last``."""
  inner = (min(max(math.ceil(k), 0), last) for k in knots)
  return tuple(sorted({0, *inner, last}))


def _fraction(where: str, name: str, value: Any) -> float:
  """A Python number in [0, 1] that fixes phase boundaries (so not a traced array)."""
  if isinstance(value, (np.integer, np.floating)) or (
      isinstance(value, (np.ndarray, jax.Array)) and _base.is_concrete(value)
      and np.ndim(value) == 0):
    value = np.asarray(value).item()
  if not _base.is_python_number(value):
    raise _base.fail(where, f'{name} must be a Python float in [0, 1] (it fixes the phase '
                            f'boundaries, so it cannot be a traced array), got {value!r}')
  _base.check_range(where, name, value, 0, 1)
  return float(value)


def _check_momenta(where: str, base_momentum: Any, max_momentum: Any) -> None:
  _base.check_range(where, 'base_momentum', base_momentum, 0, 1, high_open=True)
  _base.check_range(where, 'max_momentum', max_momentum, 0, 1, high_open=True)
  _base.check_order(where, 'base_momentum', base_momentum, 'max_momentum', max_momentum)


def _check_bool(where: str, name: str, value: Any) -> None:
  if not isinstance(value, (bool, np.bool_)):
    raise _base.fail(where, f'{name} must be True or False, got {value!r}')


# --------------------------------------------------------------------------------------
# PyTorch's OneCycleLR


def _torch_ends(total_steps: int, pct_start: float, three_phase: bool) -> list[float]:
  """PyTorch's phase ends (float steps), computed exactly as ``OneCycleLR`` does."""
  if three_phase:
    return [float(pct_start * total_steps) - 1, float(2 * pct_start * total_steps) - 2,
            float(total_steps - 1)]
  return [float(pct_start * total_steps) - 1, float(total_steps - 1)]


def _torch_one_cycle(total_steps: int, pct_start: float, anneal: str, three_phase: Any,
                     start: Any, peak: Any, end: Any) -> Shape:
  """OneCycleLR's phases through the knots start -> peak -> end, or with three phases
  start -> peak -> start -> end; the value holds from step total_steps - 1."""
  ends = _torch_ends(total_steps, pct_start, bool(three_phase))
  values = [start, peak, start, end] if three_phase else [start, peak, end]

  def fn(step):
    return piecewise(jnp.minimum(step, total_steps - 1), [0.0, *ends], values, anneal)

  return Shape(fn, boundaries=_knot_steps(total_steps, ends[:-1], total_steps - 1),
               total_steps=total_steps)


@_base.register
def one_cycle(max_lr: Numeric, total_steps: int, pct_start: float = 0.3, anneal: str = 'cos',
              div_factor: Numeric = 25.0, final_div_factor: Numeric = 1e4,
              three_phase: bool = False) -> Shape:
  r"""1cycle (Smith & Topin, 2017) as PyTorch's ``OneCycleLR``.

  With :math:`\eta_0 = \eta_{max} / d` (``div_factor``), :math:`\eta_{min} = \eta_0 / d_f`
  (``final_div_factor``) and :math:`T` = ``total_steps``, PyTorch's phase ends are the
  float steps :math:`e_1 = p T - 1` (``pct_start`` = p), then :math:`e_2 = T - 1`; or with
  ``three_phase``, :math:`e_2 = 2 p T - 2` and :math:`e_3 = T - 1`. The knot values are
  :math:`\eta_0 \to \eta_{max} \to \eta_{min}`, or :math:`\eta_0 \to \eta_{max} \to \eta_0
  \to \eta_{min}`. Step :math:`t` lies in the first phase :math:`i` with :math:`t \le e_i`
  (else the last), which anneals between its knot values :math:`a \to b` over
  :math:`[e_{i-1}, e_i]` (:math:`e_0 = 0`) at :math:`x = (t - e_{i-1}) / (e_i - e_{i-1})`:

  .. math::
    \eta_t = b + \tfrac12 (a - b)(1 + \cos \pi x) \;\; (\text{'cos'}), \qquad
    \eta_t = a + (b - a) \, x \;\; (\text{'linear'}).

  This equals PyTorch's value at every step where PyTorch has one, and is defined where
  PyTorch is not:

  * a phase of zero length (:math:`pT = 1`, where PyTorch divides by zero at step 0) is
    skipped: its step falls into the next phase, which starts at that phase's end. So with
    two phases step 0 is already the peak; with three phases (or :math:`T = 1`) the rise
    and the fall both have zero length and step 0 starts the last phase. This is the limit
    of PyTorch's own value as :math:`pT \to 1^-`, and leaves no jump between steps;
  * from step :math:`T - 1` on the value holds (PyTorch extrapolates at step :math:`T` and
    raises after it).

  Tiny configurations (``total_steps`` 1 to 3, :math:`pT < 1`) give finite values in
  :math:`[\eta_{min}, \eta_{max}]` like any other.

  Args:
    max_lr: the peak LR, >= 0.
    total_steps: T, the length of training, >= 1.
    pct_start: p, the fraction of training spent rising, a Python float in [0, 1].
    anneal: 'cos' or 'linear'.
    div_factor: d, >= 1: the first LR is ``max_lr / div_factor``.
    final_div_factor: d_f, >= 1: the last LR is ``max_lr / (div_factor * final_div_factor)``.
    three_phase: if True, fall back to the first LR symmetrically before annihilating
      (the original paper's shape); if False, anneal from the peak straight to the last LR
      (fastai's and PyTorch's default).
  """
  where = 'one_cycle'
  _base.check_lr(where, 'max_lr', max_lr)
  _base.check_steps(where, 'total_steps', total_steps)
  pct_start = _fraction(where, 'pct_start', pct_start)
  _base.check_choice(where, 'anneal', anneal, ANNEALS)
  _base.check_range(where, 'div_factor', div_factor, 1, None,
                    hint='the first LR max_lr / div_factor must not exceed max_lr')
  _base.check_range(where, 'final_div_factor', final_div_factor, 1, None,
                    hint='the last LR must not exceed the first')
  _check_bool(where, 'three_phase', three_phase)
  initial = max_lr / div_factor
  return _torch_one_cycle(total_steps, pct_start, anneal, three_phase,
                          initial, max_lr, initial / final_div_factor)


@_base.register
def one_cycle_momentum(total_steps: int, base_momentum: Numeric = 0.85,
                       max_momentum: Numeric = 0.95, pct_start: float = 0.3,
                       anneal: str = 'cos', three_phase: bool = False) -> Shape:
  r"""PyTorch ``OneCycleLR``'s momentum (``cycle_momentum=True``), opposite to `one_cycle`.

  The phases of `one_cycle` (same ``total_steps``, ``pct_start``, ``anneal``,
  ``three_phase``) with the knot values :math:`\beta_{max} \to \beta_{base} \to
  \beta_{max}`, or :math:`\beta_{max} \to \beta_{base} \to \beta_{max} \to \beta_{max}` with
  three phases: the momentum is lowest at the LR's peak (Smith, 2018).

  Args:
    total_steps: T, the length of training, >= 1.
    base_momentum: the momentum at the LR's peak, in [0, 1).
    max_momentum: the momentum at the start and the end, in [0, 1), >= ``base_momentum``.
    pct_start: as `one_cycle`.
    anneal: as `one_cycle`.
    three_phase: as `one_cycle`.
  """
  where = 'one_cycle_momentum'
  _base.check_steps(where, 'total_steps', total_steps)
  _check_momenta(where, base_momentum, max_momentum)
  pct_start = _fraction(where, 'pct_start', pct_start)
  _base.check_choice(where, 'anneal', anneal, ANNEALS)
  _check_bool(where, 'three_phase', three_phase)
  return _torch_one_cycle(total_steps, pct_start, anneal, three_phase,
                          max_momentum, base_momentum, max_momentum)


# --------------------------------------------------------------------------------------
# The authors' own variants


@_base.register
def super_convergence(base_lr: Numeric = 0.1, max_lr: Numeric = 3.0,
                      step_size: int = 5000) -> Shape:
  r"""The LR of Smith & Topin's (2017) super-convergence runs: one CLR triangle, then base.

  Caffe's ``lr_policy: "triangular"`` run for exactly ``2 * step_size`` iterations:

  .. math:: \eta_t = \eta_{base} + (\eta_{max} - \eta_{base})
            \left(1 - \left|\min(t, 2S) - S\right| / S\right)

  i.e. `triangular` for the first cycle, holding ``base_lr`` from step :math:`2S` on. The
  defaults are the paper's CIFAR-10 ResNet-56 run (0.1 -> 3.0 -> 0.1, stepsize 5,000,
  10,000 iterations, batch 1000), and reproduce the LR printed in the authors' Caffe log
  (``clr3SS5kFig1a``).

  Args:
    base_lr: the first and last LR, >= 0.
    max_lr: the peak LR at step ``step_size``, >= ``base_lr``.
    step_size: S, half the run, >= 1; ``total_steps`` is 2S.
  """
  _check_bounds('super_convergence', base_lr, max_lr)
  _base.check_steps('super_convergence', 'step_size', step_size)
  cycle = cyclical.triangular(base_lr, max_lr, step_size)
  end = 2 * step_size

  def fn(step):
    return cycle(jnp.minimum(step, min(end, _base.INT32_MAX)))

  return Shape(fn, boundaries=cycle.boundaries, total_steps=end)


def _check_bounds(where: str, base_lr: Any, max_lr: Any) -> None:
  _base.check_lr(where, 'base_lr', base_lr)
  _base.check_lr(where, 'max_lr', max_lr)
  _base.check_order(where, 'base_lr', base_lr, 'max_lr', max_lr)


def _check_smith(where: str, base_lr: Any, max_lr: Any, total_steps: Any, step_size: Any,
                 annihilation: Any) -> int:
  """Checks the arguments of Smith's and Caffe's 1cycles; returns the step size."""
  _check_bounds(where, base_lr, max_lr)
  size = _smith_step_size(where, total_steps, step_size)
  _base.check_range(where, 'annihilation', annihilation, 0, 1)
  return size


def _smith_step_size(where: str, total_steps: Any, step_size: Any) -> int:
  """Checks total_steps and step_size (default `SMITH_STEP_FRACTION` of total_steps)."""
  _base.check_steps(where, 'total_steps', total_steps)
  if step_size is None:
    return int(SMITH_STEP_FRACTION * total_steps)
  _base.check_steps(where, 'step_size', step_size, minimum=0)
  if 2 * step_size > total_steps:
    raise _base.fail(where, f'step_size must be <= total_steps // 2 = {total_steps // 2} '
                            f'(the cycle of 2 * step_size steps must fit in total_steps), got '
                            f'step_size={step_size} with total_steps={total_steps}')
  return int(step_size)


@_base.register
def smith_one_cycle(base_lr: Numeric, max_lr: Numeric, total_steps: int,
                    step_size: int | None = None, annihilation: Numeric = 1e-3) -> Shape:
  r"""1cycle as described in Smith (2018): a linear triangle, then a linear annihilation.

  With :math:`S` = ``step_size``, :math:`T` = ``total_steps`` and :math:`a` =
  ``annihilation``: the LR rises linearly :math:`\eta_{base} \to \eta_{max}` over
  :math:`[0, S]`, falls linearly back to :math:`\eta_{base}` over :math:`[S, 2S]`, then
  decreases linearly from :math:`\eta_{base}` to :math:`a \, \eta_{base}` over
  :math:`[2S, T]`, reached at step :math:`T` and held after. Smith: "always use one cycle
  that is smaller than the total number of iterations/epochs and allow the learning rate
  to decrease several orders of magnitude less than the initial learning rate for the
  remaining iterations". If :math:`2S = T` the annihilation is a drop to
  :math:`a \, \eta_{base}` at step :math:`T`. The cycle and momentum of Smith's own Caffe
  runs differ slightly: see `caffe_one_cycle`.

  Args:
    base_lr: the first LR, and the start of the annihilation; >= 0.
    max_lr: the peak LR at step S, >= ``base_lr``.
    total_steps: T, >= 1.
    step_size: S, half the cycle, in [0, T // 2] (0: no cycle, only the annihilation);
      None for ``int(0.45 * T)``, which leaves the last 10% for the annihilation.
    annihilation: a, the final LR as a fraction of ``base_lr``, in [0, 1] (Smith:
      1/1000 of the base).
  """
  size = _check_smith('smith_one_cycle', base_lr, max_lr, total_steps, step_size, annihilation)
  cycle_end = 2 * size

  def fn(step):
    # The triangle, then the annihilation; with 2S = T, a drop at T (a zero-length tail).
    return piecewise(step, [0, size, cycle_end, total_steps],
                     [base_lr, max_lr, base_lr, base_lr * annihilation], 'linear',
                     closed='left')

  return Shape(fn, boundaries=tuple(sorted({0, size, cycle_end, total_steps})),
               total_steps=total_steps)


@_base.register
def smith_one_cycle_momentum(total_steps: int, base_momentum: Numeric = 0.85,
                             max_momentum: Numeric = 0.95,
                             step_size: int | None = None) -> Shape:
  r"""The cyclical momentum of Smith's 1cycle (2018), to pair with `smith_one_cycle`.

  Linear :math:`\beta_{max} \to \beta_{base}` over :math:`[0, S]`, back to
  :math:`\beta_{max}` over :math:`[S, 2S]`, then :math:`\beta_{max}` (Smith recommends
  0.95 -> 0.85 -> 0.95). The same as `cyclic_momentum`'s first cycle.

  Args:
    total_steps: T, >= 1; fixes the default ``step_size``.
    base_momentum: the momentum at the LR's peak, in [0, 1).
    max_momentum: the momentum at the start and after the cycle, in [0, 1),
      >= ``base_momentum``.
    step_size: S, as `smith_one_cycle` (the same default).
  """
  where = 'smith_one_cycle_momentum'
  size = _smith_step_size(where, total_steps, step_size)
  _check_momenta(where, base_momentum, max_momentum)

  def fn(step):
    return piecewise(step, [0, size, 2 * size, total_steps],
                     [max_momentum, base_momentum, max_momentum, max_momentum], 'linear',
                     closed='left')

  return Shape(fn, boundaries=tuple(sorted({0, size, 2 * size, total_steps})),
               total_steps=total_steps)


@_base.register
def caffe_one_cycle(base_lr: Numeric, max_lr: Numeric, total_steps: int,
                    step_size: int | None = None, annihilation: Numeric = 1e-3) -> Shape:
  r"""The ``lr_policy: "1cycle"`` of Smith's Caffe, as printed in the authors' logs.

  .. math::
    \eta_t = \begin{cases}
      \eta_{base} + (\eta_{max} - \eta_{base}) \, t / S & t \le S \\
      \eta_{max} \, (2S - t) / S & S < t < 2S \\
      a \, \eta_{base} & t \ge 2S
    \end{cases}

  Read from the Caffe logs of Smith (2018) in ``lnsmith54/hyperParam1`` (e.g. ResNet-56,
  base 0.08, max 0.8, stepsize 4003, 9277 iterations: the LR falls from the peak towards 0,
  not back to the base, and is base/1000 from iteration 2S on). Unlike `smith_one_cycle`
  it drops at step 2S, to :math:`a \, \eta_{base}` from :math:`\eta_{max} / S`. Pair with
  `smith_one_cycle_momentum`, whose cycle the logs show (after the cycle those runs'
  momentum was not held at its maximum; we hold it).

  Args:
    base_lr: the first LR, >= 0.
    max_lr: the peak LR at step S, >= ``base_lr``.
    total_steps: T, >= 1 (Caffe's ``max_iter``); fixes the default ``step_size``.
    step_size: S, in [0, T // 2]; None for ``int(0.45 * T)``.
    annihilation: a, the LR after the cycle as a fraction of ``base_lr``, in [0, 1].
  """
  size = _check_smith('caffe_one_cycle', base_lr, max_lr, total_steps, step_size, annihilation)

  def fn(step):
    # Up to the peak, down towards 0, then a jump (the repeated knot) to the final LR.
    final = base_lr * annihilation
    return piecewise(step, [0, size, 2 * size, 2 * size, total_steps],
                     [base_lr, max_lr, 0.0, final, final], 'linear', closed='left')

  return Shape(fn, boundaries=tuple(sorted({0, size, 2 * size})), total_steps=total_steps)


# --------------------------------------------------------------------------------------
# fastai


def _fastai_curve(step: jax.Array, total_steps: int, pct_start: float, start: Any,
                  middle: Any, end: Any) -> jax.Array:
  """fastai's ``combined_cos(pct_start, start, middle, end)`` at position step / T: phase 1
  is ``pos < pct_start``, i.e. the integer step < pct_start * T."""
  return piecewise(jnp.minimum(step, total_steps), [0.0, pct_start * total_steps,
                                                    float(total_steps)],
                   [start, middle, end], 'cos', closed='left')


@_base.register
def fastai_one_cycle(max_lr: Numeric, total_steps: int, pct_start: float = 0.25,
                     div: Numeric = 25.0, div_final: Numeric = 1e5) -> Shape:
  r"""fastai's ``Learner.fit_one_cycle`` LR: cosine up, then cosine down.

  fastai (``fastai.callback.schedule``) sets the LR from the position
  :math:`x = t / T` in training by ``combined_cos(pct_start, max_lr/div, max_lr,
  max_lr/div_final)``: a cosine ``sched_cos`` from :math:`\eta_{max}/d` to
  :math:`\eta_{max}` over :math:`x < p`, then from :math:`\eta_{max}` to
  :math:`\eta_{max}/d_f` over :math:`x \ge p`, where a cosine from :math:`a` to :math:`b`
  at :math:`u \in [0, 1]` is :math:`a + \tfrac12 (b - a)(1 - \cos \pi u)`. The end
  :math:`\eta_{max}/d_f` is reached at step :math:`T` and held. With ``pct_start=1`` fastai
  divides by zero at :math:`x = 1`; here the value there is the end.

  This differs from ``one_cycle(anneal='cos')``, whose phases end at :math:`pT - 1` and
  :math:`T - 1`.

  Args:
    max_lr: the peak LR, >= 0.
    total_steps: T, >= 1.
    pct_start: p, the fraction of training spent rising, a Python float in [0, 1].
    div: d, >= 1: the first LR is ``max_lr / div``.
    div_final: d_f, >= 1: the last LR is ``max_lr / div_final``.
  """
  where = 'fastai_one_cycle'
  _base.check_lr(where, 'max_lr', max_lr)
  _base.check_steps(where, 'total_steps', total_steps)
  pct_start = _fraction(where, 'pct_start', pct_start)
  _base.check_range(where, 'div', div, 1, None,
                    hint='the first LR max_lr / div must not exceed max_lr')
  _base.check_range(where, 'div_final', div_final, 1, None,
                    hint='the last LR max_lr / div_final must not exceed max_lr')

  def fn(step):
    return _fastai_curve(step, total_steps, pct_start, max_lr / div, max_lr,
                         max_lr / div_final)

  return Shape(fn, boundaries=_knot_steps(total_steps, [pct_start * total_steps],
                                          total_steps), total_steps=total_steps)


@_base.register
def fastai_one_cycle_momentum(total_steps: int, base_momentum: Numeric = 0.85,
                              max_momentum: Numeric = 0.95, pct_start: float = 0.25) -> Shape:
  r"""fastai's ``fit_one_cycle`` momentum: ``combined_cos(pct_start, 0.95, 0.85, 0.95)``.

  The curve of `fastai_one_cycle` with the values :math:`\beta_{max} \to \beta_{base} \to
  \beta_{max}` (fastai's default ``moms=(0.95, 0.85, 0.95)``). Not the same as
  ``one_cycle_momentum(pct_start=0.25)``, whose phase ends are PyTorch's.

  Args:
    total_steps: T, >= 1.
    base_momentum: the momentum at the LR's peak, in [0, 1).
    max_momentum: the momentum at the start and the end, in [0, 1), >= ``base_momentum``.
    pct_start: p, as `fastai_one_cycle`.
  """
  where = 'fastai_one_cycle_momentum'
  _base.check_steps(where, 'total_steps', total_steps)
  _check_momenta(where, base_momentum, max_momentum)
  pct_start = _fraction(where, 'pct_start', pct_start)

  def fn(step):
    return _fastai_curve(step, total_steps, pct_start, max_momentum, base_momentum,
                         max_momentum)

  return Shape(fn, boundaries=_knot_steps(total_steps, [pct_start * total_steps],
                                          total_steps), total_steps=total_steps)
