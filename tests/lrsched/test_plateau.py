"""Tests for lrsched.plateau: reduce-on-plateau against PyTorch, as an LR and as a transform."""

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
from lrsched import plateau, states

GOLDEN = json.loads(
    (pathlib.Path(__file__).parent / 'golden' / 'torch_plateau.json').read_text())['cases']
CASES = {case['name']: case for case in GOLDEN}


def _metrics(case):
  return np.array([math.nan if m is None else m for m in case['metrics']], np.float32)


@jax.jit
def _replay(state, metrics):
  """Reports each metric in turn; returns (scale, num_bad, cooldown) after each report."""

  def step(state, metric):
    state = lrsched.report_metric(state, metric)
    return state, (state.scale, state.num_bad_reports, state.cooldown_counter)

  return jax.lax.scan(step, state, metrics)[1]


def torch_reference(metrics, lr, factor=0.1, patience=10, mode='min', threshold=1e-4,
                    threshold_mode='rel', cooldown=0, min_lr=0.0, eps=1e-8):
  """PyTorch's ReduceLROnPlateau.step, transcribed (float64): the LR after each report."""
  if threshold_mode == 'rel':
    better = ((lambda a, b: a < b * (1 - threshold)) if mode == 'min' else
              (lambda a, b: a > b * (1 + threshold)))
  else:
    better = ((lambda a, b: a < b - threshold) if mode == 'min' else
              (lambda a, b: a > b + threshold))
  best, bad, cool, lrs = (math.inf if mode == 'min' else -math.inf), 0, 0, []
  for m in metrics:
    if better(m, best):
      best, bad = m, 0
    else:
      bad += 1
    if cool > 0:
      cool, bad = cool - 1, 0
    if bad > patience:
      new_lr = max(lr * factor, min_lr)
      if lr - new_lr > eps:
        lr = new_lr
      cool, bad = cooldown, 0
    lrs.append(lr)
  return lrs


# --------------------------------------------------------------------------------------
# PyTorch golden values


@pytest.mark.parametrize('name', sorted(CASES))
def test_lr_form_matches_torch(name):
  case = CASES[name]
  lr = lrsched.reduce_lr_on_plateau(case['lr'], **case['kwargs'])
  scale, bad, cooldown = _replay(lr.init(), _metrics(case))
  np.testing.assert_allclose(case['lr'] * np.asarray(scale), case['lr_after'], rtol=2e-6)
  np.testing.assert_array_equal(bad, case['num_bad_epochs'])
  np.testing.assert_array_equal(cooldown, case['cooldown_counter'])


@pytest.mark.parametrize('name', sorted(CASES))
def test_transform_form_matches_torch(name):
  """reduce_on_plateau's scale is PyTorch's LR / base LR (min_lr, eps divided by it)."""
  case = CASES[name]
  kwargs = dict(case['kwargs'])
  lr0 = case['lr']
  min_scale = kwargs.pop('min_lr', 0.0) / lr0
  if min_scale > 1:
    pytest.skip('min_lr above the LR: no multiplier floor expresses it')
  eps = kwargs.pop('eps', 1e-8) / lr0
  tx = plateau.reduce_on_plateau(**kwargs, min_scale=min_scale, eps=eps)
  scale, bad, _ = _replay(tx.init({'w': jnp.zeros(2)}), _metrics(case))
  np.testing.assert_allclose(lr0 * np.asarray(scale), case['lr_after'], rtol=2e-6)
  np.testing.assert_array_equal(bad, case['num_bad_epochs'])


def test_reference_reproduces_torch_golden():
  """The transcription used by the property test agrees with torch itself."""
  for case in GOLDEN:
    kwargs = dict(case['kwargs'])
    lrs = torch_reference(_metrics(case).astype(float), case['lr'], **kwargs)
    np.testing.assert_allclose(lrs, case['lr_after'], rtol=1e-8, err_msg=case['name'])


