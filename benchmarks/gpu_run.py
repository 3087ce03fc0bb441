r"""One prepared GPU run: every headline figure of the project from one command.

  python benchmarks/gpu_run.py --out=$OUT --data_dir=data/cifar10-jpeg.npz
  python benchmarks/gpu_run.py --tiny --out=/tmp/gpu-run     # the same stages, tiny, on CPU

GPU time is lent in 15-minute leases with at most 10 minutes a command, and only a few
files come back, so this script runs everything in one command of at most ``--budget_s``
seconds (default 540: 9 minutes), each stage a subprocess of our own binaries:

1. ``env``: JAX, jaxlib, CUDA and cuDNN versions and the device; one tiny training run of
   ``experiments.cifar`` that compiles and runs the trainer. It fails in seconds if our code
   does not import or compile on the machine's JAX, and then nothing else runs.
2. ``bench``: ``experiments.benchmark`` with the PyTorch reference side by side, in four
   calls that each get a share of the time (one that runs out costs only itself): ResNet-56
   bfloat16 at batch 1000 with K = 1 and 10 (with profile summaries); the schedule cost
   (constant, one_cycle, triangular) at batch 1000, K = 10; ResNet-56 at batch 512; WRN-28-10
   bfloat16 at batch 128.
3. ``clr``: the ``sc-fig1a-clr`` preset (ResNet-56, 10k iterations, batch 1000) with the
   fastest K the table found, in bfloat16, wall time included.
4. ``step``: the budget-matched step arm of ``--suite=sc-budget`` (``sc-budget-step``), if
   time remains.

Every result goes into ``--out``, flat, as at most 8 files: ``env.json``, ``bench.json``,
``bench.md``, ``clr.json``, ``step.json`` (each run's summary and evaluation rows),
``results.md`` (the headline figures beside their targets) and ``log.txt``. A stage whose
file is already in ``--out`` is skipped and an unfinished training resumes from
``--workdir``, so a second command right after the first (the machine stays warm for 30 s)
continues where the first stopped: a training stage that runs out of time is stopped with
SIGTERM, which saves a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = ('env.json', 'bench.json', 'bench.md', 'clr.json', 'step.json', 'results.md', 'log.txt')
TARGETS = {
    'resnet56_bf16_over_torch': 1.2,     # JAX/PyTorch images/s, ResNet-56 bf16
    'schedule_cost': 0.01,               # a schedule's share of a training step
    'clr_wall_s': 300.0,                 # sc-fig1a-clr under 5 minutes
    'wrn_peak_fraction': 0.35,           # WRN-28-10 bf16, fraction of the bf16 peak
    'clr_paper_accuracy': 0.924,         # Smith & Topin, Fig. 1a (original CIFAR-10)
}


class Run:
  """The stages' shared state: the output folder, the deadline and the log."""

  def __init__(self, args: argparse.Namespace):
    self.args = args
    self.deadline = time.time() + args.budget_s
    os.makedirs(args.out, exist_ok=True)
    self.log_file = open(os.path.join(args.out, 'log.txt'), 'a')

  def path(self, name: str) -> str:
    assert name in FILES, name
    return os.path.join(self.args.out, name)

  def left(self) -> float:
    return self.deadline - time.time()

  def say(self, text: str) -> None:
    line = f'[gpu_run {time.strftime("%H:%M:%S")}, {self.left():.0f} s left] {text}'
    print(line, flush=True)
    self.log_file.write(line + '\n')
    self.log_file.flush()

  def call(self, argv: list[str], *, limit: float, stop_grace: float = 60.0) -> int:
    """Runs ``argv`` from the repository root, its output into the log; after ``limit``
    seconds it gets SIGTERM (our binaries save a checkpoint and exit), then SIGKILL."""
    self.say('$ ' + ' '.join(argv))
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    if self.args.tiny:
      env['JAX_PLATFORMS'] = 'cpu'
    start = time.time()
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)

    def copy() -> None:
      for line in process.stdout:
        sys.stdout.write(line)
        self.log_file.write(line)

    reader = threading.Thread(target=copy, daemon=True)
    reader.start()
    try:
      process.wait(timeout=max(limit, 1.0))
    except subprocess.TimeoutExpired:
      self.say(f'time is up for this stage ({limit:.0f} s): SIGTERM')
      process.send_signal(signal.SIGTERM)
      try:
        process.wait(timeout=stop_grace)
      except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    reader.join(timeout=5)
    self.log_file.flush()
    self.say(f'exit {process.returncode} after {time.time() - start:.1f} s')
    return process.returncode


