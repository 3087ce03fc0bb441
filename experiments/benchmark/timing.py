"""One group timed: every (conv, schedule, K) of one (model, batch, precision) compiled in
this process, its samples interleaved, each conv's evaluation timed, the rows assembled."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.benchmark.cost import (
  lower_one_step_on_cpu,
  memory_analysis_bytes,
  peak_basis,
  peak_memory_bytes,
  peak_tflops,
  step_cost,
)
from experiments.benchmark.reference import InterleavedReference, torch_importable
from experiments.benchmark.settings import BenchmarkError, Settings, plan

log = logging.getLogger(__name__)
PAUSE_S = 0.5
"""Idle time before each PyTorch sample: oneDNN's threads in this process spin for about
0.3 s after their last call (`experiments.models.conv.onednn`) and would share the cores.
With the reference interleaved, each side's samples start with one untimed dispatch: the
first step after the other's sample ran up to 2x slower on the dev VM (it faults in again
the memory freed before the pause, which the host had taken back), the next at full speed
(WORKSPACE.md, issue 10)."""


@dataclasses.dataclass
class _Variant:
  """One compiled training program of a group and its state."""

  conv: str
  schedule: str
  k: int
  plan: Any  # experiments.setup.Plan
  compiled: Any
  state: Any
  order: Any  # experiments.parallel.DataOrder, handed from one dispatch to the next
  lower_s: float
  compile_s: float
  compiled_memory_bytes: int | None
  cost: dict[str, float] = dataclasses.field(default_factory=dict)
  times: list[float] = dataclasses.field(default_factory=list)

  def dispatch(self, train_args: tuple) -> None:
    """Runs ``k`` steps, as the trainer does (asynchronously)."""
    self.state, self.order = self.compiled(self.state, *train_args, self.order)


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


def _run_sample(variant: _Variant, train_args: tuple, steps: int, warm: bool = False
                ) -> float:
  """Runs about ``steps`` steps back to back, waits for them; returns seconds per step.
  ``warm``: one dispatch first, untimed."""
  import jax
  dispatches = -(-steps // variant.k)
  if warm:
    variant.dispatch(train_args)
    jax.block_until_ready(variant.state)
  start = time.perf_counter()
  for _ in range(dispatches):
    variant.dispatch(train_args)
  jax.block_until_ready(variant.state)
  return (time.perf_counter() - start) / (dispatches * variant.k)


def _against_torch(result: dict[str, Any] | None, torch_times: Sequence[float | None],
                   times: Sequence[float], eval_per_device: float) -> dict[str, Any]:
  """A row's PyTorch fields: its interleaved reference's result, the median over the pairs
  of samples of PyTorch's time per step over ours (= our per-device images/s over PyTorch's
  at the per-device batch), and the evaluations' images/s ratio."""
  if result is None:
    return {'torch': None, 'jax_over_torch': None, 'eval_jax_over_torch': None}
  ratio = None
  if 'error' not in result and torch_times and None not in torch_times:
    ratio = float(np.median(np.asarray(torch_times) / np.asarray(times)))
  eval_ratio = (eval_per_device / result['eval_images_per_sec']
                if 'eval_images_per_sec' in result else None)
  return {'torch': result, 'jax_over_torch': ratio, 'eval_jax_over_torch': eval_ratio}


