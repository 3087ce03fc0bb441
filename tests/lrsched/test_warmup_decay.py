"""Tests for lrsched.warmup_decay (wsd, rsqrt): golden values from Optax and the authors'
formulas, the library's guarantees under jit and vmap, spec strings and errors."""

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
from lrsched.warmup_decay import WSD_DECAYS

INT32_MAX = 2**31 - 1


def values(schedule, steps):
  return np.asarray(schedule(jnp.asarray(steps, jnp.int32)), np.float64)


# --------------------------------------------------------------------------------------
# Golden values


@pytest.mark.parametrize('warmup, init, final', [(0, 0.0, 0.0), (50, 0.0, 1e-3),
                                                 (120, 1e-4, 0.0)])
def test_wsd_without_a_stable_phase_is_optaxs_warmup_cosine(warmup, init, final):
  total = 400
  ours = lrsched.wsd(0.3, total, warmup_steps=warmup, decay_steps=total - warmup,
                     decay='cosine', init_lr=init, final_lr=final)
  theirs = optax.warmup_cosine_decay_schedule(init, 0.3, warmup, total, final)
  steps = np.arange(total + 20)
  np.testing.assert_allclose(values(ours, steps), values(theirs, steps), rtol=2e-5, atol=1e-7)


TORCH_WSD = json.loads((pathlib.Path(__file__).parent / 'golden' / 'torch_wsd.json').read_text())


@pytest.mark.parametrize('case', TORCH_WSD['cases'],
                         ids=lambda c: '-'.join(str(v) for v in c['arguments'].values()))
def test_wsd_matches_pytorchs_sequential_lr_recipe(case):
  # LinearLR warmup, ConstantLR(factor=1), then LinearLR or CosineAnnealingLR, chained with
  # SequentialLR (golden/torch_wsd.py).
  steps = np.arange(case['steps'])
  np.testing.assert_allclose(values(lrsched.wsd(**case['arguments']), steps), case['values'],
                             rtol=1e-6, atol=0)


def test_wsd_exponential_matches_optaxs_warmup_exponential():
  # Optax's decay from the end of the warmup: rate = final / peak over the decay steps.
  ours = lrsched.wsd(0.5, 300, warmup_steps=100, decay_steps=200, decay='exponential',
                     final_lr=0.005)
  theirs = optax.warmup_exponential_decay_schedule(0.0, 0.5, 100, 200, 0.01, end_value=0.005)
  steps = np.arange(320)
  np.testing.assert_allclose(values(ours, steps), values(theirs, steps), rtol=2e-5, atol=1e-8)


def reference_wsd(t, peak, total, warmup, decay_steps, decay, init, final):
  """The formula of the docstring, in float64."""
  if t < warmup:
    return init + (peak - init) * t / warmup
  start = total - decay_steps
  if t < start:
    return peak
  u = min(t - start, decay_steps) / decay_steps
  if decay == 'exponential':
    return peak * (final / peak) ** u
  g = {'linear': 1 - u, 'cosine': math.cos(math.pi * u / 2) ** 2, 'sqrt': 1 - math.sqrt(u)}
  return final + (peak - final) * g[decay]


@pytest.mark.parametrize('decay', WSD_DECAYS)
def test_wsd_matches_its_formula(decay):
  kwargs = dict(peak=0.8, total=1000, warmup=100, decay_steps=250, decay=decay,
                init=0.01, final=0.002)
  schedule = lrsched.wsd(0.8, 1000, warmup_steps=100, decay_steps=250, decay=decay,
                         init_lr=0.01, final_lr=0.002)
  steps = np.arange(0, 1100, 7)
  expected = [reference_wsd(t, **kwargs) for t in steps]
  np.testing.assert_allclose(values(schedule, steps), expected, rtol=2e-6)
  assert float(schedule(1000)) == np.float32(0.002) == float(schedule(INT32_MAX))


def test_wsd_default_decay_is_the_last_fifth_as_1_minus_sqrt():
  schedule = lrsched.wsd(1.0, 1000)
  assert schedule.boundaries == (0, 800, 1000)
  assert float(schedule(799)) == 1.0 and float(schedule(800)) == 1.0
  assert float(schedule(900)) == pytest.approx(1 - math.sqrt(0.5), rel=1e-6)


def reference_rsqrt(t, peak, warmup, total=None, cooldown=0):
  """Vaswani et al.'s d^-0.5 min(t^-0.5, t W^-1.5), scaled to peak at W, times the
  cooldown's linear factor."""
  if total is not None:
    t = min(t, total)
  if t == 0:
    return 0.0
  scale = peak * math.sqrt(warmup)  # so that the value at W is peak
  value = scale * min(t ** -0.5, t * warmup ** -1.5)
  if cooldown:
    value *= min(1.0, max(total - t, 0) / cooldown)
  return value


@pytest.mark.parametrize('total, cooldown', [(None, 0), (5000, 0), (5000, 1000)])
def test_rsqrt_matches_the_transformer_formula(total, cooldown):
  schedule = lrsched.rsqrt(2e-3, 400, total_steps=total, cooldown_steps=cooldown)
  steps = np.arange(0, 6000, 13)
  expected = [reference_rsqrt(t, 2e-3, 400, total, cooldown) for t in steps]
  np.testing.assert_allclose(values(schedule, steps), expected, rtol=2e-6, atol=1e-12)


