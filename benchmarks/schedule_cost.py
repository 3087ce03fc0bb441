"""What does evaluating a schedule cost inside a jitted Optax update?

Each registered lrsched schedule (and Optax's own schedule of the same family, where there
is one) drives ``optax.inject_hyperparams(optax.sgd)(learning_rate=..., momentum=0.9)``
(a momentum schedule drives ``momentum=`` instead) on a parameter pytree. K updates run
inside one jitted ``lax.fori_loop``, so that dispatch does not dominate. After a warm-up
call, repeats are interleaved across schedules (round robin), so that drift in the
machine's speed falls on every schedule alike, and the median is reported in µs per update
with the overhead against a plain float learning rate (no schedule). For each Optax pair,
the largest difference between the two schedules over the first T steps says how alike
they are.

This is the cost in situ, after XLA's fusion: on XLA:CPU (jax 0.10) the scalar arithmetic
of a schedule can be fused into the elementwise parameter update and recomputed for every
parameter (for a cosine, a ``sine`` inside the f32[N] fusion), so that its overhead grows
with ``--params``; Optax's schedules of the same family behave alike.

  python benchmarks/schedule_cost.py                 # 1M parameters, prints a table
  python benchmarks/schedule_cost.py --params 10000000 --json cost.json
  python benchmarks/schedule_cost.py --quick         # a few seconds (used by the tests)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lrsched

T = 10_000  # The length of the finite schedules.

# (lrsched spec, hyper-parameter it drives, Optax's schedule of the same family or None).
# Every registered schedule should have a row: the ones without are listed in the report.
CASES: list[tuple[str, str, Callable[[], optax.Schedule] | None]] = [
    ('constant(0.1)', 'learning_rate', lambda: optax.constant_schedule(0.1)),
    (f'linear(0.1, 0.0, {T})', 'learning_rate', lambda: optax.linear_schedule(0.1, 0.0, T)),
    (f'log_linear(1e-5, 10.0, {T})', 'learning_rate', None),
    ('step_decay(0.1, step_size=3000, gamma=0.1)', 'learning_rate',
     lambda: optax.exponential_decay(0.1, 3000, 0.1, staircase=True)),
    ('multistep(0.35, milestones=[5000, 7000])', 'learning_rate',
     lambda: optax.piecewise_constant_schedule(0.35, {5000: 0.1, 7000: 0.1})),
    ('exponential(0.1, gamma=0.9999)', 'learning_rate',
     lambda: optax.exponential_decay(0.1, 1, 0.9999)),
    ('inverse_time(0.1, decay_rate=1e-3)', 'learning_rate', None),
    (f'polynomial(0.1, {T}, power=2.0)', 'learning_rate',
     lambda: optax.polynomial_schedule(0.1, 0.0, 2.0, T)),
    (f'cosine(0.1, {T})', 'learning_rate', lambda: optax.cosine_decay_schedule(0.1, T)),
    ('sgdr(max_lr=0.1, t0=1000, t_mult=2)', 'learning_rate', lambda: optax.sgdr_schedule(
        [{'init_value': 0.1, 'peak_value': 0.1, 'warmup_steps': 0,
          'decay_steps': 1000 * 2**i} for i in range(4)])),
    (f'warmup(cosine(0.1, {T}), warmup_steps=500)', 'learning_rate',
     lambda: optax.warmup_cosine_decay_schedule(0.0, 0.1, 500, T + 500)),
    (f'sequence([linear(0.0, 0.1, 500), cosine(0.1, {T})], durations=[500])', 'learning_rate',
     lambda: optax.join_schedules(
         [optax.linear_schedule(0.0, 0.1, 500), optax.cosine_decay_schedule(0.1, T)], [500])),
    ('cyclic(base_lr=0.1, max_lr=3.0, step_size_up=2000)', 'learning_rate', None),
    ('triangular(0.1, 3.0, 2000)', 'learning_rate', None),
    ('triangular2(0.1, 3.0, 2000)', 'learning_rate', None),
    ('exp_range(0.1, 3.0, 2000, gamma=0.9999)', 'learning_rate', None),
    ('cyclic_momentum(0.85, 0.95, step_size_up=2000)', 'momentum', None),
    (f'one_cycle(max_lr=0.8, total_steps={T})', 'learning_rate',
     lambda: optax.cosine_onecycle_schedule(T, 0.8)),
    (f'one_cycle(max_lr=0.8, total_steps={T}, anneal="linear")', 'learning_rate',
     lambda: optax.linear_onecycle_schedule(T, 0.8, pct_final=1.0)),
    (f'one_cycle_momentum(total_steps={T})', 'momentum', None),
    ('super_convergence(0.1, 3.0, 5000)', 'learning_rate', None),
    (f'smith_one_cycle(0.08, 0.8, {T})', 'learning_rate', None),
    (f'smith_one_cycle_momentum({T})', 'momentum', None),
    (f'caffe_one_cycle(0.08, 0.8, {T})', 'learning_rate', None),
    (f'fastai_one_cycle(0.8, {T})', 'learning_rate', None),
    (f'fastai_one_cycle_momentum({T})', 'momentum', None),
    (f'wsd(0.1, {T}, warmup_steps=500, decay_steps={T - 500}, decay="cosine")', 'learning_rate',
     lambda: optax.warmup_cosine_decay_schedule(0.0, 0.1, 500, T)),
    (f'wsd(0.1, {T}, warmup_steps=500)', 'learning_rate', None),
    (f'rsqrt(0.1, warmup_steps=500, total_steps={T}, cooldown_steps=1000)', 'learning_rate',
     None),
]


@dataclasses.dataclass
class Case:
  label: str
  impl: str  # 'float' (the baseline), 'lrsched' or 'optax'.
  hyperparam: str
  schedule: Any  # A float for the baseline.
  max_abs_diff: float | None = None  # Against the lrsched schedule of the same row.
  times: list[float] = dataclasses.field(default_factory=list)
  compile_s: float = 0.0


def cases() -> tuple[list[Case], list[str]]:
  """The cases to time, and the registered schedules that no row of CASES times."""
  out = [Case('no schedule (float lr, momentum)', 'float', 'learning_rate', 0.1)]
  timed = set()
  steps = jnp.arange(T)
  for text, hyperparam, reference in CASES:
    try:
      schedule = lrsched.parse(text)
    except ValueError as e:
      if 'unknown schedule' not in str(e):
        raise  # A row that no longer fits its constructor is a bug in this file.
      continue  # A schedule that this version of lrsched does not have.
    timed.add(schedule.name)
    out.append(Case(text, 'lrsched', hyperparam, schedule))
    if reference is not None:
      theirs = reference()
      # vmap: not every Optax schedule takes an array of steps.
      diff = np.abs(np.asarray(schedule(steps)) - np.asarray(jax.vmap(theirs)(steps)))
      out.append(Case(text, 'optax', hyperparam, theirs, max_abs_diff=float(np.max(diff))))
  return out, sorted(set(lrsched.spec.REGISTRY) - timed)


def make_update(case: Case, params: Any, k: int) -> tuple[Callable[..., Any], Any]:
  """A jitted function running k SGD-momentum updates driven by the case's schedule."""
  hyperparams = {'learning_rate': 0.1, 'momentum': 0.9, case.hyperparam: case.schedule}
  tx = optax.inject_hyperparams(optax.sgd)(**hyperparams)

  @jax.jit
  def run(params, opt_state):
    def body(_, carry):
      params, opt_state = carry
      grads = jax.tree.map(lambda p: p * 1e-3, params)  # Cheap, but depends on the params.
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    return jax.lax.fori_loop(0, k, body, (params, opt_state))

  return run, tx.init(params)


