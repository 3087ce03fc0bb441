"""The device-time summary of a jax.profiler trace, on traces written here."""

from __future__ import annotations

import gzip
import json
import os

import jax
import jax.numpy as jnp
import pytest

from experiments.benchmark import profiling


def _write_trace(folder, events) -> None:
  # Where jax.profiler puts it: <log_dir>/plugins/profile/<run>/perfetto_trace.json.gz.
  run = folder / 'plugins' / 'profile' / 'run'
  run.mkdir(parents=True)
  with gzip.open(run / 'perfetto_trace.json.gz', 'wt') as f:
    json.dump({'displayTimeUnit': 'ns', 'traceEvents': events}, f)


def _process(pid, name):
  return {'ph': 'M', 'pid': pid, 'name': 'process_name', 'args': {'name': name}}


def _op(pid, tid, name, ts, dur, **args):
  return {'ph': 'X', 'pid': pid, 'tid': tid, 'name': name, 'ts': ts, 'dur': dur,
          'args': args}


@pytest.fixture
def gpu_trace(tmp_path):
  # Two steps on one GPU, two streams (an NCCL all-reduce overlapping compute), and host
  # events that must not count. Times in microseconds.
  events = [
      _process(1, '/host:CPU'), _process(7, '/device:GPU:0'),
      _op(1, 1, 'PjitFunction(replica_train)', 0, 1000),
      _op(7, 1, 'sm90_xmma_fprop_implicit_gemm_bf16', 100, 300, hlo_op='cudnn-conv.1'),
      _op(7, 1, 'convert_add_fusion', 400, 100),
      _op(7, 1, 'sort_kernel', 500, 50),
      _op(7, 2, 'ncclDevKernel_AllReduce_Sum_f32', 450, 150),
      _op(7, 1, 'sm90_xmma_fprop_implicit_gemm_bf16', 700, 300, hlo_op='cudnn-conv.1'),
      _op(7, 1, 'loop_multiply_fusion', 1000, 100),
      # The idle time 600..700 is host time the device waited for.
  ]
  _write_trace(tmp_path, events)
  return tmp_path


def test_summary_of_a_gpu_trace(gpu_trace):
  s = profiling.summarize(str(gpu_trace), steps=2)
  assert s['devices'] == 1
  assert s['span_ms_per_step'] == pytest.approx(0.5)  # 100..1100 us, over 2 steps
  # Busy: 100..600 and 700..1100, overlaps counted once: 900 of 1000 us.
  assert s['device_busy_fraction'] == pytest.approx(0.9)
  assert s['busy_ms_per_step'] == pytest.approx(0.45)
  assert s['categories'] == pytest.approx({
      'convolution': 0.3, 'fusion': 0.1, 'collective': 0.075, 'sort': 0.025})
  top = s['top_ops'][0]
  assert top['name'] == 'sm90_xmma_fprop_implicit_gemm_bf16'
  assert top['ms_per_step'] == pytest.approx(0.3)
  assert top['fraction'] == pytest.approx(600 / 1000)  # of all device op time


@pytest.mark.parametrize('name, args, kind', [
    ('convert_reduce_fusion', {}, 'fusion'),  # 'convert' is no convolution
    ('custom-call.3', {'hlo_op': 'cudnn-conv-bw-filter.3'}, 'convolution'),
    ('sm90_xmma_gemm_bf16bf16', {}, 'matmul'),
    ('Memcpy DtoD', {}, 'copy'),
    ('transpose_copy_fusion.2', {}, 'copy'),
    ('rng_bit_generator', {}, 'other'),
])
def test_category(name, args, kind):
  assert profiling.category(name, args) == kind


def test_a_cpu_trace_is_summarised_from_xla_cpu_op_events(tmp_path):
  f = jax.jit(lambda x: jnp.sin(x) @ x)
  x = jnp.ones((256, 256))
  jax.block_until_ready(f(x))  # compiled before the trace
  with profiling.trace(str(tmp_path)):  # a real trace, on the CPU: no device timeline
    for _ in range(2):
      jax.block_until_ready(f(x))
  s = profiling.summarize(str(tmp_path), steps=2)
  assert s['timeline'] == 'cpu'
  assert s['devices'] == 1
  assert 0 < s['busy_ms_per_step'] <= s['span_ms_per_step']
  # Every op counted once by kind; ops overlapping on threads count once in busy.
  assert sum(s['categories'].values()) >= s['busy_ms_per_step'] * (1 - 1e-9)
  assert s['top_ops'] and all(op['ms_per_step'] > 0 for op in s['top_ops'])


def test_a_trace_without_xla_ops_has_no_summary(tmp_path):
  _write_trace(tmp_path, [_process(1, '/host:CPU'), _op(1, 1, 'PjitFunction(f)', 0, 1000),
                          _op(1, 1, 'ThunkExecutor::Execute', 10, 900)])
  assert profiling.summarize(str(tmp_path), steps=1) is None


def test_cpu_custom_calls_have_a_category():
  assert profiling.category('ffi_call.64', {'hlo_op': 'ffi_call.64'}) == 'custom call'


def test_a_folder_without_a_trace_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match=os.fspath(tmp_path)):
    profiling.summarize(str(tmp_path), steps=1)
