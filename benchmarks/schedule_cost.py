"""What does evaluating a schedule cost inside a jitted Optax update?

For each lrsched schedule (and Optax's own schedule of the same family, where there is
one) this times ``optax.inject_hyperparams(optax.sgd)(learning_rate=schedule,
momentum=0.9)`` updating a parameter pytree, K updates inside one jitted ``lax.fori_loop``
so that dispatch does not dominate, and reports microseconds per update and the overhead
against a constant learning rate. Repeats are interleaved across schedules (round robin),
so that drift in the machine's speed falls on every schedule alike; the median is reported.

  python benchmarks/schedule_cost.py                 # ~1M parameters, prints a table
  python benchmarks/schedule_cost.py --json out.json --params 10000000
  python benchmarks/schedule_cost.py --quick         # a few seconds (used by the tests)
"""

from __future__ import annotations

import argparse
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
import optax

import lrsched

T = 10_000  # the length of the finite schedules


def cases() -> list[tuple[str, str, Callable[[Any], Any]]]:
  """(family, implementation, schedule) for every schedule timed."""
  lr = lrsched
  return [
      ('constant', 'lrsched', lr.constant(0.1)),
      ('constant', 'optax', optax.constant_schedule(0.1)),
      ('cosine', 'lrsched', lr.cosine(0.1, T)),
      ('cosine', 'optax', optax.cosine_decay_schedule(0.1, T)),
      ('exponential', 'lrsched', lr.exponential(0.1, gamma=0.9999)),
      ('exponential', 'optax', optax.exponential_decay(0.1, 1, 0.9999)),
      ('multistep', 'lrsched', lr.multistep(0.35, milestones=[5000, 7000])),
      ('multistep', 'optax',
       optax.piecewise_constant_schedule(0.35, {5000: 0.1, 7000: 0.1})),
      ('polynomial', 'lrsched', lr.polynomial(0.1, T, power=2.0)),
      ('polynomial', 'optax', optax.polynomial_schedule(0.1, 0.0, 2.0, T)),
      ('warmup + cosine', 'lrsched', lr.warmup(lr.cosine(0.1, T), warmup_steps=500)),
      ('warmup + cosine', 'optax', optax.warmup_cosine_decay_schedule(0.0, 0.1, 500, T + 500)),
      ('1cycle', 'lrsched', lr.one_cycle(max_lr=0.8, total_steps=T)),
      ('1cycle', 'optax', optax.cosine_onecycle_schedule(T, 0.8)),
      ('sgdr', 'lrsched', lr.sgdr(max_lr=0.1, t0=1000, t_mult=2)),
      ('sgdr', 'optax', optax.sgdr_schedule(
          [dict(init_value=0.0, peak_value=0.1, warmup_steps=0, decay_steps=1000 * 2**i)
           for i in range(4)])),
      ('triangular (CLR)', 'lrsched', lr.triangular(0.1, 3.0, 5000)),
      ('exp_range (CLR)', 'lrsched', lr.exp_range(0.1, 3.0, 2000, gamma=0.9999)),
      ('super_convergence', 'lrsched', lr.super_convergence(0.1, 3.0, 5000)),
      ('smith_one_cycle', 'lrsched', lr.smith_one_cycle(0.08, 0.8, T)),
  ]


def make_update(schedule, params: Any, k: int):
  """A jitted function running k SGD-momentum updates whose LR follows ``schedule``."""
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule, momentum=0.9)

  @jax.jit
  def run(params, opt_state):
    def body(i, carry):
      params, opt_state = carry
      grads = jax.tree.map(lambda p: p * 1e-3, params)  # cheap, data-dependent "gradient"
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state
    return jax.lax.fori_loop(0, k, body, (params, opt_state))

  return run, tx.init(params)


def measure(num_params: int, k: int, repeats: int) -> list[dict[str, Any]]:
  params = {'w': jnp.ones((num_params // 2,), jnp.float32),
            'b': jnp.ones((num_params - num_params // 2,), jnp.float32)}
  runs = []
  for family, impl, schedule in cases():
    run, state = make_update(schedule, params, k)
    jax.block_until_ready(run(params, state))  # compile and warm up
    runs.append(dict(family=family, impl=impl, run=run, state=state, times=[]))
  for _ in range(repeats):
    for r in runs:  # round robin: drift affects every schedule alike
      start = time.perf_counter()
      jax.block_until_ready(r['run'](params, r['state']))
      r['times'].append((time.perf_counter() - start) / k * 1e6)
  base = statistics.median(next(r for r in runs if r['family'] == 'constant'
                                and r['impl'] == 'lrsched')['times'])
  results = []
  for r in runs:
    us = statistics.median(r['times'])
    results.append(dict(family=r['family'], impl=r['impl'], us_per_update=us,
                        overhead_us=us - base, overhead_pct=100 * (us - base) / base))
  return results


def environment(args: argparse.Namespace) -> dict[str, Any]:
  try:
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                            text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    commit = None
  device = jax.devices()[0]
  return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
              device_kind=device.device_kind, platform=device.platform,
              device_count=jax.device_count(), cpu=platform.processor() or platform.machine(),
              jax=jax.__version__, optax=optax.__version__, commit=commit,
              params=args.params, updates_per_call=args.k, repeats=args.repeats,
              command=' '.join(sys.argv))


def markdown(results: list[dict[str, Any]]) -> str:
  lines = ['| schedule | implementation | µs / update | overhead vs constant |',
           '|---|---|---:|---:|']
  for r in results:
    lines.append(f"| {r['family']} | {r['impl']} | {r['us_per_update']:.2f} | "
                 f"{r['overhead_us']:+.2f} µs ({r['overhead_pct']:+.1f}%) |")
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--params', type=int, default=1_000_000,
                      help='parameters updated per step (default: %(default)s)')
  parser.add_argument('--k', type=int, default=200,
                      help='updates inside one jitted call (default: %(default)s)')
  parser.add_argument('--repeats', type=int, default=15,
                      help='timed calls per schedule (default: %(default)s)')
  parser.add_argument('--quick', action='store_true', help='tiny sizes, for the tests')
  parser.add_argument('--json', metavar='PATH', help='also write the results as JSON')
  args = parser.parse_args(argv)
  if args.quick:
    args.params, args.k, args.repeats = 1000, 5, 2
  if min(args.params, args.k, args.repeats) < 1:
    parser.error('--params, --k and --repeats must be >= 1')
  env = environment(args)
  results = measure(args.params, args.k, args.repeats)
  print(f"{env['date']}  {env['device_kind']} x{env['device_count']}  jax {env['jax']}  "
        f"optax {env['optax']}  commit {env['commit']}  {args.params:,} params, "
        f"{args.k} updates per call, median of {args.repeats}")
  print(markdown(results))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(environment=env, results=results), f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
