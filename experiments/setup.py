"""The set-up every entry point shares: a config checked and resolved before anything compiles.

`prepare(config, devices)` checks the flags, the devices, the workdir and a branch's parent,
builds the model, loads the data and resolves the run (`Plan`: its batch phases, length,
schedules and optimizer), failing with a one-line `ConfigError` in the order that fails
fastest. `experiments.train` runs what it returns; `experiments.lr_range_test` and
`experiments.benchmark` build on the same pieces (`build_model`, `build_optimizer`,
`create_state`, `put_training_data`), and `experiments.compare` plans every arm with `plan`
before the first one trains.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import tempfile
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lrsched
from experiments import data, models, parallel
from experiments.config import Config, ConfigError
from experiments.phases import (
  BatchScaledSchedule,
  Phase,
  check_dispatch,
  examples_at,
  first_step_reaching,
  phase_index,
  resolve_phases,
)

# Fields that may change between a run and its resumption (they don't change the result).
RESUMABLE_CHANGES = ('log_every', 'checkpoint_every', 'keep_checkpoints', 'eval_every',
                     'steps_per_dispatch', 'workdir', 'data_dir')


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a config resolves to once the training-set size and the devices are known."""

  total_steps: int
  train_size: int
  phases: tuple[Phase, ...]
  lr_schedule: Any  # the LR of every step: the schedule, times its batch phase's factor
  momentum: float | lrsched.Schedule | None
  tx: optax.GradientTransformation
  local_batches: tuple[int, ...]  # the per-device batch of each phase

  @property
  def steps_per_epoch(self) -> int:
    """Whole batches per epoch in the first phase."""
    return self.train_size // self.phases[0].batch_size

  def examples_at(self, step: int) -> int:
    return examples_at(self.phases, step)

  def epoch_at(self, step: int) -> float:
    return examples_at(self.phases, step) / self.train_size

  def phase_at(self, step: int) -> int:
    """The phase of the update that follows ``step`` updates."""
    return phase_index(self.phases, step)

  def next_epoch_end(self, step: int) -> int:
    """The first step after ``step`` at which another whole epoch has been seen."""
    epochs_done = self.examples_at(step) // self.train_size
    return first_step_reaching(self.phases, (epochs_done + 1) * self.train_size)


# --------------------------------------------------------------------------------------
# Resolving the config against the data and the devices (all before any compilation).


def build_schedules(config: Config, total_steps: int
                    ) -> tuple[lrsched.Schedule, float | lrsched.Schedule | None]:
  context: dict[str, Any] = {'total_steps': total_steps}
  if config.lr is not None:
    context.update(lr=config.lr, max_lr=config.lr, peak_lr=config.lr)
  try:
    lr = lrsched.parse(config.schedule, **context)
  except ValueError as e:
    hint = ''
    missing = re.search(r"missing required argument '((?:max_|peak_)?lr)'", str(e))
    if config.lr is None and missing:
      hint = ("; give the LR with --lr=VALUE, or in the spec, e.g. "
              f"--schedule='{config.schedule.split('(')[0]}({missing.group(1)}=0.1)'")
    raise ConfigError(f'--schedule: {e}{hint}') from None
  if not _fits_run(lr, total_steps):
    raise ConfigError(
        f'--schedule={lr!r} ends at step {lr.total_steps} but the run has {total_steps} '
        'steps; make them agree (leave total_steps out of the spec to have it filled in, '
        'or set --steps)')
  text = config.momentum.strip()
  if text == 'none':
    momentum = None
  elif text == 'cyclical':
    try:
      momentum = lrsched.momentum_for(lr)
    except ValueError as e:
      raise ConfigError(f'--momentum=cyclical: {e}') from None
  else:
    try:
      momentum = float(text)
    except ValueError:
      try:
        momentum = lrsched.parse(text, total_steps=total_steps)
      except ValueError as e:
        raise ConfigError(f'--momentum: {e}') from None
    if isinstance(momentum, float) and not 0.0 <= momentum < 1.0:
      raise ConfigError(f'--momentum must be in [0, 1), got {momentum}')
  if isinstance(momentum, lrsched.Schedule) and not _fits_run(momentum, total_steps):
    raise ConfigError(f'--momentum={momentum!r} ends at step {momentum.total_steps} but the '
                      f'run has {total_steps} steps')
  return lr, momentum


def _fits_run(schedule: lrsched.Schedule, total_steps: int) -> bool:
  """Whether a schedule's length agrees with the run's.

  A schedule that takes ``total_steps`` must be given the run's length. One whose end is
  set by its own phases (``multistep``'s last milestone, a ``warmup`` of one, ...) may end
  before the run and hold its final value, as Caffe's multistep runs to ``max_iter``; no
  schedule may end after the run, which would cut it short.
  """
  end = schedule.total_steps
  if end is None or end == total_steps:
    return True
  takes_length = 'total_steps' in inspect.signature(lrsched.spec.REGISTRY[schedule.name]).parameters
  return end < total_steps and not takes_length


