"""Tests of lrsched.cyclical: CLR (Smith, 2017) and cyclical momentum vs PyTorch's CyclicLR."""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lrsched
from lrsched import cyclical

GOLDEN = pathlib.Path(__file__).parent / 'golden' / 'torch_cyclical.json'
# The jnp twins of the scale functions in golden/torch_cyclical.py.
SCALE_FNS = {
    'inverse': lambda x: 1 / (1 + 0.1 * x),
    'power': lambda x: 0.9**x,
}
N = 1024  # every property test evaluates steps 0..N-1 at once (one shape: few compilations)
STEPS = jnp.arange(N)
INT32_MAX = 2**31 - 1


def _golden_cases():
  cases = json.loads(GOLDEN.read_text())['cases']
  return [c for c in cases if c['scheduler'] == 'CyclicLR']


def _split_kwargs(kwargs):
  """CyclicLR kwargs -> (lr kwargs, momentum kwargs) of cyclic / cyclic_momentum."""
  kwargs = dict(kwargs)
  if 'scale_fn' in kwargs:
    kwargs['scale_fn'] = SCALE_FNS[kwargs['scale_fn']]
  momentum = {k: kwargs.pop(k) for k in ('base_momentum', 'max_momentum') if k in kwargs}
  lr = {k: v for k, v in kwargs.items()}
  momentum.update({k: v for k, v in kwargs.items() if k not in ('base_lr', 'max_lr')})
  return lr, momentum


@pytest.mark.parametrize('case', _golden_cases(), ids=lambda c: json.dumps(c['kwargs']))
def test_matches_torch_cyclic_lr(case):
  lr_kwargs, momentum_kwargs = _split_kwargs(case['kwargs'])
  steps = jnp.arange(len(case['lr']))
  np.testing.assert_allclose(lrsched.cyclic(**lr_kwargs)(steps), case['lr'], rtol=1e-5,
                             atol=1e-12)
  np.testing.assert_allclose(lrsched.cyclic_momentum(**momentum_kwargs)(steps),
                             case['momentum'], rtol=1e-5, atol=1e-12)


def test_golden_fixture_covers_the_brief():
  kwargs = [c['kwargs'] for c in _golden_cases()]
  modes = {k.get('mode', 'triangular') for k in kwargs if 'scale_fn' not in k}
  assert modes == set(cyclical.MODES)
  assert {k['scale_mode'] for k in kwargs if 'scale_fn' in k} == set(cyclical.SCALE_MODES)
  assert any(k.get('step_size_down', k['step_size_up']) != k['step_size_up'] for k in kwargs)
  assert len({k['gamma'] for k in kwargs if k.get('mode') == 'exp_range'}) >= 3


@pytest.mark.parametrize('name, kwargs', [
    ('triangular', dict(mode='triangular')),
    ('triangular2', dict(mode='triangular2')),
    ('exp_range', dict(mode='exp_range', gamma=0.97)),
])
def test_shortcuts_are_cyclic(name, kwargs):
  shortcut_kwargs = dict(base_lr=0.1, max_lr=3.0, step_size=7)
  if 'gamma' in kwargs:
    shortcut_kwargs['gamma'] = kwargs['gamma']
  schedule = getattr(cyclical, name)(**shortcut_kwargs)
  reference = lrsched.cyclic(0.1, 3.0, step_size_up=7, **kwargs)
  np.testing.assert_array_equal(schedule(STEPS), reference(STEPS))
  assert repr(schedule) == f'{name}(' + ', '.join(
      f'{k}={v!r}' for k, v in shortcut_kwargs.items()) + ')'
  assert schedule.boundaries == (0, 7, 14)
  assert schedule.total_steps is None


def test_caffe_triangular_formula():
  """Caffe's triangular policy (Smith's CLR code), written independently."""
  base, peak, size = 0.1, 3.0, 50
  t = np.arange(N)
  cycle = np.floor(1 + t / (2 * size))
  x = np.abs(t / size - 2 * cycle + 1)
  expected = base + (peak - base) * np.maximum(0, 1 - x)
  np.testing.assert_allclose(cyclical.triangular(base, peak, size)(STEPS), expected, rtol=1e-6)


