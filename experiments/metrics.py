"""What a run writes: ``metrics.jsonl``, TensorBoard events, ``summary.json``, a progress line.

Only process 0 of a multi-host job writes (``enabled=False`` elsewhere).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

log = logging.getLogger(__name__)


def _summary_writer() -> type:
  """tensorboardX's SummaryWriter, imported without PyTorch: tensorboardX imports torch
  where it is installed (about 2 s at every start) only to accept torch tensors, which we
  never pass. A torch that is already imported is left as it is."""
  if 'torch' in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules['torch'] = None  # makes `import torch` raise ImportError
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules['torch']
  return SummaryWriter


class MetricWriter:
  """Appends one JSON object per logged step to ``metrics.jsonl`` and mirrors it to TensorBoard.

  Every row has ``step``, ``lr`` and ``train_loss``; an evaluation's row adds ``test_loss`` and
  ``test_accuracy`` (and is the only row of its step). ``evaluations`` holds those rows.

  On resumption from step ``resume_step``, lines of steps after it (written after the
  checkpoint the run resumes from, and about to be recomputed identically) are moved to
  ``metrics.jsonl.after-<step>`` rather than dropped.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.evaluations: list[dict[str, Any]] = []
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if os.path.exists(self.path):
      self._keep_until(resume_step)
    try:
      SummaryWriter = _summary_writer()
    except ImportError:
      log.warning('tensorboardX is not installed: no TensorBoard events '
                  "(pip install 'lrsched[experiments]')")
    else:
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'), purge_step=resume_step)

  def _keep_until(self, step: int) -> None:
    with open(self.path) as f:
      lines = [line for line in f if line.strip()]
    keep, later = [], []
    for line in lines:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:  # a line cut short by a kill: not a result
        later.append(line)
        continue
      (keep if row.get('step', 0) <= step else later).append(line)
    if later:
      with open(f'{self.path}.after-{step}', 'a') as f:
        f.writelines(line if line.endswith('\n') else line + '\n' for line in later)
    with open(self.path, 'w') as f:
      f.writelines(keep)
    self.evaluations = [row for row in map(json.loads, keep) if 'test_accuracy' in row]

  def train(self, row: dict[str, Any]) -> None:
    """A training row (``step``, ``lr``, ``train_loss``, ...), on disk at once: an
    interrupted run keeps its curve."""
    self._write(row, {})

  def evaluation(self, row: dict[str, Any]) -> None:
    """An evaluation's row: a training row plus ``test_loss`` and ``test_accuracy``."""
    self.evaluations.append(row)
    self._write(row, {f'eval/{k}': v for k, v in row.items()
                      if k not in ('step', 'epoch') and isinstance(v, (int, float))})

  def _write(self, row: dict[str, Any], more_scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    if self._tb is not None:
      scalars = {'train/loss': row['train_loss'], 'lr': row['lr'], **more_scalars}
      if row.get('momentum') is not None:
        scalars['momentum'] = row['momentum']
      for name, value in scalars.items():
        self._tb.add_scalar(name, value, row['step'])
      self._tb.flush()

  def best(self, key: str) -> float:
    values = [row[key] for row in self.evaluations if row.get(key) is not None]
    return max(values) if values else -1.0

  def last_evaluation(self) -> dict[str, Any] | None:
    return self.evaluations[-1] if self.evaluations else None

  def summary(self, summary: dict[str, Any]) -> None:
    if self.enabled:
      path = os.path.join(os.path.dirname(self.path), 'summary.json')
      with open(path, 'w') as f:
        json.dump(summary, f, indent=2)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


class Progress:
  """One terminal line with step, LR, loss, images/s and ETA; plain log lines when not a tty."""

  def __init__(self, total_steps: int, *, enabled: bool = True, stream=None):
    self.total = total_steps
    self.enabled = enabled
    self.stream = stream or sys.stderr
    self.tty = enabled and self.stream.isatty()
    self.start = time.time()
    self.first_step: int | None = None
    self.eta_s = float('nan')  # the latest estimate of the time left, seconds

  def start_at(self, step: int) -> None:
    """Times the ETA from ``step`` on (the first dispatch, compilation included, is done)."""
    self.first_step, self.start = step, time.time()

  def update(self, step: int, *, lr: float, loss: float, images_per_sec: float) -> None:
    if not self.enabled:
      return
    now = time.time()
    if self.first_step is None:
      self.first_step, self.start = step, now
    done = step - self.first_step
    eta = (now - self.start) / done * (self.total - step) if done > 0 else float('nan')
    self.eta_s = eta
    width = len(str(self.total))
    line = (f'step {step:>{width}}/{self.total} {100 * step / self.total:5.1f}% | '
            f'lr {lr:.4g} | loss {loss:.4f} | {images_per_sec:,.0f} img/s | '
            f'ETA {_duration(eta)}')
    if self.tty:
      self.stream.write('\r' + line + '\x1b[K')
    else:
      self.stream.write(line + '\n')
    self.stream.flush()

  def note(self, text: str) -> None:
    if self.enabled:
      self.stream.write(('\r\x1b[K' if self.tty else '') + text + '\n')
      self.stream.flush()

  def close(self) -> None:
    if self.tty:
      self.stream.write('\n')
      self.stream.flush()


def _duration(seconds: float) -> str:
  if seconds != seconds:  # nan: not known yet
    return '--:--'
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}:{m:02d}:{s:02d}' if h else f'{m:02d}:{s:02d}'
