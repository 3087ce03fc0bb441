"""benchmarks/gpu_run.py in its --tiny mode on CPU: every stage runs, the output folder holds
what comes back from a GPU machine (at most 8 flat files), and a rerun resumes, not repeats."""

import json
import os
import subprocess
import sys

import pytest

from tests.xla_flags import with_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'benchmarks', 'gpu_run.py')


def gpu_run(out, work, *extra):
  return subprocess.run([sys.executable, SCRIPT, '--tiny', f'--out={out}', f'--workdir={work}',
                         *extra], cwd=ROOT, capture_output=True, text=True, timeout=600,
                        # One CPU device, as the one GPU the script is written for.
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': with_devices(None)})


@pytest.fixture(scope='module')
def first(tmp_path_factory):
  out, work = tmp_path_factory.mktemp('out'), tmp_path_factory.mktemp('work')
  return out, work, gpu_run(out, work)


def test_every_stage_writes_its_file(first):
  out, _, result = first
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  files = sorted(os.listdir(out))
  assert files == sorted(['env.json', 'bench.json', 'bench.md', 'clr.json', 'step.json',
                          'results.md', 'log.txt'])
  assert all(os.path.isfile(out / f) for f in files) and len(files) <= 8
  env = json.load(open(out / 'env.json'))
  assert env['platform'] == 'cpu' and env['jax'] and 'smoke' in env
  bench = json.load(open(out / 'bench.json'))
  assert bench['results'] and all(r['train_images_per_sec'] > 0 for r in bench['results'])
  for name in ('clr', 'step'):
    record = json.load(open(out / f'{name}.json'))
    assert record['status'] == 'finished' and record['steps'] == 4
    assert [e['step'] for e in record['evaluations']] == [2, 4]
  results = open(out / 'results.md').read()
  assert 'sc-fig1a-clr final test accuracy (finished)' in results


def test_a_rerun_skips_what_is_done(first):
  out, work, _ = first
  again = gpu_run(out, work)
  assert again.returncode == 0, again.stdout[-3000:]
  for stage in ('env', 'bench', 'clr', 'step'):
    assert f'{stage}: done before' in again.stdout


def test_an_unreadable_environment_stops_at_once(tmp_path):
  result = subprocess.run([sys.executable, SCRIPT, f'--out={tmp_path}', '--data_dir=nowhere.npz'],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert result.returncode == 2 and '--data_dir=nowhere.npz does not exist' in result.stderr
