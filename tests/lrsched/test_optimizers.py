"""Tests for lrsched.optimizers: sgd/adamw/lars with scheduled LR and momentum, hyperparams."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lrsched

T = 8  # training steps per run

# A tiny linear regression: loss = mean((X w + b - Y)^2).
_rng = np.random.default_rng(0)
X = _rng.standard_normal((16, 4))
Y = _rng.standard_normal((16, 2))
PARAMS = {'w': 0.5 * _rng.standard_normal((4, 2)), 'b': np.array([0.3, -0.2])}

LR = lrsched.linear(0.2, 0.02, T - 2)  # changes every step, then holds
MOMENTUM = lrsched.linear(0.95, 0.85, T - 2)
WD = 1e-2


def loss(params, x=X, y=Y):
  return jnp.mean((x @ params['w'] + params['b'] - y) ** 2)


def np_grad(p):
  r = X @ p['w'] + p['b'] - Y
  return {'w': 2 * X.T @ r / r.size, 'b': 2 * r.sum(0) / r.size}


def jax_params():
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), PARAMS)


def train(tx, steps=T):
  """Jitted: `steps` updates; the params and hyperparams after each one, and after init."""

  def step(carry, _):
    params, state = carry
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
    return (params, state), (params, lrsched.hyperparams(state))

  @jax.jit
  def run(params):
    state = tx.init(params)
    return lrsched.hyperparams(state), jax.lax.scan(step, (params, state), length=steps)[1]

  return run(jax_params())


def reference(lr, momentum, *, nesterov=False, wd=0.0, decoupled=False, velocity='optax',
              steps=T):
  """The textbook updates in float64 numpy; the params after each step."""
  p = {k: v.copy() for k, v in PARAMS.items()}
  buf = {k: np.zeros_like(v) for k, v in p.items()}
  out = []
  for t in range(steps):
    eta, mu = float(lr(t)), float(momentum(t))
    g = np_grad(p)
    for k in p:
      u = g[k] if decoupled else g[k] + wd * p[k]
      decay = eta * wd * p[k] if decoupled else 0.0
      if velocity == 'optax':  # t <- m t + u; w <- w - lr t
        buf[k] = mu * buf[k] + u
        p[k] = p[k] - eta * (mu * buf[k] + u if nesterov else buf[k]) - decay
      else:  # Caffe: v <- m v - lr u; w <- w + v
        buf[k] = mu * buf[k] - eta * u
        p[k] = p[k] + (mu * buf[k] - eta * u if nesterov else buf[k]) - decay
    out.append({k: v.copy() for k, v in p.items()})
  return out


def assert_trajectory(got, want, rtol=2e-5):
  for t, w in enumerate(want):
    for k in w:
      np.testing.assert_allclose(got[k][t], w[k], rtol=rtol, atol=1e-6, err_msg=f'{k}@{t}')


def assert_hyperparams(hp, schedules, steps):
  for name, fn in schedules.items():
    np.testing.assert_allclose(hp[name], fn(steps), rtol=1e-6, err_msg=name)


# --------------------------------------------------------------------------------------
# hyperparams(): the values of the last update


WRAPS = {
    'plain': lambda tx: tx,
    'chain_clip': lambda tx: optax.chain(optax.clip_by_global_norm(1.0), tx),
    'masked': lambda tx: optax.masked(tx, {'w': True, 'b': True}),
}


@pytest.mark.parametrize('wrap', sorted(WRAPS))
@pytest.mark.parametrize('nesterov', [False, True])
def test_hyperparams_are_the_schedules_at_the_update(wrap, nesterov):
  tx = WRAPS[wrap](lrsched.sgd(LR, momentum=MOMENTUM, nesterov=nesterov, weight_decay=WD))
  at_init, (_, hp) = train(tx)
  # After init: step 0. After update k (k = 1..T): the values it used, step k - 1.
  assert_hyperparams(at_init, {'learning_rate': LR, 'momentum': MOMENTUM}, 0)
  assert_hyperparams(hp, {'learning_rate': LR, 'momentum': MOMENTUM}, jnp.arange(T))
  np.testing.assert_allclose(hp['weight_decay'], WD, rtol=1e-6)


def test_hyperparams_inside_multisteps_count_applied_updates():
  """MultiSteps: the schedules advance once per applied update (every 2 micro-steps)."""
  tx = optax.MultiSteps(lrsched.sgd(LR, momentum=MOMENTUM), every_k_schedule=2)
  micro = 2 * T
  _, (_, hp) = train(tx, steps=micro)
  applied = jnp.arange(1, micro + 1) // 2  # updates applied after each micro-step
  steps = jnp.maximum(applied - 1, 0)  # step 0 both at init and after the first update
  assert_hyperparams(hp, {'learning_rate': LR, 'momentum': MOMENTUM}, steps)


def test_hyperparams_with_one_cycle_schedules():
  if not hasattr(lrsched, 'one_cycle_momentum'):
    pytest.skip('lrsched.one_cycle_momentum not available')
  lr = lrsched.one_cycle(max_lr=0.5, total_steps=T)
  momentum = lrsched.one_cycle_momentum(total_steps=T)
  _, (_, hp) = train(lrsched.sgd(lr, momentum=momentum, nesterov=True))
  assert_hyperparams(hp, {'learning_rate': lr, 'momentum': momentum}, jnp.arange(T))


def test_hyperparams_keys():
  params = jax_params()
  assert set(lrsched.hyperparams(lrsched.sgd(0.1).init(params))) == {'learning_rate'}
  hp = lrsched.hyperparams(lrsched.adamw(0.1, b1=MOMENTUM).init(params))
  assert list(hp)[:2] == ['learning_rate', 'momentum']
  np.testing.assert_allclose(hp['momentum'], 0.95, rtol=1e-6)
  assert lrsched.hyperparams(optax.sgd(0.1).init(params)) == {}
  # Two optimizers for two parameter groups: the second is named by its path.
  tx = optax.multi_transform({'w': lrsched.sgd(0.1), 'b': lrsched.sgd(0.2)},
                             {'w': 'w', 'b': 'b'})
  hp = lrsched.hyperparams(tx.init(params))
  assert len(hp) == 2 and float(hp['learning_rate']) in (np.float32(0.1), np.float32(0.2))
  (other,) = [k for k in hp if k != 'learning_rate']
  assert other.endswith('.learning_rate') and "['" in other


# --------------------------------------------------------------------------------------
# sgd against the textbook updates


@pytest.mark.parametrize('velocity', ['optax', 'caffe'])
@pytest.mark.parametrize('nesterov', [False, True])
@pytest.mark.parametrize('decoupled', [False, True])
def test_sgd_matches_reference(velocity, nesterov, decoupled):
  tx = lrsched.sgd(LR, momentum=MOMENTUM, nesterov=nesterov, weight_decay=WD,
                   decoupled_weight_decay=decoupled, velocity=velocity)
  _, (params, _) = train(tx)
  assert_trajectory(params, reference(LR, MOMENTUM, nesterov=nesterov, wd=WD,
                                      decoupled=decoupled, velocity=velocity))


@pytest.mark.parametrize('nesterov', [False, True])
def test_sgd_equals_optax_sgd_on_decayed_gradient(nesterov):
  """Coupled decay: optax.sgd fed g + wd * w, step by step."""
  ours = lrsched.sgd(LR, momentum=0.9, nesterov=nesterov, weight_decay=WD)
  theirs = optax.sgd(LR, momentum=0.9, nesterov=nesterov)
  params = jax_params()
  s_ours, s_theirs = ours.init(params), theirs.init(params)
  for _ in range(4):
    g = jax.grad(loss)(params)
    u_ours, s_ours = ours.update(g, s_ours, params)
    u_theirs, s_theirs = theirs.update(
        jax.tree.map(lambda g, w: g + WD * w, g, params), s_theirs)
    for k in params:
      np.testing.assert_allclose(u_ours[k], u_theirs[k], rtol=1e-6, atol=1e-8)
    params = optax.apply_updates(params, u_ours)


def test_sgd_without_momentum_is_plain_sgd():
  tx = lrsched.sgd(LR)
  at_init, (params, hp) = train(tx)
  assert 'momentum' not in hp and 'momentum' not in at_init
  assert tx.init(jax_params()).inner_state == (optax.EmptyState(),)  # no velocity
  assert_trajectory(params, reference(LR, lambda t: 0.0))


def test_caffe_equals_optax_form_iff_lr_is_constant():
  caffe = lambda lr: lrsched.sgd(lr, momentum=MOMENTUM, weight_decay=WD, velocity='caffe')
  optax_form = lambda lr: lrsched.sgd(lr, momentum=MOMENTUM, weight_decay=WD)
  _, (a, _) = train(caffe(0.1))
  _, (b, _) = train(optax_form(0.1))
  assert_trajectory(a, [{k: np.asarray(v[t]) for k, v in b.items()} for t in range(T)])
  _, (a, _) = train(caffe(LR))
  _, (b, _) = train(optax_form(LR))
  assert np.max(np.abs(a['w'][-1] - b['w'][-1])) > 1e-3  # the LR sits in the velocity


def test_weight_decay_mask():
  mask = {'w': True, 'b': False}
  tx = lrsched.sgd(0.1, momentum=0.9, weight_decay=0.5, weight_decay_mask=mask)
  params = jax_params()
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  np.testing.assert_allclose(updates['w'], -0.1 * 0.5 * params['w'], rtol=1e-6)
  np.testing.assert_array_equal(updates['b'], 0.0)


def test_sgd_vmap_over_learning_rate():
  lrs = jnp.asarray([0.05, 0.2])

  def final_w(lr):
    tx = lrsched.sgd(lr, momentum=0.9)
    params, state = jax_params(), tx.init(jax_params())
    for _ in range(3):
      updates, state = tx.update(jax.grad(loss)(params), state)
      params = optax.apply_updates(params, updates)
    return params['w']

  swept = jax.jit(jax.vmap(final_w))(lrs)
  for i, lr in enumerate(lrs):
    np.testing.assert_allclose(swept[i], final_w(float(lr)), rtol=1e-5)


# --------------------------------------------------------------------------------------
# adamw and lars


def test_adamw_b1_schedule_matches_optax_adamw_per_step():
  b1 = lrsched.linear(0.95, 0.8, T - 2)
  ours = lrsched.adamw(LR, b1=b1, weight_decay=WD)
  params = jax_params()
  ref_params, state, ref_state = params, ours.init(params), optax.adamw(LR).init(params)
  for t in range(5):
    updates, state = ours.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
    # optax.adamw with this step's b1; its state (count, moments) carries over.
    ref = optax.adamw(LR, b1=float(b1(t)), weight_decay=WD)
    ref_updates, ref_state = ref.update(jax.grad(loss)(ref_params), ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, ref_updates)
    np.testing.assert_allclose(lrsched.hyperparams(state)['momentum'], b1(t), rtol=1e-6)
    for k in params:  # float32: Adam's first steps are ~lr, ±lr cancels in b
      np.testing.assert_allclose(params[k], ref_params[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('nesterov', [False, True])
def test_lars_matches_optax_lars(nesterov):
  kwargs = dict(weight_decay=WD, trust_coefficient=0.5, eps=1e-6, nesterov=nesterov,
                weight_decay_mask={'w': True, 'b': False})
  _, (ours, hp) = train(lrsched.lars(LR, momentum=0.9, **kwargs))
  _, (theirs, _) = train(optax.inject_hyperparams(optax.lars, static_args='weight_decay_mask')(
      LR, momentum=0.9, **kwargs))
  assert_trajectory(ours, [{k: np.asarray(v[t]) for k, v in theirs.items()} for t in range(T)])
  assert_hyperparams(hp, {'learning_rate': LR}, jnp.arange(T))


def test_lars_momentum_schedule_reported():
  _, (params, hp) = train(lrsched.lars(LR, momentum=MOMENTUM, trust_ratio_mask={
      'w': True, 'b': False}))
  assert_hyperparams(hp, {'learning_rate': LR, 'momentum': MOMENTUM}, jnp.arange(T))
  assert np.all(np.isfinite(params['w']))


# --------------------------------------------------------------------------------------
# Bad inputs


@pytest.mark.parametrize('make, name', [
    (lambda: lrsched.sgd(-0.1), 'learning_rate'),
    (lambda: lrsched.sgd(math.nan), 'learning_rate'),
    (lambda: lrsched.sgd(0.1, momentum=1.0), 'momentum'),
    (lambda: lrsched.sgd(0.1, momentum=-0.1), 'momentum'),
    (lambda: lrsched.sgd(0.1, momentum='0.9'), 'momentum'),
    (lambda: lrsched.sgd(0.1, nesterov=True), 'nesterov'),
    (lambda: lrsched.sgd(0.1, 0.9, nesterov=1), 'nesterov'),
    (lambda: lrsched.sgd(0.1, weight_decay=-1e-4), 'weight_decay'),
    (lambda: lrsched.sgd(0.1, weight_decay=math.inf), 'weight_decay'),
    (lambda: lrsched.sgd(0.1, decoupled_weight_decay='yes'), 'decoupled_weight_decay'),
    (lambda: lrsched.sgd(0.1, 0.9, velocity='torch'), 'velocity'),
    (lambda: lrsched.adamw(-1.0), 'learning_rate'),
    (lambda: lrsched.adamw(0.1, b1=1.0), 'b1'),
    (lambda: lrsched.adamw(0.1, b2=1.5), 'b2'),
    (lambda: lrsched.adamw(0.1, eps=-1e-8), 'eps'),
    (lambda: lrsched.adamw(0.1, weight_decay=-1.0), 'weight_decay'),
    (lambda: lrsched.lars(math.inf), 'learning_rate'),
    (lambda: lrsched.lars(0.1, momentum=1.2), 'momentum'),
    (lambda: lrsched.lars(0.1, momentum=None, nesterov=True), 'nesterov'),
    (lambda: lrsched.lars(0.1, weight_decay=-1.0), 'weight_decay'),
    (lambda: lrsched.lars(0.1, trust_coefficient=-1.0), 'trust_coefficient'),
    (lambda: lrsched.lars(0.1, eps=math.nan), 'eps'),
])
def test_rejects_bad_arguments(make, name):
  with pytest.raises(ValueError, match=rf'^(sgd|adamw|lars): .*\b{name}\b'):
    make()
