"""Writes torch_decay.json: PyTorch's LR schedulers stepped with a dummy optimizer.

Golden values for lrsched's classic decays and SGDR (tests/lrsched/test_decay.py and
test_restarts.py read the JSON; the test run itself never imports torch). Regenerate with

  python tests/lrsched/golden/torch_decay.py

Each case holds the torch scheduler and its arguments, the equivalent lrsched call, the
steps and the LR PyTorch uses at each step (rounded to 9 significant digits).
"""

import json
import pathlib

import torch
from torch.optim import lr_scheduler

OUT = pathlib.Path(__file__).with_suffix('.json')

# (torch scheduler, its kwargs, base lr, lrsched constructor, its kwargs, steps).
# Steps are 0..T-1 (a range given as its length) or a sorted list of sampled steps.
CASES = [
    ('StepLR', dict(step_size=30, gamma=0.1), 0.1,
     'step_decay', dict(lr=0.1, step_size=30, gamma=0.1), 100),
    ('StepLR', dict(step_size=1, gamma=0.5), 1.0,
     'step_decay', dict(lr=1.0, step_size=1, gamma=0.5), 12),
    ('StepLR', dict(step_size=7, gamma=0.9), 0.05,
     'step_decay', dict(lr=0.05, step_size=7, gamma=0.9), 60),
    ('StepLR', dict(step_size=3, gamma=1.0), 0.3,
     'step_decay', dict(lr=0.3, step_size=3, gamma=1.0), 10),
    ('MultiStepLR', dict(milestones=[30, 80], gamma=0.1), 0.1,
     'multistep', dict(lr=0.1, milestones=[30, 80], gamma=0.1), 100),
    ('MultiStepLR', dict(milestones=[1, 2, 3], gamma=0.5), 1.0,
     'multistep', dict(lr=1.0, milestones=[1, 2, 3], gamma=0.5), 6),
    # Super-convergence's piecewise-constant baseline (Smith & Topin, 2017).
    ('MultiStepLR', dict(milestones=[50_000, 70_000], gamma=0.1), 0.35,
     'multistep', dict(lr=0.35, milestones=[50_000, 70_000], gamma=0.1),
     [0, 1, 25_000, 49_999, 50_000, 50_001, 69_999, 70_000, 70_001, 79_999]),
    ('ExponentialLR', dict(gamma=0.9), 0.1,
     'exponential', dict(lr=0.1, gamma=0.9), 50),
    ('ExponentialLR', dict(gamma=0.99), 1.0,
     'exponential', dict(lr=1.0, gamma=0.99), 300),
    ('ExponentialLR', dict(gamma=0.5), 0.2,
     'exponential', dict(lr=0.2, gamma=0.5), 3),
    ('PolynomialLR', dict(total_iters=10, power=1.0), 0.1,
     'polynomial', dict(lr=0.1, total_steps=10, power=1.0), 14),
    ('PolynomialLR', dict(total_iters=100, power=2.0), 1.0,
     'polynomial', dict(lr=1.0, total_steps=100, power=2.0), 105),
    ('PolynomialLR', dict(total_iters=50, power=0.9), 0.01,
     'polynomial', dict(lr=0.01, total_steps=50, power=0.9), 55),
    ('PolynomialLR', dict(total_iters=1, power=1.0), 0.5,
     'polynomial', dict(lr=0.5, total_steps=1, power=1.0), 3),
    ('PolynomialLR', dict(total_iters=2, power=0.5), 0.5,
     'polynomial', dict(lr=0.5, total_steps=2, power=0.5), 4),
    ('PolynomialLR', dict(total_iters=3, power=3.0), 0.5,
     'polynomial', dict(lr=0.5, total_steps=3, power=3.0), 5),
    # CosineAnnealingLR goes back up after T_max; lrsched holds: compare on 0..T_max.
    ('CosineAnnealingLR', dict(T_max=10), 0.1,
     'cosine', dict(lr=0.1, total_steps=10), 11),
    ('CosineAnnealingLR', dict(T_max=100, eta_min=0.001), 1.0,
     'cosine', dict(lr=1.0, total_steps=100, min_lr=0.001), 101),
    ('CosineAnnealingLR', dict(T_max=1), 0.5,
     'cosine', dict(lr=0.5, total_steps=1), 2),
    ('CosineAnnealingLR', dict(T_max=2, eta_min=0.1), 0.5,
     'cosine', dict(lr=0.5, total_steps=2, min_lr=0.1), 3),
    ('CosineAnnealingLR', dict(T_max=3), 0.5,
     'cosine', dict(lr=0.5, total_steps=3), 4),
    ('CosineAnnealingWarmRestarts', dict(T_0=10, T_mult=1), 0.1,
     'sgdr', dict(max_lr=0.1, t0=10, t_mult=1), 45),
    ('CosineAnnealingWarmRestarts', dict(T_0=10, T_mult=2, eta_min=0.001), 1.0,
     'sgdr', dict(max_lr=1.0, t0=10, t_mult=2, min_lr=0.001), 160),
    ('CosineAnnealingWarmRestarts', dict(T_0=1, T_mult=1), 0.5,
     'sgdr', dict(max_lr=0.5, t0=1, t_mult=1), 5),
    ('CosineAnnealingWarmRestarts', dict(T_0=1, T_mult=2), 0.5,
     'sgdr', dict(max_lr=0.5, t0=1, t_mult=2), 20),
    ('CosineAnnealingWarmRestarts', dict(T_0=2, T_mult=3, eta_min=0.05), 0.5,
     'sgdr', dict(max_lr=0.5, t0=2, t_mult=3, min_lr=0.05), 40),
    ('CosineAnnealingWarmRestarts', dict(T_0=3, T_mult=1), 0.5,
     'sgdr', dict(max_lr=0.5, t0=3, t_mult=1), 10),
]


def torch_lrs(scheduler: str, kwargs: dict, lr: float, steps: list[int]) -> list[float]:
  """The LR the optimizer uses at each of ``steps`` (sorted), one scheduler.step() a step."""
  param = torch.zeros(1, requires_grad=True)
  optimizer = torch.optim.SGD([param], lr=lr)
  sched = getattr(lr_scheduler, scheduler)(optimizer, **kwargs)
  wanted, values = set(steps), []
  for step in range(steps[-1] + 1):
    if step in wanted:
      values.append(float(f'{optimizer.param_groups[0]["lr"]:.9g}'))
    optimizer.step()
    sched.step()
  return values


def main() -> None:
  cases = []
  for scheduler, kwargs, lr, name, arguments, steps in CASES:
    steps = list(range(steps)) if isinstance(steps, int) else steps
    cases.append(dict(torch=scheduler, torch_kwargs=kwargs, torch_lr=lr, name=name,
                      arguments=arguments, steps=steps,
                      values=torch_lrs(scheduler, kwargs, lr, steps)))
  data = dict(torch_version=torch.__version__, cases=cases)
  OUT.write_text(json.dumps(data, indent=1) + '\n')
  print(f'wrote {len(cases)} cases to {OUT}')


if __name__ == '__main__':
  main()
