r"""Training-speed benchmark: compile time, step time, images/s and TFLOP/s of the CIFAR step.

  python -m experiments.benchmark                    # the default table (see below)
  python -m experiments.benchmark --models=resnet56 --batch_sizes=512 \
      --precisions=bfloat16 --steps_per_dispatch=1,10 --json=bench.json
  python -m experiments.benchmark --models=resnet56 --batch_sizes=512 \
      --schedules=constant,one_cycle,triangular    # what a schedule costs per step
  python -m experiments.benchmark --torch            # and the PyTorch reference

It times what ``python -m experiments.cifar`` runs, not a copy of it: the step of
`experiments.parallel.make_train_steps` (``K = --steps_per_dispatch`` steps scanned inside one
dispatch), with the model, optimizer and state built as `experiments.train` builds them, on
synthetic uint8 CIFAR-shaped data replicated on every device, as the trainer keeps the
training set; evaluation is `experiments.parallel.make_eval_step` on a padded, sharded test set.

For each configuration (model, global batch, precision, schedule, K) it reports

* ``lower_s``, ``compile_s``: tracing + lowering, and XLA compilation, measured apart from
  execution with the ahead-of-time API (``train.compiled(K).lower(...).compile()``);
* ``step_time_ms``: median, 10th and 90th percentile over ``--samples`` samples of
  ``--steps_per_sample`` steps each, after ``--warmup_steps``. Each sample dispatches its
  steps back to back, as the trainer does, and ends with ``jax.block_until_ready`` on the
  state; its time divided by its step count is one observation;
* ``train_images_per_sec`` (global batch / median step time) and ``eval_images_per_sec``;
* ``flops_per_step`` from XLA's cost analysis of the one-step program before optimisation
  (summed over devices: the analysis is of the per-device program), where every convolution
  is still a convolution: after optimisation a GPU's convolutions are cuDNN custom calls,
  which some XLA versions count as nothing. Where the backend cannot analyse a lowered
  program (the PJRT C API plugins: CUDA, TPU), the same step lowered for one CPU device at
  the per-device batch is analysed; ``flops_source`` says which ('lowered', 'lowered on
  cpu', or 'compiled' as the last resort). ``compiled_flops_per_step``, the optimised
  program's count, is the cross-check (a warning is logged when they differ by more than
  2x). ``tflops`` achieved and ``peak_fraction`` of the devices' dense peak (`PEAK_TFLOPS`;
  None for unknown devices);
* ``peak_memory_bytes`` (``memory_stats()['peak_bytes_in_use']``, None where the backend has
  no statistics, e.g. CPU): the peak of the whole group (every schedule and K compiled and
  run in one process), the same on each of its rows; ``compiled_memory_bytes``: XLA's
  memory analysis of the row's own program;
* with ``--profile_dir``: ``profile``, where the device time of ``--profile_steps`` traced
  steps goes (`experiments.profiling`: the device's busy fraction, time per step by kind of
  op, the top ops; None on CPU, which has no device timeline), and ``profile_dir``, the
  row's trace for Perfetto or TensorBoard. Tracing runs after the timing.

With several ``--schedules``, every schedule's step is compiled in the same process and their
samples are interleaved, so that clock and thermal drift cancel; ``schedule_cost_ratio`` is
the median over rounds of (this step time / the first schedule's step time) at the same K.
Schedules are cheap scalar functions: the target is a ratio within 1% of 1.

By default every (model, batch, precision) group runs in a fresh process (``--isolate``), so
that peak memory and compile time are those of the group alone. Default groups: resnet56 at
batch 128, 512 and 1000 and wrn-28-10 at 128 and 512, each in float32 and bfloat16, each
with K = 1 and 10. ``--quick``: a tiny configuration for tests and smoke runs.

Output: a markdown table on stdout; ``--json`` writes ``{'environment': ..., 'results':
[one object per configuration]}``. ``--torch`` also runs ``benchmarks/torch_reference.py``
(a subprocess; PyTorch is never imported here) on the same model, per-device batch and
precision, and reports the per-device JAX/PyTorch images/s ratio.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib.util
import json
import logging
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_REFERENCE = os.path.join(ROOT, 'benchmarks', 'torch_reference.py')
log = logging.getLogger(__name__)


def define_flags() -> None:
  """Defines the flags; called by ``__main__`` only, so that importing this module defines
  none (several names are also flags of ``experiments.cifar``)."""
  flags.DEFINE_list('models', ['resnet56', 'wrn-28-10'], 'Models to benchmark.')
  flags.DEFINE_list('batch_sizes', None, 'Global batch sizes. Default: 128,512,1000 for '
                    'ResNets, 128,512 for Wide ResNets.')
  flags.DEFINE_list('precisions', ['float32', 'bfloat16'], 'Compute dtypes.')
  flags.DEFINE_list('steps_per_dispatch', ['1', '10'], 'Values of K: training steps scanned '
                    "inside one dispatch (the trainer's --steps_per_dispatch).")
  flags.DEFINE_string(
      'schedules', None, 'Comma-separated LR schedules (names or lrsched specs), timed '
      "interleaved to compare their cost. Bare 'triangular', 'triangular2' and 'clr' get "
      "base_lr=0.08, step_size=2000. Default: the trainer's default schedule.")
  flags.DEFINE_string('momentum', 'cyclical', "Momentum, as the trainer's --momentum.")
  flags.DEFINE_enum('conv_backward', 'xla', ['xla', 'torch'],
                    "The convolutions' backward pass, as the trainer's --conv_backward.")
  flags.DEFINE_float('lr', 0.8, "The schedules' lr / max_lr where a spec leaves it out.")
  flags.DEFINE_integer('train_examples', 50_000,
                       'Synthetic training-set size (kept on every device).')
  flags.DEFINE_integer('test_examples', 10_000, 'Synthetic test-set size.')
  flags.DEFINE_integer('warmup_steps', 20, 'Untimed steps before timing.')
  flags.DEFINE_integer('samples', 25, 'Timed samples per configuration.')
  flags.DEFINE_integer('steps_per_sample', 10,
                       'Steps per timed sample (rounded up to a multiple of K).')
  flags.DEFINE_integer('eval_repeats', 5, 'Timed passes over the test set.')
  flags.DEFINE_integer('seed', 0, 'Seed of the data, initialisation and augmentation.')
  flags.DEFINE_string('json', None, 'Write the results and the environment here.')
  flags.DEFINE_boolean('quick', False, 'Tiny shapes and few steps (resnet8, batch 16, K=1,2, '
                       '3 samples), for tests; flags given explicitly still apply.')
  flags.DEFINE_boolean('isolate', True, 'Run each (model, batch, precision) group in its own '
                       'process, so that its peak memory and compile time are its own. With '
                       '--noisolate, peak memory is the process\'s peak so far, and the '
                       'PyTorch reference shares the accelerator with this process.')
  flags.DEFINE_boolean('torch', False, 'Also run benchmarks/torch_reference.py on each group '
                       'and report the JAX/PyTorch images/s ratio.')
  flags.DEFINE_boolean('torch_compile', True, 'torch.compile the PyTorch reference (off with '
                       '--quick: compiling on CPU takes a minute).')
  flags.DEFINE_string('torch_compile_mode', 'default', 'torch.compile mode of the reference '
                      "('reduce-overhead' for CUDA graphs).")
  flags.DEFINE_string('profile_dir', None, 'Also trace --profile_steps steps of every row '
                      'with jax.profiler into this folder (one subfolder a row) and put a '
                      'summary of the device time in the row (experiments.profiling).')
  flags.DEFINE_integer('profile_steps', 20, 'Steps traced per row with --profile_dir '
                       '(rounded up to a multiple of K).')


QUICK = dict(models=['resnet8'], batch_sizes=['16'], precisions=['float32'],
             steps_per_dispatch=['1', '2'], train_examples=256, test_examples=64,
             warmup_steps=2, samples=3, steps_per_sample=1, eval_repeats=2, torch_compile=False,
             profile_steps=2)

SCHEDULE_SHORTHANDS = {
    'triangular': 'triangular(base_lr=0.08, step_size=2000)',
    'triangular2': 'triangular2(base_lr=0.08, step_size=2000)',
    'clr': 'triangular(base_lr=0.08, step_size=2000)',
}
"""Specs for bare cyclical names, which need arguments that no context fills in."""

# Dense (no 2:4 sparsity) peak TFLOP/s of one device, by `device_kind`, from the vendors'
# datasheets, which quote sparse figures for tensor cores (halved here):
# * H100 SXM5: BF16 1979 sparse, TF32 989 sparse, FP32 67 (no tensor cores), NVIDIA H100
#   datasheet (nvidia.com/en-us/data-center/h100). PCIe and NVL parts run lower clocks and
#   are left out (unknown).
# * H200 SXM: the same compute as H100 SXM (nvidia.com/en-us/data-center/h200).
# * A100 (SXM4 and PCIe): BF16 312, TF32 156, FP32 19.5, NVIDIA A100 datasheet
#   (nvidia.com/en-us/data-center/a100).
# * TPU v4 275, v5e 197, v5p 459 bf16 TFLOP/s per chip, Google Cloud TPU system
#   architecture docs (cloud.google.com/tpu/docs/v4, /v5e, /v5p); one JAX device per chip.
_HOPPER = {'bf16': 989.0, 'tf32': 494.0, 'fp32': 67.0}
PEAK_TFLOPS: tuple[tuple[str, tuple[str, ...], dict[str, float]], ...] = (
    # (substring of device_kind, substrings that exclude it, peaks by arithmetic)
    ('H100', ('PCIe', 'NVL'), _HOPPER),
    ('H200', ('NVL',), _HOPPER),
    ('A100', (), {'bf16': 312.0, 'tf32': 156.0, 'fp32': 19.5}),
    ('TPU v4', ('lite',), {'bf16': 275.0}),
    ('TPU v5 lite', (), {'bf16': 197.0}),
    ('TPU v5e', (), {'bf16': 197.0}),
    ('TPU v5p', (), {'bf16': 459.0}),
)
_EXACT_PEAKS = {'TPU v5': {'bf16': 459.0}}  # v5p reports itself as 'TPU v5'


def peak_basis(platform_name: str, precision: str, matmul_precision: str | None) -> str | None:
  """The arithmetic that the convs and matmuls of a step run on: 'bf16', 'tf32' or 'fp32'.

  float32 inputs: JAX's default lets NVIDIA GPUs use TF32 tensor cores and TPUs one bfloat16
  pass (JAX docs, "Matmul precision"); ``jax_default_matmul_precision`` changes that.
  """
  if precision == 'bfloat16':
    return 'bf16'
  setting = (matmul_precision or 'default').lower()
  if setting in ('bfloat16', 'bf16_bf16_f32'):
    return 'bf16'
  if platform_name == 'tpu':
    return 'bf16' if setting in ('default', 'fastest') else None
  if setting in ('highest', 'float32', 'f32_f32_f32'):
    return 'fp32'
  return 'tf32'


def peak_tflops(device_kind: str, basis: str | None) -> float | None:
  """Dense peak TFLOP/s of one device of ``device_kind`` for ``basis``; None if unknown."""
  if basis is None:
    return None
  if device_kind in _EXACT_PEAKS:
    return _EXACT_PEAKS[device_kind].get(basis)
  for name, excluded, peaks in PEAK_TFLOPS:
    if name in device_kind and not any(e in device_kind for e in excluded):
      return peaks.get(basis)
  return None


def split_specs(text: str) -> list[str]:
  """Splits at the commas outside brackets and quotes: 'a(x=1, y=2),b' -> ['a(x=1, y=2)', 'b']."""
  parts, depth, quote, current = [], 0, None, []
  for ch in text:
    if quote:
      quote = None if ch == quote else quote
    elif ch in '\'"':
      quote = ch
    elif ch in '([{':
      depth += 1
    elif ch in ')]}':
      depth -= 1
    elif ch == ',' and depth == 0:
      parts.append(''.join(current).strip())
      current = []
      continue
    current.append(ch)
  parts.append(''.join(current).strip())
  return [p for p in parts if p]


# --------------------------------------------------------------------------------------
# Settings: the flags, resolved and checked once.


class BenchmarkError(ValueError):
  """A bad flag; its text is one line for the user."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """The resolved flags (see ``--help``); ``batch_sizes=None`` means each model's defaults."""

  models: tuple[str, ...]
  batch_sizes: tuple[int, ...] | None
  precisions: tuple[str, ...]
  steps_per_dispatch: tuple[int, ...]
  schedules: tuple[str, ...]
  momentum: str
  lr: float
  train_examples: int
  test_examples: int
  warmup_steps: int
  samples: int
  steps_per_sample: int
  eval_repeats: int
  seed: int
  quick: bool
  isolate: bool
  torch: bool
  torch_compile: bool
  torch_compile_mode: str
  profile_dir: str | None = None
  profile_steps: int = 20
  conv_backward: str = 'xla'

  def groups(self) -> Iterator[tuple[str, int, str]]:
    """(model, global batch, precision), in the order they run."""
    for model in self.models:
      default = (128, 512) if model.startswith('wrn') else (128, 512, 1000)
      for batch in self.batch_sizes or default:
        for precision in self.precisions:
          yield model, batch, precision

  def group_flags(self, model: str, batch: int, precision: str, json_path: str) -> list[str]:
    """The command line of a child process that runs one group in isolation."""
    return [f'--models={model}', f'--batch_sizes={batch}', f'--precisions={precision}',
            '--steps_per_dispatch=' + ','.join(map(str, self.steps_per_dispatch)),
            '--schedules=' + ','.join(self.schedules), f'--momentum={self.momentum}',
            f'--lr={self.lr!r}', f'--train_examples={self.train_examples}',
            f'--test_examples={self.test_examples}', f'--warmup_steps={self.warmup_steps}',
            f'--samples={self.samples}', f'--steps_per_sample={self.steps_per_sample}',
            f'--eval_repeats={self.eval_repeats}', f'--seed={self.seed}', '--noquick',
            '--noisolate', '--notorch', f'--json={json_path}',
            f'--profile_steps={self.profile_steps}', f'--conv_backward={self.conv_backward}',
            *([f'--profile_dir={self.profile_dir}'] if self.profile_dir else [])]