def benchmark_group(settings: Settings, model_name: str, batch: int, precision: str,
                    dataset=None) -> list[dict[str, Any]]:
  """Compiles and times every (conv, schedule, K) of one (model, batch, precision) group."""
  import jax

  from experiments import data, models, parallel, setup, train
  from experiments.benchmark import profiling

  devices = jax.devices()
  for conv in settings.convs:
    if why := models.conv.check_available(conv, devices[0].platform):
      raise BenchmarkError(why)
  mesh = parallel.make_mesh(devices)
  num_devices = mesh.size
  if dataset is None:
    dataset = data.load('synthetic', seed=settings.seed,
                        synthetic_size=(settings.train_examples, settings.test_examples))
  base, _ = plan(settings, model_name, batch, precision, settings.schedules[0])
  local_batch = setup.check_devices(base, num_devices)
  # The trainer's own model builder, once per conv.
  conv_models = {conv: setup.build_model(base.replace(conv=conv)) for conv in settings.convs}
  dtype = setup.compute_dtype(base)
  train_args = setup.put_training_data(mesh, dataset)
  init_key, step_key = jax.random.split(jax.random.key(settings.seed))
  name = f'{model_name} batch {batch} {precision}'

  variants: list[_Variant] = []
  for conv, schedule in itertools.product(settings.convs, settings.schedules):
    model = conv_models[conv]
    config, p = plan(settings, model_name, batch, precision, schedule)
    step_config = parallel.StepConfig(batch, config.augment, dtype)
    train_steps = parallel.make_train_steps(model, p.tx, mesh, step_config, step_key)
    initial = setup.create_state(model, p.tx, mesh, init_key)
    one_step_cost = None
    for k in sorted(settings.steps_per_dispatch, key=lambda k: k != 1):  # K=1 first
      # Each variant's own buffers: the step donates its state.
      state = jax.device_put(initial, parallel.replicated(mesh), may_alias=False)
      order = train_steps.no_order(k, len(dataset.train_labels))
      lowered, compiled, lower_s, compile_s = _lower_and_compile(
          train_steps.compiled(k), state, *train_args, order)
      log.info('%s, conv %s, %s, K=%d: lowered in %.1f s, compiled in %.1f s', name, conv,
               schedule, k, lower_s, compile_s)
      if one_step_cost is None:
        # XLA counts a while loop's body once, whatever its trip count: the cost of a step
        # is that of the one-step program (compiled here only for that if K=1 isn't run).
        if k != 1:
          lowered = train_steps.compiled(1).lower(
              state, *train_args, train_steps.no_order(1, len(dataset.train_labels)))
        compiled_one = compiled if k == 1 else lowered.compile()
        flops_model = model
        if conv != 'xla':  # XLA counts custom calls as nothing: the arithmetic is XLA's step's
          flops_model = setup.build_model(base.replace(conv='xla'))
          flops_steps = parallel.make_train_steps(flops_model, p.tx, mesh, step_config,
                                                  step_key)
          lowered = flops_steps.compiled(1).lower(
              state, *train_args, flops_steps.no_order(1, len(dataset.train_labels)))
        one_step_cost = step_cost(
            lowered, compiled_one,
            functools.partial(lower_one_step_on_cpu, flops_model, p.tx, step_config,
                              local_batch, step_key, state, train_args),
            cross_check=conv == 'xla')
      variants.append(_Variant(conv, schedule, k, p, compiled, state, order, lower_s,
                               compile_s, memory_analysis_bytes(compiled), one_step_cost))

  for v in variants:  # warm-up: the first runs allocate, and GPU clocks ramp up
    for _ in range(-(-settings.warmup_steps // v.k)):
      v.dispatch(train_args)
    jax.block_until_ready(v.state)
  chunk = train.eval_chunk(len(dataset.test_labels), num_devices)
  # On CPU the PyTorch reference takes its samples in turn with ours (on accelerators it
  # runs after the group, with the device to itself: runner).
  peer = None
  if settings.torch and devices[0].platform == 'cpu' and torch_importable():
    peer = InterleavedReference(settings, {
        'model': model_name, 'per_device_batch': local_batch, 'precision': precision,
        'eval_examples': len(dataset.test_labels), 'eval_chunk': chunk})
  try:  # the reference never outlives the group, whatever happens to it
    torch_times: list[float | None] = []
    # Interleaved samples, rotating the order, so that drift hits every variant alike.
    for i in range(settings.samples):
      for j in range(len(variants)):
        v = variants[(i + j) % len(variants)]
        v.times.append(_run_sample(v, train_args, settings.steps_per_sample,
                                   warm=peer is not None))
      if peer is not None:
        time.sleep(PAUSE_S)
        torch_times.append(peer.sample())

    # Evaluation: the trainer's chunking and padding of the test set.
    test = parallel.pad_for_eval(dataset.test_images, dataset.test_labels.astype(np.int32),
                                 num_devices, chunk)
    test_args = tuple(parallel.put_sharded(mesh, a) for a in test)
    evals = {}  # conv -> (lower s, compile s, images/s)
    for conv in settings.convs:
      state = next(v for v in variants if v.conv == conv).state
      eval_args = (state.params, state.batch_stats, *test_args, *train_args[2:])
      _, evaluate, eval_lower_s, eval_compile_s = _lower_and_compile(
          parallel.make_eval_step(conv_models[conv], mesh, dtype, chunk), *eval_args)
      jax.block_until_ready(evaluate(*eval_args))
      eval_times = []
      for _ in range(settings.eval_repeats):
        start = time.perf_counter()
        jax.block_until_ready(evaluate(*eval_args))
        eval_times.append(time.perf_counter() - start)
      evals[conv] = (eval_lower_s, eval_compile_s,
                     len(dataset.test_labels) / float(np.median(eval_times)))

    torch_result = None
    if peer is not None:
      time.sleep(PAUSE_S)
      torch_result = peer.finish()
  finally:
    if peer is not None:
      peer.close()
  profiles: dict[int, tuple[str, dict[str, Any] | None]] = {}
  if settings.profile_dir:  # after the timing, so that tracing cannot disturb it
    for i, v in enumerate(variants):
      where = os.path.join(settings.profile_dir, _slug(f'{model_name}-b{batch}-{precision}'),
                           _slug(f'{i}-{v.conv}-{v.schedule}-k{v.k}'))
      dispatches = -(-settings.profile_steps // v.k)
      with profiling.trace(where):
        for _ in range(dispatches):
          v.dispatch(train_args)
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
    # The first schedule, same conv and K.
    reference = next(r for r in variants if r.conv == v.conv and r.k == v.k)
    ratio = None
    if len(settings.schedules) > 1:
      ratio = float(np.median(np.asarray(v.times) / np.asarray(reference.times)))
    rows.append({
        'model': model_name, 'parameters': parameters, 'batch_size': batch,
        'per_device_batch': local_batch,
        'precision': precision, 'conv': v.conv,
        'schedule': v.schedule, 'schedule_spec': repr(v.plan.lr_schedule),
        'momentum_spec': repr(v.plan.momentum), 'steps_per_dispatch': v.k,
        'device_kind': device.device_kind, 'device_count': num_devices,
        'lower_s': v.lower_s, 'compile_s': v.compile_s,
        'eval_lower_s': evals[v.conv][0], 'eval_compile_s': evals[v.conv][1],
        'step_time_ms': times, 'samples': len(v.times),
        'timed_steps': len(v.times) * -(-settings.steps_per_sample // v.k) * v.k,
        'train_images_per_sec': batch / seconds,
        'eval_images_per_sec': evals[v.conv][2], 'eval_examples': len(dataset.test_labels),
        'eval_chunk': chunk,
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
        'sample_step_ms': [t * 1e3 for t in v.times],
        **_against_torch(torch_result, torch_times, v.times, evals[v.conv][2] / num_devices),
    })
  return rows
