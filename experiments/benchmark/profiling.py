"""Where a training step's device time goes: a summary of a ``jax.profiler`` trace.

`trace` records a few steps with ``jax.profiler.trace(..., create_perfetto_trace=True)``;
`summarize` reads the Perfetto JSON it writes and, over the accelerator timelines (the
trace's processes named ``/device:...``), reports

* ``device_busy_fraction``: the time some op ran on the device over the traced span. Well
  below 1, the device waits on the host (dispatch, Python, a synchronisation);
* ``busy_ms_per_step`` and ``categories``: device time per step by kind of op
  (convolution, matmul, sort, collective, copy, other fusions), from the op or kernel
  names;
* ``top_ops``: the ops that took the most device time, per step.

This is what issue-style questions ("is it the host? the layout? the shuffle?") need,
without TensorBoard: the benchmark stores it in its JSON (``--profile_dir``), and the trace
itself stays in that folder for Perfetto (ui.perfetto.dev) or TensorBoard's profiler. On
CPU there is no device timeline: XLA:CPU's ops run on host threads, as events that name
their HLO op (``hlo_op``), and those are summarised instead (``timeline: 'cpu'``; ops on
several threads at once make ``busy`` the time some op ran, and the categories can add up
to more than the span). A trace with neither gives None.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import gzip
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import jax

CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # Not plain 'conv' (XLA's 'convert_*' fusions) nor 'xmma' (cuBLAS's GEMM kernels too).
    ('convolution', ('convolution', 'conv_general', 'cudnn', 'implicit_gemm', 'fprop',
                     'dgrad', 'wgrad', 'winograd')),
    ('matmul', ('gemm', 'cublas', 'dot', 'matmul')),
    ('sort', ('sort', 'radix')),
    ('collective', ('nccl', 'all-reduce', 'all_reduce', 'allreduce', 'all-gather',
                    'reduce-scatter', 'collective')),
    ('copy', ('memcpy', 'memset', 'copy', 'transpose')),
    ('fusion', ('fusion', 'loop_', 'input_', 'reduce', 'elementwise')),
    # XLA:CPU's names for custom calls (the oneDNN convolutions of --conv=onednn among them).
    ('custom call', ('ffi_call', 'custom-call', 'custom_call')),
)
"""Kinds of device op, matched in this order against the lower-cased op or kernel name (and
the ``hlo_op`` / ``long_name`` arguments where the trace has them); the rest is 'other'."""


@contextlib.contextmanager
def trace(log_dir: str) -> Iterator[None]:
  """Records everything run inside into ``log_dir`` (a Perfetto trace among the files)."""
  os.makedirs(log_dir, exist_ok=True)
  with jax.profiler.trace(log_dir, create_perfetto_trace=True):
    yield


def category(name: str, args: dict[str, Any] | None = None) -> str:
  """The kind of a device op, from its name (and its HLO op name, where given)."""
  text = ' '.join([name, *(str(v) for k, v in (args or {}).items()
                           if k in ('hlo_op', 'long_name', 'name'))]).lower()
  for kind, needles in CATEGORIES:
    if any(needle in text for needle in needles):
      return kind
  return 'other'


def _busy_time(intervals: Sequence[tuple[float, float]]) -> float:
  """The length of the union of [start, end) intervals."""
  busy, end = 0.0, float('-inf')
  for start, stop in sorted(intervals):
    if stop <= end:
      continue
    busy += stop - max(start, end)
    end = stop
  return busy


def newest_trace_file(log_dir: str) -> str | None:
  files = glob.glob(os.path.join(log_dir, '**', 'perfetto_trace.json.gz'), recursive=True)
  return max(files, key=os.path.getmtime) if files else None


def summarize(log_dir: str, steps: int, top: int = 12) -> dict[str, Any] | None:
  """The device-time summary of the newest trace in ``log_dir``, which ran ``steps``
  training steps (from XLA:CPU's op events where there is no device timeline); None when
  the trace has no XLA ops at all."""
  path = newest_trace_file(log_dir)
  if path is None:
    raise FileNotFoundError(f'no perfetto_trace.json.gz under {log_dir}')
  with gzip.open(path, 'rt') as f:
    events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  devices = {e['pid'] for e in events
             if e.get('ph') == 'M' and e.get('name') == 'process_name'
             and str((e.get('args') or {}).get('name', '')).startswith('/device:')}
  ops = [e for e in events if e.get('ph') == 'X' and e.get('pid') in devices
         and e.get('dur', 0) > 0]
  timeline = 'device'
  if not ops:  # CPU: XLA's ops are host-thread events that name their HLO op
    ops = [e for e in events if e.get('ph') == 'X' and e.get('dur', 0) > 0
           and 'hlo_op' in (e.get('args') or {})]
    devices = {(e.get('args') or {}).get('device_ordinal') for e in ops}
    timeline = 'cpu'
  if not ops:
    return None
  intervals = [(float(e['ts']), float(e['ts']) + float(e['dur'])) for e in ops]
  span_us = max(end for _, end in intervals) - min(start for start, _ in intervals)
  busy_us = _busy_time(intervals)
  by_name: collections.Counter[str] = collections.Counter()
  by_kind: collections.Counter[str] = collections.Counter()
  for e in ops:
    by_name[e['name']] += float(e['dur'])
    by_kind[category(e['name'], e.get('args'))] += float(e['dur'])
  total_us = sum(by_name.values())
  per_step_ms = lambda us: us / steps / 1e3
  return {
      'trace': path, 'timeline': timeline, 'steps': steps, 'devices': len(devices),
      'span_ms_per_step': per_step_ms(span_us),
      'busy_ms_per_step': per_step_ms(busy_us),
      'device_busy_fraction': busy_us / span_us if span_us > 0 else None,
      'categories': {kind: per_step_ms(us) for kind, us in by_kind.most_common()},
      'top_ops': [{'name': name, 'ms_per_step': per_step_ms(us), 'fraction': us / total_us}
                  for name, us in by_name.most_common(top)],
  }