def _ints(name: str, values: Sequence[str]) -> tuple[int, ...]:
  try:
    result = tuple(int(v) for v in values)
  except ValueError:
    raise BenchmarkError(f'--{name} must be comma-separated integers, got '
                         f'{",".join(values)!r}') from None
  if not result or min(result) < 1:
    raise BenchmarkError(f'--{name} must be integers >= 1, got {",".join(values)!r}')
  return result


def settings_from_flags() -> Settings:
  """The flags, with --quick's values for those not given explicitly; checks them all."""
  f = flags.FLAGS
  value = lambda name: (QUICK[name] if f['quick'].value and name in QUICK
                        and not f[name].present else f[name].value)
  schedules = value('schedules')
  if schedules is None:
    from experiments.config import Config
    schedules = Config().schedule
  settings = Settings(
      models=tuple(value('models')),
      batch_sizes=None if value('batch_sizes') is None else _ints('batch_sizes',
                                                                  value('batch_sizes')),
      precisions=tuple(value('precisions')),
      steps_per_dispatch=_ints('steps_per_dispatch', value('steps_per_dispatch')),
      schedules=tuple(split_specs(schedules)),
      **{name: value(name) for name in (
          'momentum', 'lr', 'train_examples', 'test_examples', 'warmup_steps', 'samples',
          'steps_per_sample', 'eval_repeats', 'seed', 'quick', 'isolate', 'torch',
          'torch_compile', 'torch_compile_mode', 'profile_dir', 'profile_steps',
          'conv_backward')})
  for name in ('train_examples', 'test_examples', 'warmup_steps', 'samples',
               'steps_per_sample', 'eval_repeats', 'profile_steps'):
    if getattr(settings, name) < 1:
      raise BenchmarkError(f'--{name} must be >= 1, got {getattr(settings, name)}')
  if not settings.models or not settings.precisions or not settings.schedules:
    raise BenchmarkError('--models, --precisions and --schedules must not be empty')
  if len(set(settings.schedules)) != len(settings.schedules):
    raise BenchmarkError(f'--schedules lists a schedule twice: {",".join(settings.schedules)}')
  # Every configuration is checked before anything is compiled or any process started.
  for model, batch, precision in settings.groups():
    for schedule in settings.schedules:
      plan(settings, model, batch, precision, schedule)
  return settings