def stage_env(run: Run) -> bool:
  """Versions and device; a tiny training run that must compile and finish."""
  if os.path.exists(run.path('env.json')):
    run.say('env: done before')
    return True
  probe = ('import json, jax, jaxlib, flax, optax; import lrsched, experiments.train\n'
           'from jax.extend import backend\n'
           'dev = jax.devices()[0]\n'
           'info = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, '
           '"flax": flax.__version__, "optax": optax.__version__, '
           '"platform": dev.platform, "device_kind": dev.device_kind, '
           '"device_count": jax.device_count(), '
           '"platform_version": backend.get_backend().platform_version}\n'
           'try:\n'
           '  import torch; info["torch"] = torch.__version__\n'
           '  info["cuda"] = torch.version.cuda\n'
           '  info["cudnn"] = torch.backends.cudnn.version()\n'
           'except Exception as e: info["torch"] = repr(e)\n'
           'print("ENV " + json.dumps(info))\n')
  out = subprocess.run([sys.executable, '-c', probe], cwd=ROOT, capture_output=True,
                       text=True, timeout=120,
                       env={**os.environ, **({'JAX_PLATFORMS': 'cpu'} if run.args.tiny
                                             else {})})
  run.log_file.write(out.stdout + out.stderr)
  lines = [line for line in out.stdout.splitlines() if line.startswith('ENV ')]
  if out.returncode or not lines:
    run.say('env: our code does not import here; stopping\n' + out.stderr[-3000:])
    return False
  info = json.loads(lines[-1][4:])
  run.say('env: ' + json.dumps(info))
  workdir = os.path.join(run.args.workdir, 'smoke')
  code = run.call([sys.executable, '-m', 'experiments.cifar', '--dataset=synthetic',
                   '--model=resnet8', '--batch_size=16', '--synthetic_examples=64',
                   '--steps=2', '--eval_every=2', '--log_every=1', '--checkpoint_every=2',
                   '--schedule=constant(lr=0.1)', f'--workdir={workdir}'], limit=120)
  if code:
    run.say('env: the trainer does not compile or run here; stopping')
    return False
  info['smoke'] = 'a 2-step resnet8 run of experiments.cifar finished'
  _write_json(run.path('env.json'), info)
  return True


def _bench_groups(tiny: bool) -> list[tuple[str, float, list[str]]]:
  """(name, share of the benchmark's time, flags): one benchmark call each, the most
  important first, so that a group that runs out of time costs only itself."""
  if tiny:
    # The PyTorch reference, K > 1 and the isolated groups are tested with the benchmark's
    # own tests; here one program in one process keeps the test of this script short.
    return [('tiny', 1.0, ['--quick', '--steps_per_dispatch=1', '--schedules=constant',
                           '--noisolate'])]
  common = ['--precisions=bfloat16', '--warmup_steps=5', '--samples=5',
            '--steps_per_sample=10', '--eval_repeats=2']
  return [
      ('resnet56-b1000', 0.4, ['--models=resnet56', '--batch_sizes=1000',
                               '--steps_per_dispatch=1,10', '--schedules=constant', '--torch',
                               '--profile_dir=/tmp/gpu_run_profile', '--profile_steps=10',
                               *common]),
      ('schedules', 0.2, ['--models=resnet56', '--batch_sizes=1000', '--steps_per_dispatch=10',
                          '--schedules=constant,one_cycle,triangular', *common]),
      ('resnet56-b512', 0.2, ['--models=resnet56', '--batch_sizes=512',
                              '--steps_per_dispatch=10', '--schedules=constant', '--torch',
                              *common]),
      ('wrn', 0.2, ['--models=wrn-28-10', '--batch_sizes=128', '--steps_per_dispatch=10',
                    '--schedules=constant', *common]),
  ]


