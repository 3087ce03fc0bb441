"""Tests of lrsched.onecycle: PyTorch's OneCycleLR, the authors' variants and fastai's."""

import csv
import itertools
import json
import math
import pathlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lrsched
from lrsched import cyclical, onecycle, spec

GOLDEN = pathlib.Path(__file__).parent / 'golden' / 'torch_cyclical.json'
REPO = pathlib.Path(__file__).resolve().parents[2]
CAFFE_LOG = REPO.parent / 'shared' / 'reference' / 'super-convergence-logs' / 'clr3SS5kFig1a.csv'
N = 1024  # every property test evaluates steps 0..N-1 at once (one shape: few compilations)
STEPS = jnp.arange(N)
INT32_MAX = 2**31 - 1


def f32(x):
  """x rounded to float32, so that swept (float32) and looped hyper-parameters agree."""
  return float(np.float32(x))


# --------------------------------------------------------------------------------------
# PyTorch's OneCycleLR


def _golden_cases():
  cases = json.loads(GOLDEN.read_text())['cases']
  return [c for c in cases if c['scheduler'] == 'OneCycleLR']


def _our_kwargs(kwargs):
  """OneCycleLR kwargs -> (one_cycle kwargs, one_cycle_momentum kwargs)."""
  kwargs = dict(kwargs)
  anneal = kwargs.pop('anneal_strategy', 'cos')
  momentum = {k: kwargs.pop(k) for k in ('base_momentum', 'max_momentum') if k in kwargs}
  shared = dict(total_steps=kwargs.pop('total_steps'), anneal=anneal,
                pct_start=kwargs.pop('pct_start', 0.3),
                three_phase=kwargs.pop('three_phase', False))
  return dict(kwargs, **shared), dict(momentum, **shared)


@pytest.mark.parametrize('case', _golden_cases(), ids=lambda c: json.dumps(c['kwargs']))
def test_matches_torch_one_cycle_lr(case):
  lr_kwargs, momentum_kwargs = _our_kwargs(case['kwargs'])
  steps = jnp.arange(len(case['lr']))
  np.testing.assert_allclose(lrsched.one_cycle(**lr_kwargs)(steps), case['lr'], rtol=1e-5,
                             atol=1e-12)
  np.testing.assert_allclose(lrsched.one_cycle_momentum(**momentum_kwargs)(steps),
                             case['momentum'], rtol=1e-5, atol=1e-12)


def test_golden_fixture_covers_the_brief():
  kwargs = [c['kwargs'] for c in _golden_cases()]
  assert {k.get('anneal_strategy', 'cos') for k in kwargs} == {'cos', 'linear'}
  assert {k.get('three_phase', False) for k in kwargs} == {False, True}
  assert len({k.get('pct_start', 0.3) for k in kwargs}) >= 4
  assert len({k.get('div_factor', 25.0) for k in kwargs}) >= 3
  assert len({k.get('final_div_factor', 1e4) for k in kwargs}) >= 3
  assert {1, 2, 3} <= {k['total_steps'] for k in kwargs}


def test_holds_the_last_value_from_the_last_step():
  schedule = lrsched.one_cycle(0.8, 20)
  last = schedule(19)
  np.testing.assert_allclose(last, 0.8 / 25 / 1e4, rtol=1e-6)
  np.testing.assert_array_equal(schedule(jnp.array([20, 21, 10**6, INT32_MAX])), [last] * 4)
  assert schedule(2**40) == last
  assert schedule.total_steps == 20
  assert lrsched.one_cycle_momentum(20)(25) == lrsched.one_cycle_momentum(20)(19)


