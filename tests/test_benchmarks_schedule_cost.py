"""benchmarks/schedule_cost.py runs and reports every field (correctness only, no timing)."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_quick_run_writes_every_field(tmp_path):
  out = tmp_path / 'cost.json'
  result = subprocess.run(
      [sys.executable, str(ROOT / 'benchmarks' / 'schedule_cost.py'), '--quick', '--json',
       str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(out.read_text())
  env = report['environment']
  for key in ('date', 'device_kind', 'platform', 'jax', 'optax', 'commit', 'command'):
    assert key in env
  assert (env['params'], env['updates_per_call'], env['repeats']) == (1000, 5, 2)
  # Every registered schedule is timed: a new one needs a row in CASES.
  assert report['untimed'] == []
  rows = report['results']
  assert rows[0]['impl'] == 'float' and rows[0]['overhead_us'] == 0
  impls = {(r['schedule'].split('(')[0], r['impl']) for r in rows}
  assert {('one_cycle', 'lrsched'), ('one_cycle', 'optax'), ('cosine', 'optax'),
          ('sgdr', 'optax'), ('cyclic_momentum', 'lrsched')} <= impls
  for row in rows:
    assert row['us_per_update'] > 0 and row['compile_s'] > 0
    assert {'overhead_us', 'overhead_pct', 'hyperparam'} <= set(row)
    if row['impl'] == 'optax':  # The Optax schedule compared is the same schedule.
      assert row['max_abs_diff_vs_lrsched'] < 1e-3, row
    else:
      assert row['max_abs_diff_vs_lrsched'] is None
  assert '| `one_cycle(max_lr=0.8, total_steps=10000)` | optax | learning_rate |' in result.stdout
  assert f"jax {env['jax']}" in result.stdout