# --------------------------------------------------------------------------------------
# One group: (model, batch, precision), every schedule and K, in this process.


def plan(settings: Settings, model: str, batch: int, precision: str, schedule: str):
  """One configuration checked and resolved as the trainer resolves it (its
  `experiments.setup.Plan`); BenchmarkError if it is bad. (K is not part of it: the
  benchmark compiles each K's program itself.)"""
  from experiments import setup
  from experiments.config import Config, ConfigError

  config = Config(model=model, batch_size=batch, precision=precision, dataset='synthetic',
                  schedule=SCHEDULE_SHORTHANDS.get(schedule, schedule),
                  momentum=settings.momentum, lr=settings.lr, seed=settings.seed,
                  conv_backward=settings.conv_backward,
                  synthetic_examples=settings.train_examples)
  try:
    setup.build_model(config)
    # As the trainer resolves it: the schedules span its default run (95 epochs) of this
    # training set. The device count is checked when the group runs.
    return config, setup.plan(config, settings.train_examples, num_devices=1)
  except ConfigError as e:
    raise BenchmarkError(f'{model} batch {batch} {precision} schedule {schedule!r}: '
                         f'{e}') from None


@dataclasses.dataclass
class _Variant:
  """One compiled training program of a group and its state."""

  schedule: str
  k: int
  plan: Any  # experiments.setup.Plan
  compiled: Any
  state: Any
  lower_s: float
  compile_s: float
  compiled_memory_bytes: int | None
  cost: dict[str, float] = dataclasses.field(default_factory=dict)
  times: list[float] = dataclasses.field(default_factory=list)


