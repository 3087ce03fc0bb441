"""Batch-size schedules: phase arithmetic, checks, the data stream, training across phases."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import parallel, setup, train
from experiments.config import Config, ConfigError, parse_batch_schedule
from experiments.phases import examples_at, first_step_reaching, resolve_phases
from tests.experiments.test_train import assert_trees_equal, final_params, preempt_at


def phased(workdir=None, **changes) -> Config:
  """128 examples; batch 32 for 2 steps (half an epoch), then 64: 5 steps in all."""
  base = dict(model='resnet8', dataset='synthetic', synthetic_examples=128, batch_size=32,
              batch_schedule='0.5:64', batch_lr_scaling='linear', steps=5,
              schedule='constant(lr=0.1)', momentum='0.9', bn_group_size=4, eval_every=1,
              checkpoint_every=5, log_every=1, workdir=str(workdir))
  base.update(changes)
  return Config(**base)


@pytest.mark.parametrize('spec, message', [
    ('60', 'cannot read'),
    ('a:64', 'cannot read'),
    ('60:6.5', 'cannot read'),
    ('0:128', 'epochs must be > 0'),
    ('-1:128', 'epochs must be > 0'),
    ('inf:128', 'epochs must be > 0'),
    ('60:640,30:128', 'epochs must increase'),
    ('60:640,60:128', 'epochs must increase'),
    ('60:0', 'batch sizes must be >= 1'),
])
def test_bad_batch_schedules_are_config_errors(spec, message):
  with pytest.raises(ConfigError, match=message):
    parse_batch_schedule(spec)
  with pytest.raises(ConfigError, match=message):
    phased(batch_schedule=spec).validate()


def test_every_phase_is_checked_against_devices_and_bn_groups(tmp_path):
  with pytest.raises(ConfigError, match=r'batch at epoch 0.5=66 is not divisible by '
                                        r'--bn_group_size=4'):
    phased(batch_schedule='0.5:66').validate()
  with pytest.raises(ConfigError, match=r'batch at epoch 0.5=36 is not divisible by the 8 '
                                        'devices'):
    setup.check_devices(phased(batch_schedule='0.5:36', bn_group_size=None), 8)
  with pytest.raises(ConfigError, match=r'per-device batch \(--batch_schedule batch at epoch '
                                        r'0.5=96 / 8 devices = 12\)'):
    setup.check_devices(phased(batch_size=64, batch_schedule='0.5:96', bn_group_size=8), 8)
  with pytest.raises(ConfigError, match='larger than the training set'):
    resolve_phases(phased(batch_schedule='0.5:256'), 128)
  with pytest.raises(ConfigError, match='starts after the run ends at step 2'):
    resolve_phases(phased(steps=2), 128)
  with pytest.raises(ConfigError, match=r'starts after the run ends at epoch 0\.5'):
    resolve_phases(phased(steps=None, epochs=0.5), 128)
  with pytest.raises(ConfigError, match='starts before the previous phase has run a step'):
    resolve_phases(phased(batch_schedule='0.3:64,0.5:96'), 128)  # 0.3 ends at 0.5
  with pytest.raises(ConfigError, match=r'is not divisible by the 8 devices'):  # before data
    train.train_and_evaluate(phased(tmp_path / 'bad', batch_schedule='0.5:36',
                                    bn_group_size=None))
  assert not (tmp_path / 'bad').exists()


def test_phases_start_at_the_first_step_reaching_their_epoch():
  config = Config(batch_size=128, batch_schedule='60:640,120:3200', epochs=200)
  phases, total = resolve_phases(config, 50_000)
  assert [(p.first_step, p.first_example, p.batch_size) for p in phases] == [
      (0, 0, 128), (23438, 3_000_064, 640), (28126, 6_000_384, 3200)]
  assert total == 28126 + 1250  # ceil((10M - 6,000,384) / 3200)
  for step in (0, 1, 23437, 23438, 23439, 28126, total):
    assert first_step_reaching(phases, examples_at(phases, step)) == step
  # One phase: the length is lrsched.to_steps's.
  assert resolve_phases(Config(batch_size=512, epochs=95), 50_000)[1] == 9278
  assert resolve_phases(Config(batch_size=512, steps=7), 50_000)[1] == 7


def test_lr_follows_the_batch_scaling_rule():
  for rule, factor in (('none', 1.0), ('linear', 2.0), ('sqrt', 2 ** 0.5)):
    plan = setup.plan(phased(batch_lr_scaling=rule), 128, 8)
    assert [p.batch_size for p in plan.phases] == [32, 64]
    lrs = np.asarray(plan.lr_schedule(jnp.arange(5)))
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.1 * factor, 0.1 * factor, 0.1 * factor],
                               rtol=1e-6)
  plan = setup.plan(phased(eval_every=None), 128, 8)
  # Epoch ends: 64 examples = half an epoch per 2 steps of 32, then 64 per step.
  assert [plan.next_epoch_end(s) for s in range(5)] == [3, 3, 3, 5, 5]


def test_the_data_stream_does_not_depend_on_how_it_is_batched():
  key = jax.random.key(0)
  n = 48
  positions = jnp.arange(4 * n, dtype=jnp.int32)  # four epochs, in one piece
  reference = np.asarray(parallel.stream_indices(
      parallel.epoch_orders(key, jnp.int32(0), 4, n), jnp.int32(0), positions))
  for e in range(4):  # an epoch is a permutation, its own
    assert sorted(reference[e * n:(e + 1) * n].tolist()) == list(range(n))
    assert reference[e * n:(e + 1) * n].tolist() != list(range(n))
  for length in (5, 16, 40, 100):  # dispatches that straddle epoch ends
    count = parallel.epochs_spanned(length, n)
    got = []
    for start in range(0, 3 * n, length):
      first_epoch = jnp.int32(start // n)
      orders = parallel.epoch_orders(key, first_epoch, count, n)
      got.append(parallel.stream_indices(orders, first_epoch, positions[start:start + length]))
    got = np.concatenate(got)
    np.testing.assert_array_equal(got, reference[:len(got)])


@pytest.mark.parametrize('train_size, length, granule', [
    (48, 1, 1), (48, 5, 1), (48, 48, 1), (48, 49, 1), (48, 96, 1), (48, 150, 1),
    (48, 16, 16), (48, 32, 16), (48, 48, 16), (48, 64, 16), (48, 48, 48), (50, 7, 1)])
def test_epochs_spanned_is_the_most_any_aligned_start_touches(train_size, length, granule):
  starts = range(0, 3 * train_size, granule)
  most = max((s + length - 1) // train_size - s // train_size + 1 for s in starts)
  assert parallel.epochs_spanned(length, train_size, granule) == most


def test_epochs_spanned_refuses_a_granule_that_does_not_divide_the_epoch():
  with pytest.raises(ValueError, match='granule=16 must divide train_size=50'):
    parallel.epochs_spanned(3, 50, 16)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('phased')
  summary = train.train_and_evaluate(phased(workdir))
  return workdir, summary


def test_phases_train_with_their_batch_size_and_lr(uninterrupted):
  workdir, summary = uninterrupted
  assert summary['status'] == 'finished' and summary['steps'] == 5
  assert summary['epochs'] == pytest.approx((2 * 32 + 3 * 64) / 128)
  assert [p['batch_size'] for p in summary['batch_phases']] == [32, 64]
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  assert [r['batch_size'] for r in rows] == [32, 32, 64, 64, 64]
  assert [r['examples'] for r in rows] == [32, 64, 128, 192, 256]
  # The LR logged after step s is the one its last update used: doubled in phase 2.
  assert [r['lr'] for r in rows] == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.2])


def test_interrupted_in_the_second_phase_and_resumed_is_bit_identical(uninterrupted, tmp_path,
                                                                      monkeypatch):
  reference, _ = uninterrupted
  workdir = tmp_path / 'interrupted'
  preempt_at(monkeypatch, 3)  # inside the second phase (steps 2..4)
  summary = train.train_and_evaluate(phased(workdir))
  assert summary['status'] == 'interrupted' and summary['steps'] == 3
  monkeypatch.undo()
  resumed = train.train_and_evaluate(phased(workdir))
  assert resumed['resumed_from_step'] == 3 and resumed['status'] == 'finished'
  assert_trees_equal(final_params(workdir), final_params(reference))


def test_steps_per_dispatch_must_divide_the_phase_starts():
  config = phased(steps_per_dispatch=4, eval_every=4, log_every=4, checkpoint_every=4,
                  steps=8)
  with pytest.raises(ConfigError, match='does not divide step 2, where the batch size becomes 64'):
    setup.plan(config, 128, 1)
  assert setup.plan(config.replace(steps_per_dispatch=2), 128, 1).phases[1].first_step == 2
