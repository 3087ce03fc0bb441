"""Plots schedules against the step.

From the command line::

  python -m lrsched.plot '1cycle(max_lr=0.8)' --steps 10000 -o lr.png \\
      --momentum 'one_cycle_momentum' --log

The spec is read by `lrsched.parse` with ``total_steps=--steps`` as context, so a spec
may leave the length of the run out; ``--momentum auto`` draws the momentum that goes with
the LR schedule (`lrsched.momentum_for`). From Python, `plot_schedules` draws on any
Matplotlib axes.

Matplotlib is an optional dependency: ``pip install 'lrsched[plot]'``. It is imported
only when a plot is drawn.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lrsched import _base
from lrsched import spec as spec_lib
from lrsched._base import Schedule
from lrsched.momentum import momentum_for

INSTALL_HINT = "plotting needs matplotlib: pip install 'lrsched[plot]'"

AnySchedule = Callable[[Any], Any]


def _require_matplotlib() -> None:
  """Raises an ImportError with the install hint when Matplotlib is missing."""
  try:
    import matplotlib  # noqa: F401
  except ImportError as e:
    raise ImportError(INSTALL_HINT) from e


def _label(schedule: AnySchedule, index: int) -> str:
  if isinstance(schedule, Schedule):
    return repr(schedule)
  return getattr(schedule, '__name__', f'schedule {index}')


def plot_schedules(schedules: AnySchedule | Sequence[AnySchedule] | Mapping[str, AnySchedule],
                   steps: int, ax: Any = None, *, log: bool = False,
                   ylabel: str = 'learning rate', boundaries: bool = True,
                   **plot_kwargs: Any) -> Any:
  """Draws schedules against the step, each evaluated once on ``jnp.arange(steps)``.

  Args:
    schedules: a schedule (a `lrsched.Schedule` or any ``optax.Schedule``), a sequence of
      them, or a mapping label -> schedule. A `lrsched.Schedule` is labelled with its repr.
    steps: the number of steps to draw, from step 0.
    ax: the Matplotlib axes to draw on; a new figure's (``pyplot.subplots()``) if None.
    log: a log scale for the values.
    ylabel: the label of the value axis.
    boundaries: mark the phase boundaries of a single `lrsched.Schedule` with faint
      vertical lines.
    **plot_kwargs: passed to ``ax.plot`` for every line.

  Returns:
    The axes.

  Raises:
    ImportError: with the install hint when Matplotlib is not installed.
  """
  _require_matplotlib()
  if steps < 1:
    raise ValueError(f'steps must be >= 1, got {steps}')
  if isinstance(schedules, Mapping):
    items = list(schedules.items())
  elif callable(schedules):
    items = [(_label(schedules, 0), schedules)]
  else:
    items = [(_label(s, i), s) for i, s in enumerate(schedules)]
  if ax is None:
    import matplotlib.pyplot as plt

    _, ax = plt.subplots()
  x = np.arange(steps)
  for label, schedule in items:
    # vmap over the steps: not every optax.Schedule takes an array of steps, and array
    # hyper-parameters (a sweep) give one line each instead of broadcasting with the steps.
    values = np.asarray(jax.vmap(schedule)(jnp.arange(steps)))
    ax.plot(x, values, label=label, **plot_kwargs)
  if boundaries and len(items) == 1 and isinstance(items[0][1], Schedule):
    for b in items[0][1].boundaries:
      if 0 < b < steps:
        ax.axvline(b, color='0.8', linewidth=0.8, zorder=0)
  ax.set_xlabel('step')
  ax.set_ylabel(ylabel)
  ax.set_xlim(0, max(steps - 1, 1))
  if log:
    ax.set_yscale('log')
  ax.grid(True, alpha=0.3)
  if len(items) > 1 or isinstance(schedules, Mapping):
    ax.legend(fontsize='small')
  return ax


def _figure(lr: Schedule, momentum: Schedule | None, steps: int, log: bool) -> Any:
  """The command's figure: the LR, and the momentum in a second panel below it."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  # A Figure with an Agg canvas, not pyplot: no global state, no GUI backend.
  figure = Figure(figsize=(8, 6.5 if momentum is not None else 4.5), layout='constrained')
  FigureCanvasAgg(figure)
  axes = figure.subplots(2 if momentum is not None else 1, 1, sharex=True, squeeze=False)[:, 0]
  plot_schedules(lr, steps, axes[0], log=log)
  axes[0].set_title(repr(lr), fontsize='small', wrap=True)
  if momentum is not None:
    plot_schedules(momentum, steps, axes[1], ylabel='momentum', color='tab:orange')
    axes[1].set_title(repr(momentum), fontsize='small', wrap=True)
    axes[0].set_xlabel('')
  return figure


def _parser() -> argparse.ArgumentParser:
  names = ', '.join(sorted(_base.REGISTRY))
  aliases = ', '.join(f'{a} ({t})' for a, t in spec_lib.ALIASES.items())
  parser = argparse.ArgumentParser(
      prog='python -m lrsched.plot',
      description='Plot a learning-rate schedule (and optionally a momentum schedule) '
                  'against the step.',
      epilog=f"example: python -m lrsched.plot '1cycle(max_lr=0.8)' --steps 10000 -o lr.png "
             f"--momentum auto\n\nschedules: {names}\naliases: {aliases}",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('spec', metavar='SPEC',
                      help="the LR schedule, e.g. 'cosine(lr=0.1)' or "
                           "'cyclic(base_lr=0.1, max_lr=3, step_size_up=500)'; total_steps "
                           'defaults to --steps')
  parser.add_argument('--steps', type=int, required=True, metavar='N',
                      help='the number of steps to plot (also total_steps where SPEC omits it)')
  parser.add_argument('-o', '--output', required=True, metavar='PATH',
                      help='the image to write (PNG; .pdf and .svg work too)')
  parser.add_argument('--momentum', metavar='SPEC',
                      help="a momentum schedule, drawn in a second panel; 'auto' draws the "
                           'cyclical momentum that goes with SPEC (lrsched.momentum_for)')
  parser.add_argument('--log', action='store_true', help='a log scale for the learning rate')
  parser.add_argument('--dpi', type=int, default=150, help='resolution (default: %(default)s)')
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """The command line; returns the exit status (2 for a bad SPEC or option)."""
  parser = _parser()
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error(f'--steps must be >= 1, got {args.steps}')
  try:
    _require_matplotlib()
  except ImportError:
    print(INSTALL_HINT, file=sys.stderr)
    return 1
  schedules = {}
  for option, text in (('SPEC', args.spec), ('--momentum', args.momentum)):
    try:
      if text == 'auto' and option == '--momentum':
        schedules[option] = momentum_for(schedules['SPEC'])
      elif text is not None:
        schedules[option] = spec_lib.parse(text, total_steps=args.steps)
    except ValueError as e:
      parser.error(f'bad {option}: {e}')
  figure = _figure(schedules['SPEC'], schedules.get('--momentum'), args.steps, args.log)
  try:
    figure.savefig(args.output, dpi=args.dpi)
  except (OSError, ValueError) as e:
    print(f'cannot write {args.output}: {e}', file=sys.stderr)
    return 1
  for schedule in schedules.values():
    print(spec_lib.describe(schedule, total_steps=args.steps))
  print(f'wrote {args.output}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
