"""Tests for lrsched.restarts (SGDR): PyTorch golden values, an exact reference, errors."""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lrsched
from lrsched import _interpolate, compose, restarts, spec
from lrsched.restarts import sgdr

INT32_MAX = 2**31 - 1
GOLDEN = json.loads((pathlib.Path(__file__).parent / 'golden' / 'torch_decay.json').read_text())
CASES = [c for c in GOLDEN['cases'] if c['name'] == 'sgdr']


def reference(step, max_lr, t0, t_mult=1, min_lr=0.0, peak_decay=1.0, warmup_steps=0):
  """SGDR at one step in Python integers and float64, walking the periods one by one."""
  step = min(max(step, 0), INT32_MAX)
  if step < warmup_steps:
    return min_lr + (max_lr - min_lr) * step / warmup_steps
  position, period = step - warmup_steps, 0
  if t_mult == 1:
    period, position = divmod(position, t0)
  while True:
    length = (t0 * int(t_mult)**period if float(t_mult).is_integer()
              else math.floor(t0 * float(t_mult)**period))
    if position < length:
      break
    position -= length
    period += 1
  peak = min_lr + (max_lr - min_lr) * peak_decay**period
  return min_lr + (peak - min_lr) * 0.5 * (1 + math.cos(math.pi * position / length))


def _id(case):
  return '-'.join(f'{k}={v}' for k, v in case['torch_kwargs'].items())


@pytest.mark.parametrize('case', CASES, ids=_id)
def test_matches_pytorch_cosine_annealing_warm_restarts(case):
  schedule = sgdr(**case['arguments'])
  values = schedule(jnp.asarray(case['steps'], dtype=jnp.int32))
  np.testing.assert_allclose(values, case['values'], rtol=1e-6, atol=0)


def test_golden_covers_t_mult_1_and_2_and_tiny_periods():
  configs = {(c['torch_kwargs']['T_0'], c['torch_kwargs']['T_mult']) for c in CASES}
  assert {(1, 1), (3, 1), (1, 2), (10, 1), (10, 2)} <= configs


# --------------------------------------------------------------------------------------
# Properties

t_mults = st.one_of(st.sampled_from([1, 2, 3, 2.0]), st.floats(1.01, 4.0))


@st.composite
def configs(draw):
  max_lr = draw(st.one_of(st.just(0.0), st.floats(1e-4, 10.0)))
  return dict(
      max_lr=max_lr,
      t0=draw(st.one_of(st.integers(1, 3), st.integers(1, 500), st.integers(1, INT32_MAX))),
      t_mult=draw(t_mults),
      min_lr=draw(st.floats(0.0, 1.0)) * max_lr,
      peak_decay=draw(st.one_of(st.just(1.0), st.floats(0.05, 1.0))),
      warmup_steps=draw(st.one_of(st.just(0), st.integers(1, 50))),
  )


