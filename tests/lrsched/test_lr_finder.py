"""Tests of the LR range test: the sweep, divergence, state threading and the suggestions."""

import json
import math

import flax.linen as nn
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lrsched import lr_finder, spec
from lrsched.lr_finder import (
  RangeTestResult,
  divergence_step,
  log_linear,
  range_test,
  smooth,
  suggest_clr_bounds,
  suggest_minimum,
  suggest_steep,
  suggest_super_convergence,
  suggest_valley,
)

# --------------------------------------------------------------------------------------
# log_linear, the exponential sweep


@pytest.mark.parametrize('init_lr, end_lr, total_steps', [
  (1e-7, 10.0, 100), (1e-3, 3.0, 7), (0.5, 0.5, 4), (2.0, 1e-4, 50), (1e-5, 1.0, 1)])
def test_log_linear_is_geometric(init_lr, end_lr, total_steps):
  schedule = log_linear(init_lr, end_lr, total_steps)
  steps = np.arange(total_steps + 5)
  got = np.asarray(jax.jit(schedule)(jnp.asarray(steps)))
  frac = np.minimum(steps, total_steps) / total_steps
  want = init_lr * (end_lr / init_lr) ** frac
  np.testing.assert_allclose(got, want, rtol=2e-6)
  # Both ends exactly, and held after the end.
  assert got[0] == np.float32(init_lr)
  assert np.all(got[total_steps:] == np.float32(end_lr))
  assert schedule.total_steps == total_steps


def test_log_linear_is_registered_and_vmaps_over_lrs():
  schedule = lr_finder.log_linear(1e-3, 1.0, 10)
  assert spec.REGISTRY['log_linear'] is lr_finder.log_linear
  assert repr(schedule) == 'log_linear(init_lr=0.001, end_lr=1.0, total_steps=10)'
  inits = jnp.asarray([1e-3, 1e-2])
  got = jax.vmap(lambda lr: log_linear(lr, 1.0, 10)(5))(inits)
  np.testing.assert_allclose(got, np.sqrt(np.asarray([1e-3, 1e-2])), rtol=1e-5)


@pytest.mark.parametrize('kwargs, name', [
  ({'init_lr': 0.0}, 'init_lr'), ({'end_lr': -1.0}, 'end_lr'), ({'total_steps': 0}, 'total_steps'),
  ({'init_lr': float('nan')}, 'init_lr')])
def test_log_linear_rejects(kwargs, name):
  args = {'init_lr': 1e-3, 'end_lr': 1.0, 'total_steps': 10} | kwargs
  with pytest.raises(ValueError, match=f'log_linear: {name}'):
    log_linear(**args)


# --------------------------------------------------------------------------------------
# A problem whose largest stable LR is known: 0.5 a ||x - b||^2 + c with plain SGD
# contracts x - b by |1 - lr a| per step, so it converges for lr < 2/a and diverges above.
# The targets b carry a little noise, which the instability amplifies once lr > 2/a; the
# constant c stands for the irreducible loss of a real model (and, negative, for a loss
# with an offset, such as a log-likelihood).

A, DIM = 4.0, 8
TARGETS = (3.0 + 0.01 * np.random.default_rng(0).normal(size=(1000, DIM))).astype(np.float32)


def quadratic(offset):
  return lambda x, b: 0.5 * A * jnp.sum((x - b) ** 2) + offset


def quadratic_test(offset=1.0, mode='linear', num_steps=600, **kwargs):
  lrs = (0.0, 3 / A) if mode == 'linear' else (1e-3 / A, 10 / A)
  return range_test(quadratic(offset), jnp.zeros(DIM), TARGETS, min_lr=lrs[0], max_lr=lrs[1],
                    num_steps=num_steps, mode=mode, optimizer=optax.sgd, **kwargs)


def lr_at(result, step):
  """The sweep's LR at any step, recorded or not."""
  return float(result.lrs[1] - result.lrs[0]) * step + float(result.lrs[0])


