"""The PyTorch reference: ``benchmarks/torch_reference.py`` run in a subprocess on a group's
model, per-device batch and precision (PyTorch is never imported here)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
from typing import Any

from experiments import allocator
from experiments.benchmark.settings import ROOT, Settings

TORCH_REFERENCE = os.path.join(ROOT, 'benchmarks', 'torch_reference.py')
READY, SAMPLE = 'lrsched-ready', 'lrsched-sample'  # what torch_reference --interleave prints
log = logging.getLogger(__name__)


def torch_importable() -> bool:
  return importlib.util.find_spec('torch') is not None


def _command(settings: Settings, row: dict[str, Any], device: str, path: str) -> list[str]:
  return [
      sys.executable, TORCH_REFERENCE, f'--model={row["model"]}',
      f'--batch_size={row["per_device_batch"]}', f'--precision={row["precision"]}',
      f'--train_examples={settings.train_examples}',
      f'--warmup_steps={settings.warmup_steps}', f'--samples={settings.samples}',
      f'--steps_per_sample={settings.steps_per_sample}', f'--seed={settings.seed}',
      f'--eval_examples={row["eval_examples"]}', f'--eval_batch={row["eval_chunk"]}',
      f'--eval_repeats={settings.eval_repeats}',
      f'--device={device}', f'--json={path}',
      *([f'--compile_mode={settings.torch_compile_mode}'] if settings.torch_compile
        else ['--no_compile'])]


def _result(returncode: int | None, path: str) -> dict[str, Any]:
  if returncode != 0 or not os.path.exists(path):
    return {'error': f'benchmarks/torch_reference.py exited with {returncode}'}
  with open(path) as f:
    return json.load(f)


def run_torch_reference(settings: Settings, row: dict[str, Any], device: str
                        ) -> dict[str, Any]:
  """Runs benchmarks/torch_reference.py on the group of ``row`` on one ``device`` ('cuda' or
  'cpu'), with the per-device batch, after the group; returns its JSON, or {'error': ...}."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'torch.json')
    command = _command(settings, row, device, path)
    log.info('PyTorch reference: %s', shlex.join(command[1:]))
    # PyTorch runs with the environment the user gave, not with our allocator setting.
    result = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, check=False,
                            env=allocator.environment_as_given())
    return _result(result.returncode, path)


class InterleavedReference:
  """benchmarks/torch_reference.py beside a group on CPU, its samples taken in turn with the
  group's (``--interleave``): a shared, noisy CPU then slows both alike, and the ratio of
  each pair of samples holds where timing one after the other could not (WORKSPACE.md).

  Start it after the group's own warm-up (it compiles and warms up meanwhile); `sample`
  times one sample of PyTorch's step, `finish` its evaluation, and returns its JSON (with
  ``sample_step_s``, the samples in order), or {'error': ...} where it failed: a failed
  reference never stops the group (`sample` then returns None). `close` it in any case.
  """

  def __init__(self, settings: Settings, row: dict[str, Any]):
    self._tmp = tempfile.TemporaryDirectory()
    self._path = os.path.join(self._tmp.name, 'torch.json')
    command = [*_command(settings, row, 'cpu', self._path), '--interleave']
    log.info('PyTorch reference, interleaved: %s', shlex.join(command[1:]))
    self._process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True,
                                     env=allocator.environment_as_given())
    self._failed = self._read(READY) is None

  def _read(self, prefix: str) -> str | None:
    """The rest of the next line of ours on its stdout (skipping anything else), or None."""
    for line in self._process.stdout:
      if line.startswith(prefix):
        return line[len(prefix):].strip()
    return None

  def sample(self) -> float | None:
    """One sample of PyTorch's step: its seconds per step, or None if the reference failed."""
    if self._failed:
      return None
    try:
      self._process.stdin.write('sample\n')
      self._process.stdin.flush()
    except OSError:
      self._failed = True
      return None
    seconds = self._read(SAMPLE)
    self._failed = seconds is None
    return None if seconds is None else float(seconds)

  def finish(self) -> dict[str, Any]:
    """PyTorch's evaluation and its result (the process ends)."""
    self._process.communicate('eval\n' if self._process.poll() is None else None)
    return _result(self._process.returncode, self._path)

  def close(self) -> None:
    """Stops the process if it still runs (the group failed) and removes its files."""
    if self._process.poll() is None:
      self._process.kill()
      self._process.wait()
    self._tmp.cleanup()