@pytest.mark.parametrize('total_steps, pct_start', [(10, 0.1), (2, 0.5), (3, 1 / 3), (1, 1.0)])
@pytest.mark.parametrize('three_phase', [False, True])
@pytest.mark.parametrize('anneal', ['cos', 'linear'])
def test_zero_length_phase_is_the_limit_from_below(total_steps, pct_start, three_phase,
                                                   anneal):
  """pct_start * T == 1, where PyTorch divides by zero: the limit of PyTorch's value."""
  assert pct_start * total_steps == 1
  schedule = lrsched.one_cycle(1.0, total_steps, pct_start, anneal, three_phase=three_phase)
  below = lrsched.one_cycle(1.0, total_steps, pct_start * (1 - 1e-12), anneal,
                            three_phase=three_phase)
  steps = jnp.arange(total_steps + 2)
  np.testing.assert_allclose(schedule(steps), below(steps), rtol=1e-6, atol=1e-9)
  momentum = lrsched.one_cycle_momentum(total_steps, 0.85, 0.95, pct_start, anneal,
                                        three_phase)
  momentum_below = lrsched.one_cycle_momentum(total_steps, 0.85, 0.95,
                                              pct_start * (1 - 1e-12), anneal, three_phase)
  np.testing.assert_allclose(momentum(steps), momentum_below(steps), rtol=1e-6)
  if total_steps > 1 and not three_phase:
    assert schedule(0) == 1.0  # the skipped rise: step 0 is already the peak
    assert momentum(0) == np.float32(0.85)
  elif total_steps > 1:
    assert schedule(0) == np.float32(1.0 / 25)  # rise and fall skipped: step 0 starts phase 3


