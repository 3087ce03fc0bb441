"""Training and evaluation of a CIFAR model with an lrsched schedule.

`train_and_evaluate(config)` is the whole run: it checks every setting and loads the data
before compiling anything, resumes from the workdir's newest readable checkpoint, trains
data-parallel over every device (`experiments.parallel`), evaluates, logs and checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import math
import os
import re
import signal
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lrsched
from experiments import data, models, parallel
from experiments.checkpoint import Checkpointer, abstract_like
from experiments.config import Config, ConfigError
from experiments.metrics import MetricWriter, Progress
from experiments.phases import (
  BatchScaledSchedule,
  Phase,
  check_dispatch,
  examples_at,
  first_step_reaching,
  phase_index,
  resolve_phases,
)
from lrsched.states import find_states

log = logging.getLogger(__name__)

SLOW_CPU_SECONDS = 3600.0
"""On CPU, an ETA above this gets a warning that names the CPU-sized presets."""
REFRESH_SECONDS = 20.0
"""The progress line is refreshed at least this often (wall clock), besides --log_every."""
# Fields that may change between a run and its resumption (they don't change the result).
RESUMABLE_CHANGES = ('log_every', 'checkpoint_every', 'keep_checkpoints', 'eval_every',
                     'steps_per_dispatch', 'workdir', 'data_dir')


class Interrupted(KeyboardInterrupt):
  """A second Ctrl-C while a stop was already under way; the message says what was kept."""


class TrainingDiverged(RuntimeError):
  """The loss or the parameters became NaN or inf; the message names the step and the LR."""

  def __init__(self, step: int, lr: float, what: str = 'the loss or the update became NaN or '
               'inf at', *, last_checkpoint: int | None = None):
    kept = ('no checkpoint was written before it' if last_checkpoint is None else
            f'the last good checkpoint (step {last_checkpoint}) is kept')
    super().__init__(f'{what} step {step} (lr={lr:.6g}); stopped without saving the '
                     f'diverged state: {kept}. Lower the LR, or shorten its warmup')
    self.step, self.lr = step, lr


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


def resolve_steps(config: Config, train_size: int) -> int:
  """The run's number of optimizer steps over all its batch phases (`resolve_phases`)."""
  return resolve_phases(config, train_size)[1]


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


def evaluation_params(opt_state: optax.OptState, params: Any) -> tuple[Any, bool]:
  """The parameters to evaluate: for a schedule-free optimizer its average x (the
  training parameters are the interpolation y), else ``params``; and whether they are x."""
  states = find_states(opt_state, optax.contrib.ScheduleFreeState)
  if not states:
    return params, False
  return optax.contrib.schedule_free_eval_params(states[0][1], params), True


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
                               dropout_rate=config.dropout_rate, shortcut=config.shortcut)
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
  # A field added since the run started reads as its default there.
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


# --------------------------------------------------------------------------------------
# The run.


def create_state(model, tx, mesh, key, local_batch: int) -> parallel.TrainState:
  def init(key):
    params_key, dropout_key = jax.random.split(key)
    variables = model.init({'params': params_key, 'dropout': dropout_key},
                           jnp.zeros((local_batch, 32, 32, 3), jnp.float32), train=False)
    params, batch_stats = variables['params'], variables.get('batch_stats', {})
    return parallel.TrainState(jnp.zeros((), jnp.int32), params, batch_stats,
                               tx.init(params), parallel.Metrics.zeros())

  return jax.jit(init, out_shardings=parallel.replicated(mesh))(key)


class StopRequest:
  """SIGTERM (preemption) and Ctrl-C set a flag; the loop saves and exits after the current
  dispatch (with several processes, at the next sync point: at most --log_every steps)."""

  def __init__(self):
    self.signal: int | None = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.signal is None:
      self.signal = signum
      print(f'\n{signal.Signals(signum).name}: stopping after the running step, then saving '
            'a checkpoint' + (' (Ctrl-C again: quit without saving)'
                              if signum == signal.SIGINT else ''), file=sys.stderr, flush=True)
    elif signum == signal.SIGINT:  # a second Ctrl-C: the user wants out now
      raise Interrupted('interrupted twice: stopped without saving this checkpoint; the '
                        'previous one is kept (run the same command to resume)')
    # A repeated SIGTERM (schedulers send several) changes nothing: the save is under way.

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def requested(self, *, at_sync_point: bool) -> bool:
    """Whether to stop now. With several processes, every host must stop at the same step:
    they agree only at the loop's sync points, since agreeing is a collective that waits
    for the dispatched steps (elsewhere it would stall the loop at every dispatch)."""
    flag = self.signal is not None
    if jax.process_count() > 1:
      if not at_sync_point:
        return False
      from jax.experimental import multihost_utils
      flag = bool(np.any(multihost_utils.process_allgather(np.array(flag))))
    return flag