# --------------------------------------------------------------------------------------
# Properties over random valid configurations, eager and jitted


@st.composite
def wsd_configs(draw):
  total = draw(st.integers(2, 10**6))
  warmup = draw(st.integers(0, total - 1))
  decay_steps = draw(st.integers(1, total - warmup))
  peak = draw(st.floats(1e-4, 10.0))
  decay = draw(st.sampled_from(WSD_DECAYS))
  final = draw(st.floats(1e-6 if decay == 'exponential' else 0.0, 1.0)) * peak
  init = draw(st.floats(0.0, 1.0)) * peak
  return dict(peak_lr=peak, total_steps=total, warmup_steps=warmup, decay_steps=decay_steps,
              decay=decay, init_lr=init, final_lr=final)


@given(wsd_configs(), st.floats(0.0, 1.0))
def test_wsd_bounds_ends_and_jit(config, at):
  schedule = lrsched.wsd(**config)
  jitted = jax.jit(schedule)
  total, peak = config['total_steps'], np.float32(config['peak_lr'])
  low = np.float32(min(config['init_lr'], config['final_lr']))
  middle = int(at * total)
  for step in (0, middle, total - 1, total, total + 1, INT32_MAX):
    eager, compiled = float(schedule(step)), float(jitted(step))
    assert low <= compiled <= peak and low <= eager <= peak
    assert abs(eager - compiled) <= 4 * np.spacing(np.float32(max(abs(eager), 1e-30)))
  for step in (total, total + 1, INT32_MAX):  # the end is exact and held
    assert float(jitted(step)) == float(schedule(step)) == np.float32(config['final_lr'])


@given(st.integers(1, 10**5), st.integers(1, 10**5), st.integers(0, 10**5), st.floats(0, 1))
def test_rsqrt_bounds_and_jit(warmup, extra, cooldown, at):
  total = warmup + extra
  cooldown = min(cooldown, extra)
  schedule = lrsched.rsqrt(0.01, warmup, total_steps=total, cooldown_steps=cooldown)
  jitted = jax.jit(schedule)
  for step in (0, warmup, int(at * total), total, INT32_MAX):
    eager, compiled = float(schedule(step)), float(jitted(step))
    assert 0.0 <= compiled <= np.float32(0.01)
    assert abs(eager - compiled) <= 4 * np.spacing(np.float32(max(abs(eager), 1e-30)))
  assert float(jitted(warmup)) == pytest.approx(0.01, rel=1e-6)
  if cooldown:
    assert float(jitted(total)) == 0.0 == float(jitted(INT32_MAX))


def test_hyper_parameters_vmap():
  peaks = jnp.asarray([0.1, 0.2, 0.4])
  out = jax.vmap(lambda p: lrsched.wsd(p, 100, warmup_steps=10)(50))(peaks)
  np.testing.assert_allclose(out, peaks, rtol=1e-6)
  out = jax.vmap(lambda p: lrsched.rsqrt(p, 10)(40))(peaks)
  np.testing.assert_allclose(out, peaks * 0.5, rtol=1e-6)


# --------------------------------------------------------------------------------------
# As data, and errors


@pytest.mark.parametrize('spec', ['wsd(peak_lr=0.5, decay="linear")',
                                  'warmup_stable_decay(peak_lr=0.5, warmup_steps=10)',
                                  'rsqrt(peak_lr=1e-3, warmup_steps=10, cooldown_steps=20)',
                                  'inverse_sqrt(peak_lr=1e-3, warmup_steps=10)'])
def test_specs_json_and_describe(spec):
  schedule = lrsched.parse(spec, total_steps=200)
  again = lrsched.from_json(lrsched.to_json(schedule))
  steps = np.arange(230)
  np.testing.assert_array_equal(values(again, steps), values(schedule, steps))
  assert repr(again) == repr(schedule) and lrsched.describe(schedule)


@pytest.mark.parametrize('make, message', [
    (lambda: lrsched.wsd(0.1, 10, warmup_steps=10), 'warmup_steps must be < total_steps'),
    (lambda: lrsched.wsd(0.1, 10, warmup_steps=5, decay_steps=6), 'decay_steps must be <='),
    (lambda: lrsched.wsd(0.1, 10, decay='step'), "unknown decay 'step'"),
    (lambda: lrsched.wsd(0.1, 10, decay='exponential'), 'final_lr'),
    (lambda: lrsched.wsd(0.1, 10, final_lr=0.2), 'final_lr must be <= peak_lr'),
    (lambda: lrsched.wsd(0.1, 10, decay_fraction=0.0), 'decay_fraction'),
    (lambda: lrsched.rsqrt(0.1, 0), 'warmup_steps'),
    (lambda: lrsched.rsqrt(0.1, 10, cooldown_steps=5), 'needs total_steps'),
    (lambda: lrsched.rsqrt(0.1, 10, total_steps=10), 'total_steps must be > warmup_steps'),
    (lambda: lrsched.rsqrt(0.1, 10, total_steps=20, cooldown_steps=11), 'cooldown_steps'),
])
def test_bad_arguments_name_the_problem(make, message):
  with pytest.raises(ValueError, match=message):
    make()
