"""Tests for lrsched.decay: golden values from PyTorch, properties, exactness, errors."""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lrsched
from lrsched import decay, spec

INT32_MAX = 2**31 - 1
GOLDEN = json.loads((pathlib.Path(__file__).parent / 'golden' / 'torch_decay.json').read_text())
CASES = [c for c in GOLDEN['cases'] if c['name'] != 'sgdr']


def _id(case):
  return f"{case['torch']}-{'-'.join(f'{k}={v}' for k, v in case['torch_kwargs'].items())}"


@pytest.mark.parametrize('case', CASES, ids=_id)
def test_matches_pytorch(case):
  schedule = spec.REGISTRY[case['name']](**case['arguments'])
  values = schedule(jnp.asarray(case['steps'], dtype=jnp.int32))
  np.testing.assert_allclose(values, case['values'], rtol=1e-6, atol=0)


@pytest.mark.parametrize('ours, theirs', [
    (decay.linear(init_lr=0.1, end_lr=0.01, total_steps=100),
     optax.linear_schedule(0.1, 0.01, 100)),
    (decay.cosine(0.1, total_steps=100, min_lr=0.001),
     optax.cosine_decay_schedule(0.1, 100, alpha=0.01)),
    (decay.multistep(0.1, milestones=[30, 80], gamma=0.1),
     optax.piecewise_constant_schedule(0.1, {30: 0.1, 80: 0.1})),
], ids=['linear_schedule', 'cosine_decay_schedule', 'piecewise_constant_schedule'])
def test_matches_optax(ours, theirs):
  # The README's "From Optax" lines; past the end too (both hold).
  steps = jnp.arange(130)
  np.testing.assert_allclose(ours(steps), theirs(steps), rtol=1e-6, atol=3e-8)  # float32 ulps


def test_golden_covers_every_pytorch_decay():
  assert {c['torch'] for c in CASES} == {
      'StepLR', 'MultiStepLR', 'ExponentialLR', 'PolynomialLR', 'CosineAnnealingLR'}


# --------------------------------------------------------------------------------------
# Properties over random valid configurations

# Learning rates float32 represents to 1e-6 relative (no subnormals).
lrs = st.one_of(st.just(0.0), st.floats(1e-6, 10.0))
factors = st.floats(1e-3, 1.0)  # gamma in (0, 1]
# Tiny step counts (1..3) are where off-by-ones hide; large ones test int32 arithmetic.
counts = st.one_of(st.integers(1, 3), st.integers(1, 1000), st.integers(1, INT32_MAX))


@st.composite
def decays(draw):
  """(schedule, lowest value, highest value, final value or None) of a random decay."""
  lr = draw(lrs)
  family = draw(st.sampled_from(
      ['constant', 'linear', 'step_decay', 'multistep', 'exponential', 'inverse_time',
       'polynomial', 'cosine']))
  if family == 'constant':
    return decay.constant(lr), lr, lr, None
  if family == 'linear':
    end = draw(st.floats(0.0, 1.0)) * lr
    return decay.linear(lr, end, draw(counts)), end, lr, end
  if family == 'step_decay':
    return decay.step_decay(lr, draw(counts), draw(factors)), 0.0, lr, None
  if family == 'multistep':
    milestones = sorted(draw(st.sets(st.integers(1, INT32_MAX), min_size=1, max_size=6)))
    gamma = draw(factors)
    return decay.multistep(lr, milestones, gamma), 0.0, lr, lr * gamma ** len(milestones)
  if family == 'exponential':
    return (decay.exponential(lr, draw(factors), draw(counts), draw(st.booleans())), 0.0,
            lr, None)
  if family == 'inverse_time':
    rate = draw(st.floats(0.0, 100.0))
    return decay.inverse_time(lr, rate, draw(counts), draw(st.booleans())), 0.0, lr, None
  end = draw(st.floats(0.0, 1.0)) * lr
  if family == 'polynomial':
    power = draw(st.floats(0.05, 5.0))
    return decay.polynomial(lr, draw(counts), power, end), end, lr, end
  return decay.cosine(lr, draw(counts), end), end, lr, end


