"""The training loop: a CIFAR model trained and evaluated with an lrsched schedule.

`train_and_evaluate(config)` is the whole run: `experiments.setup.prepare` checks every
setting and loads the data before anything compiles; then it resumes from the workdir's
newest readable checkpoint (or a branch's parent), and `Run.train` steps data-parallel over
every device (`experiments.parallel`), with a sync point (`Run.sync_point`: log, evaluate,
checkpoint) at every boundary.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from typing import Any

import jax
import numpy as np
import optax

import lrsched
from experiments import parallel
from experiments.checkpoint import Checkpointer, abstract_like
from experiments.config import Config
from experiments.metrics import MetricWriter, Progress
from experiments.setup import (
  DATA_FILE,
  Plan,
  Setup,
  TrainingData,
  create_state,
  prepare,
  put_training_data,
)
from lrsched.states import find_states

log = logging.getLogger(__name__)

SLOW_CPU_SECONDS = 3600.0
"""On CPU, an ETA above this gets a warning that names the CPU-sized presets."""
REFRESH_SECONDS = 20.0
"""The progress line is refreshed at least this often (wall clock), besides --log_every."""


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


def evaluation_params(opt_state: optax.OptState, params: Any) -> tuple[Any, bool]:
  """The parameters to evaluate: for a schedule-free optimizer its average x (the
  training parameters are the interpolation y), else ``params``; and whether they are x."""
  states = find_states(opt_state, optax.contrib.ScheduleFreeState)
  if not states:
    return params, False
  return optax.contrib.schedule_free_eval_params(states[0][1], params), True



# --------------------------------------------------------------------------------------
# The run.


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


def train_and_evaluate(config: Config, *, command: str | None = None,
                       devices: list[jax.Device] | None = None) -> dict[str, Any]:
  """Runs (or resumes) the training described by ``config``; returns the summary.

  ``devices``: the replicas' devices; default every device of the job (all hosts).
  """
  start_time = time.time()
  setup = prepare(config, devices)
  _log_plan(setup)
  # Everything is checked: from here on, compile and run.
  mesh = parallel.make_mesh(setup.devices)
  init_key, step_key = jax.random.split(jax.random.key(config.seed))
  state = create_state(setup.model, setup.plan.tx, mesh, init_key)
  # The writer and checkpointer are closed however the run ends (finished, stopped, or
  # an error such as TrainingDiverged); the final path closes the checkpointer first so
  # that its saves are on disk before summary.json says the run finished.
  with contextlib.ExitStack() as resources:
    checkpointer = Checkpointer(setup.workdir, config.keep_checkpoints)
    resources.callback(checkpointer.close)
    state, start_step, resumed = restore(setup, checkpointer, state)
    writer = MetricWriter(setup.workdir, enabled=jax.process_index() == 0,
                          resume_step=start_step)
    resources.callback(writer.close)
    write_run_files(setup)
    run = Run(setup, mesh, step_key, checkpointer, writer, start_step, resumed, start_time)
    state, stopped_by = run.train(state)
    checkpointer.close()
    run.progress.close()
    summary = run.summary(stopped_by, start_step if resumed else None, command)
    if stopped_by:
      log.warning('stopped by %s at step %d: checkpoint saved; run the same command to resume',
                  stopped_by, run.step)
    else:
      writer.summary(summary)
  return summary


def _log_plan(setup: Setup) -> None:
  p, devices = setup.plan, setup.devices
  log.info('%s: %d train / %d test examples, %d steps (%.1f epochs), %d devices (%s)',
           setup.dataset.source, p.train_size, len(setup.dataset.test_labels), p.total_steps,
           p.epoch_at(p.total_steps), len(devices), devices[0].device_kind)
  if len(p.phases) > 1:
    log.info('batch phases: %s', ', '.join(
        f'{ph.batch_size} from step {ph.first_step} (LR x{ph.lr_factor:.4g})' for ph in p.phases))


def restore(setup: Setup, checkpointer: Checkpointer, state: parallel.TrainState
            ) -> tuple[parallel.TrainState, int, bool]:
  """The state to start from, its step, and whether it is this run's own checkpoint: the
  workdir's newest readable one, else a branch's parent at its step, else ``state``."""
  restored = checkpointer.restore_latest(abstract_like(state))
  if restored is not None:
    log.info('resumed from the checkpoint at step %d in %s', restored[1], setup.workdir)
    return *restored, True
  if checkpointer.set_aside:
    log.warning('no readable checkpoint in %s (set aside: %s): training from step 0',
                checkpointer.directory, ', '.join(checkpointer.set_aside))
  if setup.parent is None:
    return state, 0, False
  # A branch: the parent's state at its step, then this run's schedule from there on.
  path, step = setup.parent
  parent_checkpoints = Checkpointer(path, setup.config.keep_checkpoints)
  try:
    state = parent_checkpoints.restore(
        step, abstract_like(state),
        f'--init_from={setup.config.init_from} needs the same model and optimizer state')
  finally:
    parent_checkpoints.close()
  log.info('branched off %s at step %d', path, step)
  return state, step, False


def write_run_files(setup: Setup) -> None:
  """``config.json`` and `DATA_FILE` in the workdir (process 0): what a resumption and a
  branch are checked against."""
  if jax.process_index() != 0:
    return
  os.makedirs(setup.workdir, exist_ok=True)
  with open(os.path.join(setup.workdir, 'config.json'), 'w') as f:
    f.write(setup.config.to_json())
  with open(os.path.join(setup.workdir, DATA_FILE), 'w') as f:
    json.dump(setup.data_used, f, indent=2)


class Run:
  """The training loop and what it carries between sync points: the compiled steps, the
  best accuracy, the last checkpoint, the progress line."""

  def __init__(self, setup: Setup, mesh, step_key: jax.Array, checkpointer: Checkpointer,
               writer: MetricWriter, start_step: int, resumed: bool, start_time: float):
    self.setup, self.config, self.plan, self.mesh = setup, setup.config, setup.plan, mesh
    self.step_key, self.checkpointer, self.writer = step_key, checkpointer, writer
    self.step = start_step
    self.start_time = start_time
    record = checkpointer.record(start_step) if resumed else {}
    if len(writer.evaluations) < record.get('evaluations', 0):
      log.warning('%s holds %d evaluations up to step %d, the checkpoint counted %d: rows were '
                  'lost; best_test_accuracy still counts them (from the checkpoint)',
                  writer.path, len(writer.evaluations), start_step, record['evaluations'])
    self.earlier_s = record.get('elapsed_s', 0.0)  # the processes before this one
    self.best_accuracy = max(writer.best('test_accuracy'),
                             record.get('best_test_accuracy', -1.0))
    self.saved_step = start_step if resumed else None
    self.compile_s: float | None = None
    self.last_time, self.last_step = time.time(), start_step
    self.progress = Progress(self.plan.total_steps, enabled=jax.process_index() == 0)
    self.data = put_training_data(mesh, setup.dataset)
    self.evaluate = make_state_evaluation(setup, mesh, self.data, step_key)
    self.eval_due, self.next_eval = evaluation_cadence(self.config, self.plan)
    self._train_steps: dict[int, Any] = {}

  def train(self, state: parallel.TrainState) -> tuple[parallel.TrainState, str | None]:
    """Trains from ``self.step`` to the end, or to a stop (SIGTERM, Ctrl-C: saved);
    returns the state and the signal's name if stopped."""
    p, config = self.plan, self.config
    single_process = jax.process_count() == 1
    warn_slow = self.setup.devices[0].platform == 'cpu'
    in_flight: list[jax.Array] = []
    stopped_by = None
    with StopRequest() as stop:
      while self.step < p.total_steps:
        step, phase = self.step, p.phase_at(self.step)
        phase_end = (p.phases[phase + 1].first_step if phase + 1 < len(p.phases)
                     else p.total_steps)
        boundary = min(phase_end, self.next_eval(step),
                       _next_multiple(step, config.checkpoint_every),
                       _next_multiple(step, config.log_every))
        n = min(config.steps_per_dispatch, boundary - step)
        if step == p.phases[phase].first_step and phase > 0:
          self.progress.note(f'step {step}: batch size {p.phases[phase - 1].batch_size} -> '
                             f'{p.phases[phase].batch_size}')
        t0 = time.time()
        state = self.train_step(phase)(state, *self.data, n)
        self.step = step = step + n
        # The host stays at most two dispatches ahead of the device, so that a stop (and a
        # progress line) comes within a step or two, not after a long queue of them.
        in_flight.append(state.step + 0)  # a copy: the state itself is donated to the next
        if len(in_flight) > 2:
          jax.block_until_ready(in_flight.pop(0))
        if self.compile_s is None:
          jax.block_until_ready(state.step)
          self.compile_s = time.time() - t0
          self.last_time, self.last_step = time.time(), step
          self.progress.start_at(step)
          self.progress.note(f'step {step}: compiled and ran the first dispatch in '
                             f'{self.compile_s:.1f} s')
        # Evaluations, checkpoints and phase ends are boundaries, hence sync points: a stop
        # between them skips nothing that was due.
        at_sync_point = step == boundary or step == p.total_steps
        if at_sync_point:
          state = self.sync_point(state)
        elif single_process and time.time() - self.last_time > REFRESH_SECONDS:
          self.refresh(state)  # the progress line on a wall-clock cadence too
        if warn_slow and self.progress.eta_s > SLOW_CPU_SECONDS:
          warn_slow = False
          log.warning('on this CPU the run needs about %.1f more hours at the measured speed; '
                      'a run sized for CPUs: --preset=cpu-quickstart (minutes), or python -m '
                      'experiments.compare --suite=cpu-budget (about 2 hours)',
                      self.progress.eta_s / 3600)
        if stop.requested(at_sync_point=at_sync_point) and step < p.total_steps:
          stopped_by = signal.Signals(stop.signal or signal.SIGTERM).name
          break
      # Still under StopRequest: a repeated SIGTERM cannot cut the save short.
      if stopped_by is not None and self.saved_step != self.step:
        self.save(state)
    return state, stopped_by

  def train_step(self, phase: int):
    """The compiled steps of a batch phase, made when first used."""
    if phase not in self._train_steps:
      ph = self.plan.phases[phase]
      self._train_steps[phase] = parallel.make_train_steps(
          self.setup.model, self.plan.tx, self.mesh, parallel.StepConfig(
              ph.batch_size, self.config.augment, self.setup.dtype,
              first_step=ph.first_step, first_example=ph.first_example), self.step_key)
    return self._train_steps[phase]

  def elapsed(self) -> float:
    """The run's time to here over all its processes."""
    return self.earlier_s + time.time() - self.start_time

  def sync_point(self, state: parallel.TrainState) -> parallel.TrainState:
    """After ``self.step`` updates: reads the (few) scalars, checks for divergence, logs, and
    evaluates and saves when due. The final checkpoint follows the final evaluation: a run
    resumed from it has nothing left to do."""
    p, step, lr_schedule = self.plan, self.step, self.plan.lr_schedule
    hp = lrsched.hyperparams(state.opt_state)
    metrics = jax.device_get(state.metrics)
    if metrics.first_nonfinite_step >= 0:
      bad = int(metrics.first_nonfinite_step)
      raise TrainingDiverged(bad, float(lr_schedule(bad)), last_checkpoint=self.saved_step)
    mom = hp.get('momentum', hp.get('b1'))  # b1: the schedule-free interpolation
    train_loss = float(metrics.loss_sum / max(metrics.count, 1))
    images_per_sec = self._images_per_sec()
    self.progress.update(step, lr=float(hp['learning_rate']), loss=train_loss,
                         images_per_sec=images_per_sec)
    row = {'step': step, 'epoch': p.epoch_at(step), 'lr': float(hp['learning_rate']),
           'momentum': None if mom is None else float(mom),
           'batch_size': p.phases[p.phase_at(step - 1)].batch_size,
           'examples': p.examples_at(step), 'train_loss': train_loss,
           'train_accuracy': float(metrics.correct / max(metrics.count, 1)),
           'images_per_sec': images_per_sec}
    if not (self.eval_due(step) or step == p.total_steps):
      self.writer.train({**row, 'elapsed_s': self.elapsed()})
    else:
      test_loss, test_accuracy = (float(v) for v in self.evaluate(state))
      if not math.isfinite(test_loss):
        # Step t diverges when the loss of the parameters after t updates is NaN or inf,
        # as the step's own record counts it (parallel.Metrics): here t = step.
        raise TrainingDiverged(step, float(lr_schedule(step - 1)),
                               'the test loss was NaN or inf at',
                               last_checkpoint=self.saved_step)
      self.best_accuracy = max(self.best_accuracy, test_accuracy)
      self.writer.evaluation({**row, 'test_loss': test_loss, 'test_accuracy': test_accuracy,
                              'elapsed_s': self.elapsed()})
      self.progress.note(f'step {step}: test accuracy {test_accuracy:.4f}, loss '
                         f'{test_loss:.4f}')
      state = state._replace(metrics=jax.device_put(parallel.Metrics.zeros(),
                                                    parallel.replicated(self.mesh)))
    if ((step % self.config.checkpoint_every == 0 or step == p.total_steps)
        and self.saved_step != step):
      self.save(state)
    self.last_time, self.last_step = time.time(), step
    return state

  def refresh(self, state: parallel.TrainState) -> None:
    """The progress line between sync points (reads the metrics; changes nothing)."""
    metrics = jax.device_get(state.metrics)
    self.progress.update(self.step, lr=float(self.plan.lr_schedule(self.step - 1)),
                         loss=float(metrics.loss_sum / max(metrics.count, 1)),
                         images_per_sec=self._images_per_sec())
    self.last_time, self.last_step = time.time(), self.step

  def _images_per_sec(self) -> float:
    seen = self.plan.examples_at(self.step) - self.plan.examples_at(self.last_step)
    return seen / max(time.time() - self.last_time, 1e-9)

  def save(self, state: parallel.TrainState) -> None:
    """A checkpoint at ``self.step``; never of a diverged state."""
    if not parallel.all_finite(state.params):
      raise TrainingDiverged(self.step - 1, float(self.plan.lr_schedule(self.step - 1)),
                             'the parameters were NaN or inf after the update of',
                             last_checkpoint=self.saved_step)
    self.checkpointer.save(self.step, state, {'best_test_accuracy': self.best_accuracy,
                                              'evaluations': len(self.writer.evaluations),
                                              'elapsed_s': self.elapsed()})
    self.saved_step = self.step

  def summary(self, stopped_by: str | None, resumed_from: int | None,
              command: str | None) -> dict[str, Any]:
    """What ``summary.json`` says of the run (and `train_and_evaluate` returns)."""
    p, step, final = self.plan, self.step, self.writer.last_evaluation()
    devices = self.setup.devices
    return {
        'status': 'interrupted' if stopped_by else 'finished',
        'steps': step, 'total_steps': p.total_steps, 'epochs': p.epoch_at(step),
        'final_test_accuracy': final.get('test_accuracy') if final else None,
        'best_test_accuracy': self.best_accuracy if self.best_accuracy >= 0 else None,
        'final_test_loss': final.get('test_loss') if final else None,
        # The run's time to here over all its processes (up to the checkpoint each resumed
        # from), and this process's alone.
        'wall_time_s': self.elapsed(),
        'this_process_s': time.time() - self.start_time, 'compile_s': self.compile_s,
        'resumed_from_step': resumed_from or None,
        'parent': (None if self.setup.parent is None else
                   {'workdir': os.path.abspath(self.setup.parent[0]),
                    'step': self.setup.parent[1]}),
        'device_kind': devices[0].device_kind, 'device_count': len(devices),
        'process_count': jax.process_count(), 'data': self.setup.dataset.source,
        'schedule': repr(p.lr_schedule), 'momentum': repr(p.momentum),
        'batch_phases': [ph._asdict() for ph in p.phases],
        'command': command or ' '.join(sys.argv), 'jax_version': jax.__version__,
    }


