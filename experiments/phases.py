"""Batch phases: the stretches of a run at one global batch size, and the LR scaled with them.

``--batch_schedule='60:640,120:3200'`` (Smith & Topin's batch-size increase) makes a run of
three phases. `resolve_phases` places them in steps and in examples seen, `phase_index`,
`examples_at` and `first_step_reaching` look positions up, `check_dispatch` keeps K steps
per dispatch inside a phase, and `BatchScaledSchedule` multiplies the LR by each phase's
factor (`--batch_lr_scaling`, `lrsched.scale_lr`'s rules). The step counts come from
`lrsched.to_steps`, so a phase starts at the first step whose examples reach its epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import lrsched
from experiments.config import DEFAULT_EPOCHS, MAX_EXAMPLES, Config, ConfigError


class Phase(NamedTuple):
  """A stretch of a run at one global batch size, placed in steps and in examples seen."""

  first_step: int
  first_example: int  # examples seen before the phase: its first position in the data stream
  batch_size: int
  lr_factor: float    # the LR multiplier of the batch scaling rule (1.0 for the first phase)


def resolve_phases(config: Config, train_size: int) -> tuple[tuple[Phase, ...], int]:
  """The batch phases of ``config`` on a training set of ``train_size``, and the run length.

  Phase k starts at the first step at which the examples seen reach its epoch (times
  ``train_size``); a single-phase run of E epochs has ``ceil(E * train_size / batch_size)``
  steps (`lrsched.to_steps`), and a phased run ends at the first step reaching E epochs.
  Raises ConfigError for a phase that is empty, starts after the run or has a batch larger
  than the training set, and for a run of more than `MAX_EXAMPLES` examples.
  """
  changes = config.batch_changes
  first_batch = changes[0].batch_size
  phases: list[Phase] = []
  for change in changes:
    if change.batch_size > train_size:
      raise ConfigError(f'{change.flag}={change.batch_size} is larger than the training set '
                        f'({train_size} examples)')
    factor = (1.0 if config.batch_lr_scaling == 'none' else lrsched.scale_lr(
        1.0, change.batch_size, first_batch, rule=config.batch_lr_scaling))
    if not phases:
      phases.append(Phase(0, 0, change.batch_size, factor))
      continue
    last = phases[-1]
    remaining = _examples_reaching(change.epoch, train_size) - last.first_example
    if remaining < 1:
      reached = last.first_example / train_size
      raise ConfigError(f'--batch_schedule: the phase at epoch {change.epoch:g} starts before '
                        f'the previous phase has run a step (epoch {reached:g} is already '
                        'reached); space the epochs further apart')
    steps = lrsched.to_steps(batch_size=last.batch_size, examples=remaining)
    phases.append(Phase(last.first_step + steps, last.first_example + steps * last.batch_size,
                        change.batch_size, factor))
  last = phases[-1]
  if config.steps is not None:
    total = config.steps
  else:
    epochs = DEFAULT_EPOCHS if config.epochs is None else config.epochs
    remaining = _examples_reaching(epochs, train_size) - last.first_example
    total = last.first_step + (lrsched.to_steps(batch_size=last.batch_size, examples=remaining)
                               if remaining > 0 else 0)
  if total <= last.first_step:
    where = f'step {total}' if config.steps is not None else f'epoch {epochs:g}'
    raise ConfigError(f'--batch_schedule: the phase at epoch {changes[-1].epoch:g} (step '
                      f'{last.first_step}) starts after the run ends at {where}')
  seen = examples_at(phases, total)
  if seen > MAX_EXAMPLES:
    raise ConfigError(f'the run sees {seen} examples, more than {MAX_EXAMPLES} (positions in '
                      'the data stream are int32); train for fewer steps')
  return tuple(phases), total


def phase_index(phases: Sequence[Phase], step: int) -> int:
  """The index of the phase that step ``step`` (0-based, the next update) belongs to."""
  index = 0
  for i, phase in enumerate(phases):
    if step >= phase.first_step:
      index = i
  return index


def examples_at(phases: Sequence[Phase], step: int) -> int:
  """The examples seen after ``step`` updates."""
  if step <= 0:
    return 0
  phase = phases[phase_index(phases, step - 1)]
  return phase.first_example + (step - phase.first_step) * phase.batch_size


def first_step_reaching(phases: Sequence[Phase], examples: int) -> int:
  """The fewest updates after which at least ``examples`` examples have been seen."""
  for i, phase in enumerate(phases):
    end = phases[i + 1].first_example if i + 1 < len(phases) else None
    if end is None or examples <= end:
      return phase.first_step + max(0, -(-(examples - phase.first_example) // phase.batch_size))
  raise AssertionError('unreachable')


def _examples_reaching(epochs: float, train_size: int) -> int:
  """The fewest examples that make ``epochs`` epochs: ceil(epochs * train_size), exactly (a
  float epochs read as the decimal it prints as, as `lrsched.to_steps` does)."""
  return lrsched.to_steps(batch_size=1, epochs=epochs, dataset_size=train_size)


def check_dispatch(phases: Sequence[Phase], steps_per_dispatch: int) -> None:
  """Each phase is a program of its own: K steps per dispatch must divide every phase's
  first step, or a shorter dispatch before it would compile one more program. (That K
  divides the log, evaluation and checkpoint intervals is `Config.validate`'s rule.)"""
  k = steps_per_dispatch
  for ph in phases:
    if ph.first_step % k:
      raise ConfigError(
          f'--steps_per_dispatch={k} does not divide step {ph.first_step}, where the batch '
          f'size becomes {ph.batch_size} (--batch_schedule): each phase is a program of its '
          'own, and a shorter dispatch before its start would compile one more; use '
          '--steps_per_dispatch=1, or a K that divides the phase starts')


class BatchScaledSchedule:
  """``schedule(t) * factor_k`` for the batch phase k of step t (`Config.batch_lr_scaling`)."""

  def __init__(self, schedule: lrsched.Schedule, phases: tuple[Phase, ...], rule: str):
    self.schedule, self.rule = schedule, rule
    self.starts = np.asarray([p.first_step for p in phases], np.int32)
    self.factors = np.asarray([p.lr_factor for p in phases], np.float32)

  def __call__(self, step: Any) -> jax.Array:
    step = jnp.asarray(step)
    phase = jnp.searchsorted(jnp.asarray(self.starts), step, side='right') - 1
    return self.schedule(step) * jnp.asarray(self.factors)[phase]

  def __repr__(self) -> str:
    factors = ', '.join(f'{f:.6g}' for f in self.factors)
    starts = ', '.join(str(s) for s in self.starts)
    return f'{self.schedule!r} x {self.rule} batch scaling [{factors}] from steps [{starts}]'