def probe_steps(schedule):
  """64 sorted steps (a fixed shape, so eager ops compile once): the start, the end."""
  total = schedule.total_steps or 1000
  extra = [total // 3, total // 2, total - 2, total - 1, total, total + 1, 2 * total,
           *schedule.boundaries, INT32_MAX - 1, INT32_MAX]
  extra = [min(max(s, 0), INT32_MAX) for s in extra]
  extra = (extra + [INT32_MAX] * 16)[:16]
  return np.sort(np.concatenate([np.arange(48), extra]).astype(np.int32))


@given(decays())
def test_decay_properties(config):
  schedule, low, high, final = config
  steps = probe_steps(schedule)
  values = np.asarray(schedule(steps), dtype=np.float64)
  tol = 1e-6 * high
  assert np.all(np.isfinite(values))
  assert np.all(values >= 0)
  assert np.all(values >= low - tol) and np.all(values <= high + tol)
  np.testing.assert_allclose(values[0], high, rtol=1e-6)
  # Monotone non-increasing, up to float32 rounding of the arithmetic.
  assert np.all(np.diff(values) <= tol)
  # Steps before 0 are step 0; far past the end is 2**31-1.
  np.testing.assert_array_equal(schedule(-7), schedule(0))
  np.testing.assert_array_equal(schedule(2**40), schedule(INT32_MAX))
  assert (schedule.total_steps is None) == (final is None)
  if final is not None:
    # Finite schedules hold their final value from total_steps on.
    np.testing.assert_allclose(schedule(schedule.total_steps), final, rtol=1e-6, atol=tol)
    np.testing.assert_array_equal(schedule(INT32_MAX), schedule(schedule.total_steps))


# One concrete configuration per family for the transformation tests.
FAMILIES = {
    'step_decay': (decay.step_decay, dict(lr=0.4, step_size=3, gamma=0.5)),
    'multistep': (decay.multistep, dict(lr=0.35, milestones=[5, 9], gamma=0.1)),
    'exponential': (decay.exponential, dict(lr=0.4, gamma=0.8, decay_steps=2)),
    'exponential_staircase': (decay.exponential,
                              dict(lr=0.4, gamma=0.8, decay_steps=2, staircase=True)),
    'inverse_time': (decay.inverse_time, dict(lr=0.4, decay_rate=0.5, decay_steps=3)),
    'polynomial': (decay.polynomial, dict(lr=0.4, total_steps=11, power=0.9, end_lr=0.01)),
    'cosine': (decay.cosine, dict(lr=0.4, total_steps=11, min_lr=0.01)),
}
# The hyper-parameter each family is vmapped over, and a few values for it.
SWEEPS = {
    'step_decay': ('gamma', [0.1, 0.5, 1.0]),
    'multistep': ('lr', [0.0, 0.35, 1.0]),
    'exponential': ('gamma', [0.5, 0.9, 1.0]),
    'exponential_staircase': ('lr', [0.1, 0.2]),
    'inverse_time': ('decay_rate', [0.0, 0.5, 2.0]),
    'polynomial': ('power', [0.5, 1.0, 2.0]),
    'cosine': ('lr', [0.1, 0.4, 1.0]),
}
STEPS = jnp.arange(-2, 30)


@pytest.mark.parametrize('family', FAMILIES)
def test_jit_matches_eager(family):
  constructor, kwargs = FAMILIES[family]
  schedule = constructor(**kwargs)
  np.testing.assert_allclose(jax.jit(schedule)(STEPS), schedule(STEPS), rtol=1e-6)


@pytest.mark.parametrize('family', FAMILIES)
def test_vmap_over_hyperparameter_matches_loop(family):
  constructor, kwargs = FAMILIES[family]
  name, values = SWEEPS[family]
  swept = jax.vmap(lambda v: constructor(**{**kwargs, name: v})(STEPS))(jnp.asarray(values))
  looped = np.stack([constructor(**{**kwargs, name: v})(STEPS) for v in values])
  np.testing.assert_allclose(swept, looped, rtol=1e-6)