def evaluation_cadence(config: Config, p: Plan):
  """``(eval_due(step), next_eval(step))``: whether the sync point after ``step`` updates
  evaluates, and the next step that does."""
  if config.eval_every:
    return (lambda step: step % config.eval_every == 0,
            lambda step: _next_multiple(step, config.eval_every))
  # Once per epoch, whatever the batch phase: after the dispatch in which an epoch ends,
  # so at the epoch's end with K = 1 steps per dispatch, and at the next multiple of K
  # otherwise (dispatches start at multiples of K; an evaluation never changes training).
  k = config.steps_per_dispatch
  epochs_done = lambda step: p.examples_at(step) // p.train_size
  return (lambda step: epochs_done(step) > epochs_done((step - 1) // k * k),
          lambda step: _next_multiple(p.next_epoch_end(step) - 1, k))


def make_state_evaluation(setup: Setup, mesh, data: TrainingData, step_key: jax.Array):
  """``evaluate(state) -> (test loss, test accuracy)``: of the schedule-free average (its
  batch-norm statistics recomputed there) or of the training parameters."""
  dataset, config = setup.dataset, setup.config
  evaluate = make_test_evaluation(setup.model, mesh, setup.dtype, dataset.test_images,
                                  dataset.test_labels, data.mean, data.std)
  if not config.optimizer.startswith('schedule_free_'):
    return lambda state: evaluate(state.params, state.batch_stats)
  recalibrate = parallel.make_bn_recalibration(
      setup.model, mesh, setup.dtype, setup.plan.local_batches[0], config.bn_momentum,
      recalibration_sample(dataset.train_images, setup.plan.phases[0].batch_size, config.seed),
      config.augment, jax.random.fold_in(step_key, BN_RECALIBRATION_KEY))

  def evaluate_state(state: parallel.TrainState) -> tuple[jax.Array, jax.Array]:
    params, averaged = evaluation_params(state.opt_state, state.params)
    stats = recalibrate(params, state.batch_stats, data.mean, data.std) if averaged else \
        state.batch_stats
    return evaluate(params, stats)
  return evaluate_state


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