def test_through_sgd_with_jitted_train_step():
  """Train step and report each jitted once; the LR logged after the next update is torch's."""
  case = CASES['noisy_loss']
  lr = lrsched.reduce_lr_on_plateau(case['lr'], **case['kwargs'])
  tx = lrsched.sgd(lr, momentum=0.9, weight_decay=1e-4)
  params = {'w': jnp.ones(3), 'b': jnp.zeros(())}
  loss = lambda p: jnp.sum((p['w'] - 2.0) ** 2) + p['b'] ** 2

  @jax.jit
  def train_step(params, opt_state):
    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  report = jax.jit(lrsched.report_metric)
  opt_state = tx.init(params)
  logged = []
  for metric in _metrics(case):
    params, opt_state = train_step(params, opt_state)
    opt_state = report(opt_state, metric)
    params, opt_state = train_step(params, opt_state)
    logged.append(lrsched.hyperparams(opt_state)['learning_rate'])
  np.testing.assert_allclose(logged, case['lr_after'], rtol=2e-6)
  assert train_step._cache_size() == 1  # reports do not retrace the train step
  assert report._cache_size() == 1


# --------------------------------------------------------------------------------------
# Properties against the transcription of PyTorch (integer metrics: no float ties)

CONFIGS = [
    dict(factor=0.5, patience=1),
    dict(factor=0.5, patience=0, mode='max', cooldown=2, min_lr=0.1),
    dict(factor=0.25, patience=2, threshold=0.5, threshold_mode='abs', min_lr=0.3),
    dict(factor=0.5, patience=1, mode='max', threshold=0.1, cooldown=1),
]


@given(config=st.sampled_from(CONFIGS), as_transform=st.booleans(),
       metrics=st.lists(st.integers(0, 5), min_size=24, max_size=24))
def test_matches_pytorch_transcription(config, as_transform, metrics):
  metrics = [float(m) for m in metrics]
  expected = torch_reference(metrics, 1.0, **config)
  if as_transform:
    kwargs = dict(config)
    min_scale = kwargs.pop('min_lr', 0.0)
    state = plateau.reduce_on_plateau(**kwargs, min_scale=min_scale).init(())
  else:
    state = lrsched.reduce_lr_on_plateau(1.0, **config).init()
  scale = np.asarray(_replay(state, jnp.asarray(metrics, jnp.float32))[0])
  np.testing.assert_allclose(scale, expected, rtol=1e-6)
  floor = config.get('min_lr', 0.0)
  assert np.all(scale >= np.float32(floor)) and np.all(scale <= 1.0)
  assert np.all(np.diff(scale) <= 0)


@given(metrics=st.lists(st.floats(width=32), min_size=16,
                        max_size=16))
def test_scale_never_below_min_scale(metrics):
  tx = plateau.reduce_on_plateau(factor=0.3, patience=0, min_scale=0.05)
  scale = np.asarray(_replay(tx.init(()), jnp.asarray(metrics, jnp.float32))[0])
  assert np.all(scale >= np.float32(0.05)) and np.all(np.diff(scale) <= 0)
  assert np.all(np.isfinite(scale))


def test_varying_base_schedule_min_lr_at_reduction():
  """min_lr bounds the LR at each reduction, computed from base(count) at that moment."""
  base = lrsched.linear(1.0, 0.5, 10)
  lr = lrsched.reduce_lr_on_plateau(base, factor=0.1, patience=0, min_lr=0.2)
  state = lr.init()
  for _ in range(4):
    state = lr.update(state)
  state = lrsched.report_metric(state, 1.0)  # improvement: no reduction
  state = lrsched.report_metric(state, 1.0)  # reduction: 0.8 * 0.1 < 0.2, so 0.2
  np.testing.assert_allclose(lr(state), 0.2, rtol=1e-6)
  np.testing.assert_allclose(state.scale, 0.25, rtol=1e-6)
  for _ in range(6):
    state = lr.update(state)
  np.testing.assert_allclose(lr(state), 0.5 * 0.25, rtol=1e-6)  # the base decays on


# --------------------------------------------------------------------------------------
# Scaling the updates vs scaling the LR