def stage_bench(run: Run) -> None:
  if os.path.exists(run.path('bench.json')):
    run.say('bench: done before')
    return
  results, environment = [], None
  groups = _bench_groups(run.args.tiny)
  # The training stages keep --train_share of what is left; the groups share the rest.
  budget = run.left() * (1 - run.args.train_share)
  for name, share, flags in groups:
    limit = budget * share
    part = os.path.join(run.args.workdir, f'bench-{name}.json')
    code = run.call([sys.executable, '-m', 'experiments.benchmark', *flags,
                     f'--json={part}'], limit=limit, stop_grace=10)
    if code or not os.path.exists(part):
      run.say(f'bench: group {name} failed or ran out of time; going on')
      continue
    with open(part) as f:
      report = json.load(f)
    environment = environment or report['environment']
    results += [{**row, 'group': name} for row in report['results']]
  _write_json(run.path('bench.json'), {'environment': environment, 'results': results})
  with open(run.path('bench.md'), 'w') as f:
    f.write(bench_table(results) + '\n')


def bench_table(rows: list[dict[str, Any]]) -> str:
  """The rows that matter, one line each."""
  lines = ['| group | model | batch | precision | schedule | K | img/s | torch img/s | '
           'JAX/torch | schedule cost | % peak | compile s |', '|' + '---|' * 12]
  for r in rows:
    torch = r.get('torch') or {}
    cost = r.get('schedule_cost_ratio')
    lines.append('| ' + ' | '.join(str(v) for v in [
        r['group'], r['model'], r['batch_size'], r['precision'], r['schedule'],
        r['steps_per_dispatch'], f"{r['train_images_per_sec']:,.0f}",
        _fmt(torch.get('train_images_per_sec'), ',.0f'), _fmt(r.get('jax_over_torch'), '.2f'),
        '-' if cost is None else f'{100 * (cost - 1):+.1f}%',
        '-' if r.get('peak_fraction') is None else f"{100 * r['peak_fraction']:.0f}%",
        _fmt(r.get('compile_s'), '.1f')]) + ' |')
  return '\n'.join(lines)


def best_k(run: Run) -> int:
  """The K of the fastest ResNet-56 row at batch 1000 (the training stages' batch)."""
  if not os.path.exists(run.path('bench.json')):
    return 1
  with open(run.path('bench.json')) as f:
    rows = [r for r in json.load(f)['results'] if r['batch_size'] == (16 if run.args.tiny
                                                                       else 1000)]
  if not rows:
    return 1
  return max(rows, key=lambda r: r['train_images_per_sec'])['steps_per_dispatch']


def stage_train(run: Run, name: str, preset: str, *, min_left: float = 30.0) -> None:
  """Trains ``preset`` (resuming from --workdir), then writes ``<name>.json``."""
  out = run.path(f'{name}.json')
  if os.path.exists(out) and json.load(open(out)).get('status') == 'finished':
    run.say(f'{name}: done before')
    return
  if run.left() < min_left:
    run.say(f'{name}: not started, {run.left():.0f} s left (run the same command again)')
    return
  k = best_k(run)
  workdir = os.path.join(run.args.workdir, preset)
  argv = [sys.executable, '-m', 'experiments.cifar', f'--preset={preset}',
          f'--workdir={workdir}', f'--steps_per_dispatch={k}', '--checkpoint_every=500']
  if run.args.tiny:
    argv += ['--dataset=synthetic', '--synthetic_examples=128', '--model=resnet8',
             '--batch_size=32', '--bn_group_size=8', '--steps=4', '--eval_every=2',
             '--log_every=2', '--checkpoint_every=2',
             '--schedule=' + ('super_convergence(base_lr=0.1, max_lr=3.0, step_size=2)'
                              if name == 'clr' else
                              'multistep(lr=0.35, milestones=[2, 3], gamma=0.1)')]
  else:
    argv += ['--precision=bfloat16', f'--data_dir={run.args.data_dir}']
  start = time.time()
  run.call(argv, limit=run.left() - 15)
  summary_path = os.path.join(workdir, 'summary.json')
  rows_path = os.path.join(workdir, 'metrics.jsonl')
  rows = []
  if os.path.exists(rows_path):
    with open(rows_path) as f:
      rows = [json.loads(line) for line in f if line.strip().startswith('{')]
  record = {'preset': preset, 'steps_per_dispatch': k, 'this_call_s': time.time() - start,
            'status': 'unfinished', 'evaluations': [r for r in rows if 'test_accuracy' in r]}
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      record.update(json.load(f))
  _write_json(out, record)
  run.say(f"{name}: {record['status']}, final test accuracy "
          f"{record.get('final_test_accuracy')}")


