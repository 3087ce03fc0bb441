"""Writes torch_cyclical.json: PyTorch's CyclicLR and OneCycleLR, LR and momentum.

Golden values for lrsched.cyclic / cyclic_momentum and lrsched.one_cycle /
one_cycle_momentum (tests/lrsched/test_cyclical.py and test_onecycle.py read the JSON;
the test run itself never imports torch). Regenerate with torch 2.x CPU:

  python tests/lrsched/golden/torch_cyclical.py

Each case holds the scheduler's kwargs and the LR and momentum that an SGD optimizer
(momentum=0.9) uses at steps 0..T-1, i.e. after 0..T-1 calls of ``scheduler.step()``,
rounded to 9 significant digits. A custom ``scale_fn`` is stored by name; the tests map
the name to the same function written with jnp (`SCALE_FNS` here).
"""

import json
import pathlib

import torch
from torch.optim import lr_scheduler

OUT = pathlib.Path(__file__).with_suffix('.json')

# Custom CyclicLR scales, expressible in both Python (torch) and jnp (the tests).
SCALE_FNS = {
    'inverse': lambda x: 1 / (1 + 0.1 * x),
    'power': lambda x: 0.9**x,
}

# (kwargs of CyclicLR, T). base_lr/max_lr are floats; step sizes ints.
CYCLIC = [
    (dict(base_lr=0.01, max_lr=0.1, step_size_up=5), 40),
    (dict(base_lr=0.0, max_lr=1.0, step_size_up=1), 7),
    (dict(base_lr=0.1, max_lr=3.0, step_size_up=4, step_size_down=9), 60),
    (dict(base_lr=0.001, max_lr=0.006, step_size_up=7, step_size_down=2), 50),
    (dict(base_lr=0.01, max_lr=0.1, step_size_up=3, mode='triangular2'), 60),
    (dict(base_lr=0.2, max_lr=0.5, step_size_up=2, step_size_down=5, mode='triangular2'), 50),
    (dict(base_lr=0.0, max_lr=1.0, step_size_up=4, mode='exp_range', gamma=0.9), 40),
    (dict(base_lr=0.01, max_lr=0.1, step_size_up=6, step_size_down=3, mode='exp_range',
          gamma=0.99), 60),
    (dict(base_lr=0.05, max_lr=0.5, step_size_up=5, mode='exp_range', gamma=1.0), 30),
    (dict(base_lr=0.1, max_lr=1.0, step_size_up=4, scale_fn='inverse', scale_mode='cycle'),
     40),
    (dict(base_lr=0.1, max_lr=1.0, step_size_up=3, step_size_down=5, scale_fn='inverse',
          scale_mode='iterations'), 40),
    (dict(base_lr=0.0, max_lr=0.5, step_size_up=2, scale_fn='power', scale_mode='cycle'), 30),
    (dict(base_lr=0.0, max_lr=0.5, step_size_up=2, step_size_down=3, scale_fn='power',
          scale_mode='iterations', base_momentum=0.85, max_momentum=0.95), 30),
    (dict(base_lr=0.01, max_lr=0.1, step_size_up=5, mode='triangular2', base_momentum=0.7,
          max_momentum=0.99), 40),
]

# (kwargs of OneCycleLR, T). Only configurations where torch divides by no zero.
ONE_CYCLE = [
    (dict(max_lr=0.8), 10),
    (dict(max_lr=0.8), 20),
    (dict(max_lr=0.1, anneal_strategy='linear'), 20),
    (dict(max_lr=1.0, pct_start=0.25, div_factor=10.0, final_div_factor=100.0), 17),
    (dict(max_lr=1.0, pct_start=0.25, div_factor=10.0, final_div_factor=100.0,
          anneal_strategy='linear'), 17),
    (dict(max_lr=3.0, pct_start=0.45, three_phase=True), 20),
    (dict(max_lr=3.0, pct_start=0.45, three_phase=True, anneal_strategy='linear'), 20),
    (dict(max_lr=0.5, pct_start=0.3, three_phase=True, div_factor=5.0,
          final_div_factor=1e3), 13),
    (dict(max_lr=0.5, pct_start=0.6, three_phase=True), 15),  # phase 3 never reached
    (dict(max_lr=0.2, pct_start=0.05), 12),  # pct_start * T < 1: step 0 already falls
    (dict(max_lr=0.2, pct_start=0.0), 11),
    (dict(max_lr=0.2, pct_start=1.0), 10),  # rises all the way
    (dict(max_lr=0.4, pct_start=0.05, three_phase=True), 12),
    (dict(max_lr=0.8, base_momentum=0.8, max_momentum=0.9), 16),
    (dict(max_lr=0.8, pct_start=0.3, final_div_factor=1e5), 1),
    (dict(max_lr=0.8, pct_start=0.3), 2),
    (dict(max_lr=0.8, pct_start=0.4, anneal_strategy='linear'), 3),
    (dict(max_lr=0.1, pct_start=0.3), 1000),
]


def _sig(x):
  return float(f'{x:.9g}')


def _run(make, steps):
  param = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
  scheduler = make(opt)
  lrs, moms = [], []
  for t in range(steps):
    lrs.append(_sig(opt.param_groups[0]['lr']))
    moms.append(_sig(opt.param_groups[0]['momentum']))
    opt.step()
    if t < steps - 1:
      scheduler.step()
  return lrs, moms


def main():
  cases = []
  for kwargs, steps in CYCLIC:
    torch_kwargs = dict(kwargs)
    if 'scale_fn' in torch_kwargs:
      torch_kwargs['scale_fn'] = SCALE_FNS[torch_kwargs['scale_fn']]
    lrs, moms = _run(lambda opt, kw=torch_kwargs: lr_scheduler.CyclicLR(opt, **kw), steps)
    cases.append(dict(scheduler='CyclicLR', kwargs=kwargs, lr=lrs, momentum=moms))
  for kwargs, steps in ONE_CYCLE:
    lrs, moms = _run(
        lambda opt, kw=kwargs, n=steps: lr_scheduler.OneCycleLR(opt, total_steps=n, **kw),
        steps)
    cases.append(dict(scheduler='OneCycleLR', kwargs=dict(kwargs, total_steps=steps),
                      lr=lrs, momentum=moms))
  OUT.write_text(json.dumps(dict(torch=torch.__version__, cases=cases), indent=None) + '\n')
  print(f'wrote {len(cases)} cases to {OUT}')


if __name__ == '__main__':
  main()
