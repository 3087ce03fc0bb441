"""experiments.lr_range_test end to end on a tiny ResNet, and its input checks."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from experiments import lr_range_test, presets
from experiments.config import Config, ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny(**changes) -> Config:
  base = dict(model='resnet8', dataset='synthetic', synthetic_examples=256, batch_size=32,
              momentum='0.9', bn_group_size=4)
  base.update(changes)
  return Config(**base)


SWEEP = lr_range_test.Sweep(min_lr=0.0, max_lr=3.0, mode='linear', num_steps=20,
                            metric_every=4, test_examples=48)


@pytest.fixture(scope='module')
def report(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('range')
  return workdir, lr_range_test.run(tiny(), SWEEP, workdir=str(workdir))


def test_range_test_writes_the_curves_and_the_suggestions(report):
  workdir, report = report
  saved = json.load(open(workdir / 'range_test.json'))
  assert saved['status'] == 'finished'
  assert saved['suggestions'] == report['suggestions']
  result = saved['result']
  n = len(result['lrs'])
  assert result['num_steps'] == 20 and n == 20 - (0 if result['diverged_at'] is None else
                                                  20 - result['diverged_at'])
  np.testing.assert_allclose(result['lrs'], np.linspace(0, 3, 20)[:n], rtol=1e-6, atol=1e-7)
  assert all(np.isfinite(result['losses']))
  assert result['metric_steps'] == [3, 7, 11, 15, 19][:len(result['metrics'])]
  assert all(0 <= m <= 1 for m in result['metrics'])
  assert saved['test_examples'] == 48 and saved['sweep']['mode'] == 'linear'
  assert set(saved['suggestions']) == set(lr_range_test.SUGGESTIONS)
  for method, s in saved['suggestions'].items():
    if 'error' in s:  # a curve can refuse a rule: then it says why
      assert method in s['error'] or 'points' in s['error'] or 'loss' in s['error']
    else:
      assert 0 <= s['lr'] <= 3 and s['explanation']
  for method in lr_range_test.ACCURACY_SUGGESTIONS:  # 5 accuracy points: always defined
    assert 'lr' in saved['suggestions'][method]
  bounds = saved['suggestions']['clr_bounds']
  assert bounds['min_lr'] == pytest.approx(bounds['lr'] / 4)
  with open(workdir / 'range_test.png', 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


@pytest.mark.parametrize('changes, message', [
    (dict(num_steps=10), 'too few for a suggestion'),
    (dict(metric_every=5), 'gives 4 test-accuracy points'),
    (dict(max_lr=0.0), 'larger than --min_lr'),
    (dict(mode='exp', min_lr=0.0), 'positive with --mode=exp'),
    (dict(min_lr=-1.0), '>= 0'),
    (dict(max_lr=float('inf')), 'finite'),
    (dict(test_examples=0), 'test_examples'),
])
def test_bad_sweeps_are_config_errors(changes, message):
  sweep = lr_range_test.Sweep(**{**SWEEP.__dict__, **changes})
  with pytest.raises(ConfigError, match=message):
    sweep.check()


def test_bad_configs_fail_before_compiling(tmp_path):
  with pytest.raises(ConfigError, match='constant momentum'):
    lr_range_test.run(tiny(momentum='cyclical'), SWEEP, workdir=str(tmp_path))
  with pytest.raises(ConfigError, match='not divisible by the 8 devices'):
    lr_range_test.run(tiny(batch_size=36, bn_group_size=None), SWEEP, workdir=str(tmp_path))
  with pytest.raises(ConfigError, match='too few'):
    lr_range_test.run(tiny(), lr_range_test.Sweep(num_steps=3), workdir=str(tmp_path))
  assert not os.listdir(tmp_path)


CYCLICAL_PRESETS = sorted(name for name, p in presets.PRESETS.items()
                          if p.values.get('momentum') == 'cyclical')


def config_for(*argv):
  """lr_range_test.config_from_flags() for these command-line flags."""
  with flagsaver.flagsaver():
    flags.FLAGS(['lr_range_test', *argv])
    return lr_range_test.config_from_flags()


def test_cyclical_presets_exist():
  assert {'smith18-1cycle', 'smith18-wrn-1cycle'} <= set(CYCLICAL_PRESETS)


@pytest.mark.parametrize('preset', CYCLICAL_PRESETS)
def test_a_presets_cyclical_momentum_becomes_its_maximum(preset, caplog):
  # The preset outranks RANGE_TEST_DEFAULTS; its 'cyclical' used to fail the range test.
  with caplog.at_level('INFO', logger='experiments'):
    config = config_for(f'--preset={preset}')
  assert config.momentum == '0.95'
  assert lr_range_test._constant_momentum(config) == pytest.approx(0.95)
  assert any('cyclical momentum' in r.getMessage() and '0.95' in r.getMessage()
             for r in caplog.records)


def test_an_explicit_momentum_wins_over_the_presets():
  assert config_for('--preset=smith18-1cycle', '--momentum=0.8').momentum == '0.8'
  explicit = config_for('--preset=smith18-1cycle', '--momentum=cyclical')
  assert explicit.momentum == 'cyclical'  # asked for: refused later, as without a preset
  with pytest.raises(ConfigError, match='constant momentum'):
    lr_range_test._constant_momentum(explicit)


def test_momentum_without_a_preset_or_of_a_constant_preset():
  assert config_for().momentum == lr_range_test.RANGE_TEST_DEFAULTS['momentum']
  assert config_for('--preset=smith18-constant').momentum == '0.9'


def test_cli_refuses_training_schedule_flags(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.lr_range_test', '--schedule=1cycle', '--steps=10',
       f'--workdir={tmp_path}'], cwd=ROOT, capture_output=True, text=True, timeout=120,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and '--schedule, --steps do not apply' in errors[0]


def test_the_sweep_is_the_trainers_step(report, tmp_path):
  """Step t of the test is step t of `experiments.cifar` at the sweep's LR: same program,
  data stream and augmentation, so the losses agree with the trainer's."""
  from experiments import train

  _, report = report
  config = tiny()
  n = 4
  assert len(report['result']['losses']) >= n
  # The trainer at the sweep's LRs (linear from 0 over N - 1 steps); its first evaluation
  # row holds the mean training loss of steps 0..n-1.
  spec = f'linear(init_lr=0.0, end_lr=3.0, total_steps={SWEEP.num_steps - 1})'
  trained = train.train_and_evaluate(
      Config(**{**dataclasses.asdict(config), 'schedule': spec, 'steps': SWEEP.num_steps - 1,
                'eval_every': n, 'checkpoint_every': 1000,
                'workdir': str(tmp_path / 'train')}))
  assert trained['status'] == 'finished'
  rows = [json.loads(line) for line in open(tmp_path / 'train' / 'metrics.jsonl')]
  first = [r for r in rows if r.get('step') == n][-1]
  np.testing.assert_allclose(first['train_loss'], np.mean(report['result']['losses'][:n]),
                             rtol=1e-5)


def test_an_interrupted_test_leaves_its_curve(tmp_path):
  workdir = tmp_path / 'range'
  process = subprocess.Popen(
      [sys.executable, '-m', 'experiments.lr_range_test', '--model=resnet8',
       '--dataset=synthetic', '--synthetic_examples=256', '--batch_size=32',
       '--bn_group_size=4', '--num_steps=2000', '--eval_every=4', '--log_every=2',
       '--test_examples=48', '--max_lr=0.1', f'--workdir={workdir}'],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  lines = []
  for line in process.stdout:  # progress comes while it runs
    lines.append(line)
    if 'test accuracy' in line and (workdir / 'range_test.json').exists():
      break
  running = json.load(open(workdir / 'range_test.json'))
  assert running['status'] == 'running' and running['result']['losses']
  process.send_signal(signal.SIGTERM)
  rest, _ = process.communicate(timeout=120)
  assert process.returncode == 0, ''.join(lines) + rest
  saved = json.load(open(workdir / 'range_test.json'))
  assert saved['status'] == 'interrupted'
  assert len(running['result']['losses']) <= len(saved['result']['losses']) < 2000
  assert any('lr ' in line and 'loss' in line for line in lines)
