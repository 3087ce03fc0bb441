"""Presets: every one builds a valid run, flags override them, suites hold together."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from experiments import cifar, compare, presets, setup
from experiments.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize('name', list(presets.PRESETS))
def test_every_preset_is_a_valid_run_on_one_gpu(name):
  preset = presets.get(name)
  config = preset.config()
  config.validate()
  plan = setup.plan(config, setup.nominal_train_size(config), num_devices=1)
  assert plan.total_steps >= 1
  # The schedule has a value at every step of the run (one vectorised call).
  lrs = np.asarray(plan.lr_schedule(np.arange(plan.total_steps)))
  assert np.all(np.isfinite(lrs)) and np.all(lrs >= 0) and lrs.max() > 0
  assert preset.source and preset.summary
  if preset.paper_accuracy is not None:
    assert 0.5 < preset.paper_accuracy < 1
  assert name in preset.describe()


def _plan(name):
  config = presets.get(name).config()
  return setup.plan(config, setup.nominal_train_size(config), num_devices=1)


def test_super_convergence_presets_match_the_papers_numbers():
  clr, step = _plan('sc-fig1a-clr'), _plan('sc-fig1a-step')
  assert clr.total_steps == 10_000 and step.total_steps == 80_000
  lr = lambda plan, t: float(plan.lr_schedule(t))
  assert lr(clr, 0) == pytest.approx(0.1) and lr(clr, 5000) == pytest.approx(3.0)
  assert lr(clr, 9999) == pytest.approx(0.1 + 2.9 / 5000, rel=1e-5)
  assert lr(step, 49_999) == pytest.approx(0.35) and lr(step, 50_000) == pytest.approx(0.035)
  assert lr(step, 79_999) == pytest.approx(0.0035)
  budget = _plan('sc-budget-step')
  assert budget.total_steps == 10_000
  assert lr(budget, 6249) == pytest.approx(0.35) and lr(budget, 6250) == pytest.approx(0.035)
  assert lr(budget, 8750) == pytest.approx(0.0035)
  for name in ('sc-fig1a-clr', 'sc-fig1a-step', 'sc-tab1-clr-20k'):
    config = presets.get(name).config()
    assert (config.batch_size, config.bn_group_size, config.weight_decay) == (1000, 125, 1e-4)
    assert config.caffe_momentum and config.momentum == '0.9' and config.augment == 'flip'
  assert presets.get('sc-fig1a-clr').config().bn_momentum == 0.95
  assert presets.get('sc-fig1a-step').config().bn_momentum == 0.999
  assert presets.get('sc-tab1-step-10k').config().train_examples == 10_000
  assert presets.get('sc-tab1-clr-resnet110').config().model == 'resnet110'


def test_smith18_sgdr_goyal_and_batch_size_presets():
  one_cycle = _plan('smith18-1cycle')
  assert one_cycle.total_steps == 9277  # 95 epochs as the authors' Caffe ran them
  assert float(one_cycle.momentum(0)) == pytest.approx(0.95)
  assert float(one_cycle.momentum(4003)) == pytest.approx(0.85)
  assert float(one_cycle.lr_schedule(4003)) == pytest.approx(0.8)
  sgdr = _plan('sgdr-wrn-28-10')
  t0 = presets._SGDR_T0
  assert t0 == 3907 and sgdr.total_steps == 15 * t0
  assert float(sgdr.lr_schedule(t0)) == pytest.approx(0.05)  # a restart
  assert float(sgdr.lr_schedule(sgdr.total_steps - 1)) < 1e-6
  goyal = _plan('goyal-large-batch')
  assert float(goyal.lr_schedule(0)) == pytest.approx(0.1)
  assert float(goyal.lr_schedule(presets._GOYAL_WARMUP)) == pytest.approx(0.4)
  assert goyal.epoch_at(goyal.total_steps) == pytest.approx(90, abs=0.05)
  # The LR decay and the batch growth happen at the same examples seen.
  decay, grow = _plan('skl-decay-lr'), _plan('skl-increase-batch')
  decay_steps = [23438, 46875, 62500]
  assert [float(decay.lr_schedule(s)) for s in decay_steps] == pytest.approx([0.02, 0.004, 8e-4])
  assert [ph.batch_size for ph in grow.phases] == [128, 640, 3200, 16000]
  assert [grow.epoch_at(ph.first_step) for ph in grow.phases] == pytest.approx(
      [0, 60, 120, 160], abs=0.01)  # the first step that reaches the epoch
  assert grow.phases[1].first_step == decay_steps[0]
  assert grow.epoch_at(grow.total_steps) == pytest.approx(200, abs=0.01)
  hybrid = _plan('skl-hybrid')
  decay_step = hybrid.phases[-1].first_step + 625
  assert hybrid.epoch_at(decay_step) == pytest.approx(160, abs=0.01)
  assert float(hybrid.lr_schedule(decay_step)) == pytest.approx(0.02)


@pytest.fixture
def parse_flags():
  """Parses a command line into absl's FLAGS, and undoes it afterwards."""
  def parse(*args):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(['prog', *args])
  yield parse
  flags.FLAGS.unparse_flags()


def test_flags_given_on_the_command_line_override_the_preset(parse_flags):
  parse_flags('--preset=sc-fig1a-clr', '--seed=3', '--momentum=cyclical', '--steps=10000')
  config = cifar.config_from_flags()
  assert config.seed == 3 and config.momentum == 'cyclical'  # 'cyclical' is the default too
  assert config.bn_momentum == 0.95 and config.batch_size == 1000
  assert config.schedule == presets.get('sc-fig1a-clr').values['schedule']
  parse_flags('--seed=3')
  assert cifar.config_from_flags().batch_size == 512  # no preset: the Config defaults


