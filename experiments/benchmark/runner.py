"""The benchmark's run: every group, each in its own process by default, with the PyTorch
reference beside it; ``main`` prints the table and writes the JSON."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from typing import Any

from absl import app, flags

from experiments.benchmark.reference import run_torch_reference, torch_importable
from experiments.benchmark.report import environment, markdown
from experiments.benchmark.settings import ROOT, BenchmarkError, Settings, settings_from_flags
from experiments.benchmark.timing import benchmark_group

log = logging.getLogger(__name__)


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
  use_torch = settings.torch and torch_importable()
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
    if (use_torch and settings.torch_after_group and 'error' not in rows[0]
        and rows[0]['torch'] is None):  # not interleaved: after the group
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
          if 'eval_images_per_sec' in reference:
            row['eval_jax_over_torch'] = (row['eval_images_per_sec'] / row['device_count']
                                          / reference['eval_images_per_sec'])
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