@pytest.mark.parametrize('family', FAMILIES)
def test_vmap_over_steps_and_step_types(family):
  constructor, kwargs = FAMILIES[family]
  schedule = constructor(**kwargs)
  np.testing.assert_allclose(jax.vmap(schedule)(STEPS), schedule(STEPS), rtol=1e-6)
  last = schedule(INT32_MAX)
  for huge in (2**40, np.int64(2**40), jnp.asarray(INT32_MAX), INT32_MAX):
    np.testing.assert_array_equal(schedule(huge), last)
  for huge in (1e12, jnp.float32(3e9), float(2**40)):
    value = schedule(huge)
    assert np.isfinite(value)
    np.testing.assert_array_equal(value, schedule(2**31 - 128))
  np.testing.assert_array_equal(schedule(5.9), schedule(5))
  np.testing.assert_array_equal(schedule(jnp.float32(-3.5)), schedule(0))


# --------------------------------------------------------------------------------------
# Exact values


def test_formulas():
  t = np.arange(12)
  np.testing.assert_allclose(decay.step_decay(2.0, 4, 0.5)(t), 2.0 * 0.5 ** (t // 4))
  np.testing.assert_allclose(decay.exponential(2.0, 0.5, 4)(t), 2.0 * 0.5 ** (t / 4),
                             rtol=1e-6)
  np.testing.assert_allclose(decay.exponential(2.0, 0.5, 4, staircase=True)(t),
                             2.0 * 0.5 ** (t // 4), rtol=1e-6)
  np.testing.assert_allclose(decay.inverse_time(2.0, 0.5, 4)(t), 2.0 / (1 + 0.5 * t / 4),
                             rtol=1e-6)
  np.testing.assert_allclose(decay.inverse_time(2.0, 0.5, 4, staircase=True)(t),
                             2.0 / (1 + 0.5 * (t // 4)), rtol=1e-6)
  np.testing.assert_allclose(decay.polynomial(2.0, 8, 2.0, 0.5)(t),
                             1.5 * (1 - np.minimum(t, 8) / 8) ** 2 + 0.5, rtol=1e-6)
  np.testing.assert_allclose(decay.cosine(2.0, 8, 0.5)(t),
                             0.5 + 0.75 * (1 + np.cos(np.pi * np.minimum(t, 8) / 8)),
                             rtol=1e-6)


def test_super_convergence_multistep():
  schedule = decay.multistep(0.35, [50_000, 70_000], 0.1)
  steps = [0, 49_999, 50_000, 69_999, 70_000, 10**6]
  np.testing.assert_allclose(schedule(jnp.asarray(steps)),
                             [0.35, 0.35, 0.035, 0.035, 0.0035, 0.0035], rtol=1e-6)
  assert repr(schedule) == 'multistep(lr=0.35, milestones=[50000, 70000], gamma=0.1)'
  assert schedule.boundaries == (0, 50_000, 70_000)
  assert schedule.total_steps == 70_000


def test_milestones_are_exact_near_int32_max():
  # float32 rounds 2**31 - 3 up to 2**31: the count must be done in int32.
  schedule = decay.multistep(1.0, [INT32_MAX - 2, INT32_MAX], 0.5)
  np.testing.assert_array_equal(
      schedule(jnp.asarray([INT32_MAX - 3, INT32_MAX - 2, INT32_MAX - 1, INT32_MAX])),
      [1.0, 0.5, 0.5, 0.25])
  step = decay.step_decay(1.0, 2**30 + 3, 0.5)
  np.testing.assert_array_equal(step(jnp.asarray([2**30 + 2, 2**30 + 3])), [1.0, 0.5])
  stair = decay.exponential(1.0, 0.5, 2**30 + 3, staircase=True)
  np.testing.assert_array_equal(stair(jnp.asarray([2**30 + 2, 2**30 + 3])), [1.0, 0.5])


def test_cosine_and_polynomial_are_accurate_at_the_end():
  # The last steps of a long cosine: 1 + cos(pi t/T) cancels in float32, sin^2 does not.
  total = 10**6
  steps = np.array([total - 3, total - 2, total - 1])
  exact = 0.5 * (1 + np.cos(np.pi * steps / total))
  np.testing.assert_allclose(decay.cosine(1.0, total)(steps), exact, rtol=1e-5)
  np.testing.assert_allclose(decay.polynomial(1.0, total, 2.0)(steps),
                             ((total - steps) / total) ** 2, rtol=1e-5)


def test_python_gamma_keeps_float64_precision():
  # float32(0.9999) is off by 1e-8, which 10**5 steps would turn into a 1e-3 error.
  np.testing.assert_allclose(decay.exponential(1.0, 0.9999)(10**5), 0.9999**10**5,
                             rtol=1e-5)


def test_tiny_schedules():
  np.testing.assert_allclose(decay.cosine(1.0, 1)(jnp.arange(3)), [1.0, 0.0, 0.0])
  np.testing.assert_allclose(decay.polynomial(1.0, 2, 1.0, 0.5)(jnp.arange(4)),
                             [1.0, 0.75, 0.5, 0.5])
  np.testing.assert_allclose(decay.step_decay(1.0, 1, 0.5)(jnp.arange(3)), [1.0, 0.5, 0.25])
  np.testing.assert_allclose(decay.multistep(1.0, [1])(jnp.arange(3)), [1.0, 0.1, 0.1],
                             rtol=1e-6)


def test_cosine_holds_after_the_end():
  # PyTorch's CosineAnnealingLR climbs back after T_max; ours holds min_lr.
  schedule = decay.cosine(1.0, 10, 0.1)
  np.testing.assert_allclose(schedule(jnp.arange(10, 40)), 0.1, rtol=1e-6)


@pytest.mark.parametrize('schedule, boundaries, total_steps', [
    (decay.step_decay(1.0, 10), (0, 10, 20, 30, 40), None),
    (decay.step_decay(1.0, 2**30), (0, 2**30), None),
    (decay.multistep(1.0, [3, 8]), (0, 3, 8), 8),
    (decay.exponential(1.0, 0.5), (0,), None),
    (decay.exponential(1.0, 0.5, 7, staircase=True), (0, 7, 14, 21, 28), None),
    (decay.inverse_time(1.0, 0.5, 7), (0,), None),
    (decay.polynomial(1.0, 100), (0, 100), 100),
    (decay.cosine(1.0, 100), (0, 100), 100),
])
def test_boundaries_and_total_steps(schedule, boundaries, total_steps):
  assert schedule.boundaries == boundaries
  assert schedule.total_steps == total_steps


@pytest.mark.parametrize('family', FAMILIES)
def test_repr_rebuilds_the_schedule(family):
  constructor, kwargs = FAMILIES[family]
  schedule = constructor(**kwargs)
  rebuilt = eval(repr(schedule), dict(spec.REGISTRY))
  assert repr(rebuilt) == repr(schedule)
  np.testing.assert_array_equal(rebuilt(STEPS), schedule(STEPS))
  assert spec.REGISTRY[family.removesuffix('_staircase')] is constructor


def test_works_inside_inject_hyperparams():
  import optax

  schedule = decay.cosine(0.4, 5, 0.1)
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
  params = jnp.zeros(3)
  state = tx.init(params)
  used = []
  for _ in range(7):
    updates, state = tx.update(jnp.ones(3), state, params)
    used.append(-float(updates[0]))  # sgd: -lr * gradient, with gradient 1.
  np.testing.assert_allclose(used, schedule(jnp.arange(7)), rtol=1e-6)


# --------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize('build, match', [
    (lambda: decay.step_decay(-0.1, 10), r'step_decay: lr must be >= 0'),
    (lambda: decay.step_decay(0.1, 0), r'step_size must be an int in \[1'),
    (lambda: decay.step_decay(0.1, 2.5), r'step_size must be a Python int'),
    (lambda: decay.step_decay(0.1, 10, 1.5), r'gamma must be in \(0, 1\].*increase'),
    (lambda: decay.step_decay(0.1, 10, 0.0), r'gamma must be in \(0, 1\]'),
    (lambda: decay.multistep(0.1, []), r'milestones must hold at least one'),
    (lambda: decay.multistep(0.1, [0, 5]), r'each of milestones must be an int in \[1'),
    (lambda: decay.multistep(0.1, [5, 5]), r'milestones must be strictly increasing'),
    (lambda: decay.multistep(0.1, [7, 3]), r'milestones must be strictly increasing'),
    (lambda: decay.multistep(0.1, 5), r'milestones must be a sequence'),
    (lambda: decay.multistep(0.1, [2.5]), r'each of milestones must be a Python int'),
    (lambda: decay.multistep(0.1, [5], gamma=2.0), r'multistep: gamma must be in \(0, 1\]'),
    (lambda: decay.exponential(0.1, 1.01), r'exponential: gamma must be in \(0, 1\]'),
    (lambda: decay.exponential(0.1, -0.5), r'exponential: gamma must be in \(0, 1\]'),
    (lambda: decay.exponential(0.1, 0.5, 0), r'decay_steps must be an int in \[1'),
    (lambda: decay.exponential(math.nan, 0.5), r'exponential: lr must be finite'),
    (lambda: decay.inverse_time(0.1, -0.1), r'inverse_time: decay_rate must be in \[0, inf\]'),
    (lambda: decay.inverse_time(0.1, 0.5, 0), r'decay_steps must be an int in \[1'),
    (lambda: decay.polynomial(0.1, 100, 0.0), r'polynomial: power must be in \(0, inf\]'),
    (lambda: decay.polynomial(0.1, 100, -1.0), r'polynomial: power must be in \(0, inf\]'),
    (lambda: decay.polynomial(0.1, 100, 1.0, 0.2), r'end_lr must be <= lr'),
    (lambda: decay.polynomial(0.1, 100, 1.0, -0.1), r'end_lr must be >= 0'),
    (lambda: decay.polynomial(0.1, 0), r'polynomial: total_steps must be an int in \[1'),
    (lambda: decay.cosine(0.1, 100, 0.2), r'cosine: min_lr must be <= lr'),
    (lambda: decay.cosine(0.1, 0), r'cosine: total_steps must be an int in \[1'),
    (lambda: decay.cosine('fast', 10), r'cosine: lr must be a number'),
    (lambda: decay.cosine(jnp.asarray([0.1, -0.1]), 10), r'cosine: lr must be >= 0'),
])
def test_bad_arguments_raise(build, match):
  with pytest.raises(ValueError, match=match):
    build()


def test_array_hyper_parameters_with_a_scalar_step():
  # A sweep may pass an array of learning rates and evaluate one step for all of them.
  lrs = jnp.array([0.1, 0.2, 0.4])
  np.testing.assert_allclose(lrsched.constant(lrs)(3), lrs)
  np.testing.assert_allclose(lrsched.cosine(lrs, 10)(0), lrs)
  np.testing.assert_allclose(lrsched.step_decay(lrs, step_size=2, gamma=0.5)(2), lrs / 2)


# --------------------------------------------------------------------------------------
# Under jit: the end values and the bounds hold as they do eagerly (a jitted linear used
# to end at -3.7e-9 instead of 0: XLA multiplies by 1/T where eager code divides by T).

_LR = st.floats(0.0, 10.0, allow_subnormal=False)


def _ulps(x, y) -> float:
  x, y = np.float32(x), np.float32(y)
  return float(abs(x - y) / np.spacing(max(abs(x), abs(y), np.float32(1e-30))))


@given(init=_LR, end=_LR, total=st.integers(1, INT32_MAX), at=st.floats(0.0, 1.0))
def test_linear_under_jit_ends_exactly_and_stays_within_its_bounds(init, end, total, at):
  schedule = lrsched.linear(init_lr=init, end_lr=end, total_steps=total)
  jitted = jax.jit(schedule)
  low, high = np.float32(min(init, end)), np.float32(max(init, end))
  middle = int(at * total)
  for step, expected in ((0, init), (total, end), (min(total + 1, INT32_MAX), end),
                         (INT32_MAX, end), (middle, None)):
    eager, compiled = np.float32(schedule(step)), np.float32(jitted(step))
    if expected is not None:
      assert eager == compiled == np.float32(expected), (step, eager, compiled)
    assert low <= compiled <= high and low <= eager <= high
    assert _ulps(eager, compiled) <= 2, (step, eager, compiled)


@pytest.mark.parametrize('make', [
    lambda: lrsched.cosine(0.1, 3),
    lambda: lrsched.polynomial(0.1, 3, power=2.0),
    lambda: lrsched.one_cycle(max_lr=0.8, total_steps=3),
    lambda: lrsched.warmup(lrsched.cosine(0.1, 7), warmup_steps=3),
    lambda: lrsched.linear(init_lr=0.1, end_lr=0.0, total_steps=3),
])
def test_decays_to_zero_end_at_zero_under_jit(make):
  schedule = make()
  for step in (schedule.total_steps, schedule.total_steps + 1, INT32_MAX):
    value = float(jax.jit(schedule)(step))
    assert value >= 0.0 and value == float(schedule(step)), (step, value)
