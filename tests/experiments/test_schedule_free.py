"""Schedule-free SGD and AdamW arms: evaluated at the average x, BN statistics recomputed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import data, models, parallel, setup, train
from experiments.config import ConfigError
from tests.experiments.test_train import assert_trees_equal, evaluations, final_params, tiny

SF = dict(optimizer='schedule_free_sgd', schedule='warmup(constant(0.5), warmup_steps=2)',
          momentum='0.9')


def test_evaluation_params_are_the_average_for_schedule_free_only():
  params = {'w': jnp.ones(3)}
  grads = {'w': jnp.asarray([1.0, -2.0, 0.5])}
  tx = setup._build_optimizer(tiny('/tmp/unused', **SF), optax.constant_schedule(0.5), 0.9)
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  x, averaged = train.evaluation_params(state, params)
  assert averaged
  inner = state.inner_state
  np.testing.assert_allclose(x['w'], (params['w'] - 0.1 * inner.z['w']) / 0.9, rtol=1e-6,
                             atol=1e-6)
  assert not np.allclose(x['w'], params['w'])
  sgd = optax.sgd(0.1)
  assert train.evaluation_params(sgd.init(params), params) == (params, False)


def _recalibrated(bn_debias: bool, bn_momentum: float, num_devices: int, batches: int = 2,
                  group: int = 4):
  model = models.create_model('resnet8', num_classes=10, dtype=jnp.float32, bn_group_size=group,
                              bn_momentum=bn_momentum, bn_debias=bn_debias)
  images = np.random.default_rng(0).integers(0, 256, (16 * batches, 32, 32, 3), np.uint8)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  mesh = parallel.make_mesh(jax.devices()[:num_devices])
  mean, std = (parallel.put_replicated(mesh, np.asarray(v, np.float32))
               for v in ((120.0, 110.0, 100.0), (60.0, 60.0, 60.0)))
  recalibrate = parallel.make_bn_recalibration(model, mesh, jnp.float32, 16 // num_devices,
                                               bn_momentum, images, 'flip',
                                               jax.random.key(1))
  stats = recalibrate(variables['params'], variables['batch_stats'], mean, std)
  x = data.normalize(jnp.asarray(images[:8]), mean, std, dtype=jnp.float32)
  logits = model.apply({'params': variables['params'], 'batch_stats': stats}, x, train=False)
  return model, variables, images, stats, logits


@pytest.mark.parametrize('bn_debias, bn_momentum', [(True, 0.9), (False, 0.9), (False, 0.5)])
def test_recalibrated_statistics_do_not_depend_on_how_bn_averages(bn_debias, bn_momentum):
  *_, reference = _recalibrated(False, 0.0, 1)
  *_, logits = _recalibrated(bn_debias, bn_momentum, 1)
  np.testing.assert_allclose(logits, reference, rtol=2e-4, atol=2e-4)


def test_recalibration_over_one_batch_is_that_batchs_statistics():
  # bn_momentum 0: the running statistics are the last batch's, so one training pass over
  # the (augmented) batch from any state gives exactly what recalibration must return.
  model, variables, images, stats, _ = _recalibrated(False, 0.0, 1, batches=1)
  x = parallel.augment_batch(jnp.asarray(images), jax.random.key(1), jnp.arange(16), 'flip')
  mean, std = jnp.asarray((120.0, 110.0, 100.0)), jnp.asarray((60.0, 60.0, 60.0))
  x = data.normalize(x, mean, std, dtype=jnp.float32)
  _, updated = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert_trees_equal(stats, updated['batch_stats'], rtol=1e-5, atol=1e-6)


def test_recalibration_on_eight_devices_matches_one():
  *_, one = _recalibrated(True, 0.9, 1, group=2)
  *_, eight = _recalibrated(True, 0.9, 8, group=2)
  np.testing.assert_allclose(eight, one, rtol=2e-4, atol=2e-4)


def test_a_schedule_free_run_trains_and_its_evaluations_change_nothing(tmp_path):
  often = train.train_and_evaluate(tiny(tmp_path / 'often', eval_every=1, **SF))
  rarely = train.train_and_evaluate(tiny(tmp_path / 'rarely', eval_every=6, **SF))
  assert often['status'] == rarely['status'] == 'finished'
  assert_trees_equal(final_params(tmp_path / 'often'), final_params(tmp_path / 'rarely'))
  assert often['final_test_accuracy'] == rarely['final_test_accuracy']
  rows = evaluations(tmp_path / 'often')
  assert [r['step'] for r in rows] == [1, 2, 3, 4, 5, 6]
  assert rows[0]['momentum'] == pytest.approx(0.9)  # its b1, logged as the momentum
  assert rows[-1]['lr'] == pytest.approx(0.5)


def test_schedule_free_adamw_trains(tmp_path):
  summary = train.train_and_evaluate(tiny(
      tmp_path, optimizer='schedule_free_adamw', schedule='warmup(constant(0.005), 2)',
      weight_decay_mode='decoupled', weight_decay=1e-4))
  assert summary['status'] == 'finished' and np.isfinite(summary['final_test_loss'])


@pytest.mark.parametrize('changes, message', [
    (dict(optimizer='schedule_free_adamw'), 'pass --weight_decay_mode=decoupled'),
    (dict(weight_decay_mode='decoupled'), 'pass --weight_decay_mode=coupled'),
    (dict(momentum='none'), 'takes a constant interpolation b1'),
    (dict(momentum='linear(0.9, 0.8)'), 'takes a constant interpolation b1'),
])
def test_schedule_free_settings_that_do_not_fit_are_refused(tmp_path, changes, message):
  with pytest.raises(ConfigError, match=message):
    train.train_and_evaluate(tiny(tmp_path, **{**SF, **changes}))