def cost_analysis(program) -> dict[str, float]:
  """XLA's cost analysis of a lowered or compiled program as one dict (a list of them in
  older JAX); counts that are not positive (unknown to XLA) are left out, and a backend
  that can't analyse the program gives {}."""
  try:
    cost = program.cost_analysis()
  except NotImplementedError:  # JAX returns None for this, or raises (the docs allow both)
    cost = None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return {k: float(v) for k, v in (cost or {}).items() if v is not None and v > 0}


def step_cost(lowered, compiled, lower_on_cpu: Callable[[], Any] | None = None
              ) -> dict[str, Any]:
  """The FLOPs of the program before optimisation, the bytes accessed after it (fusion
  decides what is read), and the compiled program's FLOPs as a cross-check.

  Backends behind the PJRT C API (the CUDA and TPU plugins) cannot analyse a lowered
  program; there ``lower_on_cpu()``, the same step lowered for one CPU device at the
  per-device batch, is analysed instead (``flops_source`` says which).
  """
  before, after = cost_analysis(lowered), cost_analysis(compiled)
  source = 'lowered'
  if 'flops' not in before and lower_on_cpu is not None:
    before, source = cost_analysis(lower_on_cpu()), 'lowered on cpu'
  if 'flops' not in before:
    source = 'compiled'
  cost = {'flops': before.get('flops', after.get('flops')), 'flops_source': source,
          'compiled_flops': after.get('flops'), 'bytes accessed': after.get('bytes accessed')}
  if cost['flops'] and cost['compiled_flops']:
    ratio = cost['compiled_flops'] / cost['flops']
    if not 0.5 <= ratio <= 2.0:
      log.warning('XLA counts %.3g FLOPs in the step before optimisation but %.3g after: '
                  'TFLOP/s uses the first', cost['flops'], cost['compiled_flops'])
  return {k: v for k, v in cost.items() if v is not None}