@pytest.mark.parametrize('window', cyclical.WINDOWS)
def test_windows_share_endpoints_and_peak(window):
  schedule = lrsched.cyclic(0.5, 2.5, step_size_up=8, step_size_down=4, window=window)
  values = np.asarray(schedule(jnp.array([0, 8, 12, 20, 24])))
  np.testing.assert_allclose(values, [0.5, 2.5, 0.5, 2.5, 0.5], rtol=1e-6)
  momentum = lrsched.cyclic_momentum(0.8, 0.9, step_size_up=8, step_size_down=4,
                                     window=window)
  np.testing.assert_allclose(momentum(jnp.array([0, 8, 12])), [0.9, 0.8, 0.9], rtol=1e-6)


@pytest.mark.parametrize('window, height', [
    ('triangular', lambda f: f),
    ('welch', lambda f: 1 - (1 - f)**2),
    ('hann', lambda f: 0.5 * (1 - np.cos(np.pi * f))),
])
def test_window_shapes(window, height):
  up, down = 10, 5
  schedule = lrsched.cyclic(1.0, 3.0, step_size_up=up, step_size_down=down, window=window)
  t = np.arange(2 * (up + down))
  p = t % (up + down)
  frac = np.where(p <= up, p / up, (up + down - p) / down)
  np.testing.assert_allclose(schedule(jnp.asarray(t)), 1.0 + 2.0 * height(frac), rtol=1e-6)


def test_windows_differ_inside_a_half_cycle():
  values = {w: float(lrsched.cyclic(0.0, 1.0, 10, window=w)(3)) for w in cyclical.WINDOWS}
  # Linear 0.3; Welch 1 - 0.7**2 = 0.51; Hann sin(0.15 pi)**2 ~= 0.206.
  np.testing.assert_allclose([values['triangular'], values['welch'], values['hann']],
                             [0.3, 0.51, math.sin(0.15 * math.pi)**2], rtol=1e-6)


def test_cyclic_momentum_mirrors_the_lr():
  kwargs = dict(step_size_up=9, step_size_down=4, mode='exp_range', gamma=0.995,
                window='hann')
  lr = np.asarray(lrsched.cyclic(0.2, 1.2, **kwargs)(STEPS))
  momentum = np.asarray(lrsched.cyclic_momentum(0.85, 0.95, **kwargs)(STEPS))
  np.testing.assert_allclose((lr - 0.2) / 1.0, (0.95 - momentum) / 0.1, atol=2e-6)


def test_position_is_exact_at_the_last_int32_step():
  schedule = cyclical.triangular(0.1, 3.0, step_size=3)
  position = INT32_MAX % 6  # the cycle position, computed with Python ints
  assert position == 1
  value = schedule(INT32_MAX)
  assert value == schedule(position)  # bit for bit: same position, same float arithmetic
  np.testing.assert_allclose(value, 0.1 + 2.9 * position / 3, rtol=1e-7)
  for step in (INT32_MAX - 1, INT32_MAX - 5, 2**30 + 7, 2**24 + 1):
    assert schedule(step) == schedule(step % 6), step
  # The jitted schedule sees the same int32 step.
  assert jax.jit(schedule)(jnp.int32(INT32_MAX)) == value


def test_triangular2_and_exp_range_decay_to_base_without_nan():
  for schedule in (cyclical.triangular2(0.1, 3.0, 3), cyclical.exp_range(0.1, 3.0, 3, 0.9),
                   cyclical.exp_range(0.1, 3.0, 3, 0.999999),
                   lrsched.cyclic_momentum(0.8, 0.9, 3, mode='exp_range', gamma=0.9)):
    values = np.asarray(schedule(jnp.array([10**9, 2**30, INT32_MAX])))
    assert np.all(np.isfinite(values))
    np.testing.assert_allclose(values, schedule(0), rtol=1e-6)  # base_lr / max_momentum
    assert np.isfinite(schedule(2**40))