def _run(tx, params, grads, report_at, metrics):
  """Updates with the given grads; reports metrics[i] before update report_at[i]."""
  state = tx.init(params)
  out = []
  reports = dict(zip(report_at, metrics, strict=True))
  update = jax.jit(tx.update)
  for t, g in enumerate(grads):
    if t in reports:
      state = lrsched.report_metric(state, reports[t])
    u, state = update(g, state, params)
    params = optax.apply_updates(params, u)
    out.append(params)
  return out


GRADS = [{'w': jnp.asarray(np.random.default_rng(i).standard_normal(3), jnp.float32)}
         for i in range(7)]
PARAMS = {'w': jnp.asarray([1.0, -2.0, 0.5])}
# patience 0, factor 0.5: the second report (no improvement) halves the LR from update 4.
REPORT_AT, METRICS = (2, 4), (1.0, 1.0)
HALVED = optax.piecewise_constant_schedule(0.1, {4: 0.5})


@pytest.mark.parametrize('make', [
    lambda lr: optax.adam(lr),
    lambda lr: lrsched.adamw(lr, weight_decay=1e-2),
    lambda lr: lrsched.sgd(lr, momentum=0.9, weight_decay=1e-2),
    lambda lr: lrsched.sgd(lr, momentum=0.9, weight_decay=1e-2, decoupled_weight_decay=True),
], ids=['optax.adam', 'adamw', 'sgd', 'sgd_decoupled'])
def test_transform_equals_lr_reduction_when_lr_applied_last(make):
  tx = optax.chain(make(0.1), plateau.reduce_on_plateau(factor=0.5, patience=0))
  got = _run(tx, PARAMS, GRADS, REPORT_AT, METRICS)
  want = _run(optax.chain(make(HALVED), plateau.reduce_on_plateau()), PARAMS, GRADS,
              REPORT_AT, METRICS)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g['w'], w['w'], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('make', [
    lambda lr: lrsched.sgd(lr, momentum=0.9, velocity='caffe'),
    lambda lr: lrsched.sgd(lr, momentum=0.9, nesterov=True, velocity='caffe',
                           weight_decay=1e-2, decoupled_weight_decay=True),
    lambda lr: lrsched.lars(lr, momentum=0.9, trust_coefficient=0.1),
], ids=['caffe', 'caffe_nesterov_decoupled', 'lars'])
def test_lr_in_velocity_reduced_through_the_lr(make):
  """With velocity='caffe'/LARS the reduced LR enters the velocity, as a schedule would."""
  lr = lrsched.reduce_lr_on_plateau(0.1, factor=0.5, patience=0)
  got = _run(make(lr), PARAMS, GRADS, REPORT_AT, METRICS)
  want = _run(make(HALVED), PARAMS, GRADS, (), ())
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g['w'], w['w'], rtol=1e-5, atol=1e-7)
  # Scaling the updates instead would differ, which is why it is rejected:
  tx = optax.chain(make(0.1), plateau.reduce_on_plateau(factor=0.5, patience=0))
  with pytest.raises(ValueError, match='reduce_lr_on_plateau'):
    _run(tx, PARAMS, GRADS, REPORT_AT, METRICS)


def test_inside_multisteps_and_chain():
  lr = lrsched.reduce_lr_on_plateau(0.1, factor=0.5, patience=0)
  tx = optax.MultiSteps(optax.chain(optax.clip_by_global_norm(1.0),
                                    lrsched.sgd(lr, momentum=0.9)), every_k_schedule=2)
  state = tx.init(PARAMS)
  for _ in range(3):  # micro-steps 1..3: one applied update
    _, state = tx.update(GRADS[0], state, PARAMS)
  (_, found), = states.find_states(state, plateau.PlateauState)
  assert int(found.count) == 1  # the plateau counts applied updates, not micro-steps
  state = lrsched.report_metric(lrsched.report_metric(state, 1.0), 1.0)
  _, state = tx.update(GRADS[0], state, PARAMS)  # micro-step 4: the second update
  hp = lrsched.hyperparams(state)
  np.testing.assert_allclose(hp['learning_rate'], 0.05, rtol=1e-6)
  np.testing.assert_allclose(hp['plateau_scale'], 0.5, rtol=1e-6)