def held_out_fit(params, state):
  """A held-out 'accuracy' of the quadratic: minus the squared distance to the mean target."""
  return -jnp.sum((params - 3.0) ** 2)


@pytest.fixture(scope='module')
def quadratic_results():
  return {offset: quadratic_test(offset, metric_fn=held_out_fit, metric_every=10)
          for offset in (1.0, -10.0)}


@pytest.mark.parametrize('offset', [1.0, -10.0])
def test_divergence_is_found_just_above_2_over_a(quadratic_results, offset):
  result = quadratic_results[offset]
  assert result.diverged_at is not None
  assert result.lrs.size == result.diverged_at
  assert 2.0 <= A * lr_at(result, result.diverged_at) <= 2.5
  # The sweep is lrsched.linear from 0 to 3/a over num_steps - 1 steps.
  np.testing.assert_allclose(result.lrs, np.arange(result.lrs.size) * (3 / A) / 599, rtol=1e-5,
                             atol=1e-9)
  assert not result.stopped_early and result.steps_run == 600


@pytest.mark.parametrize('offset', [1.0, -10.0])
def test_suggestions_lie_below_the_stability_limit(quadratic_results, offset):
  result = quadratic_results[offset]
  for suggestion in (result.valley(), result.steep(), result.minimum()):
    assert 0.0 < suggestion.lr < 2 / A, suggestion
  bounds = result.clr_bounds()  # from the held-out fit, which is best below 2/a
  assert bounds.lr < 2 / A
  assert bounds.min_lr == pytest.approx(bounds.lr / 4)
  assert result.lrs[bounds.step] == bounds.lr
  assert result.super_convergence().lr == bounds.lr


def test_a_negative_loss_gives_the_same_suggestions(quadratic_results):
  # The smoothing and the suggestions do not depend on a constant offset of the loss.
  positive, negative = quadratic_results[1.0], quadratic_results[-10.0]
  for method in ('valley', 'steep', 'minimum'):
    assert abs(getattr(positive, method)().step - getattr(negative, method)().step) <= 2
  np.testing.assert_allclose(negative.smoothed_losses[:400] + 11.0,
                             positive.smoothed_losses[:400], rtol=1e-4)


def test_exponential_sweep_finds_the_limit():
  result = quadratic_test(mode='exp', num_steps=1000)
  np.testing.assert_allclose(result.lrs, np.geomspace(1e-3 / A, 10 / A, 1000)[:result.lrs.size],
                             rtol=1e-5)
  assert 2.0 <= 1e-3 * 1e4 ** (result.diverged_at / 999) <= 2.75  # A * lr at divergence
  for suggestion in (result.valley(), result.steep(), result.minimum()):
    assert 1e-3 / A < suggestion.lr < 2 / A


