"""What a step costs: XLA's FLOP and memory analyses of its program, and the devices' dense
peak TFLOP/s that the achieved rate is a fraction of."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

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


def step_cost(lowered, compiled, lower_on_cpu: Callable[[], Any] | None = None,
              cross_check: bool = True) -> dict[str, Any]:
  """The FLOPs of the program before optimisation, the bytes accessed after it (fusion
  decides what is read), and the compiled program's FLOPs as a cross-check.

  Backends behind the PJRT C API (the CUDA and TPU plugins) cannot analyse a lowered
  program; there ``lower_on_cpu()``, the same step lowered for one CPU device at the
  per-device batch, is analysed instead (``flops_source`` says which). ``cross_check=False``
  where ``lowered`` is another program with the same arithmetic (the step with XLA's
  convolutions, for one whose convolutions are custom calls, which XLA counts as nothing).
  """
  before, after = cost_analysis(lowered), cost_analysis(compiled)
  source = 'lowered'
  if 'flops' not in before and lower_on_cpu is not None:
    before, source = cost_analysis(lower_on_cpu()), 'lowered on cpu'
  if 'flops' not in before:
    source = 'compiled'
  cost = {'flops': before.get('flops', after.get('flops')), 'flops_source': source,
          'compiled_flops': after.get('flops'), 'bytes accessed': after.get('bytes accessed')}
  if cross_check and cost['flops'] and cost['compiled_flops']:
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
  order = steps.no_order(1, train_args[1].shape[0])  # (images, labels, mean, std)
  return steps.compiled(1).lower(*jax.tree.map(abstract, (state, *train_args, order)))


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
