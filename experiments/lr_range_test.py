r"""The LR range test on CIFAR with our models (Smith 2017, §3.3; Smith & Topin, Fig. 2b).

  python -m experiments.lr_range_test --preset=sc-fig1a-clr --data_dir=data/cifar10-jpeg.npz \
      --min_lr=0 --max_lr=3 --num_steps=5000 --workdir=runs/range-test
  python -m experiments.lr_range_test --model=resnet20 --dataset=synthetic --batch_size=128 \
      --num_steps=200 --mode=exp --min_lr=1e-4 --max_lr=10 --eval_every=10

Trains the model (the training flags of `experiments.cifar`: model, data, batch, optimizer,
momentum, weight decay, batch-norm settings, augmentation, ``--preset``) while the LR
sweeps from ``--min_lr`` to ``--max_lr``, linearly (``--mode=linear``, the paper's tests,
e.g. 0 -> 3) or geometrically (``--mode=exp``, fastai's). It records the training loss of
every step and, every ``--eval_every`` steps, the accuracy on a fixed random subset of
``--test_examples`` test images (Fig. 2b), then prints the suggested LRs: Smith's CLR bounds
and the super-convergence bounds (both from the peak of the test accuracy), and fastai's
valley, steep and minimum (from the smoothed loss). It writes ``range_test.json`` and
``range_test.png`` to ``--workdir``.

The sweep runs the trainer's compiled step (`experiments.parallel`: the same program, data
stream and augmentation as `experiments.cifar`, one step per dispatch), so a step of the
test costs what a training step costs, on CPU too. It prints a progress line (LR, smoothed
loss, images/s, ETA) every ``--log_every`` steps and the test accuracy at every test point,
and rewrites ``range_test.json`` as it goes: an interrupted test leaves its curve. It runs
on every local device of this process (one replica each); it is not multi-host.
``--schedule``, ``--lr``, ``--steps``, ``--epochs``, ``--batch_schedule`` and
``--steps_per_dispatch`` do not apply.

The momentum is constant: 0.9 unless ``--momentum`` or the preset says. A preset with
``momentum='cyclical'`` (Smith 2018's 1cycle rows) runs at its maximum momentum, 0.95, as
Smith's range tests do at the high momentum; an explicit ``--momentum`` wins.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from typing import Any

from absl import app, flags

from experiments import allocator, cifar
from experiments.config import Config, ConfigError

log = logging.getLogger(__name__)

_MIN_LR = flags.DEFINE_float('min_lr', 0.0, 'The LR of the first step (> 0 for --mode=exp).')
_MAX_LR = flags.DEFINE_float('max_lr', 3.0, 'The LR of the last step.')
_MODE = flags.DEFINE_enum('mode', 'linear', ['linear', 'exp'],
                          "The sweep: 'linear' (Smith's tests) or 'exp' (geometric, fastai's).")
_NUM_STEPS = flags.DEFINE_integer(
    'num_steps', 5000, 'Steps of the sweep (the paper: 5000, 20000, 100000 at batch 1000).')
_TEST_EXAMPLES = flags.DEFINE_integer(
    'test_examples', 10_000, 'Size of the fixed random test subset the accuracy is measured on.')
_SMOOTHING = flags.DEFINE_float('smoothing', 0.98, "The loss's moving-average factor.")
_DIVERGE_FACTOR = flags.DEFINE_float(
    'diverge_factor', 4.0, 'Stop when the smoothed loss exceeds the best by this factor '
    '(inf: only on NaN/inf).')

DEFAULT_EVAL_EVERY = 100
"""Steps between test-accuracy points unless --eval_every says (the authors tested every
100 iterations)."""
# Settings the range test needs where the training defaults differ: a constant momentum.
RANGE_TEST_DEFAULTS = {'momentum': '0.9'}
NOT_APPLICABLE = ('schedule', 'lr', 'steps', 'epochs', 'batch_schedule', 'batch_lr_scaling',
                  'steps_per_dispatch')
SUGGESTIONS = ('clr_bounds', 'super_convergence', 'valley', 'steep', 'minimum')
ACCURACY_SUGGESTIONS = ('clr_bounds', 'super_convergence')


@dataclasses.dataclass(frozen=True)
class Sweep:
  """The settings of a range test that are not training settings."""

  min_lr: float = 0.0
  max_lr: float = 3.0
  mode: str = 'linear'
  num_steps: int = 5000
  test_examples: int = 10_000
  metric_every: int = DEFAULT_EVAL_EVERY
  smoothing: float = 0.98
  diverge_factor: float = 4.0

  def check(self) -> None:
    """ConfigError for bad bounds, or too few steps or test points for the suggestions."""
    from lrsched.lr_finder import MIN_POINTS

    if self.mode not in ('linear', 'exp'):
      raise ConfigError(f"--mode must be 'linear' or 'exp', got {self.mode!r}")
    low = 'positive' if self.mode == 'exp' else '>= 0'
    if not (math.isfinite(self.min_lr) and (self.min_lr > 0 if self.mode == 'exp'
                                            else self.min_lr >= 0)):
      raise ConfigError(f'--min_lr must be finite and {low} with --mode={self.mode}, got '
                        f'{self.min_lr}')
    if not (math.isfinite(self.max_lr) and self.max_lr > self.min_lr):
      raise ConfigError(f'--max_lr must be finite and larger than --min_lr={self.min_lr} (the '
                        f'LR sweeps up), got {self.max_lr}')
    # fastai's suggestions leave out the first tenth and the last 5 steps.
    loss_points = self.num_steps - self.num_steps // 10 - 5
    if loss_points < MIN_POINTS:
      raise ConfigError(f'--num_steps={self.num_steps} is too few for a suggestion: the loss '
                        f'rules need {MIN_POINTS} points after leaving out the first tenth '
                        'and the last 5 steps; use --num_steps >= 12 (the paper: thousands)')
    if self.metric_every < 1:
      raise ConfigError(f'--eval_every must be >= 1, got {self.metric_every}')
    points = self.num_steps // self.metric_every
    if points < MIN_POINTS:
      raise ConfigError(f'--num_steps={self.num_steps} with --eval_every={self.metric_every} '
                        f'gives {points} test-accuracy points; the accuracy rules need at '
                        f'least {MIN_POINTS}: lower --eval_every or raise --num_steps')
    if self.test_examples < 1:
      raise ConfigError(f'--test_examples must be >= 1, got {self.test_examples}')
    if not (self.diverge_factor > 1):
      raise ConfigError(f'--diverge_factor must be > 1, got {self.diverge_factor}')
    if not 0 <= self.smoothing < 1:
      raise ConfigError(f'--smoothing must be in [0, 1), got {self.smoothing}')


def default_workdir(config: Config) -> str:
  return f'runs/range-test-{config.model}-{config.dataset}-seed{config.seed}'


def run(config: Config, sweep: Sweep, *, workdir: str | None = None,
        devices: list[Any] | None = None) -> dict[str, Any]:
  """Runs the range test; writes ``range_test.json`` and ``range_test.png`` (process 0).

  The sweep trains with the trainer's own compiled step (`experiments.parallel`), one step
  per dispatch, so that a step costs what it costs in `experiments.cifar` on every
  backend. Every ``--log_every`` steps and at every test point the host reads the losses,
  applies the divergence rule (`lrsched.lr_finder.divergence_step`), prints a progress
  line and rewrites ``range_test.json`` (``status: running``), so an interrupted test
  (SIGTERM, Ctrl-C) leaves its curve (``status: interrupted``).

  Returns the report written to the JSON: the config, the sweep, the data source, the
  `lrsched.RangeTestResult` as a dict, and each suggestion (``{'lr', 'min_lr', 'step',
  'explanation'}``, or ``{'error'}`` where the curve does not allow one).
  """
  import jax
  import numpy as np

  import lrsched
  from experiments import parallel, plots, setup, train
  from experiments.metrics import Progress
  from lrsched.lr_finder import log_linear

  start = time.time()
  sweep.check()
  momentum = _constant_momentum(config)
  devices = jax.local_devices() if devices is None else list(devices)
  workdir = workdir or config.workdir or default_workdir(config)
  # The trainer's checks, model and data; the LR is the sweep's, and nothing resumes.
  ready = setup.prepare(config, devices, workdir=workdir, training=False)
  dataset, model, batch = ready.dataset, ready.model, config.batch_size
  # The LR of step t; over N - 1 steps, so that the last step uses exactly max_lr.
  lr = (log_linear if sweep.mode == 'exp' else lrsched.linear)(
      sweep.min_lr, sweep.max_lr, sweep.num_steps - 1)
  tx = setup.build_optimizer(config, lr, momentum)
  train_size = len(dataset.train_labels)
  test_size = min(sweep.test_examples, len(dataset.test_labels))
  primary = jax.process_index() == 0
  if primary:
    os.makedirs(workdir, exist_ok=True)
  log.info('%s: range test %s %g -> %g over %d steps of %d examples on %d devices (%s)',
           dataset.source, sweep.mode, sweep.min_lr, sweep.max_lr, sweep.num_steps, batch,
           len(devices), devices[0].device_kind)

  mesh = parallel.make_mesh(devices)
  init_key, step_key = jax.random.split(jax.random.key(config.seed))
  state = setup.create_state(model, tx, mesh, init_key)
  train_step = parallel.make_train_steps(
      model, tx, mesh, parallel.StepConfig(batch, config.augment, ready.dtype), step_key)
  train_data = setup.put_training_data(mesh, dataset)
  # A fixed random test subset (the test set is sorted by class).
  subset = np.random.default_rng(config.seed).permutation(len(dataset.test_labels))[:test_size]
  evaluate = train.make_test_evaluation(model, mesh, ready.dtype, dataset.test_images[subset],
                                        dataset.test_labels[subset], train_data.mean,
                                        train_data.std)

  lrs = np.asarray(lr(np.arange(sweep.num_steps)), np.float64)
  losses: list[float] = []
  pending: list[jax.Array] = []  # losses of the steps since the host last read them
  metrics: list[float] = []
  metric_steps: list[int] = []
  progress = Progress(sweep.num_steps, enabled=primary)
  base = {'config': dataclasses.asdict(config), 'sweep': dataclasses.asdict(sweep),
          'data': dataset.source, 'train_examples': train_size, 'test_examples': test_size,
          'device_kind': devices[0].device_kind, 'device_count': len(devices)}

  def result() -> lrsched.RangeTestResult:
    n = len(losses)
    r = lrsched.RangeTestResult.from_losses(
        lrs[:n], losses, smoothing=sweep.smoothing, diverge_factor=sweep.diverge_factor,
        metrics=np.asarray(metrics), metric_steps=np.asarray(metric_steps, np.int64))
    return dataclasses.replace(r, steps_run=n, num_steps=sweep.num_steps,
                               stopped_early=r.diverged_at is not None and n < sweep.num_steps)

  def write(status: str, r: lrsched.RangeTestResult) -> dict[str, Any]:
    report = {**base, 'status': status, 'wall_time_s': time.time() - start,
              'suggestions': suggestions(r), 'result': json.loads(r.to_json())}
    if primary:
      path = os.path.join(workdir, 'range_test.json')
      with open(path + '.tmp', 'w') as f:  # atomic: a kill never leaves half a file
        json.dump(report, f, indent=2)
      os.replace(path + '.tmp', path)
    return report

  status = 'finished'
  last = {'time': time.time(), 'step': 0}
  with train.StopRequest() as stop:
    for t in range(sweep.num_steps):
      state = train_step(state, *train_data, 1)
      # Take the step's loss out of the state (which the next step donates).
      step_metrics = state.metrics
      state = state._replace(metrics=jax.device_put(parallel.Metrics.zeros(),
                                                    parallel.replicated(mesh)))
      pending.append(step_metrics.loss_sum / batch)
      test_point = (t + 1) % sweep.metric_every == 0
      if not (test_point or (t + 1) % config.log_every == 0 or t == 0
              or t + 1 == sweep.num_steps or stop.signal is not None):
        continue
      losses.extend(float(v) for v in jax.device_get(pending))
      pending.clear()
      curve = result()  # smoothed and cut once per read
      if curve.diverged_at is not None:
        break
      # The training steps' rate, as the trainer's line gives it: evaluation not counted.
      now = time.time()
      images_per_sec = (t + 1 - last['step']) * batch / max(now - last['time'], 1e-9)
      if test_point:
        accuracy = float(evaluate(state.params, state.batch_stats)[1])
        metrics.append(accuracy)
        metric_steps.append(t)
        progress.note(f'step {t + 1}: lr {lrs[t]:.4g}, test accuracy {accuracy:.4f}')
      progress.update(t + 1, lr=float(lrs[t]), loss=float(curve.smoothed_losses[-1]),
                      images_per_sec=images_per_sec)
      if stop.signal is not None:
        status = 'interrupted'
        break
      write('running', result())  # with this point's accuracy
      last.update(time=time.time(), step=t + 1)
  progress.close()
  report = write(status, result())
  if primary:
    plots.plot_range_test(report, os.path.join(workdir, 'range_test.png'))
  return report


def suggestions(result) -> dict[str, dict[str, Any]]:
  """Every suggestion of `SUGGESTIONS`, or its error where the curve does not allow it."""
  out = {}
  for method in SUGGESTIONS:
    try:
      s = getattr(result, method)()
    except ValueError as e:
      out[method] = {'error': str(e)}
    else:
      out[method] = {'lr': s.lr, 'min_lr': s.min_lr, 'step': s.step,
                     'explanation': s.explanation}
  return out


def _constant_momentum(config: Config) -> float | None:
  """The range test's momentum: a number or none (a schedule would follow its own steps)."""
  text = config.momentum.strip()
  if text == 'none':
    return None
  try:
    momentum = float(text)
  except ValueError:
    raise ConfigError(f'--momentum={text!r}: the range test needs a constant momentum (a '
                      'number, or none), not a schedule') from None
  if not 0 <= momentum < 1:
    raise ConfigError(f'--momentum must be in [0, 1), got {momentum}')
  return momentum


