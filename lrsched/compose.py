"""Composition and large-batch rules: warmup, sequences of schedules, LR and step scaling.

`warmup` and `sequence` are schedules (registered, with a nested repr); `scale_lr` and
`to_steps` are the arithmetic of large-batch training (Goyal et al., 2017) that sets their
arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import jax.numpy as jnp
import numpy as np

from lrsched import _base
from lrsched._base import Numeric, Schedule, Shape
from lrsched._interpolate import ramp

AnySchedule = Schedule | Callable[[Any], Any]
"""A `lrsched.Schedule`, or any ``optax.Schedule`` (a callable ``step -> value``)."""


def _check_schedule(where: str, name: str, schedule: Any) -> None:
  if not callable(schedule):
    raise _base.fail(where, f'{name} must be a lrsched.Schedule or an optax schedule '
                            f'(a callable step -> value), got {schedule!r}')


def _boundaries(schedule: AnySchedule) -> tuple[int, ...]:
  return schedule.boundaries if isinstance(schedule, Schedule) else (0,)


def _total_steps(schedule: AnySchedule) -> int | None:
  return schedule.total_steps if isinstance(schedule, Schedule) else None


@_base.register
def warmup(schedule: AnySchedule, warmup_steps: int, start_lr: Numeric = 0.0) -> Shape:
  r"""Prepends a linear warmup to ``schedule`` (Goyal et al., 2017, "gradual warmup").

  .. math:: \eta_t = \begin{cases}
            \eta_{start} + (s(0) - \eta_{start}) \, t / W & t < W \\
            s(t - W) & t \ge W \end{cases}

  The warmup ends exactly at the schedule's first value, so the two join continuously;
  e.g. ``warmup(cosine(0.1, 1000), 50)``.

  Args:
    schedule: s, a `lrsched.Schedule` or any ``optax.Schedule``.
    warmup_steps: W, the length of the warmup, >= 0 (0 returns ``schedule`` unchanged).
    start_lr: the value at step 0, >= 0.
  """
  _check_schedule('warmup', 'schedule', schedule)
  _base.check_steps('warmup', 'warmup_steps', warmup_steps, minimum=0)
  _base.check_lr('warmup', 'start_lr', start_lr)
  return with_warmup(schedule, warmup_steps, start_lr)


def with_warmup(schedule: AnySchedule, warmup_steps: int, start_lr: Numeric) -> Shape:
  """The body of `warmup` for checked arguments; constructors that offer a warmup of their
  own (`lrsched.sgdr`) build on it."""
  inner_total = _total_steps(schedule)
  total_steps = None if inner_total is None else inner_total + warmup_steps
  boundaries = tuple(sorted({0, warmup_steps}
                            | {b + warmup_steps for b in _boundaries(schedule)}))

  if warmup_steps == 0:
    return Shape(schedule, boundaries=boundaries, total_steps=total_steps)

  def fn(step):
    rising = ramp(start_lr, schedule(jnp.zeros((), jnp.int32)), step, warmup_steps)
    after = schedule(jnp.maximum(step - warmup_steps, 0))
    return jnp.where(step < warmup_steps, rising, after)

  return Shape(fn, boundaries=boundaries, total_steps=total_steps)


@_base.register
def sequence(schedules: Sequence[AnySchedule],
             durations: Sequence[int] | None = None) -> Shape:
  r"""Runs schedules one after the other, each from its own step 0.

  Piece :math:`i` starts at :math:`o_i = d_0 + \dots + d_{i-1}` and gives
  :math:`s_i(t - o_i)` for :math:`o_i \le t < o_{i+1}`. This chains CLR blocks with
  different bounds (Smith, 2017, "Cyclical Learning Rates for Training Neural Networks"),
  or a warmup, a cosine and a constant tail::

    sequence([cyclic(0.1, 1.0, 2000), cyclic(0.01, 0.1, 2000)], durations=[8000])

  ``durations`` has one entry per piece except the last, which runs on forever (holding
  its final value if it is finite); or one entry per piece, and then the last piece is
  cut too and its value at step :math:`d_{last}` holds from there on. Without
  ``durations``, each piece but the last runs for its ``total_steps``. Note that a
  piece's final value at ``total_steps`` is never reached in that case (the next piece
  starts there), which loses the last stage of a `multistep`: give its duration.

  Args:
    schedules: the pieces, `lrsched.Schedule`\ s or ``optax.Schedule``\ s (at least one).
    durations: the number of steps of each piece, ints >= 1; see above.
  """
  if isinstance(schedules, (str, bytes)) or not isinstance(schedules, Sequence):
    raise _base.fail('sequence', f'schedules must be a list of schedules, got {schedules!r}')
  schedules = tuple(schedules)
  if not schedules:
    raise _base.fail('sequence', 'schedules must hold at least one schedule')
  for i, s in enumerate(schedules):
    _check_schedule('sequence', f'schedules[{i}]', s)
  n = len(schedules)
  if durations is None:
    durations = []
    for i, s in enumerate(schedules[:-1]):
      total = _total_steps(s)
      if total is None:
        raise _base.fail('sequence', f'schedules[{i}] ({s!r}) never ends (it has no '
                                     'total_steps): pass durations')
      durations.append(total)
  else:
    if isinstance(durations, (str, bytes)) or not isinstance(durations, Sequence):
      raise _base.fail('sequence', f'durations must be a list of ints, got {durations!r}')
    if len(durations) not in (n - 1, n):
      raise _base.fail('sequence', f'durations must have {n - 1} entries (one per piece '
                                   f'but the last) or {n}, got {len(durations)}')
  for d in durations:
    _base.check_steps('sequence', 'each of durations', d)
  durations = [int(d) for d in durations]
  starts = [sum(durations[:i]) for i in range(n)]
  if starts[-1] > _base.INT32_MAX:
    raise _base.fail('sequence', f'durations add up to step {starts[-1]}: schedules[{n - 1}] '
                                 'would start after the last step 2**31-1')
  cut_last = len(durations) == n

  if cut_last:
    total_steps = starts[-1] + durations[-1]
  else:
    last_total = _total_steps(schedules[-1])
    total_steps = None if last_total is None else starts[-1] + last_total

  boundaries = set()
  for i, s in enumerate(schedules):
    end = starts[i] + durations[i] if i < len(durations) else math.inf
    boundaries |= {starts[i] + b for b in _boundaries(s) if b < end - starts[i]}
    boundaries.add(starts[i])
  if total_steps is not None:
    boundaries.add(total_steps)
  boundaries = tuple(sorted(b for b in boundaries if b <= _base.INT32_MAX))

  def fn(step):
    # Every piece is evaluated at its own (exact, int32) local step and the active one is
    # selected: schedules are cheap, and this stays a plain vmap-able select.
    value = None
    for i, (s, start) in enumerate(zip(schedules, starts, strict=True)):
      local = jnp.maximum(step - start, 0)
      if cut_last and i == n - 1:
        local = jnp.minimum(local, durations[-1])
      piece = s(local)
      value = piece if value is None else jnp.where(step >= start, piece, value)
    return jnp.broadcast_to(value, jnp.broadcast_shapes(jnp.shape(value), jnp.shape(step)))

  return Shape(fn, boundaries=boundaries, total_steps=total_steps)


# --------------------------------------------------------------------------------------
# Large-batch rules


def _check_count(where: str, name: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise _base.fail(where, f'{name} must be a positive int, got {value!r}')


def scale_lr(lr: Numeric, batch_size: int, base_batch_size: int = 256,
             rule: str = 'linear') -> Numeric:
  r"""Scales a learning rate tuned at ``base_batch_size`` to ``batch_size``.

  * ``'linear'``: :math:`\eta \, B / B_0`, the linear scaling rule of Goyal et al., 2017,
    "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour" (``lr = 0.1 * B / 256``
    for ResNet-50); pair it with `warmup` for large B.
  * ``'sqrt'``: :math:`\eta \sqrt{B / B_0}`, which keeps the variance of the update
    constant (Krizhevsky, 2014; Hoffer et al., 2017, "Train longer, generalize better").

  Not a schedule: it returns a number (a Python float for a Python ``lr``, otherwise an
  array) to pass to a schedule constructor.

  Args:
    lr: the learning rate tuned at ``base_batch_size``, >= 0 (a number or an array).
    batch_size: B, the global batch size, a positive int.
    base_batch_size: B_0, the batch size ``lr`` was tuned at, a positive int.
    rule: ``'linear'`` or ``'sqrt'``.
  """
  _base.check_lr('scale_lr', 'lr', lr)
  _check_count('scale_lr', 'batch_size', batch_size)
  _check_count('scale_lr', 'base_batch_size', base_batch_size)
  _base.check_choice('scale_lr', 'rule', rule, ('linear', 'sqrt'))
  ratio = int(batch_size) / int(base_batch_size)
  return lr * (ratio if rule == 'linear' else math.sqrt(ratio))


def to_steps(*, batch_size: int, epochs: float | None = None, examples: int | None = None,
             dataset_size: int | None = None, device_count: int = 1,
             per_device: bool = False) -> int:
  r"""The number of optimizer steps that covers ``epochs`` or ``examples`` at a batch size.

  .. math:: \text{steps} = \lceil \text{examples} / B \rceil, \qquad
            \text{examples} = \text{epochs} \times \text{dataset\_size}

  with the global batch :math:`B` = ``batch_size``, or ``batch_size * device_count`` when
  ``per_device``. The count is exact (rational arithmetic, with a float ``epochs`` read as
  the decimal it prints as, so ``epochs=0.1`` of 1000 examples is exactly 100 examples).
  It assumes a stream of examples batched across epoch ends; a pipeline that drops each
  epoch's last partial batch runs ``epochs * (dataset_size // B)`` steps instead.

  Give exactly one of ``epochs`` (with ``dataset_size``) and ``examples``, e.g.
  ``to_steps(batch_size=512, epochs=30, dataset_size=50_000)`` is 2930.

  Args:
    batch_size: the batch size, a positive int: global, or per device if ``per_device``.
    epochs: the number of passes over the data, > 0 (an int or a float).
    examples: the number of training examples to consume, a positive int.
    dataset_size: the number of examples in one epoch, a positive int; only with
      ``epochs``.
    device_count: the number of data-parallel devices, a positive int; only with
      ``per_device=True``.
    per_device: whether ``batch_size`` is per device.
  """
  where = 'to_steps'
  _check_count(where, 'batch_size', batch_size)
  _check_count(where, 'device_count', device_count)
  if not isinstance(per_device, bool):
    raise _base.fail(where, f'per_device must be a bool, got {per_device!r}')
  if device_count != 1 and not per_device:
    raise _base.fail(where, f'device_count={device_count} is only used with per_device=True '
                            '(batch_size is the global batch otherwise)')
  if (epochs is None) == (examples is None):
    raise _base.fail(where, 'give exactly one of epochs (with dataset_size) and examples, '
                            f'got epochs={epochs!r}, examples={examples!r}')
  if examples is not None:
    if dataset_size is not None:
      raise _base.fail(where, 'dataset_size is only used with epochs, not with examples')
    _check_count(where, 'examples', examples)
    total = Fraction(int(examples))
  else:
    if dataset_size is None:
      raise _base.fail(where, 'epochs needs dataset_size (the number of examples per epoch)')
    _check_count(where, 'dataset_size', dataset_size)
    if not _base.is_python_number(epochs) and not isinstance(epochs, (np.integer, np.floating)):
      raise _base.fail(where, f'epochs must be a number > 0, got {epochs!r}')
    epochs_exact = (Fraction(int(epochs)) if isinstance(epochs, (int, np.integer))
                    else Fraction(repr(float(epochs))))
    if not (math.isfinite(epochs) and epochs_exact > 0):
      raise _base.fail(where, f'epochs must be a number > 0, got {epochs!r}')
    total = epochs_exact * int(dataset_size)
  global_batch = int(batch_size) * (int(device_count) if per_device else 1)
  return math.ceil(total / global_batch)