def test_exp_range_gamma_one_is_triangular():
  np.testing.assert_allclose(cyclical.exp_range(0.1, 1.0, 5, 1.0)(STEPS),
                             cyclical.triangular(0.1, 1.0, 5)(STEPS), rtol=1e-7)


def _exp_range_fraction64(t, step_size, gamma):
  """PyTorch's exp_range amplitude fraction, in float64 numpy."""
  t = np.asarray(t, np.float64)
  cycle = np.floor(1 + t / (2 * step_size))
  x = np.abs(t / step_size - 2 * cycle + 1)
  return np.maximum(0, 1 - x) * gamma**t


# Steps near 1e5 (where 0.99994**t ~ 2e-3), at and around peaks of step_size=2000.
LATE_STEPS = np.array([98_000, 98_500, 99_000, 100_001, 101_999, 102_000, 104_000, 105_000])


def test_exp_range_keeps_a_python_gamma_in_float64_at_large_steps():
  # float32(0.99994) is off by 2.2e-8, which gamma**1e5 turns into a 2.3e-3 relative error.
  gamma, size = 0.99994, 2000
  fraction = _exp_range_fraction64(LATE_STEPS, size, gamma)
  np.testing.assert_allclose(cyclical.exp_range(0.0, 1.0, size, gamma)(jnp.asarray(LATE_STEPS)),
                             fraction, rtol=1e-5)
  np.testing.assert_allclose(
      lrsched.cyclic(0.0, 1.0, size, mode='exp_range', gamma=gamma)(jnp.asarray(LATE_STEPS)),
      fraction, rtol=1e-5)


def test_exp_range_momentum_keeps_a_python_gamma_in_float64():
  # The absolute error of gamma**t is largest near t = -1 / log(gamma) ~ 16.7k steps.
  gamma, size = 0.99994, 2000
  steps = np.concatenate([np.arange(14_000, 22_001, 500), LATE_STEPS])
  expected = 0.95 - 0.1 * _exp_range_fraction64(steps, size, gamma)
  momentum = lrsched.cyclic_momentum(0.85, 0.95, size, mode='exp_range', gamma=gamma)
  np.testing.assert_allclose(momentum(jnp.asarray(steps)), expected, rtol=0, atol=2e-7)


def test_exp_range_array_gamma_still_works():
  schedule = cyclical.exp_range(0.0, 1.0, 50, jnp.float32(0.99))
  np.testing.assert_allclose(schedule(jnp.arange(200)),
                             _exp_range_fraction64(np.arange(200), 50, float(np.float32(0.99))),
                             rtol=1e-5, atol=1e-12)


def test_scale_fn_out_of_contract_is_clipped():
  schedule = lrsched.cyclic(0.1, 1.0, 4, scale_fn=lambda c: 3.0 - c)  # 2, 1, 0, -1, ...
  values = np.asarray(schedule(jnp.arange(40)))
  assert values.min() >= 0.1 - 1e-7 and values.max() <= 1.0 + 1e-7


def test_huge_cycle_has_one_cycle():
  schedule = lrsched.cyclic(0.0, 1.0, step_size_up=INT32_MAX, step_size_down=INT32_MAX)
  np.testing.assert_allclose(schedule(jnp.array([0, 2**30, INT32_MAX])), [0, 0.5, 1],
                             rtol=1e-6)
  assert schedule.boundaries == (0, INT32_MAX)