def test_chunks_stop_early_with_the_same_curve(quadratic_results):
  whole = quadratic_results[1.0]
  chunked = quadratic_test(chunk_size=64)
  assert chunked.diverged_at == whole.diverged_at
  assert chunked.stopped_early
  assert chunked.steps_run == 64 * (whole.diverged_at // 64 + 1) < 600
  for field in ('lrs', 'losses', 'smoothed_losses'):
    np.testing.assert_allclose(getattr(chunked, field), getattr(whole, field), rtol=1e-6)


# --------------------------------------------------------------------------------------
# Divergence, state, metrics and batches


def nan_at(k):
  """A loss that is NaN at step k; the batch is the step number."""
  return lambda p, t: 0.5 * jnp.sum(p**2) + jnp.where(t == k, jnp.nan, 0.0)


@pytest.mark.parametrize('k, chunk_size, steps_run', [
  (37, None, 100), (37, 16, 48), (37, 1000, 100), (0, 16, 16)])
def test_nan_stops_the_test(k, chunk_size, steps_run):
  result = range_test(nan_at(k), jnp.ones(3), lambda t: t, min_lr=1e-4, max_lr=1e-2,
                      num_steps=100, chunk_size=chunk_size)
  assert result.diverged_at == k
  assert result.lrs.size == result.losses.size == result.smoothed_losses.size == k
  assert f'valid_steps={k}/100' in repr(result)
  assert np.all(np.isfinite(result.losses)) and np.all(np.isfinite(result.smoothed_losses))
  assert result.steps_run == steps_run
  assert result.stopped_early == (steps_run < 100)


def test_state_is_threaded_and_the_metric_sampled():
  def loss_fn(p, state, batch):
    return 0.5 * jnp.sum((p - batch) ** 2), {'count': state['count'] + 1}

  def metric_fn(p, state):
    return state['count'].astype(jnp.float32)

  state = {'count': jnp.zeros((), jnp.int32)}
  result = range_test(loss_fn, jnp.zeros(2), jnp.ones((20, 2)), state=state, min_lr=1e-3,
                      max_lr=0.5, num_steps=20, metric_fn=metric_fn, metric_every=3)
  np.testing.assert_array_equal(result.metric_steps, [2, 5, 8, 11, 14, 17])
  # The metric sees the state after the update of its step: step t has counted t + 1.
  np.testing.assert_array_equal(result.metrics, result.metric_steps + 1)
  assert state['count'] == 0


def test_flax_batch_norm_statistics_are_threaded():
  class Model(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      return nn.Dense(1)(x)[..., 0]

  model = Model()
  rng = np.random.default_rng(1)
  x = (5.0 + rng.normal(size=(30, 16, 3))).astype(np.float32)
  batches = {'x': x, 'y': x.sum(-1)}
  variables = model.init(jax.random.key(0), x[0], train=False)

  def loss_fn(params, batch_stats, batch):
    pred, updates = model.apply({'params': params, 'batch_stats': batch_stats}, batch['x'],
                                train=True, mutable=['batch_stats'])
    return jnp.mean((pred - batch['y']) ** 2), updates['batch_stats']

  def running_mean(params, batch_stats):
    return batch_stats['BatchNorm_0']['mean'].mean()

  result = range_test(loss_fn, variables['params'], batches, state=variables['batch_stats'],
                      min_lr=1e-4, max_lr=1e-2, num_steps=30, metric_fn=running_mean,
                      metric_every=10)
  assert result.diverged_at is None
  # After t + 1 updates with momentum 0.9 the running mean of inputs of mean 5 is about
  # 5 (1 - 0.9^(t+1)).
  np.testing.assert_allclose(result.metrics, 5.0 * (1 - 0.9 ** (result.metric_steps + 1)),
                             rtol=0.02)


def test_callers_params_are_untouched():
  params = {'w': jnp.asarray([1.0, -2.0, 3.0]), 'b': jnp.asarray(0.5)}
  saved = jax.tree.map(np.array, params)
  loss_fn = lambda p, batch: jnp.sum((p['w'] * batch + p['b']) ** 2)
  first = range_test(loss_fn, params, jnp.ones((50, 3)), min_lr=1e-3, max_lr=1.0,
                     num_steps=50, chunk_size=20)
  for key in params:
    assert not params[key].is_deleted()
    np.testing.assert_array_equal(params[key], saved[key])
  again = range_test(loss_fn, params, jnp.ones((50, 3)), min_lr=1e-3, max_lr=1.0,
                     num_steps=50, chunk_size=20)
  np.testing.assert_array_equal(first.losses, again.losses)


def test_loss_with_aux_and_type_errors():
  with_aux = lambda p, b: (jnp.sum((p - b) ** 2), {'anything': p})
  result = range_test(with_aux, jnp.zeros(2), jnp.ones((10, 2)), min_lr=1e-3, max_lr=0.1,
                      num_steps=10)
  assert result.losses[0] == 2.0
  with pytest.raises(TypeError, match='scalar loss'):
    range_test(lambda p, b: p - b, jnp.zeros(2), jnp.ones((10, 2)), min_lr=1e-3, max_lr=0.1,
               num_steps=10)
  with pytest.raises(TypeError, match='new state'):
    range_test(lambda p, s, b: (jnp.sum(p), {'other': s}), jnp.zeros(2), jnp.ones((10, 2)),
               state=jnp.zeros(()), min_lr=1e-3, max_lr=0.1, num_steps=10)


# Linear regression on random data, read with a batch function from a device-resident
# dataset and as stacked batches: the same data gives the same test.
STEPS, BATCH, FEATURES = 80, 16, 5


@pytest.fixture(scope='module')
def regression():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(STEPS * BATCH, FEATURES)).astype(np.float32)
  y = (x @ rng.normal(size=FEATURES) + 0.1 * rng.normal(size=STEPS * BATCH)).astype(np.float32)
  params = {'w': jnp.zeros(FEATURES), 'b': jnp.zeros(())}
  loss_fn = lambda p, batch: 0.5 * jnp.mean((batch[0] @ p['w'] + p['b'] - batch[1]) ** 2)
  return x, y, params, loss_fn


def test_batch_fn_and_stacked_batches_agree(regression):
  x, y, params, loss_fn = regression
  data = (jnp.asarray(x), jnp.asarray(y))

  def batch_fn(t):
    return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, t * BATCH, BATCH), data)

  stacked = (x.reshape(STEPS, BATCH, FEATURES), y.reshape(STEPS, BATCH))
  kwargs = {'min_lr': 1e-4, 'max_lr': 10.0, 'num_steps': STEPS, 'chunk_size': 32}
  from_fn = range_test(loss_fn, params, batch_fn, **kwargs)
  from_stack = range_test(loss_fn, params, stacked, **kwargs)
  assert from_fn.diverged_at == from_stack.diverged_at
  np.testing.assert_allclose(from_fn.losses, from_stack.losses, rtol=1e-6)
  # The default optimizer (SGD, momentum 0.9) learns, then diverges below lr=10.
  assert from_fn.diverged_at is not None
  assert from_fn.smoothed_losses.min() < 0.5 * from_fn.losses[0]
  assert from_fn.valley().lr < from_fn.lrs[-1]


