"""Writes torch_wsd.json: warmup-stable-decay as PyTorch users write it, ``SequentialLR``.

PyTorch has no WSD scheduler; the usual recipe chains ``LinearLR`` (warmup), ``ConstantLR``
with factor 1 (stable) and ``LinearLR`` or ``CosineAnnealingLR`` (decay) with
``SequentialLR``. Golden values for `lrsched.wsd` (tests/lrsched/test_warmup_decay.py reads
the JSON; the test run never imports torch). Regenerate with

  python tests/lrsched/golden/torch_wsd.py

``LinearLR`` needs a start factor > 0, so the warmups start above zero.
"""

import json
import pathlib

import torch
from torch.optim import lr_scheduler

OUT = pathlib.Path(__file__).with_suffix('.json')

# (peak, total, warmup, decay steps, decay shape, init, final, steps to compare).
CASES = [
    (0.1, 100, 10, 20, 'linear', 0.01, 0.0, 101),
    (1.0, 50, 5, 45, 'linear', 0.2, 0.1, 51),  # no stable phase: warmup, then linear decay
    (0.4, 30, 3, 1, 'linear', 0.004, 0.0, 31),
    (0.1, 100, 10, 20, 'cosine', 0.01, 0.0, 101),
    (2.0, 64, 8, 16, 'cosine', 0.5, 0.02, 65),
]


def torch_lrs(peak, total, warmup, decay_steps, decay, init, final, steps) -> list[float]:
  """The LR the optimizer uses at steps 0..steps-1, one scheduler.step() a step."""
  param = torch.zeros(1, requires_grad=True)
  optimizer = torch.optim.SGD([param], lr=peak)
  stable = total - decay_steps - warmup
  phases = [lr_scheduler.LinearLR(optimizer, start_factor=init / peak, end_factor=1.0,
                                  total_iters=warmup),
            lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=stable)]
  if decay == 'linear':
    phases.append(lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=final / peak,
                                        total_iters=decay_steps))
  else:
    phases.append(lr_scheduler.CosineAnnealingLR(optimizer, T_max=decay_steps, eta_min=final))
  sched = lr_scheduler.SequentialLR(optimizer, phases, milestones=[warmup, warmup + stable])
  values = []
  for _ in range(steps):
    values.append(float(f'{optimizer.param_groups[0]["lr"]:.9g}'))
    optimizer.step()
    sched.step()
  return values


def main() -> None:
  cases = []
  for peak, total, warmup, decay_steps, decay, init, final, steps in CASES:
    arguments = dict(peak_lr=peak, total_steps=total, warmup_steps=warmup,
                     decay_steps=decay_steps, decay=decay, init_lr=init, final_lr=final)
    cases.append(dict(arguments=arguments, steps=steps,
                      values=torch_lrs(peak, total, warmup, decay_steps, decay, init, final,
                                       steps)))
  data = dict(torch_version=torch.__version__, cases=cases)
  OUT.write_text(json.dumps(data, indent=1) + '\n')
  print(f'wrote {len(cases)} cases to {OUT}')


if __name__ == '__main__':
  main()
