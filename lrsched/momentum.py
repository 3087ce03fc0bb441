"""The cyclical momentum that goes with an LR schedule.

Smith (2018, §4) pairs a cyclical LR with a momentum that moves the other way: high
momentum while the LR is low, low momentum at the LR's peak (0.95 -> 0.85 -> 0.95 in his
ResNet-56 runs). `momentum_for` builds that partner from the LR schedule's own phase
lengths, so that a command line can say ``--momentum=cyclical``.
"""

from __future__ import annotations

from lrsched import _base, compose, cyclical, decay, onecycle
from lrsched._base import Numeric, Schedule

BASE_MOMENTUM = 0.85
MAX_MOMENTUM = 0.95
"""Smith's (2018) cyclical-momentum range, the defaults of `momentum_for`."""


def momentum_for(schedule: Schedule, base_momentum: Numeric = BASE_MOMENTUM,
                 max_momentum: Numeric = MAX_MOMENTUM) -> Schedule:
  """The momentum schedule that moves opposite to ``schedule``, over the same phases.

  =======================================  ==============================================
  LR schedule                              momentum
  =======================================  ==============================================
  ``one_cycle``                            ``one_cycle_momentum`` (same phases, anneal)
  ``fastai_one_cycle``                     ``fastai_one_cycle_momentum``
  ``smith_one_cycle``, ``caffe_one_cycle``  ``smith_one_cycle_momentum`` (same step size)
  ``super_convergence``                    ``smith_one_cycle_momentum`` over its 2 steps
  ``cyclic`` and its shortcuts             ``cyclic_momentum`` (same half-cycles, mode)
  ``warmup(s)``                            ``max_momentum`` during warmup, then s's partner
                                         (s's partner alone for 0 warmup steps)
  ``sequence([s1, s2, ...])``              the sequence of the pieces' partners
  ``constant``                             ``constant(max_momentum)``
  =======================================  ==============================================

  Raises:
    ValueError: for a schedule with no defined partner (decays, SGDR, ...), naming it.
  """
  _base.check_range('momentum_for', 'base_momentum', base_momentum, 0.0, 1.0, high_open=True)
  _base.check_range('momentum_for', 'max_momentum', max_momentum, 0.0, 1.0, high_open=True)
  _base.check_order('momentum_for', 'base_momentum', base_momentum, 'max_momentum',
                    max_momentum)
  if not isinstance(schedule, Schedule):
    raise _base.fail('momentum_for', f'expected an lrsched Schedule, got {schedule!r}')
  a = schedule.arguments
  both = dict(base_momentum=base_momentum, max_momentum=max_momentum)
  partner = lambda inner: momentum_for(inner, base_momentum, max_momentum)
  name = schedule.name
  if name == 'one_cycle':
    return onecycle.one_cycle_momentum(a['total_steps'], pct_start=a['pct_start'],
                                       anneal=a['anneal'], three_phase=a['three_phase'],
                                       **both)
  if name == 'fastai_one_cycle':
    return onecycle.fastai_one_cycle_momentum(a['total_steps'], pct_start=a['pct_start'],
                                              **both)
  if name in ('smith_one_cycle', 'caffe_one_cycle'):
    return onecycle.smith_one_cycle_momentum(a['total_steps'], step_size=a['step_size'],
                                             **both)
  if name == 'super_convergence':
    return onecycle.smith_one_cycle_momentum(2 * a['step_size'], step_size=a['step_size'],
                                             **both)
  if name == 'cyclic':
    return cyclical.cyclic_momentum(step_size_up=a['step_size_up'],
                                    step_size_down=a['step_size_down'], mode=a['mode'],
                                    gamma=a['gamma'], scale_fn=a['scale_fn'],
                                    scale_mode=a['scale_mode'], window=a['window'], **both)
  if name in ('triangular', 'triangular2', 'exp_range'):
    return cyclical.cyclic_momentum(step_size_up=a['step_size'], mode=name,
                                    gamma=a.get('gamma', 1.0), **both)
  if name == 'warmup':
    if a['warmup_steps'] == 0:  # warmup(s, 0) is s, and sequence takes no 0-step piece.
      return partner(a['schedule'])
    return compose.sequence([decay.constant(max_momentum), partner(a['schedule'])],
                            durations=[a['warmup_steps']])
  if name == 'sequence':
    return compose.sequence([partner(s) for s in a['schedules']], durations=a['durations'])
  if name == 'constant':
    return decay.constant(max_momentum)
  raise _base.fail('momentum_for', f'no cyclical momentum is defined for {name}; give the '
                   'momentum as a number or as a schedule of its own')