# --------------------------------------------------------------------------------------
# The suggestions on synthetic curves

LRS = np.logspace(-6, 1, 200)
U = np.log10(LRS)
# Falls from 2 to 0.5 around lr=1e-3, is lowest near lr=0.1 and explodes above lr=1.
CURVE = 2.0 - 1.5 / (1 + np.exp(-3 * (U + 3))) + 0.05 * np.exp(8 * (U + 0.5))


def test_u_shaped_curve():
  result = RangeTestResult.from_losses(LRS, CURVE)
  assert result.diverged_at is not None and 1.0 < LRS[result.diverged_at] < 10.0
  valley, steep, minimum = result.valley(), result.steep(), result.minimum()
  # The descent spans ~1e-4..1e-2 (smoothing moves it a little right).
  assert 1e-4 < steep.lr < 1e-2 and 1e-4 < valley.lr < 1e-2
  assert LRS[minimum.step] == pytest.approx(LRS[np.argmin(result.smoothed_losses)])
  assert minimum.lr == pytest.approx(LRS[minimum.step] / 10)
  assert 0.05 < LRS[minimum.step] < 1.0  # The raw minimum is at 0.08; smoothing lags.
  assert 'valley' in valley.explanation and str(valley) == valley.explanation


def test_an_early_spike_is_not_picked():
  spiked = CURVE + 20.0 * (np.arange(200) == 25)
  clean = RangeTestResult.from_losses(LRS, CURVE)
  result = RangeTestResult.from_losses(LRS, spiked)
  for method in ('valley', 'steep', 'minimum'):
    got, want = getattr(result, method)(), getattr(clean, method)()
    assert abs(math.log10(got.lr / want.lr)) < 0.2, (method, got, want)
  # fastai's own steep takes the recovery after the spike for the steepest descent.
  assert result.steep(new_lows_only=False).step in range(25, 28)


