"""Checkpoints with Orbax: save every N steps, keep the last few, resume from the newest
readable one.

A checkpoint that cannot be restored (truncated by a preemption mid-write, corrupted on
disk) is never deleted: it is moved to ``<workdir>/checkpoints_unreadable/<step>`` with a
warning, and the previous one is used. Each checkpoint has a checksum of its arrays, computed
on the device when it is saved (``checksums/<step>.json`` beside it) and verified on
restore: a checkpoint whose bytes changed on disk counts as unreadable. A readable
checkpoint whose arrays are not those of
this run's state (written by other code, or another model) is an error that stops the run
before anything is moved or trained: resuming from scratch over it would hide it. Nothing
already saved is lost.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from experiments.config import ConfigError

log = logging.getLogger(__name__)

# Orbax's default on CPU and TPU splits every replicated array among the replicas to save
# it, one eager slice per array and replica: on 8 CPU devices a ResNet-8 state took 6.9 s
# to save the first time (the slices compile) and 0.6 s after, against 1.3 s and 0.3 s
# written by one replica. Our states are a few MB, so one replica writes each array.
ocp.type_handlers.register_type_handler(
    jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


class CheckpointMismatch(ConfigError):
  """The checkpoints of a workdir hold another state than the one this run trains."""


def _arrays(tree: Any) -> collections.Counter:
  """The multiset of (shape, dtype) of a state's or a checkpoint's arrays."""
  return collections.Counter((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(tree))


class ChecksumMismatch(RuntimeError):
  """A restored checkpoint's arrays differ from what was saved."""


@jax.jit
def checksums(tree: Any) -> list[jax.Array]:
  """One uint32 per array: its bits, each weighted by an odd multiplier of its position,
  summed modulo 2**32, so that a changed, lost or moved byte changes the sum."""
  out = []
  for x in jax.tree.leaves(tree):
    x = jnp.ravel(x)
    if x.dtype == jnp.bool_:
      x = x.astype(jnp.uint8)
    bits = jax.lax.bitcast_convert_type(
        x, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]).astype(jnp.uint32)
    weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) | jnp.uint32(1)
    out.append(jnp.sum(bits * weights, dtype=jnp.uint32))
  return out


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
    self.sums = os.path.abspath(os.path.join(workdir, 'checksums'))
    self.set_aside: list[str] = []  # the checkpoints found unreadable by this run

  def save(self, step: int, state: Any, extra: dict[str, Any] | None = None) -> None:
    """Starts an asynchronous save; the next save or `wait` finishes it. ``extra``
    (JSON) is kept beside the checksum and returned by `restore_latest`."""
    sums = [int(v) for v in jax.device_get(checksums(state))]
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    if jax.process_index() == 0:
      os.makedirs(self.sums, exist_ok=True)
      path = self._sum_path(step)
      with open(path + '.tmp', 'w') as f:
        json.dump({'step': step, 'checksums': sums, **(extra or {})}, f)
      os.replace(path + '.tmp', path)
      kept = set(self.manager.all_steps()) | {step}
      for name in os.listdir(self.sums):  # those of checkpoints rotated out
        if name.endswith('.json') and name[:-5].isdigit() and int(name[:-5]) < min(kept):
          os.remove(os.path.join(self.sums, name))

  def _sum_path(self, step: int) -> str:
    return os.path.join(self.sums, f'{step}.json')

  def record(self, step: int) -> dict[str, Any]:
    """What `save` kept beside the checkpoint of ``step`` ({} for one without it)."""
    try:
      with open(self._sum_path(step)) as f:
        return json.load(f)
    except (OSError, ValueError):
      return {}

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    """Waits for the saves under way, then releases the manager; a second call does nothing."""
    if self.manager is not None:
      self.manager.wait_until_finished()
      self.manager.close()
      self.manager = None

  def restore_latest(self, abstract_state: Any) -> tuple[Any, int] | None:
    """The newest checkpoint that restores into ``abstract_state``'s structure and shardings.

    Returns (state, step), or None when there is no readable checkpoint.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        saved = _arrays(self.manager.item_metadata(step).tree)
      except Exception as e:  # no readable metadata: a damaged checkpoint
        self._unreadable(step, e)
        continue
      self._check_arrays(step, saved, abstract_state, 'Use another --workdir, or the code '
                         'that wrote it')
      try:
        state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
        self._verify(step, state)
      except Exception as e:  # the arrays match but can't be read: a damaged checkpoint
        self._unreadable(step, e)
        continue
      return state, step
    return None

  def restore(self, step: int, abstract_state: Any, fix: str) -> Any:
    """The checkpoint of ``step``, verified; it is never set aside (it may be another
    run's). ConfigError, ending with ``fix``, if it is missing, holds other arrays than
    ``abstract_state`` or is unreadable."""
    steps = sorted(self.manager.all_steps())
    if step not in steps:
      raise ConfigError(f'{self.directory} has no checkpoint at step {step} (it has '
                        f'{", ".join(map(str, steps)) or "none"}). {fix}')
    try:
      saved = _arrays(self.manager.item_metadata(step).tree)
      self._check_arrays(step, saved, abstract_state, fix)
      state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
      self._verify(step, state)
    except CheckpointMismatch:
      raise
    except Exception as e:
      raise ConfigError(f'the checkpoint at step {step} in {self.directory} is unreadable '
                        f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}). '
                        f'{fix}') from None
    return state

  def _check_arrays(self, step: int, saved: collections.Counter, abstract_state: Any,
                    fix: str) -> None:
    wanted = _arrays(abstract_state)
    if saved != wanted:
      only_saved = sorted((saved - wanted).elements())[:3]
      only_wanted = sorted((wanted - saved).elements())[:3]
      raise CheckpointMismatch(
          f'the checkpoint at step {step} in {self.directory} holds other arrays than this '
          f'run trains ({sum(saved.values())} against {sum(wanted.values())}; only in the '
          f'checkpoint: {only_saved}; only in this run: {only_wanted}): it was written by '
          f'other code, another model or another optimizer. {fix}')

  def _verify(self, step: int, state: Any) -> None:
    expected = self.record(step).get('checksums')
    if expected is None:  # written before checksums existed
      log.warning('checkpoint at step %d has no checksum (%s): restored unverified', step,
                  self._sum_path(step))
      return
    actual = [int(v) for v in jax.device_get(checksums(state))]
    bad = [i for i, (a, b) in enumerate(zip(actual, expected, strict=False)) if a != b]
    if bad or len(actual) != len(expected):
      names = [jax.tree_util.keystr(path) for path, _ in
               jax.tree_util.tree_flatten_with_path(state)[0]]
      raise ChecksumMismatch(f'{len(bad)} arrays differ from their checksum at save time '
                             f'({", ".join(names[i] for i in bad[:3])})')

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
      if os.path.exists(self._sum_path(step)):  # its checksum goes with it
        shutil.move(self._sum_path(step), target + '.checksums.json')
    self.manager.reload()
    self.set_aside.append(target)
    return target


def abstract_like(state: Any) -> Any:
  """The ShapeDtypeStruct tree (with shardings) that restores into ``state``'s layout."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