# --------------------------------------------------------------------------------------
# The state is an ordinary pytree


def test_state_is_a_pytree_of_arrays():
  tx = optax.chain(lrsched.sgd(lrsched.reduce_lr_on_plateau(0.1), momentum=0.9),
                   plateau.reduce_on_plateau())
  state = lrsched.report_metric(tx.init(PARAMS), 3.0)
  leaves, treedef = jax.tree_util.tree_flatten(state)
  assert all(isinstance(leaf, jax.Array) for leaf in leaves)
  again = jax.tree_util.tree_unflatten(treedef, leaves)
  assert jax.tree_util.tree_structure(again) == treedef
  (_, a), (_, b) = states.find_states(again, plateau.PlateauState)
  assert float(a.best) == 3.0 and float(b.best) == 3.0
  # A copy made by tree_map (as checkpoint restore does) keeps the static config.
  copy = jax.tree.map(np.asarray, state)
  assert jax.tree_util.tree_structure(copy) == treedef
  lrsched.report_metric(copy, 1.0)


def test_orbax_round_trip(tmp_path):
  ocp = pytest.importorskip('orbax.checkpoint')
  tx = lrsched.sgd(lrsched.reduce_lr_on_plateau(0.1, patience=0), momentum=0.9)
  state = tx.init(PARAMS)
  for metric in (2.0, 1.0, 1.5, 1.5):
    _, state = tx.update(GRADS[0], state, PARAMS)
    state = lrsched.report_metric(state, metric)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / 'state', state)
    ckpt.wait_until_finished()
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, tx.init(PARAMS))
    restored = ckpt.restore(tmp_path / 'state', target)
  assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(state)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------
# Bad inputs


@pytest.mark.parametrize('kwargs, name', [
    (dict(factor=1.0), 'factor'),
    (dict(factor=-0.5), 'factor'),
    (dict(factor=math.nan), 'factor'),
    (dict(patience=-1), 'patience'),
    (dict(patience=2.5), 'patience'),
    (dict(mode='avg'), 'mode'),
    (dict(threshold=-1e-3), 'threshold'),
    (dict(threshold=1.0), 'threshold'),
    (dict(threshold_mode='pct'), 'threshold_mode'),
    (dict(cooldown=-1), 'cooldown'),
    (dict(eps=-1.0), 'eps'),
    (dict(min_scale=1.5), 'min_scale'),
    (dict(min_scale=-0.1), 'min_scale'),
])
def test_reduce_on_plateau_rejects(kwargs, name):
  with pytest.raises(ValueError, match=rf'reduce_on_plateau: .*\b{name}\b'):
    plateau.reduce_on_plateau(**kwargs)


@pytest.mark.parametrize('kwargs, name', [
    (dict(learning_rate=-0.1), 'learning_rate'),
    (dict(learning_rate=math.inf), 'learning_rate'),
    (dict(learning_rate=0.1, min_lr=-1e-3), 'min_lr'),
    (dict(learning_rate=0.1, factor=2.0), 'factor'),
    (dict(learning_rate=0.1, eps=math.nan), 'eps'),
    (dict(learning_rate=jnp.ones(2)), 'learning_rate'),
])
def test_reduce_lr_on_plateau_rejects(kwargs, name):
  with pytest.raises(ValueError, match=rf'reduce_lr_on_plateau: .*\b{name}\b'):
    lrsched.reduce_lr_on_plateau(**kwargs)


def test_report_metric_rejects():
  with pytest.raises(ValueError, match='no plateau state'):
    lrsched.report_metric(lrsched.sgd(0.1).init(PARAMS), 1.0)
  state = plateau.reduce_on_plateau().init(PARAMS)
  with pytest.raises(ValueError, match='value must be a scalar'):
    lrsched.report_metric(state, jnp.ones(2))
  with pytest.raises(TypeError, match='stateful learning rate'):
    lrsched.reduce_lr_on_plateau(0.1)(3)