@pytest.mark.parametrize('total_steps', [1, 2, 3])
@pytest.mark.parametrize('pct_start', [0.0, 0.1, 0.3, 1 / 3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize('three_phase', [False, True])
@pytest.mark.parametrize('anneal', ['cos', 'linear'])
def test_tiny_configurations(total_steps, pct_start, three_phase, anneal):
  schedule = lrsched.one_cycle(2.0, total_steps, pct_start, anneal, div_factor=4.0,
                               final_div_factor=10.0, three_phase=three_phase)
  values = np.asarray(schedule(jnp.arange(-2, 6)))
  assert np.all(np.isfinite(values))
  assert values.min() >= 2.0 / 40 * (1 - 1e-6) and values.max() <= 2.0 * (1 + 1e-6)
  np.testing.assert_array_equal(values[:3], values[2])  # steps -2, -1 are step 0
  np.testing.assert_array_equal(values[total_steps + 1:], values[total_steps + 1])
  momentum = np.asarray(lrsched.one_cycle_momentum(total_steps, 0.85, 0.95, pct_start,
                                                   anneal, three_phase)(jnp.arange(6)))
  assert np.all(np.isfinite(momentum))
  assert momentum.min() >= 0.85 - 1e-6 and momentum.max() <= 0.95 + 1e-6


def test_boundaries():
  assert lrsched.one_cycle(1.0, 100).boundaries == (0, 29, 99)
  assert lrsched.one_cycle(1.0, 100, three_phase=True).boundaries == (0, 29, 58, 99)
  assert lrsched.one_cycle(1.0, 10, pct_start=0.05).boundaries == (0, 9)
  assert lrsched.one_cycle_momentum(100).boundaries == (0, 29, 99)
  assert onecycle.fastai_one_cycle(1.0, 100).boundaries == (0, 25, 100)
  assert onecycle.smith_one_cycle(0.1, 1.0, 100).boundaries == (0, 45, 90, 100)
  assert onecycle.caffe_one_cycle(0.1, 1.0, 100).boundaries == (0, 45, 90)
  schedule = onecycle.super_convergence()
  assert (schedule.boundaries, schedule.total_steps) == ((0, 5000, 10000), 10000)
  assert repr(schedule) == 'super_convergence(base_lr=0.1, max_lr=3.0, step_size=5000)'


# --------------------------------------------------------------------------------------
# The authors' schedules


def test_super_convergence_reproduces_the_authors_caffe_log():
  if not CAFFE_LOG.exists():
    pytest.skip(f'the shared reference logs are not checked out at {CAFFE_LOG.parent}')
  with CAFFE_LOG.open(newline='') as f:
    rows = [(int(r['iteration']), r['lr'].strip()) for r in csv.DictReader(f)]
  rows = [(i, lr) for i, lr in rows if lr]  # the last row (10,000) has no LR
  assert len(rows) == 100 and rows[-1][0] == 9900
  ours = np.asarray(onecycle.super_convergence()(jnp.array([i for i, _ in rows])))
  # Caffe prints the LR with 6 significant digits.
  printed = [float(f'{v:.6g}') for v in ours]
  assert printed == [float(lr) for _, lr in rows]


def test_super_convergence_shape():
  schedule = onecycle.super_convergence(0.1, 3.0, 5000)
  np.testing.assert_allclose(schedule(jnp.array([0, 2500, 5000, 7500, 10_000, 10_001])),
                             [0.1, 1.55, 3.0, 1.55, 0.1, 0.1], rtol=1e-6)
  assert schedule(INT32_MAX) == schedule(10_000)
  np.testing.assert_array_equal(schedule(jnp.arange(10_000)),
                                cyclical.triangular(0.1, 3.0, 5000)(jnp.arange(10_000)))


# Values printed by Smith's Caffe ("Iteration N, lr = ..., momentum = ...") in the logs of
# lnsmith54/hyperParam1, Cifar/results/:
#   gResnet56_ResTBS512LR.0800.8M.95WD1e-4Epoch95BS128b_1 (base 0.08, max 0.8,
#     stepsize 4003, max_iter 9277; constant momentum 0.95), and
#   wide32cifar_Wide1CycLR.1001CM0.95.85WD1e-4Epoch50BS128a_1 (base 0.1, max 1,
#     stepsize 2246, max_iter 4882, cyclical momentum 0.95 -> 0.85).
CAFFE_1CYCLE = [
    (dict(base_lr=0.08, max_lr=0.8, total_steps=9277, step_size=4003),
     {3000: 0.619595, 3200: 0.655568, 4000: 0.79946, 4200: 0.76063, 5000: 0.600749,
      6000: 0.400899, 7000: 0.201049, 7800: 0.0411692, 8000: 0.00119905, 8200: 8e-05,
      9200: 8e-05}, {}),
    (dict(base_lr=0.1, max_lr=1.0, total_steps=4882, step_size=2246),
     {1800: 0.821282, 2000: 0.901425, 2200: 0.981567, 2400: 0.931434, 3000: 0.664292,
      4000: 0.219056, 4400: 0.0409617, 4600: 0.0001, 4800: 0.0001},
     {1800: 0.869858, 2000: 0.860953, 2200: 0.852048, 2400: 0.856857, 3000: 0.883571,
      4000: 0.928094, 4400: 0.945904}),
]


@pytest.mark.parametrize('kwargs, lrs, momenta', CAFFE_1CYCLE)
def test_caffe_one_cycle_reproduces_smiths_logs(kwargs, lrs, momenta):
  schedule = onecycle.caffe_one_cycle(**kwargs)
  # 6 printed digits; the 8000 entry carries float32 cancellation from Caffe (4e-5).
  np.testing.assert_allclose(schedule(jnp.array(list(lrs))), list(lrs.values()), rtol=5e-5)
  if momenta:
    momentum = onecycle.smith_one_cycle_momentum(kwargs['total_steps'], 0.85, 0.95,
                                                kwargs['step_size'])
    np.testing.assert_allclose(momentum(jnp.array(list(momenta))), list(momenta.values()),
                               rtol=5e-6)


def test_smith_one_cycle_shape():
  schedule = onecycle.smith_one_cycle(0.08, 0.8, total_steps=1000, step_size=400,
                                     annihilation=1e-3)
  steps = jnp.array([0, 200, 400, 600, 800, 900, 1000, 5000])
  np.testing.assert_allclose(schedule(steps),
                             [0.08, 0.44, 0.8, 0.44, 0.08, 0.5 * (0.08 + 0.08e-3), 0.08e-3,
                              0.08e-3], rtol=1e-6)
  # Default step_size: 45% of training, leaving the last 10% for the annihilation.
  default = onecycle.smith_one_cycle(0.08, 0.8, total_steps=1000)
  assert default.boundaries == (0, 450, 900, 1000)
  np.testing.assert_allclose(default(jnp.array([450, 900, 1000])), [0.8, 0.08, 0.08e-3],
                             rtol=1e-6)
  momentum = onecycle.smith_one_cycle_momentum(1000, 0.85, 0.95, step_size=400)
  np.testing.assert_allclose(momentum(jnp.array([0, 200, 400, 600, 800, 900, 1000])),
                             [0.95, 0.9, 0.85, 0.9, 0.95, 0.95, 0.95], rtol=1e-6)


@pytest.mark.parametrize('total_steps', [1, 2, 3, 4])
def test_smith_and_caffe_tiny_configurations(total_steps):
  for schedule in (onecycle.smith_one_cycle(0.1, 1.0, total_steps),
                   onecycle.caffe_one_cycle(0.1, 1.0, total_steps),
                   onecycle.smith_one_cycle(0.1, 1.0, total_steps, step_size=total_steps // 2),
                   onecycle.smith_one_cycle_momentum(total_steps),
                   onecycle.fastai_one_cycle(1.0, total_steps),
                   onecycle.fastai_one_cycle(1.0, total_steps, pct_start=1.0),
                   onecycle.fastai_one_cycle_momentum(total_steps, pct_start=0.0)):
    values = np.asarray(schedule(jnp.arange(-1, 8)))
    assert np.all(np.isfinite(values)) and values.min() >= 0 and values.max() <= 1.0, schedule


def test_smith_drops_at_the_end_when_the_cycle_fills_training():
  schedule = onecycle.smith_one_cycle(0.1, 1.0, total_steps=10, step_size=5, annihilation=0.01)
  np.testing.assert_allclose(schedule(jnp.array([0, 5, 9, 10, 11])),
                             [0.1, 1.0, 0.1 + 0.9 / 5, 0.001, 0.001], rtol=1e-6)


# --------------------------------------------------------------------------------------
# fastai


def fastai_combined_cos(pos, pct, start, middle, end):
  """fastai.callback.schedule.combined_cos(pct, start, middle, end)(pos), in float64."""
  def sched_cos(a, b, u):
    return a + (1 + math.cos(math.pi * (1 - u))) * (b - a) / 2
  if pos < pct:
    return sched_cos(start, middle, pos / pct)
  return sched_cos(middle, end, (pos - pct) / (1 - pct))


@pytest.mark.parametrize('total_steps, pct_start, div, div_final', [
    (100, 0.25, 25.0, 1e5), (37, 0.3, 10.0, 1e4), (10, 0.0, 25.0, 1e5), (7, 0.99, 5.0, 100.0),
    (1, 0.25, 25.0, 1e5), (2, 0.5, 25.0, 1e5),
])
def test_fastai_one_cycle_matches_fastai(total_steps, pct_start, div, div_final):
  schedule = onecycle.fastai_one_cycle(0.5, total_steps, pct_start, div, div_final)
  momentum = onecycle.fastai_one_cycle_momentum(total_steps, 0.85, 0.95, pct_start)
  steps = np.arange(total_steps + 1)  # fastai's position t / T reaches 1 at step T
  expected = [fastai_combined_cos(t / total_steps, pct_start, 0.5 / div, 0.5, 0.5 / div_final)
              for t in steps]
  np.testing.assert_allclose(schedule(jnp.asarray(steps)), expected, rtol=1e-5)
  expected = [fastai_combined_cos(t / total_steps, pct_start, 0.95, 0.85, 0.95) for t in steps]
  np.testing.assert_allclose(momentum(jnp.asarray(steps)), expected, rtol=1e-6)
  assert schedule(total_steps + 5) == schedule(total_steps)


def test_fastai_momentum_is_not_torch_momentum():
  """Why fastai_one_cycle_momentum exists: torch's phase ends are pT - 1 and T - 1."""
  fastai = onecycle.fastai_one_cycle_momentum(100)(jnp.arange(100))
  torch_like = lrsched.one_cycle_momentum(100, pct_start=0.25, anneal='cos')(jnp.arange(100))
  assert np.abs(np.asarray(fastai) - np.asarray(torch_like)).max() > 1e-3


# --------------------------------------------------------------------------------------
# Properties over random valid configurations of every family


class Case(NamedTuple):
  build: Callable[[Any], Any]  # the swept hyper-parameter -> schedule
  param: float  # its value
  lo: float  # bounds of every value
  hi: float
  hold_from: int  # the value is constant from this step on
  slope: float  # bound on |value(t + 1) - value(t)| ...
  continuous_until: int  # ... for t + 1 < continuous_until


def _phase_slope(knots, values, kind):
  """max |dv/dt| of a piecewise curve through (knots[i], values[i])."""
  k = math.pi / 2 if kind == 'cos' else 1.0
  pieces = zip(knots, knots[1:], values, values[1:], strict=False)
  return max([k * abs(b - a) / (t1 - t0) for t0, t1, a, b in pieces if t1 > t0], default=0.0)


lrs = st.floats(0.0, 4.0, width=32)
totals = st.integers(1, 1000)
fractions = st.floats(0.0, 1.0)


@st.composite
def momenta(draw):
  base = draw(st.floats(0.0, 0.875, width=32))
  return base, f32(base + draw(st.floats(0.0, 0.09375, width=32)))


@st.composite
def one_cycle_cases(draw):
  peak, total, pct = draw(lrs), draw(totals), draw(fractions)
  anneal, three = draw(st.sampled_from(['cos', 'linear'])), draw(st.booleans())
  div, final_div = draw(st.floats(1.0, 100.0)), draw(st.floats(1.0, 1e5))
  initial = peak / div
  e1 = pct * total - 1
  knots = [0.0, e1, 2 * e1, total - 1.0] if three else [0.0, e1, total - 1.0]
  values = ([initial, peak, initial, initial / final_div] if three
            else [initial, peak, initial / final_div])
  return Case(lambda m: lrsched.one_cycle(m, total, pct, anneal, div, final_div, three), peak,
              initial / final_div, peak, total - 1, _phase_slope(knots, values, anneal), N)


@st.composite
def one_cycle_momentum_cases(draw):
  (base, top), total, pct = draw(momenta()), draw(totals), draw(fractions)
  anneal, three = draw(st.sampled_from(['cos', 'linear'])), draw(st.booleans())
  e1 = pct * total - 1
  knots = [0.0, e1, 2 * e1, total - 1.0] if three else [0.0, e1, total - 1.0]
  values = [top, base, top, top] if three else [top, base, top]
  return Case(lambda m: lrsched.one_cycle_momentum(total, base, m, pct, anneal, three), top,
              base, top, total - 1, _phase_slope(knots, values, anneal), N)


@st.composite
def super_convergence_cases(draw):
  base, amplitude, size = draw(lrs), draw(lrs), draw(st.integers(1, 500))
  peak = f32(base + amplitude)
  return Case(lambda m: onecycle.super_convergence(base, m, size), peak, base, peak, 2 * size,
              (peak - base) / size, N)


@st.composite
def smith_cases(draw):
  base, amplitude, total = draw(lrs), draw(lrs), draw(totals)
  size = draw(st.one_of(st.none(), st.integers(0, total // 2)))
  annihilation = draw(st.floats(0.0, 1.0))
  s = int(0.45 * total) if size is None else size
  peak = f32(base + amplitude)
  slope = max((peak - base) / s if s else 0.0,
              base * (1 - annihilation) / (total - 2 * s) if total > 2 * s else 0.0)
  return Case(lambda m: onecycle.smith_one_cycle(base, m, total, size, annihilation), peak,
              base * annihilation, peak, total, slope, total if 2 * s == total else N)


@st.composite
def smith_momentum_cases(draw):
  (base, top), total = draw(momenta()), draw(totals)
  size = draw(st.one_of(st.none(), st.integers(0, total // 2)))
  s = int(0.45 * total) if size is None else size
  return Case(lambda m: onecycle.smith_one_cycle_momentum(total, base, m, size), top, base, top,
              2 * s, (top - base) / s if s else 0.0, N)


@st.composite
def caffe_cases(draw):
  base, amplitude, total = draw(lrs), draw(lrs), draw(totals)
  size = draw(st.one_of(st.none(), st.integers(0, total // 2)))
  annihilation = draw(st.floats(0.0, 1.0))
  s = int(0.45 * total) if size is None else size
  peak = f32(base + amplitude)
  return Case(lambda m: onecycle.caffe_one_cycle(base, m, total, size, annihilation), peak,
              0.0, peak, 2 * s, peak / s if s else 0.0, 2 * s)  # drops at step 2S


@st.composite
def fastai_cases(draw):
  peak, total, pct = draw(lrs), draw(totals), draw(fractions)
  div, div_final = draw(st.floats(1.0, 100.0)), draw(st.floats(1.0, 1e5))
  knots = [0.0, pct * total, float(total)]
  slope = _phase_slope(knots, [peak / div, peak, peak / div_final], 'cos')
  return Case(lambda m: onecycle.fastai_one_cycle(m, total, pct, div, div_final), peak,
              min(peak / div, peak / div_final), peak, total, slope,
              total if pct == 1 else N)  # pct_start=1 drops at step T


@st.composite
def fastai_momentum_cases(draw):
  (base, top), total, pct = draw(momenta()), draw(totals), draw(fractions)
  slope = _phase_slope([0.0, pct * total, float(total)], [top, base, top], 'cos')
  return Case(lambda m: onecycle.fastai_one_cycle_momentum(total, base, m, pct), top, base, top,
              total, slope, total if pct == 1 else N)


every_family = st.one_of(one_cycle_cases(), one_cycle_momentum_cases(),
                         super_convergence_cases(), smith_cases(), smith_momentum_cases(),
                         caffe_cases(), fastai_cases(), fastai_momentum_cases())


@settings(max_examples=120)
@given(every_family)
def test_properties(case):
  schedule = case.build(case.param)
  values = np.asarray(schedule(STEPS), dtype=np.float64)
  tol = 1e-6 * (1 + case.hi)
  assert np.all(np.isfinite(values))
  assert values.min() >= 0
  assert values.min() >= case.lo - tol and values.max() <= case.hi + tol
  # Continuous where the definition is: adjacent steps differ by at most the max slope.
  jumps = np.abs(np.diff(values[:case.continuous_until]))
  assert jumps.size == 0 or jumps.max() <= case.slope * (1 + 1e-5) + tol
  # Holds its final value; steps before 0 are step 0; huge steps are finite. (Exact
  # comparisons are between evaluations of one shape: XLA's vectorized sin may differ from
  # its scalar sin in the last bit.)
  if case.hold_from < N:
    assert np.all(values[case.hold_from:] == values[case.hold_from])
  held = schedule(case.hold_from)
  assert schedule(INT32_MAX) == held and schedule(2**40) == held
  assert schedule(jnp.int32(INT32_MAX)) == held
  np.testing.assert_array_equal(schedule(jnp.array([-1, -7])), schedule(jnp.array([0, 0])))
  assert schedule(-(2**40)) == schedule(0)


@settings(max_examples=16)
@given(every_family)
def test_jit_and_vmap(case):
  schedule = case.build(case.param)
  np.testing.assert_allclose(jax.jit(schedule)(STEPS), schedule(STEPS), rtol=1e-6, atol=1e-7)
  params = np.float32([case.param, case.param * 0.5 + case.lo * 0.5, case.param + 0.5])
  if case.hi < 1:  # a momentum: the sweep stays below 1 and above the base
    params = np.float32([case.param, min(case.param + 0.005, 0.999), case.lo])
  swept = jax.vmap(lambda m: case.build(m)(STEPS))(jnp.asarray(params))
  looped = np.stack([case.build(float(m))(STEPS) for m in params])
  np.testing.assert_allclose(swept, looped, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------
# Argument checks


@pytest.mark.parametrize('constructor, kwargs, names', [
    ('one_cycle', dict(max_lr=-1.0, total_steps=10), ['max_lr', '>= 0']),
    ('one_cycle', dict(max_lr=1.0, total_steps=0), ['total_steps']),
    ('one_cycle', dict(max_lr=1.0, total_steps=10.0), ['total_steps', 'int']),
    ('one_cycle', dict(max_lr=1.0, total_steps=10, pct_start=1.5), ['pct_start', '[0, 1]']),
    ('one_cycle', dict(max_lr=1.0, total_steps=10, pct_start='0.3'), ['pct_start']),
    ('one_cycle', dict(max_lr=1.0, total_steps=10, anneal='cosine'),
     ['anneal', "'cos'", "'linear'"]),
    ('one_cycle', dict(max_lr=1.0, total_steps=10, div_factor=0.5), ['div_factor']),
    ('one_cycle', dict(max_lr=1.0, total_steps=10, final_div_factor=0.0),
     ['final_div_factor']),
    ('one_cycle', dict(max_lr=1.0, total_steps=10, three_phase='yes'), ['three_phase']),
    ('one_cycle_momentum', dict(total_steps=10, base_momentum=0.96),
     ['base_momentum', 'max_momentum']),
    ('one_cycle_momentum', dict(total_steps=10, max_momentum=1.0), ['max_momentum']),
    ('one_cycle_momentum', dict(total_steps=-1), ['total_steps']),
    ('one_cycle_momentum', dict(total_steps=10, pct_start=-0.1), ['pct_start']),
    ('super_convergence', dict(step_size=0), ['step_size']),
    ('super_convergence', dict(base_lr=4.0), ['base_lr', 'max_lr']),
    ('smith_one_cycle', dict(base_lr=0.1, max_lr=1.0, total_steps=10, step_size=6),
     ['step_size', 'total_steps']),
    ('smith_one_cycle', dict(base_lr=0.1, max_lr=1.0, total_steps=10, step_size=-1),
     ['step_size']),
    ('smith_one_cycle', dict(base_lr=0.1, max_lr=1.0, total_steps=10, annihilation=2.0),
     ['annihilation']),
    ('smith_one_cycle', dict(base_lr=1.1, max_lr=1.0, total_steps=10), ['base_lr', 'max_lr']),
    ('smith_one_cycle_momentum', dict(total_steps=10, step_size=9), ['step_size']),
    ('smith_one_cycle_momentum', dict(total_steps=10, base_momentum=-0.5), ['base_momentum']),
    ('caffe_one_cycle', dict(base_lr=0.1, max_lr=1.0, total_steps=0), ['total_steps']),
    ('caffe_one_cycle', dict(base_lr=0.1, max_lr=float('nan'), total_steps=10), ['max_lr']),
    ('fastai_one_cycle', dict(max_lr=1.0, total_steps=10, div=0.0), ['div']),
    ('fastai_one_cycle', dict(max_lr=1.0, total_steps=10, div_final=0.5), ['div_final']),
    ('fastai_one_cycle', dict(max_lr=1.0, total_steps=10, pct_start=2), ['pct_start']),
    ('fastai_one_cycle_momentum', dict(total_steps=10, max_momentum=1.5), ['max_momentum']),
])
def test_bad_arguments_raise(constructor, kwargs, names):
  with pytest.raises(ValueError) as error:
    getattr(onecycle, constructor)(**kwargs)
  message = str(error.value)
  assert message.startswith(constructor + ':')
  for name in names:
    assert name in message


def test_pct_start_cannot_be_traced():
  with pytest.raises(ValueError, match='pct_start'):
    jax.vmap(lambda p: lrsched.one_cycle(1.0, 10, p)(3))(jnp.array([0.3, 0.4]))


def test_all_constructors_are_registered():
  names = ['one_cycle', 'one_cycle_momentum', 'super_convergence', 'smith_one_cycle',
           'smith_one_cycle_momentum', 'caffe_one_cycle', 'fastai_one_cycle',
           'fastai_one_cycle_momentum']
  for name in names:
    assert spec.REGISTRY[name] is getattr(onecycle, name)
  for a, b in itertools.combinations(names, 2):
    assert spec.REGISTRY[a] is not spec.REGISTRY[b]


@pytest.mark.parametrize('pct', [5e-324, 1e-40, 1e-20, 1e-8])
@pytest.mark.parametrize('build', [
    lambda pct: onecycle.fastai_one_cycle_momentum(1, 0.85, 0.95, pct),
    lambda pct: onecycle.fastai_one_cycle(1.0, 1, pct),
    lambda pct: onecycle.fastai_one_cycle(1.0, 10, pct),
    lambda pct: lrsched.one_cycle(1.0, 10, pct_start=pct),
    lambda pct: lrsched.one_cycle_momentum(10, pct_start=pct, three_phase=True),
])
def test_phases_shorter_than_a_float32_normal_stay_finite(build, pct):
  # A phase of 1e-40 steps is a float32 denormal, which XLA flushes to zero.
  schedule = build(pct)
  values = np.asarray(schedule(jnp.arange(12)))
  assert np.all(np.isfinite(values)) and np.all(values >= 0)
  np.testing.assert_allclose(values[0], float(schedule(0)), rtol=1e-6)
