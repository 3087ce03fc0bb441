"""Named runs from the papers: each preset is a set of `Config` values with its source.

  python -m experiments.cifar --preset=sc-fig1a-clr --data_dir=data/cifar10-jpeg.npz
  python -m experiments.cifar --list_presets

A preset sets only the fields it names; flags given explicitly on the command line override
it (``--preset=sc-fig1a-clr --seed=1``). `SUITES` group presets into the comparisons of
``python -m experiments.compare --suite=NAME``.

Papers:

* [SC] L. N. Smith and N. Topin, "Super-Convergence: Very Fast Training of Neural Networks
  Using Large Learning Rates", 2017 (arXiv:1708.07120). Their Caffe logs (the
  ``Results/`` folder of ``lnsmith54/super-convergence``) give the exact setup: ResNet-56
  with Caffe's downsampling, total batch 1000 as 8 GPUs x 125 with batch-norm statistics
  per GPU, SGD momentum 0.9 in Caffe's form, weight decay 1e-4 (their prototxt exempts the
  conv biases, ``decay_mult: 0``, and doubles their LR, ``lr_mult: 2``; not modelled: a
  batch norm follows every conv), flips only, batch-norm moving-average fraction 0.95 for
  CLR and 0.999 for the piecewise-constant baseline, kept as Caffe keeps them (decayed sums
  over their decayed weight, ``bn_debias``: with 0.999, plain moving averages would leave
  the first few thousand iterations' evaluations near chance).
* [S18] L. N. Smith, "A disciplined approach to neural network hyper-parameters: Part 1",
  2018 (arXiv:1803.09820); its Caffe logs are in ``lnsmith54/hyperParam1``.
* [SGDR] I. Loshchilov and F. Hutter, "SGDR: Stochastic Gradient Descent with Warm
  Restarts", ICLR 2017.
* [G17] P. Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017.
* [SKL] S. L. Smith, P.-J. Kindermans, C. Ying and Q. V. Le, "Don't Decay the Learning
  Rate, Increase the Batch Size", ICLR 2018 (arXiv:1711.00489).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

import lrsched
from experiments.config import Config, ConfigError
from experiments.phases import resolve_phases

CIFAR_TRAIN = 50_000


@dataclasses.dataclass(frozen=True)
class Preset:
  """A named run.

  Attributes:
    name: the ``--preset`` name.
    summary: one line.
    source: the paper and its figure or table.
    values: the `Config` fields it sets.
    paper_accuracy: the paper's final test accuracy (a fraction), where it gives one.
    log_accuracy: the final test accuracy of the authors' own log of this run, where there
      is one (it can differ from the paper's number).
    reference_log: the authors' curve, ``<name>.csv`` of the super-convergence logs.
    notes: where the preset departs from the paper, and why.
  """

  name: str
  summary: str
  source: str
  values: Mapping[str, Any]
  paper_accuracy: float | None = None
  log_accuracy: float | None = None
  reference_log: str | None = None
  notes: str = ''

  def config(self, **overrides: Any) -> Config:
    """The preset's `Config`, with ``overrides`` on top."""
    return Config.from_dict({**self.values, **overrides})

  def describe(self) -> str:
    """Several lines for ``--list_presets``."""
    numbers = []
    if self.paper_accuracy is not None:
      numbers.append(f'paper {100 * self.paper_accuracy:.1f}%')
    if self.log_accuracy is not None:
      numbers.append(f"authors' log {self.reference_log}: {100 * self.log_accuracy:.2f}%")
    lines = [f'{self.name}: {self.summary}', f'    source: {self.source}']
    if numbers:
      lines.append('    result: ' + '; '.join(numbers))
    if self.notes:
      lines.append(f'    notes: {self.notes}')
    settings = ' '.join(f'--{k}={_flag_value(v)}' for k, v in self.values.items())
    lines.append(f'    sets: {settings}')
    return '\n'.join(lines)


@dataclasses.dataclass(frozen=True)
class Suite:
  """Presets compared side by side by ``experiments.compare --suite``.

  ``allow_differences`` names the data or model fields (see `experiments.compare`) that
  are meant to differ between its arms, e.g. ``train_examples`` for Table 1's sweep.
  """

  name: str
  summary: str
  arms: tuple[str, ...]
  allow_differences: tuple[str, ...] = ()


def _flag_value(value: Any) -> str:
  text = str(value)
  return repr(text) if any(c in text for c in ' ,()[]') else text


def _steps(epochs: float, batch_size: int, dataset_size: int = CIFAR_TRAIN) -> int:
  return lrsched.to_steps(batch_size=batch_size, epochs=epochs, dataset_size=dataset_size)


# --------------------------------------------------------------------------------------
# Super-convergence (Smith & Topin, 2017)

_SC = types.MappingProxyType(dict(
    model='resnet56', shortcut='caffe', dataset='cifar10', augment='flip', batch_size=1000,
    bn_group_size=125, bn_debias=True, optimizer='sgd', momentum='0.9', caffe_momentum=True,
    weight_decay=1e-4, weight_decay_mode='coupled', eval_every=500))
_SC_SOURCE = 'Smith & Topin 2017 (arXiv:1708.07120)'
_CLR = dict(_SC, schedule='super_convergence(base_lr=0.1, max_lr=3.0, step_size=5000)',
            steps=10_000, bn_momentum=0.95)
_STEP = dict(_SC, schedule='multistep(lr=0.35, milestones=[50000, 70000], gamma=0.1)',
             steps=80_000, bn_momentum=0.999)

_PRESETS: list[Preset] = [
    Preset(
        'sc-fig1a-clr', 'ResNet-56, one CLR cycle 0.1 -> 3.0 -> 0.1 in 10k iterations',
        f'{_SC_SOURCE}, Fig. 1a and Table 1 (CLR, 50k examples)', _CLR,
        paper_accuracy=0.924, log_accuracy=0.9244, reference_log='clr3SS5kFig1a'),
    Preset(
        'sc-fig1a-step', 'ResNet-56, piecewise-constant LR 0.35, x0.1 at 50k and 70k of 80k',
        f'{_SC_SOURCE}, Fig. 1a and Table 1 (PC-LR, 50k examples)', _STEP,
        paper_accuracy=0.912, log_accuracy=0.9032, reference_log='lr35Fig1a',
        notes="91.2% is the paper's Table 1; the authors' log lr35Fig1a (the curve of Fig. "
              '1a) ends at 90.32% (best 90.39%)'),
    Preset(
        'sc-fig1a-fixed', 'ResNet-56, fixed LR 0.35 for 80k iterations',
        f'{_SC_SOURCE}: the PC-LR baseline of Fig. 1a without its drops',
        dict(_STEP, schedule='constant(lr=0.35)'),
        notes='not in the paper. It gets the PC-LR budget (80k iterations), to show what the '
              'drops add; the fixed LR at the CLR budget (10k) is sc-budget-fixed'),
    Preset(
        'sc-budget-step', 'ResNet-56, LR 0.35, x0.1 at 6250 and 8750: PC-LR in 10k iterations',
        f'{_SC_SOURCE}: the PC-LR baseline with the CLR run\'s budget',
        dict(_STEP, schedule='multistep(lr=0.35, milestones=[6250, 8750], gamma=0.1)',
             steps=10_000),
        notes='not in the paper: the milestones 50k/70k of 80k scaled to 10k iterations'),
    Preset(
        'sc-budget-fixed', 'ResNet-56, fixed LR 0.35 for 10k iterations',
        f"{_SC_SOURCE}: a fixed LR with the CLR run's budget",
        dict(_STEP, schedule='constant(lr=0.35)', steps=10_000),
        notes='not in the paper; batch-norm fraction 0.999 as in the authors\' fixed-LR '
              '(PC-LR) solver'),
]

# Table 1: the CLR numbers of the paper equal the finals of the authors' logs; for the
# PC-LR rows and the other depths only the logs' finals are given here.
_TABLE1 = [
    # (suffix, changes, CLR paper, CLR log, step log)
    ('40k', dict(train_examples=40_000), 0.911, 0.91104, 0.90432),
    ('30k', dict(train_examples=30_000), 0.896, 0.89644, 0.86356),
    ('20k', dict(train_examples=20_000), 0.879, 0.87924, 0.62328),
    ('10k', dict(train_examples=10_000), 0.806, 0.80592, 0.71204),
    ('resnet20', dict(model='resnet20'), None, 0.9042, 0.88636),
    ('resnet110', dict(model='resnet110'), None, 0.9237, 0.9121),
]


def _table1_presets() -> list[Preset]:
  presets = []
  for suffix, changes, clr_paper, clr_log, step_log in _TABLE1:
    data = 'train_examples' in changes
    what = f'{suffix} training examples' if data else f'ResNet-{suffix[6:]}'
    clr_log_name = f'clr3SS5kTr{suffix}Tab1' if data else f'clr3SS5kRes{suffix[6:]}Tab1'
    step_log_name = f'lr35Tr{suffix}Tab1' if data else f'lr35Res{suffix[6:]}Fig6b'
    untranscribed = "the paper's Table 1 value is not transcribed here"
    presets.append(Preset(
        f'sc-tab1-clr-{suffix}', f'sc-fig1a-clr with {what}',
        f'{_SC_SOURCE}, Table 1 (CLR, {what})', dict(_CLR, **changes),
        paper_accuracy=clr_paper, log_accuracy=clr_log, reference_log=clr_log_name,
        notes='' if data else untranscribed))
    presets.append(Preset(
        f'sc-tab1-step-{suffix}', f'sc-fig1a-step with {what}',
        f'{_SC_SOURCE}, Table 1 (PC-LR, {what})' + ('' if data else ' and Fig. 6b'),
        dict(_STEP, **changes), log_accuracy=step_log, reference_log=step_log_name,
        notes=untranscribed + ("; the log's last evaluations collapse (best 76.40%)"
                               if suffix == '20k' else '')))
  return presets


_PRESETS += _table1_presets()

# --------------------------------------------------------------------------------------
# Smith (2018): 1cycle with cyclical momentum

_S18_SOURCE = 'Smith 2018 (arXiv:1803.09820)'
_S18 = dict(
    model='resnet56', shortcut='A', dataset='cifar10', augment='flip', batch_size=512,
    bn_group_size=128, bn_momentum=0.9, optimizer='nesterov', caffe_momentum=True,
    weight_decay=1e-4, weight_decay_mode='coupled', steps=9277)
_S18_NOTES = ("from the authors' log ResTBS512LR.0800.8M.95WD1e-4Epoch95: 4 GPUs x 128 "
              "(batch-norm groups of 128, moving-average fraction 0.9), Caffe's Nesterov, "
              '9277 iterations (95 epochs, rounded down as Caffe did), step size 4003, flips '
              'only; their net (gResnet56: no ReLU '
              'after the addition) is not ours, we use the standard option-A ResNet-56')
_PRESETS += [
    Preset(
        'smith18-1cycle', 'ResNet-56, batch 512, 1cycle 0.08 -> 0.8, cyclical momentum '
        '0.95 -> 0.85, 95 epochs',
        f'{_S18_SOURCE}, CIFAR-10 ResNet-56 1cycle (92.0 +- 0.2%)',
        dict(_S18, schedule='caffe_one_cycle(base_lr=0.08, max_lr=0.8, step_size=4003)',
             momentum='cyclical'),
        paper_accuracy=0.920, notes=_S18_NOTES),
    Preset(
        'smith18-constant', 'ResNet-56, batch 512, constant LR 0.1, 95 epochs',
        f'{_S18_SOURCE}, CIFAR-10 ResNet-56 constant LR (89.1 +- 0.3%)',
        dict(_S18, schedule='constant(lr=0.1)', momentum='0.9'),
        paper_accuracy=0.891,
        notes='momentum 0.9 (constant) is our assumption; otherwise as smith18-1cycle'),
    Preset(
        'smith18-wrn-1cycle', 'WRN-28-10, batch 128, 1cycle 0.1 -> 1.0, cyclical momentum '
        '0.95 -> 0.85, 50 epochs',
        f"{_S18_SOURCE}, Wide ResNet 1cycle (the authors' log "
        'Wide1CycLR.1001CM0.95.85WD1e-4Epoch50BS128)',
        dict(model='wrn-28-10', dataset='cifar10', augment='flip', batch_size=128,
             bn_group_size=128, bn_momentum=0.9, optimizer='nesterov', caffe_momentum=True,
             weight_decay=1e-4, weight_decay_mode='coupled', epochs=50,
             schedule='caffe_one_cycle(base_lr=0.1, max_lr=1.0)', momentum='cyclical'),
        notes="the log's net (wide32cifar) is not a WRN-D-K we have; WRN-28-10 stands in "
              'for it. No paper number is transcribed'),
]

# --------------------------------------------------------------------------------------
# SGDR on WRN-28-10 (Loshchilov & Hutter, 2017)

_SGDR_T0 = _steps(10, 128)  # 3907 steps: T0 = 10 epochs at batch 128
_PRESETS.append(Preset(
    'sgdr-wrn-28-10', 'WRN-28-10, batch 128, SGDR T0=10 epochs, T_mult=2, 150 epochs',
    'Loshchilov & Hutter 2017 (SGDR), CIFAR-10 WRN-28-10 with T0=10, T_mult=2',
    dict(model='wrn-28-10', dataset='cifar10', augment='crop+flip', batch_size=128,
         bn_group_size=128, bn_momentum=0.9, optimizer='nesterov', momentum='0.9',
         weight_decay=5e-4, weight_decay_mode='coupled',
         schedule=f'sgdr(max_lr=0.05, t0={_SGDR_T0}, t_mult=2, min_lr=0.0)',
         steps=15 * _SGDR_T0),
    notes=f'T0 = to_steps(10 epochs at batch 128) = {_SGDR_T0} steps; the run ends with the '
          f'4th period (10 + 20 + 40 + 80 = 150 epochs = {15 * _SGDR_T0} steps), where the '
          "LR reaches 0. The paper's numbers are medians over runs; none is transcribed"))

# --------------------------------------------------------------------------------------
# Goyal et al. (2017): linear scaling and gradual warmup, adapted to CIFAR

_GOYAL_BATCH = 1024
_GOYAL_LR = lrsched.scale_lr(0.1, _GOYAL_BATCH, 256, 'linear')
_GOYAL_WARMUP = _steps(5, _GOYAL_BATCH)
_GOYAL_MILESTONES = [_steps(e, _GOYAL_BATCH) - _GOYAL_WARMUP for e in (30, 60, 80)]
_PRESETS.append(Preset(
    'goyal-large-batch', f'ResNet-56, batch {_GOYAL_BATCH}, LR 0.1 x B/256 = {_GOYAL_LR:g} '
    'after a 5-epoch warmup, x0.1 at epochs 30/60/80 of 90',
    'Goyal et al. 2017, the ImageNet recipe (linear scaling, gradual warmup) on CIFAR-10',
    dict(model='resnet56', shortcut='A', dataset='cifar10', augment='crop+flip',
         batch_size=_GOYAL_BATCH, bn_group_size=32, bn_momentum=0.9, optimizer='sgd',
         momentum='0.9', weight_decay=1e-4, weight_decay_mode='coupled', epochs=90,
         schedule=f'warmup(multistep(lr={_GOYAL_LR:g}, milestones={_GOYAL_MILESTONES}, '
                  f'gamma=0.1), warmup_steps={_GOYAL_WARMUP}, start_lr=0.1)'),
    notes='an adaptation: the paper trains ResNet-50 on ImageNet. Kept: LR 0.1 per 256 '
          'examples, a linear warmup from 0.1 over 5 epochs, x0.1 at epochs 30, 60 and 80 '
          'of 90, batch-norm statistics over groups of 32 (their n), momentum 0.9, '
          'weight decay 1e-4. Not kept: the zero init of each block\'s last batch-norm '
          'scale, ImageNet augmentation (CIFAR crops and flips instead). No paper number'))

# --------------------------------------------------------------------------------------
# Smith, Kindermans & Le (2017): increase the batch size instead of decaying the LR

_SKL = dict(model='wrn-16-4', dataset='cifar10', augment='crop+flip', batch_size=128,
            bn_group_size=128, bn_momentum=0.9, optimizer='sgd', momentum='0.9',
            weight_decay=5e-4, weight_decay_mode='coupled', epochs=200)
_SKL_SOURCE = 'Smith, Kindermans & Le 2017 (arXiv:1711.00489), Fig. 2 (CIFAR-10, WRN-16-4)'
_SKL_NOTES = ('the paper reports curves, not a table: no number. Ghost batch norm over '
              'groups of 128 as in the paper; the LR and the batch change at the same '
              'examples seen (epochs 60, 120, 160 of 200) in every arm')


def _skl_hybrid_decay_step() -> int:
  """The step at which the hybrid arm reaches epoch 160 (its batch is 3200 by then)."""
  config = Config(**{**_SKL, 'epochs': 160}, schedule='constant(lr=0.1)',
                  batch_schedule='60:640,120:3200')
  return resolve_phases(config, CIFAR_TRAIN)[1]


_PRESETS += [
    Preset(
        'skl-decay-lr', 'WRN-16-4, batch 128, LR 0.1 x0.2 at epochs 60, 120, 160 of 200',
        _SKL_SOURCE + ': "decaying learning rate"',
        dict(_SKL, schedule=f'multistep(lr=0.1, milestones='
                            f'{[_steps(e, 128) for e in (60, 120, 160)]}, gamma=0.2)'),
        notes=_SKL_NOTES),
    Preset(
        'skl-increase-batch', 'WRN-16-4, LR 0.1, batch 128 -> 640 -> 3200 -> 16000 at epochs '
        '60, 120, 160 of 200',
        _SKL_SOURCE + ': "increasing batch size"',
        dict(_SKL, schedule='constant(lr=0.1)', batch_schedule='60:640,120:3200,160:16000',
             batch_lr_scaling='none'),
        notes=_SKL_NOTES + '. The last phase (16000 examples a step) needs several devices '
              'or --precision=bfloat16 to fit WRN-16-4 in memory; see skl-hybrid'),
    Preset(
        'skl-hybrid', 'WRN-16-4, batch 128 -> 640 -> 3200 at epochs 60, 120, then LR x0.2 '
        'at epoch 160',
        _SKL_SOURCE + ': "hybrid"',
        dict(_SKL, schedule=f'multistep(lr=0.1, milestones=[{_skl_hybrid_decay_step()}], '
                            'gamma=0.2)',
             batch_schedule='60:640,120:3200', batch_lr_scaling='none'),
        notes=_SKL_NOTES),
]

# --------------------------------------------------------------------------------------
# The paper's comparison at the scale of two CPU cores: ResNet-20 (a Table 1 depth), 4 epochs

_CPU_B = _steps(4, 128)  # B = 1563 iterations at batch 128: 4 epochs
_CPU = dict(model='resnet20', shortcut='A', dataset='cifar10', augment='crop+flip',
            batch_size=128, bn_momentum=0.9, bn_debias=True, optimizer='sgd', momentum='0.9',
            weight_decay=5e-4, weight_decay_mode='coupled', eval_every=200,
            checkpoint_every=200, steps=_CPU_B)
_CPU_RANGE_TEST_LR = 0.6
"""The super-convergence rule's max_lr from the range test of this setting (WORKSPACE.md,
"CPU-sized reproduction"): the peak of the test accuracy, smoothed over 3 points, over a
0 -> 3 sweep of 800 iterations (0.597)."""
_CPU_RAW_PEAK_LR = 1.5
"""The same curve's raw argmax (1.498): one lucky evaluation at the edge of the plateau. The
arm trained with it is kept (cpu-budget-1cycle-raw) as the evidence that led to smoothing."""
_CPU_SOURCE = (f'{_SC_SOURCE}, Fig. 1a and Table 1 scaled to 2 CPU cores: ResNet-20 at '
               f'batch 128, B = {_CPU_B} iterations (4 epochs)')
_CPU_NOTES = ('every arm shares the model, batch, weight decay 5e-4, crops and flips, '
              'batch-norm running averages (fraction 0.9, debiased), seed and evaluation '
              'points (every 200 iterations); only the schedule differs. Measured on 2 cores '
              '(AMD EPYC, jax 0.10.2, 2026-12-02): 0.61 s an iteration on idle cores, so '
              '{time} for this arm (the B arms took 22-31 minutes with other work beside '
              'them)')


def _cpu_milestones(steps: int) -> list[int]:
  return [steps // 2, steps * 3 // 4]


_PRESETS += [
    Preset(
        'cpu-budget-1cycle', f'ResNet-20, batch 128, 1cycle {_CPU_RANGE_TEST_LR / 10:g} -> '
        f'{_CPU_RANGE_TEST_LR:g} with cyclical momentum 0.95 -> 0.85, B = {_CPU_B} iterations',
        _CPU_SOURCE,
        dict(_CPU, schedule=f'smith_one_cycle(base_lr={_CPU_RANGE_TEST_LR / 10:g}, '
                            f'max_lr={_CPU_RANGE_TEST_LR:g})', momentum='cyclical'),
        notes='max_lr from the range test (the super-convergence rule: the peak of the '
              'test accuracy smoothed over 3 evaluations), base_lr = max_lr / '
              "10 and the annihilation of Smith 2018's 1cycle; " +
              _CPU_NOTES.format(time='about 16 minutes')),
    Preset(
        'cpu-budget-1cycle-raw', f'cpu-budget-1cycle at the raw peak of the range test: 1cycle '
        f'{_CPU_RAW_PEAK_LR / 10:g} -> {_CPU_RAW_PEAK_LR:g}',
        _CPU_SOURCE + ': the 1cycle arm with the unsmoothed rule',
        dict(_CPU, schedule=f'smith_one_cycle(base_lr={_CPU_RAW_PEAK_LR / 10:g}, '
                            f'max_lr={_CPU_RAW_PEAK_LR:g})', momentum='cyclical'),
        notes='max_lr from the argmax of the raw test accuracy of the range test, before the '
              'rule smoothed it (lrsched.lr_finder.smooth_metric); ' +
              _CPU_NOTES.format(time='about 16 minutes')),
    Preset(
        'cpu-budget-step', f'ResNet-20, batch 128, LR 0.1 x0.1 at 50% and 75% of B = {_CPU_B}',
        _CPU_SOURCE + ': the PC-LR baseline at the 1cycle budget',
        dict(_CPU, schedule=f'multistep(lr=0.1, milestones={_cpu_milestones(_CPU_B)}, '
                            'gamma=0.1)'),
        notes="LR 0.1, the usual CIFAR ResNet LR at batch 128 (He et al. 2016); " +
              _CPU_NOTES.format(time='about 16 minutes')),
    Preset(
        'cpu-budget-fixed', f'ResNet-20, batch 128, fixed LR 0.1 for B = {_CPU_B} iterations',
        _CPU_SOURCE + ': a fixed LR at the 1cycle budget',
        dict(_CPU, schedule='constant(lr=0.1)'),
        notes=_CPU_NOTES.format(time='about 16 minutes')),
    Preset(
        'cpu-budget-step-4x', f'ResNet-20, batch 128, LR 0.1 x0.1 at 50% and 75% of 4B = '
        f'{4 * _CPU_B}',
        _CPU_SOURCE + ': how many iterations the PC-LR baseline needs',
        dict(_CPU, schedule=f'multistep(lr=0.1, milestones={_cpu_milestones(4 * _CPU_B)}, '
                            'gamma=0.1)', steps=4 * _CPU_B),
        notes=_CPU_NOTES.format(time='about 65 minutes')),
]

_PRESETS.append(Preset(
    'cpu-quickstart', 'ResNet-8, batch 128, 1cycle 0.08 -> 0.8 with cyclical momentum, '
    '2 epochs: a first run on a laptop',
    'a quick start on CPU (not a paper row): the 1cycle recipe of Smith 2018 at a small scale',
    dict(_CPU, model='resnet8', steps=_steps(2, 128), eval_every=100, checkpoint_every=100,
         schedule='smith_one_cycle(base_lr=0.08, max_lr=0.8)', momentum='cyclical'),
    notes='782 iterations of the smallest ResNet: 6 minutes and 62.8% test accuracy on 2 '
          'CPU cores shared with another run (AMD EPYC, jax 0.10.2, 2026-12-02); the '
          'learning curve (test accuracy every 100 iterations) is in metrics.jsonl and '
          'TensorBoard'))

# --------------------------------------------------------------------------------------
# Beyond the paper: the schedules people train with now, on one bench

_MODERN_SOURCE = (
    'the schedules of current practice against the paper\'s: 1cycle and step [SC, S18]; '
    'cosine and linear decay to zero after a warmup (Loshchilov & Hutter 2017; Defazio et '
    'al. 2023); warmup-stable-decay with decays branched off one stable-phase checkpoint '
    '(Hu et al. 2024, MiniCPM; Hägele et al. 2024); schedule-free SGD (Defazio et al. 2024, '
    'optax.contrib)')
_MODERN_NOTES = (
    'every arm shares the model, batch, weight decay 5e-4, crops and flips, batch-norm '
    'running averages (fraction 0.9, debiased), seed and evaluation points; the warmup '
    'schedules peak at {peak:g} after {warmup} steps (5%), step is the usual 0.1 with x0.1 at '
    '50% and 75%, 1cycle is 0.08 -> 0.8 (Smith 2018), schedule-free SGD runs at LR {sf:g} '
    '(its authors: 1x-10x the scheduled LR; LR 2 stayed at chance in a 40-step smoke '
    'run on synthetic data with a 2-step warmup, 1.0 learned) with b1 0.9 and is '
    'evaluated at its average x with the batch-norm statistics recomputed there. No LR '
    'was tuned for this bench.')


def _modern_presets(prefix: str, base: Mapping[str, Any], steps: int, branch_at: int,
                    what: str) -> list[Preset]:
  """The arms of one bench: ``steps`` iterations each; the WSD decays branch off the
  stable run's checkpoint at ``branch_at`` (a multiple of checkpoint_every)."""
  warmup, peak, sf = round(0.05 * steps), 0.4, 1.0
  decay = steps - branch_at
  notes = _MODERN_NOTES.format(peak=peak, warmup=warmup, sf=sf)
  source = f'{_MODERN_SOURCE}; {what}'
  arm = lambda name, summary, values, extra='': Preset(
      f'{prefix}-{name}', summary, source, {**base, 'steps': steps, **values},
      notes=extra + notes)
  decayed = lambda shape: (f'wsd(peak_lr={peak:g}, warmup_steps={warmup}, '
                           f'decay_fraction=1.0, decay={shape!r})')
  branched = lambda shape: (f'wsd(peak_lr={peak:g}, warmup_steps={warmup}, '
                            f'decay_steps={decay}, decay={shape!r})')
  stable = f'{prefix}-wsd-stable'
  # The stable run goes on past the branch point; it must keep that checkpoint.
  keep = max(3, decay // 2 // base['checkpoint_every'] + 2)
  return [
      arm('1cycle', '1cycle 0.08 -> 0.8 with cyclical momentum 0.95 -> 0.85',
          dict(schedule='smith_one_cycle(base_lr=0.08, max_lr=0.8)', momentum='cyclical')),
      arm('step', 'LR 0.1, x0.1 at 50% and 75%',
          dict(schedule=f'multistep(lr=0.1, milestones={_cpu_milestones(steps)}, '
                        'gamma=0.1)')),
      arm('cosine', f'warmup {warmup}, cosine {peak:g} -> 0', dict(schedule=decayed('cosine'))),
      arm('linear', f'warmup {warmup}, linear {peak:g} -> 0',
          dict(schedule=decayed('linear'))),
      arm('wsd-stable', f'warmup {warmup}, then {peak:g} held: the stable run the WSD decays '
          f'branch off (at step {branch_at})',
          dict(schedule=f'warmup(constant({peak:g}), warmup_steps={warmup})',
               steps=branch_at + decay // 2, keep_checkpoints=keep)),
      arm('wsd-sqrt', f'WSD: the stable run from step {branch_at}, then 1 - sqrt to 0 over '
          f'{decay} steps', dict(schedule=branched('sqrt'), init_from=f'{stable}@{branch_at}'),
          'a branch of the wsd-stable arm (--init_from); '),
      arm('wsd-linear', f'WSD: the stable run from step {branch_at}, then linear to 0 over '
          f'{decay} steps', dict(schedule=branched('linear'),
                                 init_from=f'{stable}@{branch_at}'),
          'a branch of the wsd-stable arm (--init_from), from the same checkpoint as wsd-sqrt; '),
      arm('schedule-free', f'schedule-free SGD, LR {sf:g} after a warmup of {warmup}, b1 0.9',
          dict(schedule=f'warmup(constant({sf:g}), warmup_steps={warmup})',
               optimizer='schedule_free_sgd', momentum='0.9')),
  ]


_MODERN_CPU = dict(_CPU, model='resnet8', eval_every=100, checkpoint_every=100)
_MODERN_GPU = dict(_CPU, model='resnet56', eval_every=500, checkpoint_every=200)
_PRESETS += _modern_presets(
    'cpu-modern', _MODERN_CPU, _steps(2, 128), 600,
    'ResNet-8 at batch 128 for 2 epochs (782 iterations): sized for 2 CPU cores')
_PRESETS += _modern_presets(
    'gpu-modern', _MODERN_GPU, _steps(30, 128), 9400,
    'ResNet-56 at batch 128 for 30 epochs (11719 iterations): sized for one GPU')

PRESETS: Mapping[str, Preset] = types.MappingProxyType({p.name: p for p in _PRESETS})
"""Every preset, by name."""

SUITES: Mapping[str, Suite] = types.MappingProxyType({s.name: s for s in [
    Suite('sc-fig1a', "the paper's Fig. 1a: one CLR cycle (10k) against PC-LR (80k)",
          ('sc-fig1a-clr', 'sc-fig1a-step')),
    Suite('sc-budget', 'CLR against step and fixed LRs, all in 10k iterations',
          ('sc-fig1a-clr', 'sc-budget-step', 'sc-budget-fixed')),
    Suite('sc-tab1-data', "Table 1's reduced training sets, CLR and PC-LR",
          tuple(f'sc-tab1-{kind}-{n}' for n in ('40k', '30k', '20k', '10k')
                for kind in ('clr', 'step')), allow_differences=('train_examples',)),
    Suite('sc-tab1-depth', "Table 1's ResNet-20 and ResNet-110 rows, CLR and PC-LR",
          tuple(f'sc-tab1-{kind}-{m}' for m in ('resnet20', 'resnet110')
                for kind in ('clr', 'step')), allow_differences=('model',)),
    Suite('smith18', '1cycle with cyclical momentum against a constant LR (Smith 2018)',
          ('smith18-1cycle', 'smith18-constant')),
    Suite('cpu-budget', 'the super-convergence comparison on 2 CPU cores: 1cycle, step and '
          'fixed LR in B iterations, step in 4B (about 2 hours)',
          ('cpu-budget-1cycle', 'cpu-budget-step', 'cpu-budget-fixed', 'cpu-budget-step-4x',
           'cpu-budget-1cycle-raw')),
    *(Suite(f'{bench}-modern', f'1cycle and step against cosine, linear to zero, WSD (two '
            f'decays branched off one stable run) and schedule-free SGD ({size})',
            tuple(p.name for p in _PRESETS if p.name.startswith(f'{bench}-modern-')))
      for bench, size in (('cpu', 'ResNet-8, 2 epochs: about 30 minutes on 2 CPU cores'),
                          ('gpu', 'ResNet-56, 30 epochs: sized for one GPU'))),
    Suite('skl-batch-size', 'decay the LR, or increase the batch size (Smith et al. 2017)',
          ('skl-decay-lr', 'skl-hybrid', 'skl-increase-batch')),
]})
"""Named comparisons for ``experiments.compare --suite``."""


def get(name: str) -> Preset:
  """The preset called ``name``; ConfigError listing the valid names otherwise."""
  try:
    return PRESETS[name]
  except KeyError:
    raise ConfigError(f'unknown preset {name!r}; valid: {", ".join(PRESETS)}') from None


def get_suite(name: str) -> Suite:
  """The suite called ``name``; ConfigError listing the valid names otherwise."""
  try:
    return SUITES[name]
  except KeyError:
    raise ConfigError(f'unknown suite {name!r}; valid: {", ".join(SUITES)}') from None


def listing() -> str:
  """Every preset and suite, with sources and numbers (``--list_presets``)."""
  suites = [f'  {s.name}: {s.summary}: {", ".join(s.arms)}' for s in SUITES.values()]
  return '\n\n'.join([*(p.describe() for p in PRESETS.values()),
                      '\n'.join(['suites (python -m experiments.compare --suite=NAME):',
                                 *suites])])
