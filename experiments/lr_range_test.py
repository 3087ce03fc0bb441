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

The sweep is `lrsched.range_test`: one compiled ``lax.scan`` per ``--chunk_size`` steps, the
batch-norm statistics threaded as state, the data on the device, batches drawn and augmented
as in training (the same data stream; see `experiments.parallel`). It runs on every local
device of this process: the global batch is split over them by the compiler (``jax.jit``
with a sharded batch), with the same result as on one device; it is not multi-host.
``--schedule``, ``--lr``, ``--steps``, ``--epochs`` and ``--batch_schedule`` do not apply.

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

from experiments import cifar
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
_CHUNK_SIZE = flags.DEFINE_integer(
    'chunk_size', 500, 'Steps per compiled scan; the host stops after the chunk in which the '
    'loss diverged.')

DEFAULT_EVAL_EVERY = 100
"""Steps between test-accuracy points unless --eval_every says (the authors tested every
100 iterations)."""
# Settings the range test needs where the training defaults differ: a constant momentum.
RANGE_TEST_DEFAULTS = {'momentum': '0.9'}
NOT_APPLICABLE = ('schedule', 'lr', 'steps', 'epochs', 'batch_schedule', 'batch_lr_scaling')
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
  chunk_size: int | None = 500

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
    if self.chunk_size is not None and self.chunk_size < 1:
      raise ConfigError(f'--chunk_size must be >= 1, got {self.chunk_size}')
    if not (self.diverge_factor > 1):
      raise ConfigError(f'--diverge_factor must be > 1, got {self.diverge_factor}')
    if not 0 <= self.smoothing < 1:
      raise ConfigError(f'--smoothing must be in [0, 1), got {self.smoothing}')


def default_workdir(config: Config) -> str:
  return f'runs/range-test-{config.model}-{config.dataset}-seed{config.seed}'


