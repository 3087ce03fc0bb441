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
from typing import Any

OPTIMIZERS = ('sgd', 'nesterov', 'adamw', 'lars')
PRECISIONS = ('float32', 'bfloat16')
WEIGHT_DECAY_MODES = ('coupled', 'decoupled')
SHORTCUTS = ('A', 'B', 'caffe')


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
  precision: str = _field('float32', f'Compute dtype, one of {PRECISIONS}; params stay float32.')

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
  optimizer: str = _field('sgd', f'One of {OPTIMIZERS}.')
  weight_decay: float = _field(1e-4, 'Weight decay factor.')
  weight_decay_mode: str = _field(
      'coupled', "'coupled': L2 added to the gradient (Caffe, the paper); 'decoupled': "
      'subtracted from the weights (AdamW).')
  caffe_momentum: bool = _field(
      False, "Caffe's momentum form v <- m v - lr g (LR inside the velocity), as the "
      'super-convergence authors trained; default is the Optax/PyTorch form.')
  batch_size: int = _field(512, 'Global batch size, split evenly over all devices.')
  steps: int | None = _field(None, 'Training steps. Give --steps or --epochs, not both.')
  epochs: float | None = _field(
      None, 'Training epochs (steps = ceil(epochs * train_size / batch_size)). '
      'Default when neither is given: 95 epochs.')

  steps_per_dispatch: int = _field(
      1, 'Training steps run inside one dispatch (a lax.scan); results are identical.')

  # Bookkeeping.
  seed: int = _field(0, 'Seed for initialisation, data order and augmentation.')
  eval_every: int | None = _field(
      None, 'Evaluate on the test set every this many steps (and at the end). '
      'Default: once per epoch.')
  checkpoint_every: int = _field(1000, 'Save a checkpoint every this many steps (and at the end).')
  keep_checkpoints: int = _field(3, 'How many recent checkpoints to keep.')
  log_every: int = _field(50, 'Refresh the progress line every this many steps.')
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

  def validate(self) -> None:
    """Checks what can be checked without data or devices; raises ConfigError."""
    _choice('optimizer', self.optimizer, OPTIMIZERS)
    _choice('precision', self.precision, PRECISIONS)
    _choice('weight_decay_mode', self.weight_decay_mode, WEIGHT_DECAY_MODES)
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
    if self.bn_group_size is not None and self.batch_size % self.bn_group_size:
      raise ConfigError(f'--batch_size={self.batch_size} is not divisible by '
                        f'--bn_group_size={self.bn_group_size}')
    if not 0.0 <= self.bn_momentum < 1.0:
      raise ConfigError(f'--bn_momentum must be in [0, 1), got {self.bn_momentum}')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ConfigError(f'--dropout_rate must be in [0, 1), got {self.dropout_rate}')
    if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
      raise ConfigError(f'--weight_decay must be >= 0, got {self.weight_decay}')
    if self.lr is not None and not (self.lr >= 0 and math.isfinite(self.lr)):
      raise ConfigError(f'--lr must be >= 0, got {self.lr}')
    if self.caffe_momentum and self.optimizer not in ('sgd', 'nesterov'):
      raise ConfigError('--caffe_momentum applies to --optimizer=sgd or nesterov only')
    for name in ('checkpoint_every', 'keep_checkpoints', 'log_every', 'synthetic_examples',
                 'steps_per_dispatch'):
      if getattr(self, name) < 1:
        raise ConfigError(f'--{name} must be >= 1, got {getattr(self, name)}')
    if self.eval_every is not None and self.eval_every < 1:
      raise ConfigError(f'--eval_every must be >= 1, got {self.eval_every}')
    if self.train_examples is not None and self.train_examples < 1:
      raise ConfigError(f'--train_examples must be >= 1, got {self.train_examples}')


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
  if value not in valid:
    raise ConfigError(f'unknown --{name}={value!r}; valid: {", ".join(valid)}')