def test_unknown_preset_lists_the_names(parse_flags):
  with pytest.raises(ConfigError, match=r"unknown preset 'sc-fig1'; valid: sc-fig1a-clr, "):
    presets.get('sc-fig1')
  parse_flags('--preset=nope')
  with pytest.raises(ConfigError, match='smith18-1cycle'):
    cifar.config_from_flags()
  with pytest.raises(ConfigError, match='valid: sc-fig1a'):
    presets.get_suite('fig1a')


@pytest.mark.parametrize('suite', list(presets.SUITES))
def test_suites_are_valid_comparisons(suite):
  s = presets.get_suite(suite)
  arms = compare.arms_from_presets(s.arms)
  compare.check_arms(arms, s.allow_differences)
  if s.allow_differences:  # the difference is real, and refused without the allowance
    with pytest.raises(ConfigError, match='--allow_differences=' + s.allow_differences[0]):
      compare.check_arms(arms)


def test_list_presets_prints_names_sources_and_numbers():
  result = subprocess.run([sys.executable, '-m', 'experiments.cifar', '--list_presets'],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr[-2000:]
  for name in presets.PRESETS:
    assert f'\n{name}: ' in '\n' + result.stdout
  assert 'arXiv:1708.07120' in result.stdout and 'paper 92.4%' in result.stdout
  assert "clr3SS5kFig1a: 92.44%" in result.stdout and 'skl-batch-size' in result.stdout


CPU_SUITE = presets.get_suite('cpu-budget')


def test_the_cpu_suite_differs_only_in_the_schedule():
  configs = {name: presets.get(name).config() for name in CPU_SUITE.arms}
  varying = {'schedule', 'momentum', 'steps'}
  first = dataclasses.asdict(next(iter(configs.values())))
  for config in configs.values():
    values = dataclasses.asdict(config)
    assert {k for k in values if values[k] != first[k]} <= varying
    assert config.model == 'resnet20' and config.batch_size == 128
  assert configs['cpu-budget-step-4x'].steps == 4 * configs['cpu-budget-step'].steps
  for name, config in configs.items():  # each arm plans against CIFAR-10's 50k examples
    plan = setup.plan(config, 50_000, 1)
    assert plan.total_steps == config.steps, name
  assert configs['cpu-budget-1cycle'].momentum == 'cyclical'


def test_the_cpu_suite_runs_end_to_end_at_tiny_size(tmp_path):
  """Every arm of the suite, on synthetic data and ResNet-8, with its schedule rescaled to
  a run of 4 iterations (16 for the 4x arm): the machinery the full run relies on."""
  arms = []
  # cpu-budget-1cycle-raw differs from cpu-budget-1cycle only in its numbers.
  names = [name for name in CPU_SUITE.arms if name != 'cpu-budget-1cycle-raw']
  for arm in compare.arms_from_presets(names):
    steps = 16 if arm.name.endswith('-4x') else 4
    schedule = arm.config.schedule
    if schedule.startswith('multistep'):
      schedule = f'multistep(lr=0.1, milestones={presets._cpu_milestones(steps)}, gamma=0.1)'
    config = arm.config.replace(model='resnet8', dataset='synthetic', synthetic_examples=128,
                                batch_size=32, steps=steps, eval_every=4,
                                checkpoint_every=1000, log_every=4, schedule=schedule)
    arms.append(dataclasses.replace(arm, config=config))
  import jax
  results = compare.compare(arms, str(tmp_path), devices=jax.devices()[:1])  # 1 replica: fast
  assert [r['status'] for r in results] == ['finished'] * len(arms)
  assert (tmp_path / 'comparison.md').exists() and (tmp_path / 'comparison.png').exists()


@pytest.mark.parametrize('bench', ['cpu-modern', 'gpu-modern'])
def test_the_modern_bench_branches_its_wsd_decays_off_the_stable_run(bench):
  suite = presets.get_suite(bench)
  configs = {name.removeprefix(f'{bench}-'): presets.get(name).config() for name in suite.arms}
  assert set(configs) == {'1cycle', 'step', 'cosine', 'linear', 'wsd-stable', 'wsd-sqrt',
                          'wsd-linear', 'schedule-free'}
  varying = {'schedule', 'momentum', 'steps', 'optimizer', 'init_from', 'keep_checkpoints'}
  first = dataclasses.asdict(configs['1cycle'])
  for config in configs.values():
    values = dataclasses.asdict(config)
    assert {k for k in values if values[k] != first[k]} <= varying
  stable = configs['wsd-stable']
  stable_plan = setup.plan(stable, 50_000, 1)
  for shape in ('sqrt', 'linear'):
    branch = configs[f'wsd-{shape}']
    parent, step = branch.parent()
    assert parent == f'{bench}-wsd-stable' and branch.steps == configs['1cycle'].steps
    # The parent keeps a checkpoint at the branch step, and up to it the branch's schedule
    # is the stable run's to the bit (`warmup` and `wsd` share one ramp): the branch is
    # the WSD run the decay would have been.
    assert step % stable.checkpoint_every == 0 and step < stable.steps
    kept = list(range(stable.checkpoint_every, stable.steps, stable.checkpoint_every))
    assert step in [*kept, stable.steps][-stable.keep_checkpoints:]
    lrs = np.asarray(setup.plan(branch, 50_000, 1).lr_schedule(np.arange(branch.steps)))
    before = np.asarray(stable_plan.lr_schedule(np.arange(step)))
    np.testing.assert_array_equal(lrs[:step], before)
    assert lrs[step + 1] < lrs[step] == lrs[step - 1] and lrs[-1] < 1e-2 * lrs[step]
  assert configs['schedule-free'].optimizer == 'schedule_free_sgd'