def run(config: Config, sweep: Sweep, *, workdir: str | None = None,
        devices: list[Any] | None = None) -> dict[str, Any]:
  """Runs the range test; writes ``range_test.json`` and ``range_test.png`` (process 0).

  Returns the report written to the JSON: the config, the sweep, the data source, the
  `lrsched.RangeTestResult` as a dict, and each suggestion (``{'lr', 'min_lr', 'step',
  'explanation'}``, or ``{'error'}`` where the curve does not allow one).
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import lrsched
  from experiments import data, parallel, plots, train

  start = time.time()
  config.validate()
  sweep.check()
  devices = jax.local_devices() if devices is None else list(devices)
  train.check_devices(config, len(devices))
  if config.dataset not in data.DATASETS:
    raise ConfigError(f'unknown --dataset={config.dataset!r}; valid: {", ".join(data.DATASETS)}')
  momentum = _constant_momentum(config)
  model = train.build_model(config)
  workdir = workdir or config.workdir or default_workdir(config)
  dataset = data.load(config.dataset, config.data_dir, train_examples=config.train_examples,
                      seed=config.seed,
                      synthetic_size=(config.synthetic_examples, config.synthetic_examples // 5))
  train_size = len(dataset.train_labels)
  batch = config.batch_size
  if batch > train_size:
    raise ConfigError(f'--batch_size={batch} is larger than the training set '
                      f'({train_size} examples)')
  test_size = min(sweep.test_examples, len(dataset.test_labels))
  dtype = jnp.bfloat16 if config.precision == 'bfloat16' else jnp.float32
  log.info('%s: range test %s %g -> %g over %d steps of %d examples on %d devices (%s)',
           dataset.source, sweep.mode, sweep.min_lr, sweep.max_lr, sweep.num_steps, batch,
           len(devices), devices[0].device_kind)

  mesh = parallel.make_mesh(devices)
  sharded = NamedSharding(mesh, P(parallel.AXIS))
  init_key, step_key = jax.random.split(jax.random.key(config.seed))
  data_key, augment_key, dropout_key = jax.random.split(step_key, 3)
  # A fixed random test subset (the test set is sorted by class).
  subset = np.random.default_rng(config.seed).permutation(len(dataset.test_labels))[:test_size]
  put = lambda a: parallel.put_replicated(mesh, a)
  images, labels = put(dataset.train_images), put(dataset.train_labels.astype(np.int32))
  test_images = put(dataset.test_images[subset])
  test_labels = put(dataset.test_labels[subset].astype(np.int32))
  mean = put(np.asarray(dataset.mean, np.float32))
  std = put(np.asarray(dataset.std, np.float32))
  # Epochs one batch can read: one when the batch size divides the epoch, else two.
  epochs = parallel.epochs_spanned(batch, train_size, batch if train_size % batch == 0 else 1)

  def batch_fn(t):
    positions = t * batch + jnp.arange(batch, dtype=jnp.int32)
    first_epoch = positions[0] // train_size
    orders = parallel.epoch_orders(data_key, first_epoch, epochs, train_size)
    index = parallel.stream_indices(orders, first_epoch, positions)
    x = parallel.augment_batch(images[index], augment_key, positions, config.augment)
    x = data.normalize(x, mean, std, dtype=dtype)
    # Split the batch over the devices; the compiler partitions the model accordingly.
    x = jax.lax.with_sharding_constraint(x, sharded)
    y = jax.lax.with_sharding_constraint(labels[index], sharded)
    return x, y, jax.random.fold_in(dropout_key, t)

  def loss_fn(params, batch_stats, inputs):
    x, y, key = inputs
    logits, updated = model.apply({'params': params, 'batch_stats': batch_stats}, x,
                                  train=True, rngs={'dropout': key}, mutable=['batch_stats'])
    return parallel.cross_entropy(logits, y).mean(), updated['batch_stats']

  chunk = min(500, test_size)
  chunks = -(-test_size // chunk)

  def test_accuracy(params, batch_stats):
    variables = {'params': params, 'batch_stats': batch_stats}

    def correct(i):
      start = jnp.minimum(i * chunk, test_size - chunk)  # the last chunk overlaps: mask it
      x = jax.lax.dynamic_slice_in_dim(test_images, start, chunk)
      y = jax.lax.dynamic_slice_in_dim(test_labels, start, chunk)
      logits = model.apply(variables, data.normalize(x, mean, std, dtype=dtype), train=False)
      new = start + jnp.arange(chunk) >= i * chunk
      return ((logits.argmax(-1) == y) & new).sum()

    return jax.lax.map(correct, jnp.arange(chunks)).sum() / test_size

  def init(key):
    params_key, init_dropout_key = jax.random.split(key)
    return model.init({'params': params_key, 'dropout': init_dropout_key},
                      jnp.zeros((batch // len(devices), 32, 32, 3), jnp.float32), train=False)

  variables = jax.jit(init, out_shardings=parallel.replicated(mesh))(init_key)
  try:
    result = lrsched.range_test(
        loss_fn, variables['params'], batch_fn, state=variables.get('batch_stats', {}),
        min_lr=sweep.min_lr, max_lr=sweep.max_lr, num_steps=sweep.num_steps, mode=sweep.mode,
        optimizer=lambda lr: train.build_optimizer(config, lr, momentum),
        smoothing=sweep.smoothing, diverge_factor=sweep.diverge_factor,
        metric_fn=test_accuracy, metric_every=sweep.metric_every,
        chunk_size=sweep.chunk_size)
  except ValueError as e:
    raise ConfigError(str(e)) from None

  report = {
      'config': dataclasses.asdict(config), 'sweep': dataclasses.asdict(sweep),
      'data': dataset.source, 'train_examples': train_size, 'test_examples': test_size,
      'device_kind': devices[0].device_kind, 'device_count': len(devices),
      'wall_time_s': time.time() - start, 'suggestions': suggestions(result),
      'result': json.loads(result.to_json()),
  }
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'range_test.json'), 'w') as f:
      json.dump(report, f, indent=2)
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
               smoothing=_SMOOTHING.value, diverge_factor=_DIVERGE_FACTOR.value,
               chunk_size=_CHUNK_SIZE.value)


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
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
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
  app.run(main)
