"""The report: the environment a run records (versions, commit, command) and the markdown
table of its rows."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import shlex
import subprocess
import sys
from typing import Any

from experiments.benchmark.settings import ROOT, Settings


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


def _fmt(value, spec: str, scale: float = 1.0) -> str:
  return '-' if value is None else format(value * scale, spec)


def markdown(results: list[dict[str, Any]]) -> str:
  """The results as a markdown table (and the schedule-cost column where it applies)."""
  with_ratio = any(r.get('schedule_cost_ratio') is not None for r in results)
  with_torch = any(r.get('torch') for r in results)
  with_profile = any(r.get('profile') for r in results)
  with_conv = any(r.get('conv', 'xla') != 'xla' for r in results)
  header = ['model', 'batch', 'precision'] + ['conv'] * with_conv + ['schedule', 'K', 'compile s',
            'step ms (p10-p90)', 'train img/s', 'eval img/s', 'GFLOP/img', 'TFLOP/s',
            '% peak', 'group peak mem GiB']
  header += ['vs 1st schedule'] * with_ratio
  header += ['torch img/s', 'JAX/torch', 'torch eval img/s', 'eval JAX/torch'] * with_torch
  header += ['device busy %', 'top device op'] * with_profile
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for r in results:
    if 'error' in r:
      cells = [r['model'], str(r['batch_size']), r['precision'], f'error: {r["error"]}']
      cells += [''] * (len(header) - len(cells))
    else:
      t = r['step_time_ms']
      schedule = r['schedule'] if len(r['schedule']) <= 24 else r['schedule'][:21] + '...'
      cells = [r['model'], str(r['batch_size']), r['precision'], *[r['conv']] * with_conv,
               schedule,
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
                  _fmt(r.get('jax_over_torch'), '.2f'),
                  _fmt(torch_result.get('eval_images_per_sec'), ',.0f'),
                  _fmt(r.get('eval_jax_over_torch'), '.2f')]
      if with_profile:
        profile = r.get('profile') or {}
        top = (profile.get('top_ops') or [{}])[0]
        cells += [_fmt(profile.get('device_busy_fraction'), '.1f', 100.0),
                  (f'{top["name"][:32]} ({top["fraction"]:.0%})' if top else '-')]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)
