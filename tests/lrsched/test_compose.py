"""Tests for lrsched.compose: warmup, sequence, scale_lr, to_steps."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

import lrsched
from lrsched import compose, decay, spec
from lrsched.compose import scale_lr, sequence, to_steps, warmup
from lrsched.restarts import sgdr

INT32_MAX = 2**31 - 1

# --------------------------------------------------------------------------------------
# warmup


@st.composite
def inner_schedules(draw):
  lr = draw(st.floats(1e-4, 10.0))
  total = draw(st.one_of(st.integers(1, 3), st.integers(1, 10**6)))
  return draw(st.sampled_from([
      decay.cosine(lr, total, 0.1 * lr),
      decay.polynomial(lr, total, 2.0),
      decay.linear(lr, 0.5 * lr, total),
      decay.exponential(lr, 0.5, total),
      sgdr(lr, total, 2),
  ]))


@given(inner_schedules(), st.one_of(st.integers(1, 3), st.integers(1, 10**6)),
       st.floats(0.0, 1.0))
def test_warmup_properties(inner, w, start_frac):
  start = start_frac * inner(0)
  schedule = warmup(inner, w, start_lr=start)
  t = jnp.asarray([0, w // 3, w // 2, w - 1, w, w + 1, w + 17, INT32_MAX], dtype=jnp.int32)
  values = np.asarray(schedule(t), dtype=np.float64)
  peak = float(inner(0))
  # The ramp: linear from start_lr, reaching the inner schedule's first value at t = W.
  ramp = start + (peak - start) * np.asarray(t[:4], np.float64) / w
  np.testing.assert_allclose(values[:4], ramp, rtol=1e-6, atol=1e-7 * peak)
  # Equal up to float32 rounding: XLA's vector and scalar kernels may differ in the last bit.
  np.testing.assert_allclose(values[4], inner(0), rtol=1e-6)
  np.testing.assert_allclose(values[5:7], inner(jnp.asarray([1, 17])), rtol=1e-6)
  np.testing.assert_allclose(values[7], inner(INT32_MAX - w), rtol=1e-6)
  assert np.all(values >= 0) and np.all(np.isfinite(values))
  np.testing.assert_array_equal(schedule(-3), schedule(0))
  total = inner.total_steps
  assert schedule.total_steps == (None if total is None else total + w)
  assert schedule.boundaries[:2] == (0, w)


def test_warmup_repr_boundaries_and_total_steps():
  schedule = warmup(decay.cosine(0.1, 1000), 50)
  assert repr(schedule) == ('warmup(schedule=cosine(lr=0.1, total_steps=1000, min_lr=0.0), '
                            'warmup_steps=50, start_lr=0.0)')
  assert schedule.boundaries == (0, 50, 1050)
  assert schedule.total_steps == 1050
  np.testing.assert_allclose(schedule(jnp.asarray([0, 25, 50, 1050, 5000])),
                             [0.0, 0.05, 0.1, 0.0, 0.0], atol=1e-8)
  nested = eval(repr(schedule), {'warmup': warmup, 'cosine': decay.cosine})
  np.testing.assert_array_equal(nested(jnp.arange(0, 1200, 7)),
                                schedule(jnp.arange(0, 1200, 7)))


def test_warmup_of_an_optax_schedule():
  inner = optax.cosine_decay_schedule(0.1, 100)
  schedule = warmup(inner, 10, start_lr=0.01)
  steps = jnp.arange(0, 150)
  expected = np.where(steps < 10, 0.01 + 0.09 * steps / 10, inner(np.maximum(steps - 10, 0)))
  np.testing.assert_allclose(schedule(steps), expected, rtol=1e-6)
  assert schedule.total_steps is None
  assert schedule.boundaries == (0, 10)
  # optax.constant_schedule returns a scalar whatever the step's shape.
  flat = warmup(optax.constant_schedule(0.5), 4)
  np.testing.assert_allclose(flat(jnp.arange(6)), [0.0, 0.125, 0.25, 0.375, 0.5, 0.5])


def test_zero_warmup_is_the_schedule():
  inner = decay.cosine(0.1, 10)
  schedule = warmup(inner, 0)
  np.testing.assert_array_equal(schedule(jnp.arange(15)), inner(jnp.arange(15)))
  assert schedule.total_steps == 10 and schedule.boundaries == (0, 10)


# --------------------------------------------------------------------------------------
# sequence


def test_sequence_runs_each_piece_from_its_own_step_zero():
  pieces = [decay.cosine(1.0, 4), decay.linear(0.5, 0.0, 10), decay.constant(0.01)]
  schedule = sequence(pieces)
  t = np.arange(20)
  expected = np.concatenate([pieces[0](t[:4]), pieces[1](t[4:14] - 4),
                             np.full(6, 0.01, np.float32)])
  np.testing.assert_array_equal(schedule(t), expected)
  assert schedule.total_steps is None
  assert schedule.boundaries == (0, 4, 14)
  assert repr(schedule).startswith('sequence(schedules=[cosine(lr=1.0, total_steps=4, '
                                   'min_lr=0.0), linear(')


def test_sequence_chains_clr_blocks_with_different_bounds():
  # Two triangular blocks of 2 cycles each, the second with lower bounds (Smith, 2017).
  def triangle(low, high, half):
    return sequence([decay.linear(low, high, half), decay.linear(high, low, half)],
                    durations=[half, half])

  first, second = triangle(0.1, 1.0, 5), triangle(0.01, 0.1, 5)
  schedule = sequence([first, first, second, second])
  assert schedule.total_steps == 40
  t = np.arange(45)
  values = np.asarray(schedule(t))
  np.testing.assert_allclose(values[[0, 5, 10, 15, 20, 25, 30, 35, 40, 44]],
                             [0.1, 1.0, 0.1, 1.0, 0.01, 0.1, 0.01, 0.1, 0.01, 0.01],
                             rtol=1e-6)
  assert schedule.boundaries == (0, 5, 10, 15, 20, 25, 30, 35, 40)


def test_sequence_durations():
  a, b = decay.constant(1.0), decay.cosine(1.0, 8)
  # One duration per piece but the last: the last runs on.
  np.testing.assert_allclose(sequence([a, b], durations=[3])(jnp.arange(14)),
                             np.concatenate([[1.0] * 3, b(np.arange(11))]), rtol=1e-6)
  # A duration for the last piece too: it is cut there and its value then holds.
  cut = sequence([a, b], durations=[3, 4])
  np.testing.assert_allclose(cut(jnp.arange(12)),
                             np.concatenate([[1.0] * 3, b(np.arange(5)), [b(4)] * 4]),
                             rtol=1e-6)
  assert cut.total_steps == 7 and cut(INT32_MAX) == b(4)
  # Without durations the pieces' total_steps are used.
  assert sequence([b, a]).boundaries == (0, 8)
  assert sequence([b, b]).total_steps == 16


def test_sequence_matches_optaxs_join_schedules():
  ours = sequence([decay.linear(init_lr=0.0, end_lr=0.1, total_steps=20),
                   decay.cosine(0.1, total_steps=100)], durations=[20])
  theirs = optax.join_schedules([optax.linear_schedule(0.0, 0.1, 20),
                                 optax.cosine_decay_schedule(0.1, 100)], [20])
  steps = jnp.arange(130)
  np.testing.assert_allclose(ours(steps), theirs(steps), rtol=1e-6, atol=3e-8)  # float32 ulps


@given(st.lists(st.tuples(st.sampled_from(['cosine', 'sgdr', 'constant', 'linear']),
                          st.one_of(st.integers(1, 4), st.integers(1, 10**8))),
                min_size=1, max_size=4),
       st.booleans())
def test_sequence_matches_piecewise_reference(spec, cut_last):
  pieces, durations = [], []
  for i, (kind, n) in enumerate(spec):
    lr = 1.0 / (i + 1)
    pieces.append({'cosine': lambda lr=lr, n=n: decay.cosine(lr, n),
                   'sgdr': lambda lr=lr, n=n: sgdr(lr, n),
                   'constant': lambda lr=lr: decay.constant(lr),
                   'linear': lambda lr=lr, n=n: decay.linear(lr, 0.0, n)}[kind]())
    durations.append(n)
  if not cut_last:
    durations = durations[:-1]
  schedule = sequence(pieces, durations)
  starts = np.cumsum([0, *durations])
  probe = sorted({min(max(int(s) + d, 0), INT32_MAX) for s in starts for d in (-1, 0, 1, 2)}
                 | {INT32_MAX})
  probe = np.asarray((probe + [INT32_MAX] * 32)[:32], dtype=np.int64)
  values = np.asarray(schedule(probe.astype(np.int32)))
  piece = np.searchsorted(starts[1:len(pieces)], probe, side='right')
  for i, p in enumerate(pieces):
    local = np.maximum(probe - starts[i], 0)
    if cut_last and i == len(pieces) - 1:
      local = np.minimum(local, durations[-1])
    expected = np.asarray(p(local.astype(np.int32)))
    np.testing.assert_array_equal(values[piece == i], expected[piece == i])


def test_sequence_offsets_are_exact_near_int32_max():
  d = INT32_MAX - 5
  schedule = sequence([decay.constant(0.5), sgdr(1.0, 5)], durations=[d])
  steps = jnp.asarray([d - 1, d, d + 1, d + 2, d + 3, d + 4, d + 5], dtype=jnp.int32)
  assert d + 5 == INT32_MAX
  expected = [0.5] + [0.5 * (1 + math.cos(math.pi * (k % 5) / 5)) for k in range(6)]
  np.testing.assert_allclose(schedule(steps), expected, rtol=1e-6, atol=1e-7)
  # The last piece can start at 2**31-1 itself.
  last = sequence([decay.constant(0.5), decay.constant(0.25)], durations=[INT32_MAX])
  np.testing.assert_array_equal(last(jnp.asarray([INT32_MAX - 1, INT32_MAX])), [0.5, 0.25])
  np.testing.assert_array_equal(last(2**40), 0.25)


def test_sequence_of_optax_schedules():
  schedule = sequence([optax.linear_schedule(0.0, 1.0, 4), optax.constant_schedule(0.3)],
                      durations=[4])
  np.testing.assert_allclose(schedule(jnp.arange(7)), [0, 0.25, 0.5, 0.75, 0.3, 0.3, 0.3])
  assert schedule(2).shape == ()


# --------------------------------------------------------------------------------------
# Transformations

STEPS = jnp.arange(-2, 40)


def _composites(lr):
  return [warmup(decay.cosine(lr, 20, 0.1 * lr), 5, start_lr=0.01 * lr),
          sequence([warmup(decay.cosine(lr, 10), 3), sgdr(lr, 4, 2)], durations=[13]),
          sequence([decay.constant(lr), decay.polynomial(lr, 9, 2.0)], durations=[7, 9])]


@pytest.mark.parametrize('index', range(3))
def test_jit_and_vmap(index):
  schedule = _composites(0.4)[index]
  eager = schedule(STEPS)
  np.testing.assert_allclose(jax.jit(schedule)(STEPS), eager, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(schedule)(STEPS), eager, rtol=1e-6)
  lrs = jnp.asarray([0.1, 0.4, 2.0])
  swept = jax.vmap(lambda lr: _composites(lr)[index](STEPS))(lrs)
  looped = np.stack([_composites(float(lr))[index](STEPS) for lr in lrs])
  np.testing.assert_allclose(swept, looped, rtol=1e-6)
  for huge in (2**40, np.int64(2**40)):
    np.testing.assert_array_equal(schedule(huge), schedule(INT32_MAX))
  assert np.isfinite(schedule(1e12))
  np.testing.assert_array_equal(schedule(6.5), schedule(6))


def test_inside_inject_hyperparams():
  schedule = _composites(0.4)[1]
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
  params = jnp.zeros(2)
  state = tx.init(params)
  update = jax.jit(tx.update)
  used = []
  for _ in range(20):
    updates, state = update(jnp.ones(2), state, params)
    used.append(-float(updates[0]))  # sgd: -lr * gradient, with gradient 1.
  np.testing.assert_allclose(used, schedule(jnp.arange(20)), rtol=1e-6)


# --------------------------------------------------------------------------------------
# scale_lr and to_steps


def test_scale_lr():
  assert scale_lr(0.1, 8192) == pytest.approx(3.2)  # Goyal et al.: 0.1 * kn / 256.
  assert scale_lr(0.1, 1024, rule='sqrt') == pytest.approx(0.2)
  assert scale_lr(0.1, 128, 256) == pytest.approx(0.05)
  assert scale_lr(0.4, 64, 64) == 0.4
  assert isinstance(scale_lr(0.1, 512), float)
  np.testing.assert_allclose(scale_lr(jnp.asarray([0.1, 0.2]), 1024, 256, 'sqrt'),
                             [0.2, 0.4], rtol=1e-6)
  swept = jax.vmap(lambda lr: scale_lr(lr, 512))(jnp.asarray([0.1, 0.3]))
  np.testing.assert_allclose(swept, [0.2, 0.6], rtol=1e-6)
  assert 'scale_lr' not in spec.REGISTRY


def test_to_steps():
  assert to_steps(batch_size=512, epochs=30, dataset_size=50_000) == 2930
  assert to_steps(batch_size=128, epochs=1, dataset_size=50_000) == 391
  assert to_steps(batch_size=100, epochs=0.1, dataset_size=1000) == 1  # Exactly 100.
  assert to_steps(batch_size=100, epochs=2.5, dataset_size=1000) == 25
  assert to_steps(batch_size=256, examples=1_281_167 * 90) == 450_411
  assert to_steps(batch_size=32, examples=1000, device_count=8, per_device=True) == 4
  assert to_steps(batch_size=32, epochs=np.int64(2), dataset_size=1024) == 64


@pytest.mark.parametrize('build, match', [
    (lambda: scale_lr(0.1, 0), r'scale_lr: batch_size must be a positive int'),
    (lambda: scale_lr(0.1, 2.5), r'scale_lr: batch_size must be a positive int'),
    (lambda: scale_lr(0.1, True), r'scale_lr: batch_size must be a positive int'),
    (lambda: scale_lr(0.1, 512, -256), r'scale_lr: base_batch_size must be a positive int'),
    (lambda: scale_lr(0.1, 512, rule='cubic'), r"scale_lr: unknown rule 'cubic'"),
    (lambda: scale_lr(-0.1, 512), r'scale_lr: lr must be >= 0'),
    (lambda: to_steps(batch_size=0, examples=10), r'to_steps: batch_size must be a positive'),
    (lambda: to_steps(batch_size=8), r'to_steps: give exactly one of epochs'),
    (lambda: to_steps(batch_size=8, epochs=1, examples=10, dataset_size=10),
     r'to_steps: give exactly one of epochs'),
    (lambda: to_steps(batch_size=8, epochs=1), r'to_steps: epochs needs dataset_size'),
    (lambda: to_steps(batch_size=8, examples=10, dataset_size=10),
     r'to_steps: dataset_size is only used with epochs'),
    (lambda: to_steps(batch_size=8, examples=10, device_count=4),
     r'to_steps: device_count=4 is only used with per_device=True'),
    (lambda: to_steps(batch_size=8, examples=10, device_count=0, per_device=True),
     r'to_steps: device_count must be a positive int'),
    (lambda: to_steps(batch_size=8, examples=0), r'to_steps: examples must be a positive'),
    (lambda: to_steps(batch_size=8, epochs=0, dataset_size=10),
     r'to_steps: epochs must be a number > 0'),
    (lambda: to_steps(batch_size=8, epochs=math.inf, dataset_size=10),
     r'to_steps: epochs must be a number > 0'),
    (lambda: to_steps(batch_size=8, epochs='3', dataset_size=10),
     r'to_steps: epochs must be a number > 0'),
    (lambda: to_steps(batch_size=8, epochs=1, dataset_size=-10),
     r'to_steps: dataset_size must be a positive int'),
    (lambda: to_steps(batch_size=8, examples=10, per_device=1),
     r'to_steps: per_device must be a bool'),
    (lambda: warmup(0.1, 10), r'warmup: schedule must be a lrsched.Schedule or an optax'),
    (lambda: warmup(decay.constant(0.1), -1), r'warmup: warmup_steps must be an int in \[0'),
    (lambda: warmup(decay.constant(0.1), 2.5), r'warmup: warmup_steps must be a Python int'),
    (lambda: warmup(decay.constant(0.1), 5, start_lr=-1.0), r'warmup: start_lr must be >= 0'),
    (lambda: sequence([]), r'sequence: schedules must hold at least one'),
    (lambda: sequence(decay.constant(0.1)), r'sequence: schedules must be a list'),
    (lambda: sequence([decay.constant(0.1), 0.5], [3]), r'sequence: schedules\[1\] must be'),
    (lambda: sequence([sgdr(0.1, 5), decay.constant(0.1)]),
     r'sequence: schedules\[0\] \(sgdr\(.*\)\) never ends .*pass durations'),
    (lambda: sequence([decay.constant(0.1)] * 3, [4]),
     r'sequence: durations must have 2 entries .* or 3, got 1'),
    (lambda: sequence([decay.constant(0.1)] * 2, [0]),
     r'sequence: each of durations must be an int in \[1'),
    (lambda: sequence([decay.constant(0.1)] * 2, 5), r'sequence: durations must be a list'),
    (lambda: sequence([decay.constant(0.1)] * 3, [INT32_MAX, 5]),
     r'sequence: durations add up to step 2147483652'),
])
def test_bad_arguments_raise(build, match):
  with pytest.raises(ValueError, match=match):
    build()


def test_public_names():
  for name in ('warmup', 'sequence'):
    assert spec.REGISTRY[name] is getattr(compose, name) is getattr(lrsched, name)
  assert lrsched.scale_lr is scale_lr and lrsched.to_steps is to_steps
