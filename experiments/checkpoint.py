"""Checkpoints with Orbax: save every N steps, keep the last few, resume from the newest
readable one.

A checkpoint that cannot be restored (truncated by a preemption mid-write, corrupted on
disk) is never deleted: it is moved to ``<workdir>/checkpoints_unreadable/<step>`` with a
warning, and the previous one is used. A readable checkpoint whose arrays are not those of
this run's state (written by other code, or another model) is an error that stops the run
before anything is moved or trained: resuming from scratch over it would hide it. Nothing
already saved is lost.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from experiments.config import ConfigError

log = logging.getLogger(__name__)


class CheckpointMismatch(ConfigError):
  """The checkpoints of a workdir hold another state than the one this run trains."""


def _arrays(tree: Any) -> collections.Counter:
  """The multiset of (shape, dtype) of a state's or a checkpoint's arrays."""
  return collections.Counter((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(tree))


class Checkpointer:
  """Saves and restores the `TrainState` pytree of one run."""

  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.quarantine = os.path.abspath(os.path.join(workdir, 'checkpoints_unreadable'))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        # Named up front, so that a new manager can read a checkpoint's metadata.
        item_handlers=ocp.StandardCheckpointHandler(),
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
    wanted = _arrays(abstract_state)
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        saved = _arrays(self.manager.item_metadata(step).tree)
      except Exception as e:  # no readable metadata: a damaged checkpoint
        self._unreadable(step, e)
        continue
      if saved != wanted:
        only_saved = sorted((saved - wanted).elements())[:3]
        only_wanted = sorted((wanted - saved).elements())[:3]
        raise CheckpointMismatch(
            f'the checkpoint at step {step} in {self.directory} holds other arrays than this '
            f'run trains ({sum(saved.values())} against {sum(wanted.values())}; only in the '
            f'checkpoint: {only_saved}; only in this run: {only_wanted}): it was written by '
            'other code or another model. Use another --workdir, or the code that wrote it')
      try:
        state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
      except Exception as e:  # the arrays match but can't be read: a damaged checkpoint
        self._unreadable(step, e)
        continue
      return state, step
    return None

  def _unreadable(self, step: int, error: Exception) -> None:
    where = self._set_aside(step)
    log.warning('checkpoint at step %d is unreadable (%s: %s); moved it to %s and falling '
                'back to the previous one', step, type(error).__name__,
                str(error).splitlines()[0] if str(error) else '', where)

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
