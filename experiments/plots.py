"""Figures of the experiments: test accuracy against iteration with the LR below (as in
Smith & Topin's Fig. 1a), and the LR range test's curves with its suggestions marked.

Matplotlib is imported when a figure is drawn (with the Agg canvas: no display, no global
pyplot state), so that importing this module costs nothing.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

REFERENCE_COLUMNS = ('iteration', 'lr', 'test_acc', 'test_loss', 'train_loss_display_batch')
REFERENCE_BATCH = 1000
"""The total batch of the authors' super-convergence runs (8 GPUs x 125)."""


@dataclasses.dataclass(frozen=True)
class Curve:
  """One line of a comparison figure.

  Attributes:
    label: the legend entry.
    x: the evaluation points (iterations or epochs).
    accuracy: the test accuracy at those points, a fraction.
    lr_x: where the LR is known (iterations or epochs).
    lr: the LR there.
    reference: an authors' curve (drawn dashed).
    diverged_at: (x, lr) where the run diverged, marked with a cross; None otherwise.
    color: a matplotlib color; None picks the next one.
  """

  label: str
  x: np.ndarray
  accuracy: np.ndarray
  lr_x: np.ndarray
  lr: np.ndarray
  reference: bool = False
  diverged_at: tuple[float, float] | None = None
  color: str | None = None


def read_reference(path: str | os.PathLike[str], *, x_axis: str = 'step',
                   train_size: int | None = None) -> Curve:
  """An authors' log (``iteration, lr, test_acc, ...`` CSV) as a dashed `Curve`.

  With ``x_axis='epoch'`` iterations become epochs at their batch of 1000 over
  ``train_size`` examples (default: the ``Tr<N>k`` of the log's name, else 50,000).
  """
  name = os.path.splitext(os.path.basename(path))[0]
  with open(path, newline='') as f:
    reader = csv.DictReader(f)
    missing = [c for c in REFERENCE_COLUMNS[:3] if c not in (reader.fieldnames or ())]
    if missing:
      raise ValueError(f'{path}: not an authors\' log CSV (missing columns {missing}; '
                       f'expected {", ".join(REFERENCE_COLUMNS)})')
    rows = list(reader)
  iteration = np.asarray([float(r['iteration']) for r in rows])
  lr = np.asarray([_number(r['lr']) for r in rows])
  accuracy = np.asarray([_number(r['test_acc']) for r in rows])
  if x_axis == 'epoch':
    if train_size is None:
      match = re.search(r'Tr(\d+)k', name)
      train_size = int(match.group(1)) * 1000 if match else 50_000
    iteration = iteration * REFERENCE_BATCH / train_size
  keep, known = np.isfinite(accuracy), np.isfinite(lr)  # rows may lack either
  return Curve(f"{name} (authors' log)", iteration[keep], accuracy[keep], iteration[known],
               lr[known], reference=True)


def _number(text: str) -> float:
  try:
    return float(text)
  except ValueError:
    return float('nan')


def _figure(rows: int, height: Sequence[float]):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  figure = Figure(figsize=(9, sum(height)), layout='constrained')
  FigureCanvasAgg(figure)
  axes = figure.subplots(rows, 1, sharex=True, gridspec_kw={'height_ratios': list(height)})
  return figure, axes


def plot_comparison(curves: Sequence[Curve], path: str | os.PathLike[str], *,
                    x_axis: str = 'step', title: str | None = None) -> None:
  """Test accuracy against iteration (or epoch), the LR in a panel below; writes a PNG."""
  figure, (top, bottom) = _figure(2, (4.5, 2.0))
  colors = iter(f'C{i}' for i in range(1000))
  own_colors: dict[str, str] = {}
  for curve in curves:
    color = curve.color or own_colors.get(curve.label) or next(colors)
    own_colors[curve.label] = color
    style = dict(color=color, linestyle='--' if curve.reference else '-',
                 linewidth=1.2 if curve.reference else 1.6)
    if len(curve.x):
      top.plot(curve.x, 100 * np.asarray(curve.accuracy), label=curve.label, **style)
    if len(curve.lr_x):
      bottom.plot(curve.lr_x, curve.lr, **style)
    if curve.diverged_at is not None:
      x, lr = curve.diverged_at
      last = 100 * float(curve.accuracy[-1]) if len(curve.accuracy) else 10.0
      top.plot([x], [last], marker='x', markersize=10, color=color, linestyle='none',
               label=f'{curve.label}: diverged (lr={lr:.3g})')
      bottom.plot([x], [lr], marker='x', markersize=10, color=color, linestyle='none')
  top.set_ylabel('test accuracy (%)')
  top.grid(alpha=0.3)
  if top.get_legend_handles_labels()[0]:  # no curve yet (nothing has run): no legend
    top.legend(fontsize=8, loc='lower right')
  if title:
    top.set_title(title)
  lrs = np.concatenate([np.asarray(c.lr, float) for c in curves if len(c.lr)] or [np.ones(1)])
  lrs = lrs[np.isfinite(lrs)]
  if lrs.size and lrs.min() > 0 and lrs.max() / lrs.min() > 30:
    bottom.set_yscale('log')  # step decays span orders of magnitude
  bottom.set_ylabel('learning rate')
  bottom.set_xlabel('iteration' if x_axis == 'step' else 'epoch')
  bottom.grid(alpha=0.3)
  figure.savefig(os.fspath(path), dpi=120)


def plot_range_test(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
  """The range test's loss (raw and smoothed) and test accuracy against the LR, with the
  suggested LRs marked; ``report`` is the dict `experiments.lr_range_test` writes."""
  result = report['result']
  lrs = np.asarray(result['lrs'], float)
  figure, (top, bottom) = _figure(2, (3.5, 3.0))
  top.plot(lrs, np.asarray(result['losses'], float), color='0.75', linewidth=0.8,
           label='training loss')
  top.plot(lrs, np.asarray(result['smoothed_losses'], float), color='C0', linewidth=1.6,
           label='smoothed')
  top.set_ylabel('training loss')
  finite = np.asarray(result['smoothed_losses'], float)
  finite = finite[np.isfinite(finite)]
  if finite.size:  # the first steps' loss can dwarf the rest
    low, high = finite.min(), np.percentile(finite, 95)
    top.set_ylim(low - 0.05 * (high - low + 1e-9), high + 0.25 * (high - low + 1e-9))
  if result.get('metrics') is not None:
    steps = np.asarray(result['metric_steps'], int)
    metric = np.asarray([np.nan if m is None else m for m in result['metrics']], float)
    bottom.plot(lrs[steps], 100 * metric, color='C1', marker='.', label='test accuracy')
  bottom.set_ylabel('test accuracy (%)')
  bottom.set_xlabel('learning rate')
  if report['sweep']['mode'] == 'exp':
    bottom.set_xscale('log')
  for i, (method, s) in enumerate(report['suggestions'].items()):
    if 'lr' not in s:
      continue
    axis = bottom if method in ('clr_bounds', 'super_convergence') else top
    color = f'C{i + 2}'
    axis.axvline(s['lr'], color=color, linestyle=':', label=f"{method}: {s['lr']:.3g}")
    if s.get('min_lr') is not None:
      axis.axvline(s['min_lr'], color=color, linestyle='-.', linewidth=0.8,
                   label=f"{method} lower: {s['min_lr']:.3g}")
  for axis in (top, bottom):
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
  figure.savefig(os.fspath(path), dpi=120)