def test_a_negative_loss_curve():
  shifted = CURVE - 10.0
  # fastai's test (smoothed > 4 * best) would stop at step 1: -9.9 > 4 * -9.9.
  smoothed = smooth(shifted)
  assert smoothed[1] > 4 * smoothed[0]
  negative = RangeTestResult.from_losses(LRS, shifted)
  positive = RangeTestResult.from_losses(LRS, CURVE)
  lowest = int(np.argmin(smooth(CURVE)))
  assert negative.diverged_at is not None and negative.diverged_at > lowest
  for method in ('valley', 'steep', 'minimum'):
    assert getattr(negative, method)().step == getattr(positive, method)().step


def test_accuracy_peak_gives_the_bounds():
  steps = np.arange(4, 200, 5)
  accuracy = 0.1 + 0.8 * np.exp(-((U[steps] - math.log10(0.3)) ** 2) / 0.5)
  accuracy[3] = np.nan  # A metric that failed once is ignored.
  result = RangeTestResult.from_losses(LRS, CURVE, metrics=accuracy, metric_steps=steps)
  assert result.metric_steps.max() < result.diverged_at
  peak = steps[np.nanargmax(accuracy)]
  bounds = result.super_convergence()
  assert bounds.step == peak and bounds.lr == LRS[peak]
  assert 0.2 < bounds.lr < 0.45 and bounds.min_lr == pytest.approx(bounds.lr / 1e3)
  clr = result.clr_bounds(divisor=3.0)
  assert clr.lr == bounds.lr and clr.min_lr == pytest.approx(bounds.lr / 3)
  # A held-out loss instead of an accuracy: its lowest value.
  test_loss = 1.0 - np.nan_to_num(accuracy, nan=0.0)
  by_loss = RangeTestResult.from_losses(LRS, CURVE, metrics=test_loss, metric_steps=steps)
  assert by_loss.clr_bounds(higher_is_better=False).step == peak


@pytest.mark.parametrize('method', ['clr_bounds', 'super_convergence'])
def test_bounds_without_a_metric_refuse_and_name_the_fix(method):
  # The lowest smoothed training loss is where `minimum` says the LR is already too high:
  # it is no max_lr, so the bounds rules need a held-out metric.
  result = RangeTestResult.from_losses(LRS, CURVE)
  assert result.metrics is None
  with pytest.raises(ValueError, match=rf'{method}: no metric was recorded.*too high.*'
                                       r'pass metric_fn to range_test.*valley\(\) or steep'):
    getattr(result, method)()


@pytest.mark.parametrize('offset', [1.0, -10.0])
def test_the_lowest_smoothed_loss_is_no_max_lr(quadratic_results, offset):
  # What clr_bounds used to return without a metric: on the quadratic it lies at or past
  # the stability limit 2/a, since the moving average still falls there.
  result = quadratic_results[offset]
  assert result.lrs[np.argmin(result.smoothed_losses)] >= 0.95 * 2 / A
  without = RangeTestResult.from_losses(result.lrs, result.losses)
  with pytest.raises(ValueError, match='no metric was recorded'):
    without.clr_bounds()


def test_a_peak_at_the_end_warns():
  rising = np.linspace(0.1, 0.9, 20)
  assert 'still improving' in suggest_super_convergence(LRS[:20], rising).explanation
  assert 'still improving' not in suggest_clr_bounds(LRS[:20], rising[::-1]).explanation


def valley_reference(losses):
  """fastai's valley as a plain double loop (its quadratic algorithm, step by step)."""
  n = len(losses)
  lengths = [1] * n
  end = start = 0
  for i in range(1, n):
    for j in range(i):
      if losses[i] < losses[j]:
        lengths[i] = max(lengths[i], lengths[j] + 1)
      if lengths[end] < lengths[i]:
        end, start = i, i - lengths[i]
  third = (end - start) / 3
  return max(0, start + int(third) + int(third / 2))


@given(hnp.arrays(np.float64, st.integers(5, 40), elements=st.floats(-5, 5)))
def test_valley_matches_fastai(losses):
  lrs = np.geomspace(1e-5, 1.0, losses.size)
  assert suggest_valley(lrs, losses).step == valley_reference(list(losses))


