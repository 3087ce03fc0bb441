"""momentum_for: the cyclical momentum paired with an LR schedule moves opposite to it."""

import jax.numpy as jnp
import numpy as np
import pytest

import lrsched
from lrsched import cyclical

PAIRS = [
    ('one_cycle(max_lr=1.0, total_steps=200)', 'one_cycle_momentum'),
    ('one_cycle(max_lr=1.0, total_steps=200, pct_start=0.4, anneal="linear", three_phase=True)',
     'one_cycle_momentum'),
    ('fastai_one_cycle(max_lr=1.0, total_steps=200)', 'fastai_one_cycle_momentum'),
    ('smith_one_cycle(base_lr=0.08, max_lr=0.8, total_steps=200)', 'smith_one_cycle_momentum'),
    ('caffe_one_cycle(base_lr=0.08, max_lr=0.8, total_steps=200)', 'smith_one_cycle_momentum'),
    ('super_convergence(base_lr=0.1, max_lr=3.0, step_size=100)', 'smith_one_cycle_momentum'),
    ('triangular(base_lr=0.1, max_lr=1.0, step_size=50)', 'cyclic_momentum'),
    ('cyclic(base_lr=0.1, max_lr=1.0, step_size_up=30, step_size_down=70)', 'cyclic_momentum'),
]


@pytest.mark.parametrize('spec, expected', PAIRS)
def test_partner_moves_opposite_to_the_lr(spec, expected):
  lr = lrsched.parse(spec)
  momentum = lrsched.momentum_for(lr, base_momentum=0.85, max_momentum=0.95)
  assert momentum.name == expected
  steps = jnp.arange(200)
  lrs, moms = np.asarray(lr(steps)), np.asarray(momentum(steps))
  assert moms[0] == pytest.approx(0.95)
  assert moms[np.argmax(lrs)] == pytest.approx(0.85, abs=1e-6)
  assert np.all((moms >= 0.85 - 1e-6) & (moms <= 0.95 + 1e-6))
  rising = np.diff(lrs[: np.argmax(lrs) + 1]) > 1e-9
  assert np.all(np.diff(moms[: np.argmax(lrs) + 1])[rising] < 0)  # LR up, momentum down
  if lr.total_steps is not None:
    assert momentum.total_steps == lr.total_steps


def test_warmup_holds_max_momentum_then_follows_the_inner_partner():
  inner = lrsched.one_cycle(max_lr=1.0, total_steps=100)
  momentum = lrsched.momentum_for(lrsched.warmup(inner, warmup_steps=20))
  inner_momentum = lrsched.momentum_for(inner)
  np.testing.assert_allclose(momentum(jnp.arange(20)), 0.95)
  np.testing.assert_allclose(momentum(jnp.arange(20, 120)), inner_momentum(jnp.arange(100)),
                             rtol=1e-6)


def test_zero_warmup_gives_the_inner_partner():
  # warmup(s, 0) is valid and is s itself; its partner is s's partner, not a 0-step sequence.
  inner = lrsched.one_cycle(max_lr=1.0, total_steps=100)
  momentum = lrsched.momentum_for(lrsched.warmup(inner, warmup_steps=0), 0.8, 0.9)
  expected = lrsched.momentum_for(inner, 0.8, 0.9)
  assert repr(momentum) == repr(expected)
  np.testing.assert_array_equal(momentum(jnp.arange(100)), expected(jnp.arange(100)))


def test_sequence_chains_the_partners():
  pieces = [cyclical.triangular(0.1, 1.0, 10), cyclical.triangular(0.01, 0.1, 5)]
  momentum = lrsched.momentum_for(lrsched.sequence(pieces, durations=[20]))
  np.testing.assert_allclose(momentum(jnp.arange(20)),
                             lrsched.momentum_for(pieces[0])(jnp.arange(20)), rtol=1e-6)
  np.testing.assert_allclose(momentum(jnp.arange(20, 40)),
                             lrsched.momentum_for(pieces[1])(jnp.arange(20)), rtol=1e-6)


@pytest.mark.parametrize('kwargs, match', [
    (dict(base_momentum=0.95, max_momentum=0.85), 'base_momentum must be <= max_momentum'),
    (dict(max_momentum=1.0), r'max_momentum must be in \[0, 1\)'),
])
def test_bad_momenta(kwargs, match):
  with pytest.raises(ValueError, match=match):
    lrsched.momentum_for(cyclical.triangular(0.1, 1.0, 10), **kwargs)


def test_no_partner_for_a_decay_names_it():
  with pytest.raises(ValueError, match='no cyclical momentum is defined for cosine'):
    lrsched.momentum_for(lrsched.cosine(0.1, 100))
