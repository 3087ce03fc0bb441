"""The guarantees every registered family makes, over random valid configurations.

For each family in `lrsched._base.REGISTRY` a strategy draws valid arguments; for each draw
the schedule, eager and jitted, is finite, never negative, within the range its arguments
span, equal under jit and eagerly within a few ulps of its scale, and (for finite
schedules) holds its final value from ``total_steps`` on. A jitted ``linear`` once ended at
-3.7e-9 instead of 0: this test would have caught it, for every family.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lrsched
from lrsched import _base
from lrsched.cyclical import WINDOWS

INT32_MAX = 2**31 - 1

_steps = st.integers(1, 10**6)
_lr = st.floats(1e-4, 10.0)
# A low end as a fraction of the high one; no subnormals (flushed to 0 under jit, not eagerly).
_fraction = st.just(0.0) | st.floats(1e-6, 1.0)
_below_one = st.floats(1e-3, 1.0)


@st.composite
def _pair(draw, low_name='base_lr', high_name='max_lr'):
  high = draw(_lr)
  return {low_name: draw(_fraction) * high, high_name: high}


@st.composite
def _cyclic(draw, momentum=False):
  mode = draw(st.sampled_from(['triangular', 'triangular2', 'exp_range']))
  kw = dict(step_size_up=draw(_steps), step_size_down=draw(st.none() | _steps), mode=mode,
            gamma=draw(_below_one) if mode == 'exp_range' else 1.0,
            scale_mode=draw(st.sampled_from(['cycle', 'iterations'])),
            window=draw(st.sampled_from(WINDOWS)))
  if momentum:
    high = draw(st.floats(0.5, 0.999))
    return {**kw, 'base_momentum': draw(_fraction) * high, 'max_momentum': high}
  return {**kw, **draw(_pair())}


@st.composite
def _one_cycle(draw, momentum=False):
  kw = dict(total_steps=draw(st.integers(2, 10**6)), pct_start=draw(st.floats(0.05, 0.95)),
            anneal=draw(st.sampled_from(['cos', 'linear'])), three_phase=draw(st.booleans()))
  if momentum:
    return {**kw, **draw(_pair('base_momentum', 'max_momentum').filter(
        lambda p: p['max_momentum'] < 1))}
  return {**kw, 'max_lr': draw(_lr), 'div_factor': draw(st.floats(1.0, 1e3)),
          'final_div_factor': draw(st.floats(1.0, 1e5))}


@st.composite
def _smith(draw, momentum=False):
  total = draw(st.integers(4, 10**6))
  step_size = draw(st.none() | st.integers(1, total // 2))
  if momentum:
    high = draw(st.floats(0.5, 0.999))
    return dict(total_steps=total, step_size=step_size, max_momentum=high,
                base_momentum=draw(_fraction) * high)
  return dict(total_steps=total, step_size=step_size, **draw(_pair()),
              annihilation=draw(st.floats(1e-4, 1.0)))


@st.composite
def _fastai(draw, momentum=False):
  kw = dict(total_steps=draw(st.integers(2, 10**6)), pct_start=draw(st.floats(0.05, 0.95)))
  if momentum:
    high = draw(st.floats(0.5, 0.999))
    return {**kw, 'max_momentum': high, 'base_momentum': draw(_fraction) * high}
  return {**kw, 'max_lr': draw(_lr), 'div': draw(st.floats(1.0, 1e3)),
          'div_final': draw(st.floats(1.0, 1e6))}


@st.composite
def _wsd(draw):
  total = draw(st.integers(2, 10**6))
  warmup = draw(st.integers(0, total - 1))
  decay = draw(st.sampled_from(['linear', 'cosine', 'sqrt', 'exponential']))
  peak = draw(_lr)
  return dict(peak_lr=peak, total_steps=total, warmup_steps=warmup,
              decay_steps=draw(st.integers(1, total - warmup)), decay=decay,
              init_lr=draw(_fraction) * peak,
              final_lr=draw(st.floats(1e-6 if decay == 'exponential' else 0.0, 1.0)) * peak)


@st.composite
def _rsqrt(draw):
  warmup, extra = draw(_steps), draw(st.none() | _steps)
  if extra is None:
    return dict(peak_lr=draw(_lr), warmup_steps=warmup)
  return dict(peak_lr=draw(_lr), warmup_steps=warmup, total_steps=warmup + extra,
              cooldown_steps=draw(st.integers(0, extra)))


@st.composite
def _sgdr(draw):
  high = draw(_lr)
  return dict(max_lr=high, min_lr=draw(_fraction) * high, t0=draw(_steps),
              t_mult=draw(st.sampled_from([1, 2, 1.5])), peak_decay=draw(_below_one),
              warmup_steps=draw(st.integers(0, 1000)))


@st.composite
def _multistep(draw):
  milestones = sorted(draw(st.sets(st.integers(1, 10**6), min_size=1, max_size=4)))
  return dict(lr=draw(_lr), milestones=milestones, gamma=draw(_below_one))


@st.composite
def _inner(draw):
  """A simple finite schedule, for the families that wrap others."""
  lr, total = draw(_lr), draw(_steps)
  return draw(st.sampled_from([lrsched.cosine(lr, total), lrsched.linear(lr, 0.0, total),
                               lrsched.constant(lr)]))


# family -> (strategy of its arguments, the range its values may take given them)
FAMILIES = {
    'constant': (st.fixed_dictionaries({'lr': _lr}), lambda k: (k['lr'], k['lr'])),
    'cosine': (_pair('min_lr', 'lr').map(lambda k: {**k, 'total_steps': 1000}),
               lambda k: (k['min_lr'], k['lr'])),
    'linear': (st.fixed_dictionaries({'init_lr': _lr, 'end_lr': st.floats(0.0, 10.0),
                                      'total_steps': _steps}),
               lambda k: (min(k['init_lr'], k['end_lr']), max(k['init_lr'], k['end_lr']))),
    'log_linear': (st.fixed_dictionaries({'init_lr': _lr, 'end_lr': _lr,
                                          'total_steps': _steps}),
                   lambda k: (min(k['init_lr'], k['end_lr']), max(k['init_lr'], k['end_lr']))),
    'polynomial': (st.fixed_dictionaries({'lr': _lr, 'total_steps': _steps,
                                          'power': st.floats(0.1, 5.0),
                                          'end_lr': st.floats(0.0, 1e-4)}),
                   lambda k: (k['end_lr'], k['lr'])),
    'exponential': (st.fixed_dictionaries({'lr': _lr, 'gamma': _below_one,
                                           'decay_steps': _steps,
                                           'staircase': st.booleans()}),
                    lambda k: (0.0, k['lr'])),
    'inverse_time': (st.fixed_dictionaries({'lr': _lr, 'decay_rate': st.floats(0.0, 10.0),
                                            'decay_steps': _steps,
                                            'staircase': st.booleans()}),
                     lambda k: (0.0, k['lr'])),
    'step_decay': (st.fixed_dictionaries({'lr': _lr, 'step_size': _steps,
                                          'gamma': _below_one}),
                   lambda k: (0.0, k['lr'])),
    'multistep': (_multistep(), lambda k: (k['lr'] * k['gamma'] ** len(k['milestones']),
                                           k['lr'])),
    'cyclic': (_cyclic(), lambda k: (k['base_lr'], k['max_lr'])),
    'cyclic_momentum': (_cyclic(momentum=True),
                        lambda k: (k['base_momentum'], k['max_momentum'])),
    'triangular': (_pair().map(lambda k: {**k, 'step_size': 977}),
                   lambda k: (k['base_lr'], k['max_lr'])),
    'triangular2': (_pair().map(lambda k: {**k, 'step_size': 977}),
                    lambda k: (k['base_lr'], k['max_lr'])),
    'exp_range': (_pair().flatmap(lambda k: st.fixed_dictionaries(
        {**{n: st.just(v) for n, v in k.items()}, 'step_size': _steps,
         'gamma': _below_one})), lambda k: (k['base_lr'], k['max_lr'])),
    'super_convergence': (_pair().map(lambda k: {**k, 'step_size': 5000}),
                          lambda k: (k['base_lr'], k['max_lr'])),
    'one_cycle': (_one_cycle(), lambda k: (0.0, k['max_lr'])),
    'one_cycle_momentum': (_one_cycle(momentum=True),
                           lambda k: (k['base_momentum'], k['max_momentum'])),
    'smith_one_cycle': (_smith(), lambda k: (0.0, k['max_lr'])),
    'caffe_one_cycle': (_smith(), lambda k: (0.0, k['max_lr'])),
    'smith_one_cycle_momentum': (_smith(momentum=True),
                                 lambda k: (k['base_momentum'], k['max_momentum'])),
    'fastai_one_cycle': (_fastai(), lambda k: (0.0, k['max_lr'])),
    'fastai_one_cycle_momentum': (_fastai(momentum=True),
                                  lambda k: (k['base_momentum'], k['max_momentum'])),
    'sgdr': (_sgdr(), lambda k: (k['min_lr'], k['max_lr'])),
    'wsd': (_wsd(), lambda k: (min(k['init_lr'], k['final_lr']), k['peak_lr'])),
    'rsqrt': (_rsqrt(), lambda k: (0.0, k['peak_lr'])),
    'warmup': (st.fixed_dictionaries({'schedule': _inner(), 'warmup_steps': _steps,
                                      'start_lr': st.floats(0.0, 1e-4)}),
               lambda k: (0.0, max(10.0, k['start_lr']))),
    'sequence': (st.lists(_inner(), min_size=1, max_size=3).flatmap(
        lambda s: st.fixed_dictionaries({'schedules': st.just(s), 'durations': st.lists(
            _steps, min_size=len(s) - 1, max_size=len(s) - 1)})),
                 lambda k: (0.0, 10.0)),
}


# Jit against eager, in ulps of the schedule's scale. XLA fuses the jitted arithmetic (a
# contracted multiply-add, 1/x folded into a multiply) where eager code runs op by op:
# an ulp or two; sin, cos, pow (up to 4 in all) and exp and log (up to 8), vectorised in the
# fused loop, add a few.
ULPS = {'log_linear': 8, 'exponential': 8, 'exp_range': 8, 'cyclic': 8, 'cyclic_momentum': 8}


def test_every_registered_family_has_a_strategy():
  assert set(FAMILIES) == set(_base.REGISTRY)


def _ulps(x: np.ndarray, y: np.ndarray, scale: float) -> np.ndarray:
  """|x - y| in ulps of ``scale``, the schedule's largest value: an interpolation
  ``high - (high - low) * f`` is exact to an ulp of ``high``, not of its (smaller) result."""
  return np.abs(x - y) / np.spacing(np.float32(max(scale, 1e-30)))


# Each example compiles its schedule (~0.1 s on CPU): 20 a family in the default profile,
# 27 families, keeps the suite's time; HYPOTHESIS_PROFILE=thorough runs 1000 a family.
_EXAMPLES = (settings(max_examples=20)
             if os.environ.get('HYPOTHESIS_PROFILE', 'default') == 'default' else lambda f: f)


@pytest.mark.parametrize('name', sorted(FAMILIES))
@_EXAMPLES
@given(data=st.data())
def test_bounds_end_and_jit(name, data):
  strategy, value_range = FAMILIES[name]
  kwargs = data.draw(strategy, label='arguments')
  schedule = _base.REGISTRY[name](**kwargs)
  total = schedule.total_steps
  points = [0, 1, *schedule.boundaries, *(data.draw(st.lists(
      st.integers(0, 2 * (total or 10**6)), min_size=4, max_size=4), label='steps')),
            INT32_MAX - 1, INT32_MAX]
  if total is not None:
    points += [total - 1, total, total + 1]
  steps = np.clip(np.asarray(points, np.int64), 0, INT32_MAX).astype(np.int32)
  # One length for every example (step 0 repeated in front, so the indices from the end
  # below stay), so that the eager ops compile once a family instead of once an example.
  steps = np.pad(steps, (-len(steps) % 32, 0), mode='edge')
  # Eager: op by op over the whole array (the same elementwise arithmetic as one step at
  # a time, at 1/15 of the dispatches), and at Python ints, which as_step clamps in Python,
  # at the ends.
  eager = np.asarray(schedule(jnp.asarray(steps)), np.float32)
  ends = [0, -1, *([] if total is None else [-2, -4])]  # 0, 2**31 - 1; total, total + 1
  at_ints = np.asarray([np.float32(schedule(int(steps[i]))) for i in ends])
  compiled = np.asarray(jax.jit(schedule)(jnp.asarray(steps)), np.float32)
  assert np.all(np.isfinite(compiled)) and np.all(compiled >= 0), (steps, compiled)
  low, high = (np.float32(v) for v in value_range(kwargs))
  # A few ulps of slack: the ends are float32 roundings of the arguments.
  slack = 4 * np.spacing(np.float32(high))
  for values in (eager, compiled, at_ints):
    assert np.all(values >= low - slack) and np.all(values <= high + slack), (steps, values)
  ulps = _ulps(eager, compiled, high)
  assert np.all(ulps <= ULPS.get(name, 4)), (steps, eager, compiled, ulps)
  ulps = _ulps(at_ints, eager[ends], high)
  assert np.all(ulps <= ULPS.get(name, 4)), (steps[ends], at_ints, eager[ends], ulps)
  if total is not None:  # the final value is held, exactly, from the end on
    held = compiled[steps >= total]
    assert np.all(held == held[0]), (steps, compiled)
    assert np.all(eager[steps >= total] == eager[steps == total][0]), (steps, eager)