def probe_steps(config):
  """64 steps (a fixed shape): the start, the first restarts, and large steps."""
  near = [s + d for s in sgdr(**config).boundaries for d in (-1, 0, 1)]
  far = [INT32_MAX // 3, INT32_MAX // 2, INT32_MAX - 1, INT32_MAX]
  steps = [min(max(s, 0), INT32_MAX) for s in near + far]
  return np.asarray((list(range(42)) + steps + [INT32_MAX] * 22)[:64], dtype=np.int32)


@given(configs())
def test_matches_exact_reference(config):
  schedule = sgdr(**config)
  steps = probe_steps(config)
  values = np.asarray(schedule(steps), dtype=np.float64)
  expected = [reference(int(s), **config) for s in steps]
  high, low = config['max_lr'], config['min_lr']
  assert np.all(np.isfinite(values)) and np.all(values >= 0)
  assert np.all(values >= low - 1e-6 * high) and np.all(values <= high * (1 + 1e-6))
  np.testing.assert_allclose(values, expected, rtol=2e-6, atol=1e-6 * high)
  assert schedule.total_steps is None


@given(st.floats(1e-3, 10.0), st.floats(0.0, 1.0), st.integers(1, 1000),
       st.integers(0, 10**6), st.integers(1, 2000))
def test_fixed_period_is_periodic(max_lr, min_frac, t0, step, cycles):
  schedule = sgdr(max_lr, t0, min_lr=min_frac * max_lr)
  later = min(step + cycles * t0, INT32_MAX - (INT32_MAX - step) % t0)
  # The same position in any later period gives the bitwise same value.
  np.testing.assert_array_equal(schedule(step), schedule(later))
  np.testing.assert_allclose(schedule(step // t0 * t0), max_lr, rtol=1e-6)


@given(st.floats(1e-3, 10.0), st.integers(1, 100), st.sampled_from([1, 2, 1.5]),
       st.integers(1, 100))
def test_warmup_is_compose_warmup_and_continuous(max_lr, t0, t_mult, w):
  min_lr = 0.1 * max_lr
  schedule = sgdr(max_lr, t0, t_mult, min_lr=min_lr, warmup_steps=w)
  composed = compose.warmup(sgdr(max_lr, t0, t_mult, min_lr=min_lr), w, start_lr=min_lr)
  steps = jnp.arange(64) * (w + 3 * t0) // 32
  np.testing.assert_array_equal(schedule(steps), composed(steps))
  np.testing.assert_allclose(schedule(0), min_lr, rtol=1e-6)
  np.testing.assert_allclose(schedule(w), max_lr, rtol=1e-6)
  assert schedule.boundaries[:2] == (0, w)


def test_peak_decay():
  schedule = sgdr(1.0, 4, 2, min_lr=0.1, peak_decay=0.5)
  # Restarts at 0, 4, 12, 28: peaks 1, 0.55, 0.325, 0.2125.
  np.testing.assert_allclose(schedule(jnp.asarray([0, 4, 12, 28])),
                             [1.0, 0.55, 0.325, 0.2125], rtol=1e-6)
  np.testing.assert_allclose(schedule(jnp.asarray([3, 11, 27])),
                             [0.1 + x * 0.5 * (1 + math.cos(math.pi * p / n))
                              for x, p, n in [(0.9, 3, 4), (0.45, 7, 8), (0.225, 15, 16)]],
                             rtol=1e-6)


# --------------------------------------------------------------------------------------
# Exactness near 2**31


@pytest.mark.parametrize('t0, t_mult', [(3, 1), (7, 1), (3, 2), (5, 3), (3, 1.5),
                                        (INT32_MAX, 2), (2**30 + 1, 1)])
def test_exact_cycle_position_at_int32_max(t0, t_mult):
  schedule = sgdr(1.0, t0, t_mult, min_lr=0.0)
  steps = [INT32_MAX - 2, INT32_MAX - 1, INT32_MAX]
  np.testing.assert_allclose(schedule(jnp.asarray(steps)),
                             [reference(s, 1.0, t0, t_mult) for s in steps], rtol=1e-6,
                             atol=1e-7)


def test_t0_3_at_int32_max_is_one_third_into_a_period():
  # 2**31 - 1 = 3 * 715827882 + 1; float32 would have rounded the step to 2**31 (pos 2).
  assert INT32_MAX % 3 == 1
  np.testing.assert_allclose(sgdr(1.0, 3)(INT32_MAX), 0.75, rtol=1e-6)
  np.testing.assert_allclose(sgdr(1.0, 3)(2**40), 0.75, rtol=1e-6)


def test_restart_steps():
  assert restarts.restart_steps(10, 2)[0][:5] == [0, 10, 30, 70, 150]
  # Float t_mult: period i lasts floor(t0 * t_mult**i) steps.
  starts, lengths = restarts.restart_steps(3, 1.5)
  assert lengths[:6] == [3, 4, 6, 10, 15, 22]
  assert starts[:6] == [0, 3, 7, 13, 23, 38]
  assert starts[-1] <= INT32_MAX < starts[-1] + lengths[-1]
  # An integral float t_mult is the same as the int.
  assert restarts.restart_steps(3, 2.0) == restarts.restart_steps(3, 2)
  steps = jnp.arange(0, 500, 7)
  np.testing.assert_array_equal(sgdr(1.0, 3, 2.0)(steps), sgdr(1.0, 3, 2)(steps))
  # A huge growth: the second period outlasts every int32 step.
  assert restarts.restart_steps(1, 1e300)[1] == [1, 2**62]
  np.testing.assert_allclose(sgdr(1.0, 1, 1e300)(jnp.asarray([0, 1, INT32_MAX])), 1.0)


@pytest.mark.parametrize('schedule, boundaries', [
    (sgdr(1.0, 10), (0, 10, 20, 30, 40)),
    (sgdr(1.0, 10, 2), (0, 10, 30, 70, 150)),
    (sgdr(1.0, 2**30), (0, 2**30)),
    (sgdr(1.0, 10, 2, warmup_steps=5), (0, 5, 15, 35, 75, 155)),
])
def test_boundaries(schedule, boundaries):
  assert schedule.boundaries == boundaries
  assert schedule.total_steps is None


def test_repr_and_registry():
  schedule = sgdr(0.1, 10, 2, min_lr=0.001)
  assert repr(schedule) == ('sgdr(max_lr=0.1, t0=10, t_mult=2, min_lr=0.001, peak_decay=1.0, '
                            'warmup_steps=0)')
  assert spec.REGISTRY['sgdr'] is sgdr is lrsched.sgdr
  rebuilt = eval(repr(schedule), {'sgdr': sgdr})
  np.testing.assert_array_equal(rebuilt(jnp.arange(50)), schedule(jnp.arange(50)))


# --------------------------------------------------------------------------------------
# Transformations and step types

STEPS = jnp.arange(-2, 62)
CONFIGS = [dict(max_lr=0.5, t0=3), dict(max_lr=0.5, t0=4, t_mult=2, min_lr=0.05),
           dict(max_lr=0.5, t0=2, t_mult=1.5, peak_decay=0.8, warmup_steps=3)]


@pytest.mark.parametrize('config', CONFIGS)
def test_jit_vmap_and_step_types(config):
  schedule = sgdr(**config)
  eager = schedule(STEPS)
  np.testing.assert_allclose(jax.jit(schedule)(STEPS), eager, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(schedule)(STEPS), eager, rtol=1e-6)
  np.testing.assert_array_equal(schedule(-5), schedule(0))
  np.testing.assert_array_equal(schedule(2**40), schedule(INT32_MAX))
  np.testing.assert_array_equal(schedule(np.int64(2**40)), schedule(INT32_MAX))
  np.testing.assert_array_equal(schedule(7.9), schedule(7))
  for huge in (1e12, jnp.float32(3e9)):
    np.testing.assert_array_equal(schedule(huge), schedule(2**31 - 128))
  assert np.isfinite(schedule(INT32_MAX))


@pytest.mark.parametrize('config', CONFIGS)
@pytest.mark.parametrize('name', ['max_lr', 'min_lr', 'peak_decay'])
def test_vmap_over_hyperparameter_matches_loop(config, name):
  values = {'max_lr': [0.5, 1.0, 2.0], 'min_lr': [0.0, 0.1, 0.4],
            'peak_decay': [0.5, 0.9, 1.0]}[name]
  build = lambda v: sgdr(**{**config, name: v})
  swept = jax.vmap(lambda v: build(v)(STEPS))(jnp.asarray(values))
  looped = np.stack([build(v)(STEPS) for v in values])
  np.testing.assert_allclose(swept, looped, rtol=1e-6, atol=1e-7)


def test_float_t_mult_matches_reference_far_out():
  config = dict(max_lr=1.0, t0=5, t_mult=1.37, min_lr=0.01)
  starts, _ = restarts.restart_steps(5, 1.37)
  steps = [s + d for s in starts[-4:] for d in (-2, 0, 3)]
  np.testing.assert_allclose(sgdr(**config)(jnp.asarray(steps)),
                             [reference(s, **config) for s in steps], rtol=1e-5)
  assert _interpolate.cosine_weight(jnp.asarray(1.0)) == 1.0


# --------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize('kwargs, match', [
    (dict(t_mult=0.5), r'sgdr: t_mult must be >= 1'),
    (dict(t_mult=1.00001), r'sgdr: t_mult must be 1 or >= 1.0001'),
    (dict(t_mult='2'), r'sgdr: t_mult must be a Python int or float'),
    (dict(t_mult=jnp.asarray(2.0)), r'sgdr: t_mult must be a Python int or float'),
    (dict(t_mult=math.inf), r'sgdr: t_mult must be a Python int or float'),
    (dict(t0=1, t_mult=1.0002), r'sgdr: with t0=1 and t_mult=1.0002 there are more than '
                                r'10000 restarts'),
    (dict(t0=0), r'sgdr: t0 must be an int in \[1'),
    (dict(t0=2.5), r'sgdr: t0 must be a Python int'),
    (dict(peak_decay=0.0), r'sgdr: peak_decay must be in \(0, 1\]'),
    (dict(peak_decay=1.5), r'sgdr: peak_decay must be in \(0, 1\]'),
    (dict(min_lr=2.0), r'sgdr: min_lr must be <= max_lr'),
    (dict(min_lr=-0.1), r'sgdr: min_lr must be >= 0'),
    (dict(max_lr=math.inf), r'sgdr: max_lr must be finite'),
    (dict(warmup_steps=-1), r'sgdr: warmup_steps must be an int in \[0'),
])
def test_bad_arguments_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    sgdr(**{'max_lr': 1.0, 't0': 10, **kwargs})