def build_optimizer(config: Config, lr: lrsched.Schedule,
                    momentum: float | lrsched.Schedule | None) -> optax.GradientTransformation:
  try:
    return _build_optimizer(config, lr, momentum)
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(f'--optimizer={config.optimizer}: {e}') from None


def _build_optimizer(config, lr, momentum):
  decoupled = config.weight_decay_mode == 'decoupled'
  if config.optimizer in ('sgd', 'nesterov'):
    if config.optimizer == 'nesterov' and momentum is None:
      raise ConfigError('--optimizer=nesterov needs momentum; got --momentum=none')
    return lrsched.sgd(lr, momentum, nesterov=config.optimizer == 'nesterov',
                       weight_decay=config.weight_decay, decoupled_weight_decay=decoupled,
                       velocity='caffe' if config.caffe_momentum else 'optax')
  if config.optimizer == 'adamw':
    if not decoupled and config.weight_decay:
      raise ConfigError('--optimizer=adamw decays weights decoupled; pass '
                        '--weight_decay_mode=decoupled')
    return lrsched.adamw(lr, b1=0.9 if momentum is None else momentum,
                         weight_decay=config.weight_decay)
  if config.optimizer.startswith('schedule_free_'):
    return _schedule_free(config, lr, momentum)
  return lrsched.lars(lr, momentum=0.9 if momentum is None else momentum,
                      weight_decay=config.weight_decay)


def _schedule_free(config, lr, momentum):
  # Schedule-free wants a constant LR after a warmup; any schedule is accepted (the method
  # weighs its averages by the largest LR so far). inject_hyperparams exposes the LR and
  # b1 to lrsched.hyperparams, as for the other optimizers.
  if isinstance(momentum, lrsched.Schedule) or momentum is None:
    raise ConfigError(f'--optimizer={config.optimizer} takes a constant interpolation b1 '
                      f'as --momentum (e.g. 0.9), got --momentum={config.momentum}')
  if config.optimizer == 'schedule_free_sgd':
    return optax.inject_hyperparams(optax.contrib.schedule_free_sgd)(
        learning_rate=lr, b1=momentum, weight_decay=config.weight_decay or None)
  return optax.inject_hyperparams(optax.contrib.schedule_free_adamw)(
      learning_rate=lr, b1=momentum, weight_decay=config.weight_decay)


def check_devices(config: Config, num_devices: int) -> int:
  """The per-device batch of the first phase; every divisibility rule is checked here, for
  every batch phase, before compiling."""
  locals_ = []
  for change in config.batch_changes:
    batch = change.batch_size
    if batch % num_devices:
      raise ConfigError(f'{change.flag}={batch} is not divisible by the {num_devices} '
                        f'devices; use a multiple of {num_devices}')
    local = batch // num_devices
    if config.bn_group_size is not None and local % config.bn_group_size:
      raise ConfigError(f'the per-device batch ({change.flag}={batch} / {num_devices} '
                        f'devices = {local}) is not divisible by '
                        f'--bn_group_size={config.bn_group_size}')
    locals_.append(local)
  return locals_[0]


def compute_dtype(config: Config) -> Any:
  """The dtype of the activations and convolutions (``--precision``)."""
  return jnp.bfloat16 if config.precision == 'bfloat16' else jnp.float32


def build_model(config: Config):
  """The Flax model of ``config`` (ConfigError for a bad name or setting)."""
  dtype = compute_dtype(config)
  try:
    return models.create_model(config.model, num_classes=100 if config.dataset == 'cifar100'
                               else 10, dtype=dtype, bn_group_size=config.bn_group_size,
                               bn_momentum=config.bn_momentum, bn_debias=config.bn_debias,
                               dropout_rate=config.dropout_rate, shortcut=config.shortcut,
                               conv=config.conv)
  except ValueError as e:
    raise ConfigError(f'--model: {e}') from None


def nominal_train_size(config: Config) -> int:
  """The training-set size a config asks for, known without loading the data."""
  if config.train_examples is not None:
    return config.train_examples
  return config.synthetic_examples if config.dataset == 'synthetic' else 50_000


def check_config(config: Config, num_devices: int) -> None:
  """Every check of ``config`` that needs neither the data nor a compilation; ConfigError."""
  config.validate()
  if config.dataset not in data.DATASETS:
    raise ConfigError(f'unknown --dataset={config.dataset!r}; valid: {", ".join(data.DATASETS)}')
  check_devices(config, num_devices)