@given(hnp.arrays(np.float64, st.integers(5, 40), elements=st.floats(-5, 5)))
def test_steep_and_minimum_match_fastai(losses):
  lrs = np.geomspace(1e-5, 1.0, losses.size)
  slopes = np.diff(losses) / np.diff(np.log(lrs))
  assert suggest_steep(lrs, losses, new_lows_only=False).step == int(np.argmin(slopes))
  got = suggest_minimum(lrs, losses)
  assert got.step == int(np.argmin(losses)) and got.lr == lrs[got.step] / 10


def test_steep_skips_a_zero_lr():
  lrs = np.linspace(0.0, 1.0, 10)
  losses = np.asarray([9.0, 5.0, 4.9, 4.8, 3.0, 2.9, 2.8, 2.7, 2.6, 2.5])
  assert suggest_steep(lrs, losses).step == 3  # The drop 5 -> 4.9 from lr=0 has no slope.


def test_too_few_points():
  result = RangeTestResult.from_losses(LRS[:30], np.r_[2.0, 1.9, 1.8, [50.0] * 27])
  assert result.diverged_at == 3
  with pytest.raises(ValueError, match=r'valley: only \d+ points.*diverged at step.*max_lr'):
    result.valley()
  with pytest.raises(ValueError, match='no metric'):
    result.clr_bounds()
  few = RangeTestResult.from_losses(LRS[:30], np.r_[2.0, 1.9, 1.8, [50.0] * 27],
                                    metrics=[0.1, 0.2, 0.3], metric_steps=[0, 1, 2])
  with pytest.raises(ValueError, match=r'only 3 finite metric values.*at least 5'):
    few.clr_bounds()
  with pytest.raises(ValueError, match='at least 5 points'):
    suggest_valley(LRS[:4], CURVE[:4])


# --------------------------------------------------------------------------------------
# The divergence rule


def test_divergence_rule():
  # Positive losses: fastai's smoothed > 4 * best.
  assert divergence_step([1.0, 0.5, 2.0, 2.1]) == 3
  assert divergence_step([1.0, 0.5, 2.0], diverge_factor=3.0) == 2
  # Negative: a rise of more than 3 |best| (here from -10 to above 20).
  assert divergence_step([-9.0, -10.0, 0.0, 19.0]) is None
  assert divergence_step([-9.0, -10.0, 0.0, 21.0]) == 3
  # NaN or inf in the raw or smoothed loss; an infinite factor stops on those only.
  assert divergence_step([1.0, 1.0, 1.0], [1.0, np.inf, 1.0]) == 1
  assert divergence_step([1.0, 100.0, np.nan], diverge_factor=np.inf) == 2


# --------------------------------------------------------------------------------------
# JSON and bad input


def test_json_round_trip():
  metrics = np.asarray([0.1, np.nan, 0.3])
  result = RangeTestResult.from_losses(LRS, CURVE, metrics=metrics, metric_steps=[3, 50, 90])
  again = RangeTestResult.from_json(result.to_json())
  for field in ('lrs', 'losses', 'smoothed_losses', 'metric_steps'):
    np.testing.assert_array_equal(getattr(again, field), getattr(result, field))
  np.testing.assert_array_equal(again.metrics, metrics)
  for field in ('diverged_at', 'stopped_early', 'steps_run', 'num_steps'):
    assert getattr(again, field) == getattr(result, field)
  assert json.loads(result.to_json())['metrics'][1] is None  # Strict JSON: no NaN token.
  plain = RangeTestResult.from_json(
    RangeTestResult.from_losses(LRS[:50], CURVE[:50]).to_json())
  assert plain.diverged_at is None and plain.metrics is None and plain.metric_steps is None
  with pytest.raises(ValueError, match='metric_steps'):
    RangeTestResult.from_losses(LRS, CURVE, metrics=metrics)
  with pytest.raises(ValueError, match='metric_steps'):
    RangeTestResult.from_losses(LRS, CURVE, metrics=metrics, metric_steps=[1, 2])
  with pytest.raises(ValueError, match=r'not a lrsched\.RangeTestResult'):
    RangeTestResult.from_json('{"lrs": []}')