def sweep_from_flags(config: Config) -> Sweep:
  return Sweep(min_lr=_MIN_LR.value, max_lr=_MAX_LR.value, mode=_MODE.value,
               num_steps=_NUM_STEPS.value, test_examples=_TEST_EXAMPLES.value,
               metric_every=config.eval_every or DEFAULT_EVAL_EVERY,
               smoothing=_SMOOTHING.value, diverge_factor=_DIVERGE_FACTOR.value)


def config_from_flags() -> Config:
  """The training flags (and --preset), with a constant momentum 0.9 by default; the flags
  of `NOT_APPLICABLE` are refused when given.

  A preset's ``momentum='cyclical'`` outranks `RANGE_TEST_DEFAULTS` but is no constant:
  unless --momentum is given, it becomes the cyclical momentum's maximum (see
  `lrsched.momentum.MAX_MOMENTUM`, 0.95), with a log line saying so.
  """
  given = [f'--{name}' for name in cifar.given_flags(NOT_APPLICABLE)]
  if given:
    raise ConfigError(f'{", ".join(given)} do not apply to the range test: the LR sweeps '
                      'from --min_lr to --max_lr over --num_steps')
  config = cifar.config_from_flags(RANGE_TEST_DEFAULTS)
  if config.momentum.strip() == 'cyclical' and not cifar.given_flags(['momentum']):
    from lrsched.momentum import MAX_MOMENTUM  # lazily, as every JAX import here
    log.info('--preset=%s has a cyclical momentum; the range test holds it at its maximum, '
             '%g, as Smith (2018) does (give --momentum to choose another)',
             flags.FLAGS['preset'].value, MAX_MOMENTUM)
    config = dataclasses.replace(config, momentum=f'{MAX_MOMENTUM:g}')
  return config


def main(argv: list[str]) -> int:
  if (code := cifar.early_exit(argv)) is not None:
    return code
  cifar.install_stop_handlers()
  from experiments import data

  cifar.initialize()
  try:
    config = config_from_flags()
    report = run(config, sweep_from_flags(config))
  except (ConfigError, data.DataError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  import jax
  if jax.process_index() == 0:
    result = report['result']
    print(f"{len(result['lrs'])} of {result['num_steps']} steps recorded"
          + (f" (diverged at step {result['diverged_at']})"
             if result['diverged_at'] is not None else ''))
    for method, s in report['suggestions'].items():
      print(f"  {s.get('explanation') or method + ': ' + s['error']}")
    workdir = config.workdir or default_workdir(config)
    print(f'wrote {os.path.join(workdir, "range_test.json")} and range_test.png')
  return 0


if __name__ == '__main__':
  allocator.reexec_with_tuned_malloc()
  app.run(main)