def lower_one_step_on_cpu(model, tx, cfg, local_batch: int, key, state, train_args):
  """The one-step training program of one CPU device at the per-device batch, lowered
  from the shapes of ``state`` and ``train_args`` (nothing is copied)."""
  import jax

  from experiments import parallel

  mesh = parallel.make_mesh(jax.devices('cpu')[:1])
  steps = parallel.make_train_steps(model, tx, mesh, cfg._replace(global_batch=local_batch),
                                    key)
  sharding = parallel.replicated(mesh)
  abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return steps.compiled(1).lower(*jax.tree.map(abstract, (state, *train_args)))


def memory_analysis_bytes(compiled) -> int | None:
  """Arguments + outputs + temporaries - donated aliases, per device; None if unavailable."""
  try:
    m = compiled.memory_analysis()
  except (NotImplementedError, RuntimeError):
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def peak_memory_bytes(devices) -> int | None:
  """The largest ``peak_bytes_in_use`` of the devices; None where there are no statistics."""
  peaks = []
  for device in devices:
    try:
      stats = device.memory_stats()
    except (NotImplementedError, RuntimeError):
      stats = None
    if stats and 'peak_bytes_in_use' in stats:
      peaks.append(int(stats['peak_bytes_in_use']))
  return max(peaks) if peaks else None


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
  ms = np.asarray(seconds, np.float64) * 1e3
  return {'median': float(np.median(ms)), 'p10': float(np.percentile(ms, 10)),
          'p90': float(np.percentile(ms, 90))}


def _slug(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9.=-]+', '_', text).strip('_')[:64]


def _lower_and_compile(jitted, *args) -> tuple[Any, Any, float, float]:
  start = time.perf_counter()
  lowered = jitted.lower(*args)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  return lowered, compiled, lowered_at - start, time.perf_counter() - lowered_at