@pytest.mark.parametrize('kwargs, name', [
  ({'min_lr': 0.0}, 'min_lr'),
  ({'min_lr': -1e-3, 'mode': 'linear'}, 'min_lr'),
  ({'max_lr': 1e-4}, 'max_lr'),
  ({'max_lr': 1e-3}, 'max_lr'),
  ({'num_steps': 1}, 'num_steps'),
  ({'num_steps': 10.0}, 'num_steps'),
  ({'smoothing': 1.0}, 'smoothing'),
  ({'smoothing': -0.1}, 'smoothing'),
  ({'diverge_factor': 1.0}, 'diverge_factor'),
  ({'diverge_factor': float('nan')}, 'diverge_factor'),
  ({'num_steps': 11}, 'batches'),
  ({'mode': 'cubic'}, 'mode'),
  ({'chunk_size': 0}, 'chunk_size'),
  ({'metric_every': 0}, 'metric_every'),
  ({'optimizer': 'sgd'}, 'optimizer'),
])
def test_range_test_rejects(kwargs, name):
  args = {'min_lr': 1e-3, 'max_lr': 1.0, 'num_steps': 10} | kwargs
  with pytest.raises(ValueError, match=f'range_test: .*{name}'):
    range_test(lambda p, b: jnp.sum(p * b), jnp.zeros(2), jnp.ones((10, 2)), **args)


def test_batches_need_a_leading_axis():
  with pytest.raises(ValueError, match='batches'):
    range_test(lambda p, b: jnp.sum(p), jnp.zeros(2), {'x': jnp.ones(())}, min_lr=1e-3,
               max_lr=1.0, num_steps=10)
  with pytest.raises(ValueError, match='batches'):
    range_test(lambda p, b: jnp.sum(p), jnp.zeros(2), {}, min_lr=1e-3, max_lr=1.0,
               num_steps=10)


def test_linear_sweep_allows_zero_min_lr_and_exp_does_not():
  kwargs = {'max_lr': 1.0, 'num_steps': 10}
  result = range_test(lambda p, b: jnp.sum((p - b) ** 2), jnp.zeros(2), jnp.ones((10, 2)),
                      min_lr=0.0, mode='linear', **kwargs)
  assert result.lrs[0] == 0.0 and result.lrs[-1] == pytest.approx(1.0)
  with pytest.raises(ValueError, match='min_lr must be > 0'):
    range_test(lambda p, b: jnp.sum(p), jnp.zeros(2), jnp.ones((10, 2)), min_lr=0.0, **kwargs)


def test_one_lucky_evaluation_does_not_set_the_peak():
  # The shape of a real range test (ResNet-20 on CPU, WORKSPACE.md): a plateau near 0.31
  # from LR 0.45 to 1.05, then ragged, with one lucky point of 0.35 at 1.5.
  lrs = np.arange(1, 21) * 0.15
  acc = np.array([.24, .25, .33, .29, .32, .30, .30, .28, .15, .35, .27, .30, .25, .14, .23,
                  .17, .12, .21, .21, .13])
  assert suggest_super_convergence(lrs, acc, window=1).lr == pytest.approx(1.5)
  smoothed = suggest_super_convergence(lrs, acc)  # the default reads the trend
  assert 0.4 < smoothed.lr < 1.1
  assert suggest_clr_bounds(lrs, acc).lr == smoothed.lr


def test_smooth_metric_averages_neighbours_and_keeps_nans():
  from lrsched.lr_finder import smooth_metric
  np.testing.assert_allclose(smooth_metric([1.0, 2.0, 6.0, np.nan, 4.0]),
                             [1.5, 3.0, 4.0, np.nan, 4.0])
  np.testing.assert_array_equal(smooth_metric([3.0, 1.0], window=1), [3.0, 1.0])
  with pytest.raises(ValueError, match='odd'):
    smooth_metric([1.0, 2.0], window=2)
