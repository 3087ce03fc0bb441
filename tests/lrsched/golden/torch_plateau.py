"""Writes torch_plateau.json: PyTorch's ReduceLROnPlateau fed recorded metric sequences.

Golden values for lrsched.reduce_lr_on_plateau / reduce_on_plateau / report_metric
(tests/lrsched/test_plateau.py reads the JSON; the test run never imports torch).
Regenerate with

  python tests/lrsched/golden/torch_plateau.py

Each case holds the scheduler's arguments, the base LR, the metrics (float32 values, so
that torch and JAX compare the same numbers; null is NaN) and, after each
``scheduler.step(metric)``, the LR, ``num_bad_epochs`` and ``cooldown_counter``.
"""

import json
import math
import pathlib

import numpy as np
import torch

OUT = pathlib.Path(__file__).with_suffix('.json')


def f32(values):
  return [float(np.float32(round(float(v), 6))) for v in values]


def noisy_loss(rng, n):
  """A decreasing training-curve-like loss with noise: improvements, then plateaus."""
  t = np.arange(n)
  return f32(2.0 * np.exp(-t / 15) + 0.3 + 0.04 * rng.standard_normal(n))


def accuracy_with_plateaus(rng, n):
  """Accuracy that rises in bursts separated by flat, noisy stretches."""
  levels = np.repeat([0.30, 0.52, 0.53, 0.70, 0.71, 0.71, 0.84, 0.84], n // 8 + 1)[:n]
  return f32(levels + 0.002 * rng.standard_normal(n))


def cases():
  rng = np.random.default_rng(20240611)
  flat = [1.0] * 30
  yield 'noisy_loss', dict(factor=0.5, patience=3), 0.1, noisy_loss(rng, 80)
  yield 'noisy_loss_defaults', dict(), 0.3, noisy_loss(rng, 120)
  yield 'accuracy_max', dict(mode='max', factor=0.1, patience=2, threshold=1e-3), 0.4, \
      accuracy_with_plateaus(rng, 64)
  yield 'accuracy_max_abs', dict(mode='max', threshold_mode='abs', threshold=0.01,
                                 patience=1, factor=0.3), 0.2, accuracy_with_plateaus(rng, 48)
  yield 'cooldown', dict(factor=0.5, patience=1, cooldown=3), 1.0, noisy_loss(rng, 60)
  yield 'cooldown_max', dict(mode='max', factor=0.5, patience=0, cooldown=2), 0.1, \
      accuracy_with_plateaus(rng, 40)
  yield 'abs_threshold', dict(threshold_mode='abs', threshold=0.05, patience=2, factor=0.2), \
      0.5, noisy_loss(rng, 60)
  yield 'min_lr_reached', dict(factor=0.1, patience=2, min_lr=2e-4), 0.1, flat
  yield 'min_lr_above_lr', dict(factor=0.5, patience=0, min_lr=0.5), 0.1, flat[:8]
  yield 'factor_zero_to_min_lr', dict(factor=0.0, patience=1, min_lr=1e-3), 0.1, flat[:10]
  # lr 1e-7 halves to 1.25e-8; the next reduction, by 6.25e-9 < eps, is skipped.
  yield 'eps_stops_reductions', dict(factor=0.5, patience=0, eps=1e-8), 1e-7, flat[:10]
  yield 'eps_zero', dict(factor=0.5, patience=0, eps=0.0), 1e-7, flat[:10]
  yield 'negative_loss_rel', dict(factor=0.5, patience=1), 0.1, \
      f32(-1.0 - 0.01 * np.arange(30) + 0.02 * rng.standard_normal(30))
  metrics = noisy_loss(rng, 30)
  metrics[3] = metrics[10] = metrics[11] = math.nan
  yield 'nan_metrics', dict(factor=0.5, patience=1), 0.1, metrics


def run(kwargs, lr, metrics):
  param = torch.nn.Parameter(torch.zeros(1))
  optimizer = torch.optim.SGD([param], lr=lr)
  scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **kwargs)
  lrs, bad, cooldown = [], [], []
  for m in metrics:
    scheduler.step(m)
    lrs.append(float(f'{optimizer.param_groups[0]["lr"]:.9g}'))
    bad.append(scheduler.num_bad_epochs)
    cooldown.append(scheduler.cooldown_counter)
  return lrs, bad, cooldown


def main():
  out = {'torch_version': torch.__version__, 'cases': []}
  for name, kwargs, lr, metrics in cases():
    lrs, bad, cooldown = run(kwargs, lr, metrics)
    out['cases'].append(dict(
        name=name, kwargs=kwargs, lr=lr,
        metrics=[None if math.isnan(m) else m for m in metrics],
        lr_after=lrs, num_bad_epochs=bad, cooldown_counter=cooldown))
  OUT.write_text(json.dumps(out, indent=1) + '\n')
  print(f'wrote {OUT} ({OUT.stat().st_size} bytes, {len(out["cases"])} cases)')


if __name__ == '__main__':
  main()
