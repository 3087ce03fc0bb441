"""The one place for the training binary's configuration.

`Config` is a frozen dataclass: every field is a command-line flag of
``python -m experiments.cifar`` (the flags are generated from the fields, so a field's
``help`` metadata is its ``--help`` text), a key of ``config.json`` in the workdir, and an
argument that presets (``experiments.presets``) set by name.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, NamedTuple

OPTIMIZERS = ('sgd', 'nesterov', 'adamw', 'lars', 'schedule_free_sgd', 'schedule_free_adamw')
PRECISIONS = ('float32', 'bfloat16')
WEIGHT_DECAY_MODES = ('coupled', 'decoupled')
SHORTCUTS = ('A', 'B', 'caffe')
BATCH_LR_SCALINGS = ('none', 'linear', 'sqrt')
DEFAULT_EPOCHS = 95
"""The run length when neither --steps nor --epochs is given."""
MAX_EXAMPLES = 2**31 - 1
"""The most examples a run may see: positions in the data stream are int32 on the device."""


class ConfigError(ValueError):
  """A bad setting, found before anything is compiled. Its text is one line for the user."""


def _field(default: Any, help: str, **kwargs: Any) -> Any:
  return dataclasses.field(default=default, metadata={'help': help, **kwargs})


@dataclasses.dataclass(frozen=True)
class Config:
  """A training run. Defaults: Smith (2018)'s ResNet-56 1cycle row on CIFAR-10."""

  # Model.
  model: str = _field('resnet56', 'Model name: resnet20/32/44/56/110, wrn-16-4, wrn-28-10, ...')
  shortcut: str | None = _field(
      None, "ResNet shortcut: 'A' (zero-padded identity), 'B' (projection), 'caffe' (the "
      "super-convergence authors' Caffe model). Default: A for ResNets, none for WRNs.")
  dropout_rate: float = _field(0.0, 'Dropout rate inside WideResNet blocks.')
  bn_group_size: int | None = _field(
      None, 'Batch-norm statistics over groups of this many examples (ghost batch norm), so '
      'that results do not depend on the device count. Default: the per-device batch.')
  bn_momentum: float = _field(
      0.95, "Batch-norm running-average decay (Caffe's moving_average_fraction).")
  bn_debias: bool = _field(
      False, "Batch-norm running averages as Caffe keeps them: decayed sums over their "
      "decayed weight, free of the initial mean 0 and variance 1 (which otherwise weigh "
      "bn_momentum**step in the statistics that evaluations use).")
  precision: str = _field('float32', f'Compute dtype, one of {PRECISIONS}; params stay float32.')
  conv: str = _field(
      'xla', "The convolutions' kernels: 'xla', or 'onednn' (CPU only; pip install "
      "'lrsched[onednn]' and a C++ compiler): oneDNN's forward and gradients inside the "
      "compiled step, faster CPU training (WORKSPACE.md); results agree to float rounding.")

  # Data.
  dataset: str = _field('cifar10', 'cifar10, cifar100 or synthetic.')
  data_dir: str | None = _field(
      None, 'Local copy of the data: the packed JPEG .npz, the official python-version '
      'tar.gz or folder, or an image folder (train/<class>/*, test/<class>/*). '
      'Default: tensorflow-datasets (needs network or a prepared copy).')
  train_examples: int | None = _field(
      None, 'Train on a class-balanced subset of this many examples (the paper\'s Table 1).')
  synthetic_examples: int = _field(
      50_000, 'Training-set size of --dataset=synthetic (its test set is a fifth of it).')
  augment: str = _field('flip', "Augmentation: 'flip' (the paper), 'crop+flip' or 'none'.")

  # Optimisation.
  schedule: str = _field(
      'smith_one_cycle(base_lr=0.08, max_lr=0.8)',
      'LR schedule: a name (1cycle, clr, sgdr, ...) or an lrsched spec such as '
      "'cyclic(base_lr=0.1, max_lr=3, step_size_up=5000)'. total_steps is filled in from "
      'the run length and lr from --lr where the spec leaves them out.')
  lr: float | None = _field(
      None, "The schedule's main LR (lr, or max_lr for cyclical schedules) where the "
      'spec does not set it.')
  momentum: str = _field(
      'cyclical', "Momentum: a number (0.9), an lrsched spec, 'cyclical' (the partner of the "
      "LR schedule, moving opposite to it) or 'none'.")
  optimizer: str = _field(
      'sgd', f'One of {OPTIMIZERS}. The schedule-free ones (Defazio et al. 2024, '
      'optax.contrib) are evaluated at their averaged parameters, with batch-norm '
      'statistics recomputed there (experiments.parallel.make_bn_recalibration); --momentum '
      'is their interpolation b1.')
  weight_decay: float = _field(1e-4, 'Weight decay factor.')
  weight_decay_mode: str = _field(
      'coupled', "'coupled': L2 added to the gradient (Caffe, the paper); 'decoupled': "
      'subtracted from the weights (AdamW).')
  caffe_momentum: bool = _field(
      False, "Caffe's momentum form v <- m v - lr g (LR inside the velocity), as the "
      'super-convergence authors trained; default is the Optax/PyTorch form.')
  batch_size: int = _field(
      512, 'Global batch size, split evenly over all devices (with --batch_schedule: the '
      'batch of the first phase).')
  batch_schedule: str | None = _field(
      None, "Grow the global batch during training (Smith, Kindermans & Le, 2017, \"Don't "
      "decay the learning rate, increase the batch size\"): 'EPOCH:BATCH,...', e.g. "
      "'60:640,120:3200' trains at --batch_size until epoch 60, at 640 until epoch 120, "
      'then at 3200. Epochs count examples seen (a phase starts at the first step that '
      'reaches them) and may be fractional; each phase compiles its own step.')
  batch_lr_scaling: str = _field(
      'none', "How the LR follows --batch_schedule, relative to the first phase's batch: "
      "'none' (the paper: the growing batch replaces the LR decay), 'linear' (x B/B0, Goyal "
      "et al.) or 'sqrt' (x sqrt(B/B0)); see lrsched.scale_lr.")
  steps: int | None = _field(None, 'Training steps. Give --steps or --epochs, not both.')
  epochs: float | None = _field(
      None, 'Training epochs (steps = ceil(epochs * train_size / batch_size)). '
      'Default when neither is given: 95 epochs.')

  steps_per_dispatch: int = _field(
      1, 'Training steps run inside one dispatch (a lax.scan); the results are the same up to '
      'float rounding. It must divide --log_every, --eval_every and --checkpoint_every, where '
      'a dispatch ends, and the first step of each --batch_schedule phase. Without '
      '--eval_every, the evaluation after an epoch comes at the next multiple of it.')

  init_from: str | None = _field(
      None, "Branch off another run: 'WORKDIR@STEP' starts this run from that run's "
      'checkpoint at STEP (parameters, batch-norm statistics, optimizer state and step), '
      'then trains with this run\'s schedule to its end, e.g. the decay of a '
      'warmup-stable-decay run from a stable-phase checkpoint. The model and optimizer must '
      'be the same; recorded in summary.json as the parent.')

  # Bookkeeping.
  seed: int = _field(0, 'Seed for initialisation, data order and augmentation.')
  eval_every: int | None = _field(
      None, 'Evaluate on the test set every this many steps (and at the end). '
      'Default: once per epoch.')
  checkpoint_every: int = _field(1000, 'Save a checkpoint every this many steps (and at the end).')
  keep_checkpoints: int = _field(3, 'How many recent checkpoints to keep.')
  log_every: int = _field(50, 'Log the training loss (a metrics.jsonl row and TensorBoard) and '
                          'refresh the progress line every this many steps.')
  workdir: str | None = _field(
      None, 'Output folder (metrics.jsonl, TensorBoard events, checkpoints, summary.json). '
      'Re-running with the same workdir resumes. Default: runs/<model>-<dataset>-seed<seed>.')

  def replace(self, **changes: Any) -> Config:
    return dataclasses.replace(self, **changes)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> Config:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
      raise ConfigError(f'unknown config keys {unknown}; valid: {sorted(names)}')
    return cls(**values)

  @property
  def default_workdir(self) -> str:
    return f'runs/{self.model}-{self.dataset}-seed{self.seed}'

  @property
  def batch_changes(self) -> tuple[BatchChange, ...]:
    """The phases of the batch schedule: (0, batch_size) and one per --batch_schedule entry."""
    return (BatchChange(0, self.batch_size), *parse_batch_schedule(self.batch_schedule))

  def parent(self) -> tuple[str, int] | None:
    """``--init_from`` as (workdir, step), or None; ConfigError if it is malformed."""
    if self.init_from is None:
      return None
    path, at, step = self.init_from.rpartition('@')
    if not at or not path or not step.isdigit():
      raise ConfigError(f'--init_from={self.init_from!r}: give WORKDIR@STEP, the folder of '
                        'another run and one of its checkpoint steps, e.g. '
                        'runs/wsd-stable@600')
    return path, int(step)

  def validate(self) -> None:
    """Checks what can be checked without data or devices; raises ConfigError."""
    _choice('optimizer', self.optimizer, OPTIMIZERS)
    _choice('batch_lr_scaling', self.batch_lr_scaling, BATCH_LR_SCALINGS)
    _choice('precision', self.precision, PRECISIONS)
    from experiments.models.conv import CONVS
    _choice('conv', self.conv, CONVS)
    _choice('weight_decay_mode', self.weight_decay_mode, WEIGHT_DECAY_MODES)
    from experiments.data.augment import AUGMENTATIONS  # the module that owns the modes
    _choice('augment', self.augment, AUGMENTATIONS)
    if self.shortcut is not None:
      _choice('shortcut', self.shortcut, SHORTCUTS)
    if self.batch_size < 1:
      raise ConfigError(f'--batch_size must be >= 1, got {self.batch_size}')
    if self.steps is not None and self.epochs is not None:
      raise ConfigError('give --steps or --epochs, not both')
    if self.steps is not None and self.steps < 1:
      raise ConfigError(f'--steps must be >= 1, got {self.steps}')
    if self.epochs is not None and not (self.epochs > 0 and math.isfinite(self.epochs)):
      raise ConfigError(f'--epochs must be > 0, got {self.epochs}')
    if self.bn_group_size is not None and self.bn_group_size < 1:
      raise ConfigError(f'--bn_group_size must be >= 1, got {self.bn_group_size}')
    for change in self.batch_changes:
      if self.bn_group_size is not None and change.batch_size % self.bn_group_size:
        raise ConfigError(f'{change.flag}={change.batch_size} is not divisible by '
                          f'--bn_group_size={self.bn_group_size}')
    if not 0.0 <= self.bn_momentum < 1.0:
      raise ConfigError(f'--bn_momentum must be in [0, 1), got {self.bn_momentum}')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ConfigError(f'--dropout_rate must be in [0, 1), got {self.dropout_rate}')
    if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
      raise ConfigError(f'--weight_decay must be >= 0, got {self.weight_decay}')
    if self.lr is not None and not (self.lr >= 0 and math.isfinite(self.lr)):
      raise ConfigError(f'--lr must be >= 0, got {self.lr}')
    if self.optimizer == 'schedule_free_adamw' and self.weight_decay and (
        self.weight_decay_mode != 'decoupled'):
      raise ConfigError('--optimizer=schedule_free_adamw decays weights decoupled; pass '
                        '--weight_decay_mode=decoupled')
    if self.optimizer == 'schedule_free_sgd' and self.weight_decay_mode != 'coupled':
      raise ConfigError('--optimizer=schedule_free_sgd adds L2 to the gradient (at the '
                        'interpolated point y, as its authors do); pass '
                        '--weight_decay_mode=coupled')
    if self.caffe_momentum and self.optimizer not in ('sgd', 'nesterov'):
      raise ConfigError('--caffe_momentum applies to --optimizer=sgd or nesterov only')
    for name in ('checkpoint_every', 'keep_checkpoints', 'log_every', 'synthetic_examples',
                 'steps_per_dispatch'):
      if getattr(self, name) < 1:
        raise ConfigError(f'--{name} must be >= 1, got {getattr(self, name)}')
    if self.eval_every is not None and self.eval_every < 1:
      raise ConfigError(f'--eval_every must be >= 1, got {self.eval_every}')
    # A dispatch ends at every log, evaluation and checkpoint step, and each dispatch of
    # fewer than K steps is a program of its own, compiled on first use.
    k = self.steps_per_dispatch
    intervals = {name: getattr(self, name) for name in ('log_every', 'eval_every',
                                                         'checkpoint_every')
                 if getattr(self, name) is not None}
    for name, every in intervals.items():
      if every % k:
        common = math.gcd(*intervals.values())
        fits = max(d for d in range(1, k + 1) if common % d == 0)
        raise ConfigError(
            f'--steps_per_dispatch={k} does not divide --{name}={every}: a dispatch ends '
            f'every {every} steps, so a {every % k}-step program would be compiled too. Use '
            f'--steps_per_dispatch={fits}, which divides --log_every, --eval_every and '
            f'--checkpoint_every, or a multiple of {k} for --{name}')
    if self.init_from is not None:
      self.parent()
    if self.train_examples is not None and self.train_examples < 1:
      raise ConfigError(f'--train_examples must be >= 1, got {self.train_examples}')


