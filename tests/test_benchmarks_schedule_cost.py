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
  for key in ('date', 'device_kind', 'jax', 'optax', 'params', 'updates_per_call', 'command'):
    assert key in report['environment']
  rows = report['results']
  assert {(r['family'], r['impl']) for r in rows} >= {('constant', 'lrsched'),
                                                      ('1cycle', 'lrsched'), ('1cycle', 'optax')}
  for row in rows:
    assert row['us_per_update'] > 0
    assert {'overhead_us', 'overhead_pct'} <= set(row)
  base = next(r for r in rows if r['family'] == 'constant' and r['impl'] == 'lrsched')
  assert base['overhead_us'] == 0
  assert '| 1cycle | lrsched |' in result.stdout