def _run_sample(variant: _Variant, train_args: tuple, steps: int) -> float:
  """Runs about ``steps`` steps back to back, waits for them; returns seconds per step."""
  import jax
  dispatches = -(-steps // variant.k)
  start = time.perf_counter()
  for _ in range(dispatches):
    variant.state = variant.compiled(variant.state, *train_args)
  jax.block_until_ready(variant.state)
  return (time.perf_counter() - start) / (dispatches * variant.k)


def benchmark_group(settings: Settings, model_name: str, batch: int, precision: str,
                    dataset=None) -> list[dict[str, Any]]:
  """Compiles and times every (schedule, K) of one (model, batch, precision) group."""
  import jax

  from experiments import data, models, parallel, profiling, setup, train

  devices = jax.devices()
  if why := models.conv_backward.check_available(settings.conv_backward, devices[0].platform):
    raise BenchmarkError(why)
  mesh = parallel.make_mesh(devices)
  num_devices = mesh.size
  if dataset is None:
    dataset = data.load('synthetic', seed=settings.seed,
                        synthetic_size=(settings.train_examples, settings.test_examples))
  base, _ = plan(settings, model_name, batch, precision, settings.schedules[0])
  local_batch = setup.check_devices(base, num_devices)
  model = setup.build_model(base)  # the trainer's own model builder
  dtype = setup.compute_dtype(base)
  train_args = setup.put_training_data(mesh, dataset)
  init_key, step_key = jax.random.split(jax.random.key(settings.seed))
  name = f'{model_name} batch {batch} {precision}'

  variants: list[_Variant] = []
  for schedule in settings.schedules:
    config, p = plan(settings, model_name, batch, precision, schedule)
    step_config = parallel.StepConfig(batch, config.augment, dtype)
    train_steps = parallel.make_train_steps(model, p.tx, mesh, step_config, step_key)
    initial = setup.create_state(model, p.tx, mesh, init_key, local_batch)
    one_step_cost = None
    for k in sorted(settings.steps_per_dispatch, key=lambda k: k != 1):  # K=1 first
      # Each variant's own buffers: the step donates its state.
      state = jax.device_put(initial, parallel.replicated(mesh), may_alias=False)
      lowered, compiled, lower_s, compile_s = _lower_and_compile(
          train_steps.compiled(k), state, *train_args)
      log.info('%s, %s, K=%d: lowered in %.1f s, compiled in %.1f s', name, schedule, k,
               lower_s, compile_s)
      if one_step_cost is None:
        # XLA counts a while loop's body once, whatever its trip count: the cost of a step
        # is that of the one-step program (compiled here only for that if K=1 isn't run).
        if k != 1:
          lowered = train_steps.compiled(1).lower(state, *train_args)
        one_step_cost = step_cost(
            lowered, compiled if k == 1 else lowered.compile(),
            functools.partial(lower_one_step_on_cpu, model, p.tx, step_config, local_batch,
                              step_key, state, train_args))
      variants.append(_Variant(schedule, k, p, compiled, state, lower_s, compile_s,
                               memory_analysis_bytes(compiled), one_step_cost))

  for v in variants:  # warm-up: the first runs allocate, and GPU clocks ramp up
    for _ in range(-(-settings.warmup_steps // v.k)):
      v.state = v.compiled(v.state, *train_args)
    jax.block_until_ready(v.state)
  # Interleaved samples, rotating the order, so that drift hits every variant alike.
  for i in range(settings.samples):
    for j in range(len(variants)):
      v = variants[(i + j) % len(variants)]
      v.times.append(_run_sample(v, train_args, settings.steps_per_sample))

  # Evaluation: the trainer's chunking and padding of the test set.
  chunk = train.eval_chunk(len(dataset.test_labels), num_devices)
  test = parallel.pad_for_eval(dataset.test_images, dataset.test_labels.astype(np.int32),
                               num_devices, chunk)
  test_args = tuple(parallel.put_sharded(mesh, a) for a in test)
  state = variants[0].state
  eval_args = (state.params, state.batch_stats, *test_args, *train_args[2:])
  _, evaluate, eval_lower_s, eval_compile_s = _lower_and_compile(
      parallel.make_eval_step(model, mesh, dtype, chunk), *eval_args)
  jax.block_until_ready(evaluate(*eval_args))
  eval_times = []
  for _ in range(settings.eval_repeats):
    start = time.perf_counter()
    jax.block_until_ready(evaluate(*eval_args))
    eval_times.append(time.perf_counter() - start)
  eval_images_per_sec = len(dataset.test_labels) / float(np.median(eval_times))

  profiles: dict[int, tuple[str, dict[str, Any] | None]] = {}
  if settings.profile_dir:  # after the timing, so that tracing cannot disturb it
    for i, v in enumerate(variants):
      where = os.path.join(settings.profile_dir, _slug(f'{model_name}-b{batch}-{precision}'),
                           _slug(f'{i}-{v.schedule}-k{v.k}'))
      dispatches = -(-settings.profile_steps // v.k)
      with profiling.trace(where):
        for _ in range(dispatches):
          v.state = v.compiled(v.state, *train_args)
        jax.block_until_ready(v.state)
      profiles[i] = where, profiling.summarize(where, dispatches * v.k)
  peak_memory = peak_memory_bytes(mesh.local_devices)

  parameters = sum(x.size for x in jax.tree.leaves(variants[0].state.params))
  device = devices[0]
  basis = peak_basis(device.platform, precision, jax.config.jax_default_matmul_precision)
  peak = peak_tflops(device.device_kind, basis)
  rows = []
  for i, v in enumerate(variants):
    times = percentiles_ms(v.times)
    seconds = times['median'] / 1e3
    flops = v.cost.get('flops')
    flops_per_step = None if flops is None else flops * num_devices
    compiled_flops = v.cost.get('compiled_flops')
    bytes_accessed = v.cost.get('bytes accessed')
    tflops = None if flops_per_step is None else flops_per_step / seconds / 1e12
    reference = next(r for r in variants if r.k == v.k)  # the first schedule, same K
    ratio = None
    if len(settings.schedules) > 1:
      ratio = float(np.median(np.asarray(v.times) / np.asarray(reference.times)))
    rows.append({
        'model': model_name, 'parameters': parameters, 'batch_size': batch,
        'per_device_batch': local_batch,
        'precision': precision, 'conv_backward': settings.conv_backward,
        'schedule': v.schedule, 'schedule_spec': repr(v.plan.lr_schedule),
        'momentum_spec': repr(v.plan.momentum), 'steps_per_dispatch': v.k,
        'device_kind': device.device_kind, 'device_count': num_devices,
        'lower_s': v.lower_s, 'compile_s': v.compile_s,
        'eval_lower_s': eval_lower_s, 'eval_compile_s': eval_compile_s,
        'step_time_ms': times, 'samples': len(v.times),
        'timed_steps': len(v.times) * -(-settings.steps_per_sample // v.k) * v.k,
        'train_images_per_sec': batch / seconds,
        'eval_images_per_sec': eval_images_per_sec, 'eval_examples': len(dataset.test_labels),
        'flops_per_step': flops_per_step,
        'compiled_flops_per_step': (None if compiled_flops is None
                                    else compiled_flops * num_devices),
        'flops_source': v.cost.get('flops_source'),
        'flops_per_image': None if flops_per_step is None else flops_per_step / batch,
        'bytes_accessed_per_step': (None if bytes_accessed is None
                                    else bytes_accessed * num_devices),
        'tflops': tflops, 'peak_basis': basis,
        'peak_tflops': None if peak is None else peak * num_devices,
        'peak_fraction': None if peak is None or tflops is None else tflops / (peak * num_devices),
        'peak_memory_bytes': peak_memory,
        'compiled_memory_bytes': v.compiled_memory_bytes,
        'schedule_cost_ratio': ratio,
        'profile_dir': profiles.get(i, (None, None))[0],
        'profile': profiles.get(i, (None, None))[1],
        'torch': None, 'jax_over_torch': None,
    })
  return rows


# --------------------------------------------------------------------------------------
# The environment, the PyTorch reference and the report.


def _git(*args: str) -> str | None:
  try:
    result = subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return result.stdout.strip() if result.returncode == 0 else None


def environment(settings: Settings, *, devices: bool) -> dict[str, Any]:
  """Versions, date, git commit and command; the devices only if ``devices`` (that
  initialises the backend, which a parent of isolated groups must leave to its children)."""
  import flax
  import jax
  import jaxlib
  import optax

  status = _git('status', '--porcelain', '--untracked-files=no')
  env = {
      'jax_version': jax.__version__, 'jaxlib_version': jaxlib.__version__,
      'flax_version': flax.__version__, 'optax_version': optax.__version__,
      'python_version': platform.python_version(), 'host': platform.node(),
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'git_commit': _git('rev-parse', 'HEAD'),
      'git_dirty': None if status is None else bool(status),
      'command': 'python -m experiments.benchmark ' + shlex.join(sys.argv[1:]),
      'xla_flags': os.environ.get('XLA_FLAGS'),
      'default_matmul_precision': jax.config.jax_default_matmul_precision,
      'settings': dataclasses.asdict(settings),
  }
  if devices:
    env.update(platform=jax.devices()[0].platform, device_kind=jax.devices()[0].device_kind,
               device_count=jax.device_count(), process_count=jax.process_count())
  return env


def run_torch_reference(settings: Settings, row: dict[str, Any], device: str
                        ) -> dict[str, Any]:
  """Runs benchmarks/torch_reference.py on the group of ``row`` on one ``device`` ('cuda' or
  'cpu'), with the per-device batch; returns its JSON, or {'error': ...}."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'torch.json')
    command = [
        sys.executable, TORCH_REFERENCE, f'--model={row["model"]}',
        f'--batch_size={row["per_device_batch"]}', f'--precision={row["precision"]}',
        f'--train_examples={settings.train_examples}',
        f'--warmup_steps={settings.warmup_steps}', f'--samples={settings.samples}',
        f'--steps_per_sample={settings.steps_per_sample}', f'--seed={settings.seed}',
        f'--device={device}', f'--json={path}',
        *([f'--compile_mode={settings.torch_compile_mode}'] if settings.torch_compile
          else ['--no_compile'])]
    log.info('PyTorch reference: %s', shlex.join(command[1:]))
    result = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, check=False)
    if result.returncode != 0 or not os.path.exists(path):
      return {'error': f'benchmarks/torch_reference.py exited with {result.returncode}'}
    with open(path) as f:
      return json.load(f)


def _fmt(value, spec: str, scale: float = 1.0) -> str:
  return '-' if value is None else format(value * scale, spec)


def markdown(results: list[dict[str, Any]]) -> str:
  """The results as a markdown table (and the schedule-cost column where it applies)."""
  with_ratio = any(r.get('schedule_cost_ratio') is not None for r in results)
  with_torch = any(r.get('torch') for r in results)
  with_profile = any(r.get('profile') for r in results)
  header = ['model', 'batch', 'precision', 'schedule', 'K', 'compile s',
            'step ms (p10-p90)', 'train img/s', 'eval img/s', 'GFLOP/img', 'TFLOP/s',
            '% peak', 'group peak mem GiB']
  header += ['vs 1st schedule'] * with_ratio + ['torch img/s', 'JAX/torch'] * with_torch
  header += ['device busy %', 'top device op'] * with_profile
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for r in results:
    if 'error' in r:
      cells = [r['model'], str(r['batch_size']), r['precision'], f'error: {r["error"]}']
      cells += [''] * (len(header) - len(cells))
    else:
      t = r['step_time_ms']
      schedule = r['schedule'] if len(r['schedule']) <= 24 else r['schedule'][:21] + '...'
      precision = r['precision'] + (f" ({r['conv_backward']} conv backward)"
                                    if r.get('conv_backward', 'xla') != 'xla' else '')
      cells = [r['model'], str(r['batch_size']), precision, schedule,
               str(r['steps_per_dispatch']), _fmt(r['compile_s'], '.1f'),
               f'{t["median"]:.2f} ({t["p10"]:.2f}-{t["p90"]:.2f})',
               _fmt(r['train_images_per_sec'], ',.0f'), _fmt(r['eval_images_per_sec'], ',.0f'),
               _fmt(r['flops_per_image'], '.3f', 1e-9), _fmt(r['tflops'], '.2f'),
               _fmt(r['peak_fraction'], '.1f', 100.0),
               _fmt(r['peak_memory_bytes'], '.2f', 2.0**-30)]
      if with_ratio:
        cells.append(_fmt(r['schedule_cost_ratio'], '.4f'))
      if with_torch:
        torch_result = r.get('torch') or {}
        cells += [_fmt(torch_result.get('images_per_sec'), ',.0f'),
                  _fmt(r.get('jax_over_torch'), '.2f')]
      if with_profile:
        profile = r.get('profile') or {}
        top = (profile.get('top_ops') or [{}])[0]
        cells += [_fmt(profile.get('device_busy_fraction'), '.1f', 100.0),
                  (f'{top["name"][:32]} ({top["fraction"]:.0%})' if top else '-')]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _run_isolated(settings: Settings, model: str, batch: int, precision: str
                  ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'group.json')
    command = [sys.executable, '-m', 'experiments.benchmark',
               *settings.group_flags(model, batch, precision, path)]
    # The child's log goes to our stderr; its table is ours to print.
    result = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, check=False)
    if not os.path.exists(path):  # it crashed (its failures otherwise are rows of its JSON)
      error = f'the group process exited with {result.returncode} (its log is above)'
      return [{'model': model, 'batch_size': batch, 'precision': precision,
               'error': error}], None
    with open(path) as f:
      report = json.load(f)
  return report['results'], report['environment']


def run(settings: Settings) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """Runs every group (in child processes with ``isolate``); returns (results, environment)."""
  use_torch = settings.torch and importlib.util.find_spec('torch') is not None
  if settings.torch and not use_torch:
    print('PyTorch reference skipped: torch is not importable here.')
  results: list[dict[str, Any]] = []
  env = None
  dataset = None
  for model, batch, precision in settings.groups():
    log.info('benchmarking %s, batch %d, %s', model, batch, precision)
    if settings.isolate:
      rows, group_env = _run_isolated(settings, model, batch, precision)
      env = env or group_env
    else:
      if dataset is None:
        from experiments import data
        dataset = data.load('synthetic', seed=settings.seed,
                            synthetic_size=(settings.train_examples, settings.test_examples))
      try:
        rows = benchmark_group(settings, model, batch, precision, dataset)
      except Exception as e:  # e.g. out of memory: report it and go on with the next group
        log.exception('%s batch %d %s failed', model, batch, precision)
        rows = [{'model': model, 'batch_size': batch, 'precision': precision,
                 'error': f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'}]
      if env is None:
        env = environment(settings, devices=True)
    if use_torch and 'error' not in rows[0]:
      platform_name = (env or {}).get('platform')
      if platform_name not in ('gpu', 'cuda', 'cpu'):
        print(f"PyTorch reference skipped: no PyTorch device matches JAX's {platform_name}.")
        use_torch = False
      else:
        reference = run_torch_reference(settings, rows[0],
                                        'cpu' if platform_name == 'cpu' else 'cuda')
        if 'error' in reference:
          print(f'PyTorch reference failed for {model} batch {batch} {precision}: '
                f'{reference["error"]}')
        for row in rows:
          row['torch'] = reference
          if 'images_per_sec' in reference:
            row['jax_over_torch'] = (row['train_images_per_sec'] / row['device_count']
                                     / reference['images_per_sec'])
    results += rows
  # The parent's own command and settings; the devices as the groups saw them.
  own = environment(settings, devices=not settings.isolate)
  if env is not None:
    own.update({k: env[k] for k in ('platform', 'device_kind', 'device_count',
                                    'process_count') if k in env})
  own['isolated'] = settings.isolate
  return results, own


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.getLogger().setLevel(logging.INFO)
  if flags.FLAGS.isolate:
    # The groups' processes use the accelerators; this one must never claim their memory.
    import jax
    jax.config.update('jax_platforms', 'cpu')
  try:
    settings = settings_from_flags()
  except BenchmarkError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  results, env = run(settings)
  print(markdown(results))
  if env.get('device_kind'):
    print(f'\n{env["device_count"]} x {env["device_kind"]}, jax {env["jax_version"]}, '
          f'commit {(env["git_commit"] or "unknown")[:12]}')
  if flags.FLAGS.json:
    with open(flags.FLAGS.json, 'w') as f:
      json.dump({'environment': env, 'results': results}, f, indent=2)
      f.write('\n')
  return 1 if any('error' in r for r in results) else 0


if __name__ == '__main__':
  define_flags()
  app.run(main)
