"""The PyTorch reference: ``benchmarks/torch_reference.py`` run in a subprocess on a group's
model, per-device batch and precision (PyTorch is never imported here)."""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
from typing import Any

from experiments.benchmark.settings import ROOT, Settings

TORCH_REFERENCE = os.path.join(ROOT, 'benchmarks', 'torch_reference.py')
log = logging.getLogger(__name__)


def run_torch_reference(settings: Settings, row: dict[str, Any], device: str
                        ) -> dict[str, Any]:
  """Runs benchmarks/torch_reference.py on the group of ``row`` on one ``device`` ('cuda' or
  'cpu'), with the per-device batch; returns its JSON, or {'error': ...}."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'torch.json')
    command = [
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
    log.info('PyTorch reference: %s', shlex.join(command[1:]))
    result = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, check=False)
    if result.returncode != 0 or not os.path.exists(path):
      return {'error': f'benchmarks/torch_reference.py exited with {result.returncode}'}
    with open(path) as f:
      return json.load(f)