def plan(config: Config, train_size: int, num_devices: int) -> Plan:
  """Checks ``config`` (`check_config`) and resolves it against the training-set size.

  Raises ConfigError; `experiments.compare` calls it for every arm before the first one
  trains.
  """
  check_config(config, num_devices)
  return _resolve(config, train_size, num_devices)


def _resolve(config: Config, train_size: int, num_devices: int) -> Plan:
  """`plan` for a checked config: the phases, schedules and optimizer (ConfigError)."""
  phases, total_steps = resolve_phases(config, train_size)
  check_dispatch(phases, config.steps_per_dispatch)
  lr, momentum = build_schedules(config, total_steps)
  if len(phases) > 1 and config.batch_lr_scaling != 'none':
    lr = BatchScaledSchedule(lr, phases, config.batch_lr_scaling)
  tx = build_optimizer(config, lr, momentum)
  return Plan(total_steps, train_size, phases, lr, momentum, tx,
              tuple(p.batch_size // num_devices for p in phases))


DATA_FILE = 'data.json'
"""In a workdir: which data the run trains on (`Dataset.fingerprint`), checked on resume."""


def data_record(dataset: data.Dataset) -> dict[str, Any]:
  """What `DATA_FILE` holds about the data of a run."""
  return {'fingerprint': dataset.fingerprint(), 'source': dataset.source,
          'train_examples': len(dataset.train_labels),
          'test_examples': len(dataset.test_labels)}


def check_same_data(workdir: str, record: dict[str, Any]) -> None:
  """ConfigError if the run in ``workdir`` trained on other examples than those of
  ``record`` (`data_record`): ``--data_dir`` may move between a run and its resumption, the
  data may not change."""
  path = os.path.join(workdir, DATA_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  if saved.get('fingerprint') != record['fingerprint']:
    raise ConfigError(
        f'--workdir={workdir} holds a run trained on other data ({saved.get("source")}, '
        f'{saved.get("train_examples")} train examples) than {record["source"]} '
        f'({record["train_examples"]}): resume it with the same data, or use another '
        '--workdir')


def check_workdir(workdir: str) -> None:
  """ConfigError unless ``workdir`` is, or can be made, a writable folder (checked before
  the data is loaded, so that a bad path costs seconds, not a compile)."""
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f'--workdir={workdir} is a file, not a folder; give a folder path')
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ConfigError(f'--workdir={workdir} lies under the file {existing}; give a folder '
                      'path')
  try:  # a real write: permission bits say nothing of read-only mounts, nor for root
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise ConfigError(f'--workdir={workdir}: {existing} is not writable ({e.strerror}); '
                      'give a folder you can write to') from None


def check_resumable(config: Config, workdir: str) -> None:
  """A workdir holds one run: refuse to continue it with settings that change the result."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  current = dataclasses.asdict(config)
  # A field added since the run started reads as its default there. --conv_backward
  # ('xla' or 'torch', the same results to float rounding) became --conv.
  saved.pop('conv_backward', None)
  saved = {**dataclasses.asdict(Config()), **saved}
  differ = sorted(k for k in set(saved) | set(current)
                  if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k))
  if differ:
    detail = ', '.join(f'{k}: {saved.get(k)!r} -> {current.get(k)!r}' for k in differ)
    raise ConfigError(f'--workdir={workdir} holds a run with other settings ({detail}); '
                      'use another --workdir, or the same settings to resume it')


BRANCH_FIELDS = ('dataset', 'model', 'shortcut', 'dropout_rate', 'bn_group_size', 'bn_debias',
                 'optimizer', 'caffe_momentum', 'precision')
"""What a branch (``--init_from``) must share with its parent: the arrays of the state and
what they mean."""


def check_parent(config: Config, workdir: str) -> tuple[str, int] | None:
  """ConfigError unless ``--init_from`` names a run with the same model and optimizer and a
  checkpoint at its step (checked from the parent's files, before anything loads)."""
  parent = config.parent()
  if parent is None:
    return None
  path, step = parent
  flag = f'--init_from={config.init_from}'
  if os.path.abspath(path) == os.path.abspath(workdir):
    raise ConfigError(f'{flag}: a run cannot branch off itself; re-run it to resume it')
  try:
    with open(os.path.join(path, 'config.json')) as f:
      saved = {**dataclasses.asdict(Config()), **json.load(f)}
  except (OSError, ValueError) as e:
    raise ConfigError(f'{flag}: {path} holds no readable run (config.json: '
                      f'{getattr(e, "strerror", None) or e}); give the workdir of a run') from None
  current = dataclasses.asdict(config)
  differ = [k for k in BRANCH_FIELDS if saved.get(k) != current.get(k)]
  if differ:
    detail = ', '.join(f'{k}: {saved.get(k)!r} -> {current.get(k)!r}' for k in differ)
    raise ConfigError(f'{flag}: the parent run has another model or optimizer ({detail}); a '
                      'branch continues its state, so these must be the same')
  steps = sorted(int(n) for n in os.listdir(os.path.join(path, 'checkpoints'))
                 if n.isdigit()) if os.path.isdir(os.path.join(path, 'checkpoints')) else []
  if step not in steps:
    raise ConfigError(f'{flag}: {path} has no checkpoint at step {step} (it has '
                      f'{", ".join(map(str, steps)) or "none"}); give one of its steps')
  return path, step


def create_state(model, tx, mesh, key) -> parallel.TrainState:
  """The initial state, replicated on ``mesh``.

  The variables come from a program of their own that depends on the model alone (not on
  the batch, the optimizer or its schedule), so that every run of a model shares one
  compiled initializer through the compilation cache (a ResNet's random initializers cost
  about a second to compile); the optimizer's state follows in a small program of its own.
  """
  replicated = parallel.replicated(mesh)

  def init_variables(key):
    params_key, dropout_key = jax.random.split(key)
    # One image: the variables' shapes do not depend on the batch.
    return model.init({'params': params_key, 'dropout': dropout_key},
                      jnp.zeros((1, 32, 32, 3), jnp.float32), train=False)

  def init_state(variables):
    params = variables['params']
    return parallel.TrainState(jnp.zeros((), jnp.int32), params,
                               variables.get('batch_stats', {}), tx.init(params),
                               parallel.Metrics.zeros())

  variables = jax.jit(init_variables, out_shardings=replicated)(key)
  return jax.jit(init_state, out_shardings=replicated)(variables)


class TrainingData(NamedTuple):
  """The training set and its normalization, replicated on every device of a mesh (the
  arguments the compiled step takes after the state)."""

  images: jax.Array
  labels: jax.Array
  mean: jax.Array
  std: jax.Array


def put_training_data(mesh, dataset: data.Dataset) -> TrainingData:
  """The training set on every device: the step draws its batches on device."""
  put = lambda a: parallel.put_replicated(mesh, a)
  return TrainingData(put(dataset.train_images), put(dataset.train_labels.astype(np.int32)),
                      put(np.asarray(dataset.mean, np.float32)),
                      put(np.asarray(dataset.std, np.float32)))


@dataclasses.dataclass(frozen=True)
class Setup:
  """A run checked against its workdir, data and devices, before anything compiles."""

  config: Config
  workdir: str
  devices: list[jax.Device]
  model: Any
  dataset: data.Dataset
  data_used: dict[str, Any]  # the data's fingerprint (`data_record`)
  plan: Plan | None  # None for a set-up without the config's own schedule (`prepare`)
  parent: tuple[str, int] | None  # --init_from as (workdir, step)

  @property
  def dtype(self) -> Any:
    return compute_dtype(self.config)


def prepare(config: Config, devices: list[jax.Device] | None = None, *,
            workdir: str | None = None, training: bool = True) -> Setup:
  """Checks ``config`` once, in the order that fails fastest (flags, devices, workdir and
  parent before the data loads; then the data and the run's length), and resolves it.

  ``devices``: the replicas' devices; default every device of the job (all hosts).
  ``workdir``: default ``config.workdir`` or its default. ``training=False`` is the set-up
  of an entry point that brings its own LR and does not resume (the range test): no `Plan`
  and no resumption or branch checks, only that a batch fits the training set.
  Raises ConfigError with a one-line message.
  """
  workdir = workdir or config.workdir or config.default_workdir
  devices = jax.devices() if devices is None else list(devices)
  check_config(config, len(devices))
  if why := models.conv.check_available(config.conv, devices[0].platform):
    raise ConfigError(why)
  check_workdir(workdir)
  parent = None
  if training:
    check_resumable(config, workdir)
    parent = check_parent(config, workdir)
  model = build_model(config)  # before loading the data, so that a typo fails at once
  dataset = data.load(config.dataset, config.data_dir, train_examples=config.train_examples,
                      seed=config.seed,
                      synthetic_size=(config.synthetic_examples, config.synthetic_examples // 5))
  data_used = data_record(dataset)
  train_size = len(dataset.train_labels)
  if not training:
    if config.batch_size > train_size:
      raise ConfigError(f'--batch_size={config.batch_size} is larger than the training set '
                        f'({train_size} examples)')
    return Setup(config, workdir, devices, model, dataset, data_used, None, None)
  check_same_data(workdir, data_used)
  p = _resolve(config, train_size, len(devices))
  if parent is not None:
    if parent[1] >= p.total_steps:
      raise ConfigError(f'--init_from={config.init_from}: the branch has {p.total_steps} '
                        f'steps, so it cannot start at step {parent[1]}; give more --steps')
    check_same_data(parent[0], data_used)
  return Setup(config, workdir, devices, model, dataset, data_used, p, parent)
