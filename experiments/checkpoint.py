"""Checkpoints with Orbax: save every N steps, keep the last few, resume from the newest
readable one.

A checkpoint that cannot be restored (truncated by a preemption mid-write, corrupted on
disk) is never deleted: it is moved to ``<workdir>/checkpoints_unreadable/<step>`` with a
warning, and the previous one is used. Nothing already saved is lost.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
  """Saves and restores the `TrainState` pytree of one run."""

  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.quarantine = os.path.abspath(os.path.join(workdir, 'checkpoints_unreadable'))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
    )

  def save(self, step: int, state: Any) -> None:
    """Starts an asynchronous save; the next save or `wait` finishes it."""
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def restore_latest(self, abstract_state: Any) -> tuple[Any, int] | None:
    """The newest checkpoint that restores into ``abstract_state``'s structure and shardings.

    Returns (state, step), or None when there is no readable checkpoint.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
      except Exception as e:  # any failure to read means: use an older one
        where = self._set_aside(step)
        log.warning('checkpoint at step %d is unreadable (%s: %s); moved it to %s and '
                    'falling back to the previous one', step, type(e).__name__,
                    str(e).splitlines()[0] if str(e) else '', where)
        continue
      return state, step
    return None

  def _set_aside(self, step: int) -> str:
    source = os.path.join(self.directory, str(step))
    target = os.path.join(self.quarantine, str(step))
    if jax.process_index() == 0 and os.path.exists(source):
      os.makedirs(self.quarantine, exist_ok=True)
      suffix = 0
      while os.path.exists(target):
        suffix += 1
        target = os.path.join(self.quarantine, f'{step}.{suffix}')
      shutil.move(source, target)
    self.manager.reload()
    return target


def abstract_like(state: Any) -> Any:
  """The ShapeDtypeStruct tree (with shardings) that restores into ``state``'s layout."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