class BatchChange(NamedTuple):
  """From ``epoch`` on (examples seen / training-set size), the global batch is ``batch_size``."""

  epoch: float
  batch_size: int

  @property
  def flag(self) -> str:
    """How the user wrote this batch size, for error messages."""
    return '--batch_size' if self.epoch == 0 else f'--batch_schedule batch at epoch {self.epoch:g}'


def parse_batch_schedule(spec: str | None) -> tuple[BatchChange, ...]:
  """Parses ``'EPOCH:BATCH,...'`` (epochs > 0 strictly increasing, batches >= 1)."""
  if spec is None or not spec.strip():
    return ()
  changes = []
  for item in spec.split(','):
    epoch_text, sep, batch_text = item.partition(':')
    try:
      if not sep:
        raise ValueError
      epoch, batch = float(epoch_text), int(batch_text)
    except ValueError:
      raise ConfigError(f'--batch_schedule={spec!r}: cannot read {item.strip()!r}; write '
                        "EPOCH:BATCH entries separated by commas, e.g. '60:640,120:3200'"
                        ) from None
    if not (math.isfinite(epoch) and epoch > 0):
      raise ConfigError(f'--batch_schedule={spec!r}: epochs must be > 0 (the first phase, '
                        f'from epoch 0, uses --batch_size), got {epoch_text.strip()}')
    if changes and epoch <= changes[-1].epoch:
      raise ConfigError(f'--batch_schedule={spec!r}: epochs must increase, got '
                        f'{changes[-1].epoch:g} then {epoch:g}')
    if batch < 1:
      raise ConfigError(f'--batch_schedule={spec!r}: batch sizes must be >= 1, got {batch}')
    changes.append(BatchChange(epoch, batch))
  return tuple(changes)


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
  if value not in valid:
    raise ConfigError(f'unknown --{name}={value!r}; valid: {", ".join(valid)}')