@dataclasses.dataclass(frozen=True)
class Setup:
  """A run checked against its workdir, data and devices, before anything compiles."""

  config: Config
  workdir: str
  devices: list[jax.Device]
  model: Any
  dtype: Any
  dataset: data.Dataset
  data_used: dict[str, Any]  # the data's fingerprint (`data_record`)
  plan: Plan
  parent: tuple[str, int] | None  # --init_from as (workdir, step)


def prepare(config: Config, devices: list[jax.Device] | None = None) -> Setup:
  """Checks ``config`` once, in the order that fails fastest (flags, devices, workdir and
  parent before the data loads; then the data and the run's length), and resolves it.

  ``devices``: the replicas' devices; default every device of the job (all hosts).
  Raises ConfigError with a one-line message.
  """
  workdir = config.workdir or config.default_workdir
  devices = jax.devices() if devices is None else list(devices)
  check_config(config, len(devices))
  check_workdir(workdir)
  check_resumable(config, workdir)
  parent = check_parent(config, workdir)
  model = build_model(config)  # before loading the data, so that a typo fails at once
  dataset = data.load(config.dataset, config.data_dir, train_examples=config.train_examples,
                      seed=config.seed,
                      synthetic_size=(config.synthetic_examples, config.synthetic_examples // 5))
  data_used = data_record(dataset)
  check_same_data(workdir, data_used)
  p = _resolve(config, len(dataset.train_labels), len(devices))
  if parent is not None:
    if parent[1] >= p.total_steps:
      raise ConfigError(f'--init_from={config.init_from}: the branch has {p.total_steps} '
                        f'steps, so it cannot start at step {parent[1]}; give more --steps')
    check_same_data(parent[0], data_used)
  return Setup(config, workdir, devices, model, compute_dtype(config), dataset, data_used, p,
               parent)


def train_and_evaluate(config: Config, *, command: str | None = None,
                       devices: list[jax.Device] | None = None) -> dict[str, Any]:
  """Runs (or resumes) the training described by ``config``; returns the summary.

  ``devices``: the replicas' devices; default every device of the job (all hosts).
  """
  start_time = time.time()
  setup = prepare(config, devices)
  workdir, devices, model, dtype = setup.workdir, setup.devices, setup.model, setup.dtype
  dataset, data_used, p, parent = setup.dataset, setup.data_used, setup.plan, setup.parent
  is_primary = jax.process_index() == 0
  num_devices = len(devices)
  train_size = p.train_size
  total_steps, lr_schedule, momentum = p.total_steps, p.lr_schedule, p.momentum
  log.info('%s: %d train / %d test examples, %d steps (%.1f epochs), %d devices (%s)',
           dataset.source, train_size, len(dataset.test_labels), total_steps,
           p.epoch_at(total_steps), num_devices, devices[0].device_kind)
  if len(p.phases) > 1:
    log.info('batch phases: %s', ', '.join(
        f'{ph.batch_size} from step {ph.first_step} (LR x{ph.lr_factor:.4g})' for ph in p.phases))

  if config.eval_every:
    eval_due = lambda step: step % config.eval_every == 0
    next_eval = lambda step: _next_multiple(step, config.eval_every)
  else:
    # Once per epoch, whatever the batch phase: after the dispatch in which an epoch ends,
    # so at the epoch's end with K = 1 steps per dispatch, and at the next multiple of K
    # otherwise (dispatches start at multiples of K; an evaluation never changes training).
    k = config.steps_per_dispatch
    epochs_done = lambda step: p.examples_at(step) // train_size
    eval_due = lambda step: epochs_done(step) > epochs_done((step - 1) // k * k)
    next_eval = lambda step: _next_multiple(p.next_epoch_end(step) - 1, k)

  # Everything is checked: from here on, compile and run.
  mesh = parallel.make_mesh(devices)
  init_key, step_key = jax.random.split(jax.random.key(config.seed))
  state = create_state(model, p.tx, mesh, init_key, p.local_batches[0])
  # The writer and checkpointer are closed however the run ends (finished, stopped, or
  # an error such as TrainingDiverged); the final path closes the checkpointer first so
  # that its saves are on disk before summary.json says the run finished.
  with contextlib.ExitStack() as resources:
    checkpointer = Checkpointer(workdir, config.keep_checkpoints)
    resources.callback(checkpointer.close)
    restored = checkpointer.restore_latest(abstract_like(state))
    start_step = 0
    if restored is not None:
      state, start_step = restored
      log.info('resumed from the checkpoint at step %d in %s', start_step, workdir)
    elif checkpointer.set_aside:
      log.warning('no readable checkpoint in %s (set aside: %s): training from step 0',
                  checkpointer.directory, ', '.join(checkpointer.set_aside))
    if restored is None and parent is not None:
      # A branch: the parent's state at its step, then this run's schedule from there on.
      parent_checkpoints = Checkpointer(parent[0], config.keep_checkpoints)
      try:
        state = parent_checkpoints.restore(
            parent[1], abstract_like(state),
            f'--init_from={config.init_from} needs the same model and optimizer state')
      finally:
        parent_checkpoints.close()
      start_step = parent[1]
      log.info('branched off %s at step %d', parent[0], start_step)
    writer = MetricWriter(workdir, enabled=is_primary, resume_step=start_step)
    resources.callback(writer.close)
    saved_record = checkpointer.record(start_step) if restored is not None else {}
    if len(writer.evaluations) < saved_record.get('evaluations', 0):
      log.warning('%s holds %d evaluations up to step %d, the checkpoint counted %d: rows were '
                  'lost; best_test_accuracy still counts them (from the checkpoint)',
                  writer.path, len(writer.evaluations), start_step, saved_record['evaluations'])
    if is_primary:
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, 'config.json'), 'w') as f:
        f.write(config.to_json())
      with open(os.path.join(workdir, DATA_FILE), 'w') as f:
        json.dump(data_used, f, indent=2)

    train_images = parallel.put_replicated(mesh, dataset.train_images)
    train_labels = parallel.put_replicated(mesh, dataset.train_labels.astype(np.int32))
    mean = parallel.put_replicated(mesh, np.asarray(dataset.mean, np.float32))
    std = parallel.put_replicated(mesh, np.asarray(dataset.std, np.float32))
    evaluate = make_test_evaluation(model, mesh, dtype, dataset.test_images,
                                    dataset.test_labels, mean, std)
    if config.optimizer.startswith('schedule_free_'):
      recalibrate = parallel.make_bn_recalibration(
          model, mesh, dtype, p.local_batches[0], config.bn_momentum,
          recalibration_sample(dataset.train_images, p.phases[0].batch_size, config.seed),
          config.augment, jax.random.fold_in(step_key, BN_RECALIBRATION_KEY))

    def evaluate_state(state: parallel.TrainState) -> tuple[jax.Array, jax.Array]:
      params, averaged = evaluation_params(state.opt_state, state.params)
      stats = recalibrate(params, state.batch_stats, mean, std) if averaged else state.batch_stats
      return evaluate(params, stats)
    train_steps: dict[int, Any] = {}  # one compiled step per batch phase, made when first used

    def train_fn(phase: int):
      if phase not in train_steps:
        ph = p.phases[phase]
        train_steps[phase] = parallel.make_train_steps(
            model, p.tx, mesh, parallel.StepConfig(
                ph.batch_size, config.augment, dtype,
                first_step=ph.first_step, first_example=ph.first_example), step_key)
      return train_steps[phase]

    def save(step: int, state: parallel.TrainState) -> None:
      if not parallel.all_finite(state.params):  # never checkpoint a diverged state
        raise TrainingDiverged(step - 1, float(lr_schedule(step - 1)),
                               'the parameters were NaN or inf after the update of',
                               last_checkpoint=saved_step)
      checkpointer.save(step, state, {'best_test_accuracy': best_accuracy,
                                      'evaluations': len(writer.evaluations),
                                      'elapsed_s': elapsed()})

    progress = Progress(total_steps, enabled=is_primary)
    step = start_step
    best_accuracy = max(writer.best('test_accuracy'),
                        saved_record.get('best_test_accuracy', -1.0))
    earlier_s = saved_record.get('elapsed_s', 0.0)  # the processes before this one
    elapsed = lambda: earlier_s + time.time() - start_time  # the run's time over its processes
    last = {'time': time.time(), 'step': step}
    compile_s = None
    stopped_by = None
    saved_step = start_step if restored is not None else None

    def sync_point(step: int, state: parallel.TrainState) -> parallel.TrainState:
      """After ``step`` updates: reads the (few) scalars, checks for divergence, logs, and
      evaluates and saves when due."""
      nonlocal best_accuracy, saved_step
      hp = lrsched.hyperparams(state.opt_state)
      metrics = jax.device_get(state.metrics)
      if metrics.first_nonfinite_step >= 0:
        bad = int(metrics.first_nonfinite_step)
        raise TrainingDiverged(bad, float(lr_schedule(bad)), last_checkpoint=saved_step)
      now = time.time()
      images_per_sec = ((p.examples_at(step) - p.examples_at(last['step']))
                        / max(now - last['time'], 1e-9))
      lr_now = float(hp['learning_rate'])
      mom = hp.get('momentum', hp.get('b1'))  # b1: the schedule-free interpolation
      mom_now = None if mom is None else float(mom)
      train_loss = float(metrics.loss_sum / max(metrics.count, 1))
      progress.update(step, lr=lr_now, loss=train_loss, images_per_sec=images_per_sec)
      row = {'step': step, 'epoch': p.epoch_at(step), 'lr': lr_now, 'momentum': mom_now,
             'batch_size': p.phases[p.phase_at(step - 1)].batch_size,
             'examples': p.examples_at(step), 'train_loss': train_loss,
             'train_accuracy': float(metrics.correct / max(metrics.count, 1)),
             'images_per_sec': images_per_sec}
      if not (eval_due(step) or step == total_steps):
        writer.train({**row, 'elapsed_s': elapsed()})
      else:
        test_loss, test_accuracy = (float(v) for v in evaluate_state(state))
        if not math.isfinite(test_loss):
          # Step t diverges when the loss of the parameters after t updates is NaN or inf,
          # as the step's own record counts it (parallel.Metrics): here t = step.
          raise TrainingDiverged(step, float(lr_schedule(step - 1)),
                                 'the test loss was NaN or inf at', last_checkpoint=saved_step)
        best_accuracy = max(best_accuracy, test_accuracy)
        writer.evaluation({**row, 'test_loss': test_loss, 'test_accuracy': test_accuracy,
                           'elapsed_s': elapsed()})
        progress.note(f'step {step}: test accuracy {test_accuracy:.4f}, loss {test_loss:.4f}')
        state = state._replace(metrics=jax.device_put(parallel.Metrics.zeros(),
                                                      parallel.replicated(mesh)))
      if (step % config.checkpoint_every == 0 or step == total_steps) and saved_step != step:
        save(step, state)
        saved_step = step
      last.update(time=time.time(), step=step)
      return state

    def refresh(step: int, state: parallel.TrainState) -> None:
      """The progress line between sync points (reads the metrics; changes nothing)."""
      metrics = jax.device_get(state.metrics)
      now = time.time()
      progress.update(step, lr=float(lr_schedule(step - 1)),
                      loss=float(metrics.loss_sum / max(metrics.count, 1)),
                      images_per_sec=((p.examples_at(step) - p.examples_at(last['step']))
                                      / max(now - last['time'], 1e-9)))
      last.update(time=now, step=step)

    # Refreshing between sync points is a host read: with several processes every host must
    # take the same path, so only the deterministic cadence (--log_every) is used there.
    single_process = jax.process_count() == 1
    on_cpu, warned_slow = devices[0].platform == 'cpu', False
    in_flight: list[jax.Array] = []
    # The final checkpoint is written after the final evaluation: a run resumed from it has
    # nothing left to do.
    with StopRequest() as stop:
      while step < total_steps:
        phase = p.phase_at(step)
        phase_end = (p.phases[phase + 1].first_step if phase + 1 < len(p.phases)
                     else total_steps)
        boundary = min(phase_end, next_eval(step), _next_multiple(step, config.checkpoint_every),
                       _next_multiple(step, config.log_every))
        n = min(config.steps_per_dispatch, boundary - step)
        if step == p.phases[phase].first_step and phase > 0:
          progress.note(f'step {step}: batch size {p.phases[phase - 1].batch_size} -> '
                        f'{p.phases[phase].batch_size}')
        t0 = time.time()
        state = train_fn(phase)(state, train_images, train_labels, mean, std, n)
        step += n
        # The host stays at most two dispatches ahead of the device, so that a stop (and a
        # progress line) comes within a step or two, not after a long queue of them.
        in_flight.append(state.step + 0)  # a copy: the state itself is donated to the next
        if len(in_flight) > 2:
          jax.block_until_ready(in_flight.pop(0))
        if compile_s is None:
          jax.block_until_ready(state.step)
          compile_s = time.time() - t0
          last.update(time=time.time(), step=step)
          progress.start_at(step)
          progress.note(f'step {step}: compiled and ran the first dispatch in {compile_s:.1f} s')
        # Evaluations, checkpoints and phase ends are boundaries, hence sync points: a stop
        # between them skips nothing that was due.
        at_sync_point = step == boundary or step == total_steps
        if at_sync_point:
          state = sync_point(step, state)
        elif single_process and time.time() - last['time'] > REFRESH_SECONDS:
          refresh(step, state)  # the progress line on a wall-clock cadence too
        if not warned_slow and progress.eta_s > SLOW_CPU_SECONDS and on_cpu:
          warned_slow = True
          log.warning('on this CPU the run needs about %.1f more hours at the measured speed; '
                      'a run sized for CPUs: --preset=cpu-quickstart (minutes), or python -m '
                      'experiments.compare --suite=cpu-budget (about 2 hours)',
                      progress.eta_s / 3600)
        if stop.requested(at_sync_point=at_sync_point) and step < total_steps:
          stopped_by = signal.Signals(stop.signal or signal.SIGTERM).name
          break
      if stopped_by is not None and saved_step != step:
        save(step, state)
    checkpointer.close()
    progress.close()

    final = writer.last_evaluation()
    summary = {
        'status': 'interrupted' if stopped_by else 'finished',
        'steps': step, 'total_steps': total_steps, 'epochs': p.epoch_at(step),
        'final_test_accuracy': final.get('test_accuracy') if final else None,
        'best_test_accuracy': best_accuracy if best_accuracy >= 0 else None,
        'final_test_loss': final.get('test_loss') if final else None,
        # The run's time to here over all its processes (up to the checkpoint each resumed
        # from), and this process's alone.
        'wall_time_s': elapsed(),
        'this_process_s': time.time() - start_time, 'compile_s': compile_s,
        'resumed_from_step': (start_step or None) if restored is not None else None,
        'parent': (None if parent is None else
                   {'workdir': os.path.abspath(parent[0]), 'step': parent[1]}),
        'device_kind': devices[0].device_kind, 'device_count': num_devices,
        'process_count': jax.process_count(), 'data': dataset.source,
        'schedule': repr(lr_schedule), 'momentum': repr(momentum),
        'batch_phases': [ph._asdict() for ph in p.phases],
        'command': command or ' '.join(sys.argv), 'jax_version': jax.__version__,
    }
    if stopped_by:
      log.warning('stopped by %s at step %d: checkpoint saved; run the same command to resume',
                  stopped_by, step)
    else:
      writer.summary(summary)
  return summary


def make_test_evaluation(model, mesh, dtype: Any, images: np.ndarray, labels: np.ndarray,
                         mean: jax.Array, std: jax.Array):
  """``evaluate(params, batch_stats) -> (loss, accuracy)`` on these test examples, sharded
  over the mesh (padded and masked; `parallel.make_eval_step`)."""
  chunk = eval_chunk(len(labels), mesh.size)
  test = parallel.pad_for_eval(images, labels.astype(np.int32), mesh.size, chunk)
  arrays = [parallel.put_sharded(mesh, a) for a in test]
  step = parallel.make_eval_step(model, mesh, dtype, chunk)
  return lambda params, batch_stats: step(params, batch_stats, *arrays, mean, std)


BN_RECALIBRATION_BATCHES = 32
"""Training batches over which a schedule-free run's batch-norm statistics are recomputed at
its averaged parameters before each evaluation (`parallel.make_bn_recalibration`)."""
BN_RECALIBRATION_KEY = 1  # folded into the step key: an augmentation key of its own


def recalibration_sample(train_images: np.ndarray, batch_size: int, seed: int) -> np.ndarray:
  """A fixed random sample of whole global batches of training images: up to
  `BN_RECALIBRATION_BATCHES` of them (one, drawn with replacement, from a training set
  smaller than a batch)."""
  size = len(train_images)
  batches = min(BN_RECALIBRATION_BATCHES, size // batch_size)
  rng = np.random.default_rng(seed)
  if batches == 0:
    return train_images[np.sort(rng.choice(size, batch_size, replace=True))]
  return train_images[np.sort(rng.choice(size, batches * batch_size, replace=False))]


def eval_chunk(test_size: int, num_devices: int, target: int = 500) -> int:
  """Per-replica evaluation chunk: about ``target`` examples, with little padding."""
  per_device = -(-test_size // num_devices)
  chunks = -(-per_device // target)
  return -(-per_device // chunks)


def _next_multiple(step: int, every: int) -> int:
  return (step // every + 1) * every