def measure(num_params: int, k: int, repeats: int) -> tuple[list[dict[str, Any]], list[str]]:
  """Times every case; returns the result rows and the schedules left untimed."""
  # A small pytree of three leaves, num_params float32s in all.
  n = max(num_params // 2, 1)
  params = {'w': jnp.ones((n,), jnp.float32), 'v': jnp.ones((num_params - n - 1,), jnp.float32),
            'b': jnp.ones((1,), jnp.float32)}
  todo, untimed = cases()
  runs = []
  for case in todo:
    run, state = make_update(case, params, k)
    start = time.perf_counter()
    jax.block_until_ready(run(params, state))  # Compile and warm up.
    case.compile_s = time.perf_counter() - start
    runs.append((case, run, state))
  for _ in range(repeats):
    for case, run, state in runs:  # Round robin: drift affects every schedule alike.
      start = time.perf_counter()
      jax.block_until_ready(run(params, state))
      case.times.append((time.perf_counter() - start) / k * 1e6)
  base = statistics.median(todo[0].times)
  rows = []
  for case in todo:
    us = statistics.median(case.times)
    rows.append({'schedule': case.label, 'impl': case.impl, 'hyperparam': case.hyperparam,
                 'us_per_update': us, 'overhead_us': us - base,
                 'overhead_pct': 100 * (us - base) / base, 'compile_s': case.compile_s,
                 'max_abs_diff_vs_lrsched': case.max_abs_diff})
  return rows, untimed


def environment(args: argparse.Namespace) -> dict[str, Any]:
  try:
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                            text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    commit = None
  device = jax.devices()[0]
  return {'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
          'device_kind': device.device_kind, 'platform': device.platform,
          'device_count': jax.device_count(), 'cpu': platform.processor() or platform.machine(),
          'jax': jax.__version__, 'optax': optax.__version__, 'lrsched': lrsched.__version__,
          'commit': commit, 'params': args.params, 'updates_per_call': args.k,
          'repeats': args.repeats, 'T': T, 'command': ' '.join(sys.argv)}


def markdown(rows: list[dict[str, Any]]) -> str:
  lines = ['| schedule | impl | drives | µs / update | overhead vs no schedule | '
           'max abs diff vs lrsched |', '|---|---|---|---:|---:|---:|']
  for r in rows:
    diff = r['max_abs_diff_vs_lrsched']
    lines.append(f"| `{r['schedule']}` | {r['impl']} | {r['hyperparam']} | "
                 f"{r['us_per_update']:.2f} | {r['overhead_us']:+.2f} µs "
                 f"({r['overhead_pct']:+.1f}%) | {'' if diff is None else f'{diff:.2g}'} |")
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split('\n\n')[0].replace('\n', ' '),
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument('--params', type=int, default=1_000_000,
                      help='number of float32 parameters updated per step')
  parser.add_argument('--k', type=int, default=200, help='updates inside one jitted call')
  parser.add_argument('--repeats', type=int, default=15, help='timed calls per schedule')
  parser.add_argument('--quick', action='store_true',
                      help='tiny sizes (1000 params, k=5, 2 repeats): checks that it runs')
  parser.add_argument('--json', metavar='PATH', help='also write the results as JSON')
  args = parser.parse_args(argv)
  if args.quick:
    args.params, args.k, args.repeats = 1000, 5, 2
  if args.params < 3 or min(args.k, args.repeats) < 1:
    parser.error('--params must be >= 3, --k and --repeats >= 1')
  env = environment(args)
  rows, untimed = measure(args.params, args.k, args.repeats)
  print(f"{env['date']}  {env['device_kind']} ({env['platform']}) x{env['device_count']}  "
        f"jax {env['jax']}  optax {env['optax']}  commit {env['commit']}")
  print(f'{args.params:,} params, {args.k} updates per jitted call, median of {args.repeats} '
        'calls after a warm-up\n')
  print(markdown(rows))
  if untimed:
    print(f'\nregistered but not timed (add a row to CASES): {", ".join(untimed)}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'environment': env, 'results': rows, 'untimed': untimed}, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