def write_results(run: Run) -> None:
  """results.md: each headline figure beside its target (only what was measured here)."""
  lines = ['# GPU run: headline figures', '']
  if os.path.exists(run.path('env.json')):
    env = json.load(open(run.path('env.json')))
    lines.append(f"device: {env.get('device_kind')} x {env.get('device_count')}; jax "
                 f"{env.get('jax')}, jaxlib {env.get('jaxlib')}, CUDA {env.get('cuda')}, "
                 f"cuDNN {env.get('cudnn')}, torch {env.get('torch')}")
    lines.append('')
  rows = json.load(open(run.path('bench.json')))['results'] if os.path.exists(
      run.path('bench.json')) else []
  ratios = [r['jax_over_torch'] for r in rows if r.get('jax_over_torch')]
  costs = [r['schedule_cost_ratio'] - 1 for r in rows if r.get('schedule_cost_ratio')]
  peaks = [r['peak_fraction'] for r in rows if r['model'].startswith('wrn')
           and r.get('peak_fraction')]
  figures = [('ResNet-56 bf16 JAX/PyTorch', max(ratios, default=None), '>= 1.2x', '.2f'),
             ('largest schedule cost', max(costs, default=None), '< 1%', '+.1%'),
             ('WRN-28-10 bf16 fraction of peak', max(peaks, default=None), '>= 35%', '.0%')]
  for name in ('clr', 'step'):
    if os.path.exists(run.path(f'{name}.json')):
      record = json.load(open(run.path(f'{name}.json')))
      figures.append((f"{record['preset']} final test accuracy ({record['status']})",
                      record.get('final_test_accuracy'),
                      '92.4% in the paper (original CIFAR-10; ours: JPEG copy)', '.2%'))
      figures.append((f"{record['preset']} wall time, s", record.get('wall_time_s'),
                      '< 300 s' if name == 'clr' else '-', '.0f'))
  lines += ['| figure | measured | target |', '|---|---|---|']
  lines += [f'| {n} | {_fmt(v, f)} | {t} |' for n, v, t, f in figures]
  with open(run.path('results.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


def _fmt(value: Any, spec: str) -> str:
  return '-' if value is None else format(value, spec)


def _write_json(path: str, value: Any) -> None:
  with open(path + '.tmp', 'w') as f:
    json.dump(value, f, indent=2)
  os.replace(path + '.tmp', path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', required=True, help='The output folder (flat, <= 8 files).')
  parser.add_argument('--data_dir', default='data/cifar10-jpeg.npz',
                      help='The CIFAR-10 copy the training stages read.')
  parser.add_argument('--workdir', default='runs/gpu_run',
                      help='Where the runs keep their checkpoints (resumed by a rerun).')
  parser.add_argument('--budget_s', type=float, default=540.0,
                      help='Wall-clock budget of the whole command, seconds.')
  parser.add_argument('--train_share', type=float, default=0.55,
                      help='The share of the time left after env kept for training.')
  parser.add_argument('--tiny', action='store_true',
                      help='Tiny shapes on CPU: the same stages in about a minute (tests).')
  args = parser.parse_args(argv)
  if not args.tiny and not os.path.exists(os.path.join(ROOT, args.data_dir)) and not (
      os.path.exists(args.data_dir)):
    parser.error(f'--data_dir={args.data_dir} does not exist: copy the CIFAR-10 npz there '
                 '(see WORKSPACE.md, "One GPU")')
  if not 0 <= args.train_share < 1:
    parser.error(f'--train_share must be in [0, 1), got {args.train_share}')
  return args


def main(argv: list[str] | None = None) -> int:
  run = Run(parse_args(argv))
  run.say(f'start: {" ".join(sys.argv)}')
  if not stage_env(run):
    return 1
  stage_bench(run)
  stage_train(run, 'clr', 'sc-fig1a-clr')
  stage_train(run, 'step', 'sc-budget-step')
  write_results(run)
  run.say('done: ' + ', '.join(f for f in FILES if os.path.exists(run.path(f))))
  return 0


if __name__ == '__main__':
  sys.exit(main())
