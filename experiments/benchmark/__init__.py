r"""Training-speed benchmark: compile time, step time, images/s and TFLOP/s of the CIFAR step.

  python -m experiments.benchmark                    # the default table (see below)
  python -m experiments.benchmark --models=resnet56 --batch_sizes=512 \
      --precisions=bfloat16 --steps_per_dispatch=1,10 --json=bench.json
  python -m experiments.benchmark --models=resnet56 --batch_sizes=512 \
      --schedules=constant,one_cycle,triangular    # what a schedule costs per step
  python -m experiments.benchmark --torch            # and the PyTorch reference
  python -m experiments.benchmark --models=resnet20 --batch_sizes=128 \
      --precisions=float32 --convs=xla,onednn --torch    # CPU: XLA's kernels, oneDNN's, torch

It times what ``python -m experiments.cifar`` runs, not a copy of it: the step of
`experiments.parallel.make_train_steps` (``K = --steps_per_dispatch`` steps scanned inside one
dispatch), with the model, optimizer and state built as `experiments.train` builds them, on
synthetic uint8 CIFAR-shaped data replicated on every device, as the trainer keeps the
training set; evaluation is `experiments.parallel.make_eval_step` on a padded, sharded test set.

For each configuration (model, global batch, precision, conv, schedule, K) it reports

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
  steps goes (`profiling`: the device's busy fraction, time per step by kind of
  op, the top ops; on CPU, from XLA:CPU's op events on the host threads), and
  ``profile_dir``, the row's trace for Perfetto or TensorBoard. Tracing runs after the timing.

With several ``--schedules``, every schedule's step is compiled in the same process and their
samples are interleaved, so that clock and thermal drift cancel; ``schedule_cost_ratio`` is
the median over rounds of (this step time / the first schedule's step time) at the same K.
Schedules are cheap scalar functions: the target is a ratio within 1% of 1. Several
``--convs`` (the trainer's ``--conv``: whose kernels run the convolutions) are compiled and
interleaved the same way, each with its own evaluation, against one PyTorch reference.

By default every (model, batch, precision) group runs in a fresh process (``--isolate``), so
that peak memory and compile time are those of the group alone. Default groups: resnet56 at
batch 128, 512 and 1000 and wrn-28-10 at 128 and 512, each in float32 and bfloat16, each
with K = 1 and 10. ``--quick``: a tiny configuration for tests and smoke runs.

Output: a markdown table on stdout; ``--json`` writes ``{'environment': ..., 'results':
[one object per configuration]}``. ``--torch`` also runs ``benchmarks/torch_reference.py``
(a subprocess; PyTorch is never imported here) on the same model, per-device batch and
precision, and reports the per-device JAX/PyTorch images/s ratio of the training step
(``jax_over_torch``) and of the evaluation over the same test-set size and chunk, PyTorch's
under ``torch.inference_mode`` (``eval_jax_over_torch``). On CPU the reference runs beside
the group and takes each of its samples in turn with the group's (a shared CPU's load then
weighs on both), and ``jax_over_torch`` is the median over the pairs of samples of
PyTorch's time per step over ours; on accelerators it runs after the group, with the
device to itself, and the ratio is that of the medians. It runs with the environment the
benchmark was given (`experiments.allocator`'s setting removed).

The package, one concern a module: `settings` (the flags, resolved and checked once, and
each configuration planned as the trainer plans it), `timing` (one group compiled and
timed), `cost` (XLA's FLOP and memory analyses, the devices' peaks), `reference` (the
PyTorch subprocess), `report` (the environment and the table), `runner` (every group,
isolated, and ``main``), `profiling` (the summary of a trace).
"""

from experiments.benchmark.cost import (
  PEAK_TFLOPS,
  cost_analysis,
  lower_one_step_on_cpu,
  memory_analysis_bytes,
  peak_basis,
  peak_memory_bytes,
  peak_tflops,
  step_cost,
)
from experiments.benchmark.reference import run_torch_reference
from experiments.benchmark.report import environment, markdown
from experiments.benchmark.runner import main, run
from experiments.benchmark.settings import (
  BenchmarkError,
  Settings,
  define_flags,
  plan,
  settings_from_flags,
  split_specs,
)
from experiments.benchmark.timing import benchmark_group

__all__ = [
    'PEAK_TFLOPS', 'BenchmarkError', 'Settings', 'benchmark_group', 'cost_analysis',
    'define_flags', 'environment', 'lower_one_step_on_cpu', 'main', 'markdown',
    'memory_analysis_bytes', 'peak_basis', 'peak_memory_bytes', 'peak_tflops', 'plan', 'run',
    'run_torch_reference', 'settings_from_flags', 'split_specs', 'step_cost',
]