def test_inside_optax_inject_hyperparams():
  lr = lrsched.cyclic(0.01, 0.1, step_size_up=3, step_size_down=2)
  momentum = lrsched.cyclic_momentum(0.8, 0.9, step_size_up=3, step_size_down=2)
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=momentum)
  params = {'w': jnp.ones(3)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  seen_lr, seen_momentum = [], []
  for _ in range(12):
    _, state = update({'w': jnp.ones(3)}, state, params)
    seen_lr.append(state.hyperparams['learning_rate'])
    seen_momentum.append(state.hyperparams['momentum'])
  # After update k the state holds the values that update k used: those of step k.
  np.testing.assert_allclose(seen_lr, lr(jnp.arange(12)), rtol=1e-6)
  np.testing.assert_allclose(seen_momentum, momentum(jnp.arange(12)), rtol=1e-6)


# --------------------------------------------------------------------------------------
# Properties over random valid configurations


@st.composite
def cyclic_configs(draw):
  base = draw(st.floats(0.0, 1.0))
  amplitude = draw(st.floats(0.0, 2.0))
  up = draw(st.integers(1, 200))
  down = draw(st.one_of(st.none(), st.integers(1, 200)))
  mode = draw(st.sampled_from(cyclical.MODES))
  gamma = draw(st.floats(0.9, 1.0)) if mode == 'exp_range' else 1.0
  custom = draw(st.sampled_from([None, ('inverse', 'cycle'), ('inverse', 'iterations')]))
  window = draw(st.sampled_from(cyclical.WINDOWS))
  kwargs = dict(step_size_up=up, step_size_down=down, mode=mode, gamma=gamma, window=window)
  if custom:
    kwargs.update(scale_fn=SCALE_FNS[custom[0]], scale_mode=custom[1])
  return base, base + amplitude, kwargs


def _slope_bound(kwargs, amplitude):
  """The largest change between adjacent steps: window slope plus the scale's change."""
  up = kwargs['step_size_up']
  down = kwargs['step_size_down'] or up
  window_slope = {'triangular': 1.0, 'welch': 2.0, 'hann': math.pi / 2}[kwargs['window']]
  if 'scale_fn' in kwargs:
    scale_change = 0.1 if kwargs['scale_mode'] == 'iterations' else 0.0
  else:
    scale_change = 1 - kwargs['gamma'] if kwargs['mode'] == 'exp_range' else 0.0
  return amplitude * (window_slope / min(up, down) + scale_change)


def _is_periodic(kwargs):
  return 'scale_fn' not in kwargs and kwargs['mode'] == 'triangular'


@given(cyclic_configs())
def test_cyclic_properties(config):
  base, peak, kwargs = config
  schedule = lrsched.cyclic(base, peak, **kwargs)
  momentum = lrsched.cyclic_momentum(0.8, 0.95, **kwargs)
  values = np.asarray(schedule(STEPS), dtype=np.float64)
  tol = 1e-6 * (1 + peak)
  assert np.all(np.isfinite(values))
  assert values.min() >= base - tol and values.max() <= peak + tol
  assert values.min() >= 0
  assert np.abs(np.diff(values)).max() <= _slope_bound(kwargs, peak - base) + tol
  moms = np.asarray(momentum(STEPS))
  assert moms.min() >= 0.8 - 1e-6 and moms.max() <= 0.95 + 1e-6
  if _is_periodic(kwargs):
    period = kwargs['step_size_up'] + (kwargs['step_size_down'] or kwargs['step_size_up'])
    np.testing.assert_array_equal(values[period:], values[:-period])
  # Steps before 0 are step 0; huge steps are finite and clamp to 2**31-1.
  # (Exact comparisons are between evaluations of one shape: XLA's vectorized sin may
  # differ from its scalar sin in the last bit.)
  np.testing.assert_array_equal(schedule(jnp.array([-1, -1000])), schedule(jnp.array([0, 0])))
  assert schedule(-(2**40)) == schedule(0)
  last = schedule(INT32_MAX)
  assert np.isfinite(last) and schedule(2**40) == last
  assert schedule(jnp.float32(3e9)) == schedule(2**31 - 128)
  assert np.all(np.isfinite(momentum(jnp.array([INT32_MAX, 0]))))


@settings(max_examples=8)
@given(cyclic_configs())
def test_cyclic_jit_and_vmap(config):
  base, peak, kwargs = config
  schedule = lrsched.cyclic(base, peak, **kwargs)
  np.testing.assert_allclose(jax.jit(schedule)(STEPS), schedule(STEPS), rtol=1e-6, atol=1e-7)
  # float32 values throughout, so that the swept and the looped hyper-parameters agree.
  base = float(np.float32(base))
  peaks = jnp.array([peak, peak + 0.5, base], dtype=jnp.float32)
  swept = jax.vmap(lambda m: lrsched.cyclic(base, m, **kwargs)(STEPS))(peaks)
  looped = [lrsched.cyclic(base, float(m), **kwargs)(STEPS) for m in peaks]
  np.testing.assert_allclose(swept, np.stack(looped), rtol=1e-6, atol=1e-7)
  momenta = jnp.array([0.9, 0.95])
  swept = jax.vmap(lambda m: lrsched.cyclic_momentum(0.8, m, **kwargs)(STEPS))(momenta)
  looped = [lrsched.cyclic_momentum(0.8, float(m), **kwargs)(STEPS) for m in momenta]
  np.testing.assert_allclose(swept, np.stack(looped), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------
# Argument checks


@pytest.mark.parametrize('constructor, kwargs, names', [
    ('cyclic', dict(base_lr=-0.1, max_lr=1.0), ['base_lr', '>= 0']),
    ('cyclic', dict(base_lr=0.1, max_lr=float('inf')), ['max_lr', 'finite']),
    ('cyclic', dict(base_lr=0.5, max_lr=0.1), ['base_lr', 'max_lr', '<=']),
    ('cyclic', dict(base_lr='0.1', max_lr=1.0), ['base_lr']),
    ('cyclic', dict(base_lr=None, max_lr=1.0), ['base_lr']),
    ('cyclic', dict(base_lr=0.1, max_lr=1.0, step_size_up=0), ['step_size_up']),
    ('cyclic', dict(base_lr=0.1, max_lr=1.0, step_size_up=2.5), ['step_size_up']),
    ('cyclic', dict(base_lr=0.1, max_lr=1.0, step_size_down=0), ['step_size_down']),
    ('cyclic', dict(base_lr=0.1, max_lr=1.0, mode='cosine'),
     ['mode', "'triangular'", "'triangular2'", "'exp_range'"]),
    ('cyclic', dict(base_lr=0.1, max_lr=1.0, window='gauss'),
     ['window', "'welch'", "'hann'"]),
    ('cyclic', dict(base_lr=0.1, max_lr=1.0, scale_mode='epoch'),
     ['scale_mode', "'cycle'", "'iterations'"]),
    ('cyclic', dict(base_lr=0.1, max_lr=1.0, mode='exp_range', gamma=0.0), ['gamma', '(0, 1]']),
    ('cyclic', dict(base_lr=0.1, max_lr=1.0, mode='exp_range', gamma=1.01), ['gamma']),
    ('cyclic', dict(base_lr=0.1, max_lr=1.0, gamma=float('nan')), ['gamma']),
    ('cyclic', dict(base_lr=0.1, max_lr=1.0, scale_fn=0.5), ['scale_fn']),
    ('cyclic', dict(base_lr=0.1, max_lr=1.0, scale_fn=lambda c: math.exp(-c)),
     ['scale_fn', 'traceable']),
    ('cyclic', dict(base_lr=0.1, max_lr=1.0, scale_fn=lambda c: jnp.ones(3) * c),
     ['scale_fn', 'scalar']),
    ('triangular', dict(base_lr=0.1, max_lr=1.0, step_size=0), ['step_size']),
    ('triangular2', dict(base_lr=2.0, max_lr=1.0, step_size=3), ['base_lr', 'max_lr']),
    ('exp_range', dict(base_lr=0.1, max_lr=1.0, step_size=3, gamma=2.0), ['gamma']),
    ('exp_range', dict(base_lr=0.1, max_lr=1.0, step_size=None, gamma=0.9), ['step_size']),
    ('cyclic_momentum', dict(base_momentum=1.0), ['base_momentum', '[0, 1)']),
    ('cyclic_momentum', dict(max_momentum=-0.1), ['max_momentum']),
    ('cyclic_momentum', dict(base_momentum=0.95, max_momentum=0.9),
     ['base_momentum', 'max_momentum']),
    ('cyclic_momentum', dict(step_size_up=-3), ['step_size_up']),
    ('cyclic_momentum', dict(window='box'), ['window']),
])
def test_bad_arguments_raise(constructor, kwargs, names):
  with pytest.raises(ValueError) as error:
    getattr(cyclical, constructor)(**kwargs)
  message = str(error.value)
  assert message.startswith(constructor + ':')
  for name in names:
    assert name in message
