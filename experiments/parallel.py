"""The data-parallel training and evaluation steps: one replica per device.

This is the pmap model written with the current API: ``jax.jit`` over a one-axis
``('data',)`` mesh, with ``jax.shard_map`` for the per-replica body (what ``jax.pmap``
itself lowers to since JAX 0.10). Every replica holds the parameters and the whole
(small) training set; it takes its slice of the global batch by index, augments it and
computes gradients; the gradients are summed over the mesh (by autodiff: the parameters
are replicated) and the batch-norm statistics averaged with ``lax.pmean``.

Everything random is a pure function of the seed, the step and an example's position in
the global batch, never of the replica layout, so that

* the same global batch on 1 or on N devices gives the same result (up to float
  reduction order; the BN statistics come from ghost-BN groups that never span devices);
* a run resumed from a checkpoint replays exactly the steps it would have run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import data

AXIS = 'data'


class Metrics(NamedTuple):
  """Training metrics summed on the device since the last evaluation (no host sync per step)."""

  loss_sum: jax.Array
  correct: jax.Array
  count: jax.Array
  first_nonfinite_step: jax.Array  # -1 while every loss so far was finite

  @classmethod
  def zeros(cls) -> Metrics:
    # Distinct arrays: the state is donated, and one buffer in two leaves can't be.
    return cls(*(jnp.zeros((), jnp.float32) for _ in range(3)), jnp.full((), -1, jnp.int32))


class TrainState(NamedTuple):
  """Everything a step reads and writes; also exactly what a checkpoint holds."""

  step: jax.Array  # int32: the number of updates applied so far
  params: Any
  batch_stats: Any
  opt_state: optax.OptState
  metrics: Metrics


def make_mesh(devices: list[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A one-axis mesh over every device of the job (all hosts), one replica per device."""
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put_replicated(mesh: jax.sharding.Mesh, array: np.ndarray) -> jax.Array:
  """Puts a host array on every device of the mesh; works with several processes too,
  where each process passes the same array."""
  array = np.asarray(array)
  return jax.make_array_from_callback(array.shape, replicated(mesh), lambda index: array[index])


def put_sharded(mesh: jax.sharding.Mesh, array: np.ndarray) -> jax.Array:
  """Splits a host array's leading axis over the mesh (each process passes the whole array)."""
  array = np.asarray(array)
  return jax.make_array_from_callback(
      array.shape, NamedSharding(mesh, P(AXIS)), lambda index: array[index])


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


class StepConfig(NamedTuple):
  """The static settings of the step; a new value means a new compilation."""

  global_batch: int
  steps_per_epoch: int
  augment: str
  dtype: Any


def make_train_steps(model, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                     cfg: StepConfig, key: jax.Array) -> Callable[..., TrainState]:
  """Returns ``train(state, images, labels, mean, std, num_steps) -> state``.

  ``num_steps`` (static) updates run inside one dispatch as a ``lax.scan``; ``images`` and
  ``labels`` are the whole training set, replicated on every device. ``state`` is donated.
  """
  num_devices = mesh.size
  local_batch = cfg.global_batch // num_devices
  data_key, augment_key, dropout_key = jax.random.split(key, 3)

  def one_step(state: TrainState, images, labels, mean, std) -> TrainState:
    replica = lax.axis_index(AXIS)
    # The epoch's order is a permutation drawn from (seed, epoch): recomputing it each step
    # keeps the step a pure function of the state (a sort of 50k ints: microseconds).
    epoch, batch_in_epoch = jnp.divmod(state.step, cfg.steps_per_epoch)
    order = jax.random.permutation(jax.random.fold_in(data_key, epoch), labels.shape[0])
    first = batch_in_epoch * cfg.global_batch + replica * local_batch
    index = lax.dynamic_slice_in_dim(order, first, local_batch)
    # Per-example augmentation keys from the example's position in the global batch.
    position = replica * local_batch + jnp.arange(local_batch)
    step_key = jax.random.fold_in(augment_key, state.step)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(step_key, position)
    x = jax.vmap(lambda image, k: data.augment(image[None], k, cfg.augment)[0])(
        images[index], keys)
    x = data.normalize(x, mean, std, dtype=cfg.dtype)
    y = labels[index]
    rngs = {'dropout': jax.random.fold_in(jax.random.fold_in(dropout_key, state.step), replica)}

    def loss_fn(params):
      logits, updated = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, x, train=True, rngs=rngs,
          mutable=['batch_stats'])
      losses = cross_entropy(logits, y)
      # The mean over the *global* batch: the params are replicated (invariant over the
      # mesh), so autodiff under shard_map already sums their gradient over the replicas.
      return losses.sum() / cfg.global_batch, (losses, logits, updated['batch_stats'])

    grads, (losses, logits, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    # Each replica updated the running BN statistics from its own groups: average them.
    batch_stats = lax.pmean(batch_stats, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    loss_sum = lax.psum(losses.sum(), AXIS)
    correct = lax.psum((logits.argmax(-1) == y).sum().astype(jnp.float32), AXIS)
    m = state.metrics
    bad = (m.first_nonfinite_step < 0) & ~jnp.isfinite(loss_sum)
    metrics = Metrics(m.loss_sum + loss_sum, m.correct + correct,
                      m.count + cfg.global_batch,
                      jnp.where(bad, state.step, m.first_nonfinite_step))
    return TrainState(state.step + 1, params, batch_stats, opt_state, metrics)

  def replica_train(state, images, labels, mean, std, *, num_steps):
    def body(state, _):
      return one_step(state, images, labels, mean, std), None
    state, _ = lax.scan(body, state, length=num_steps)
    return state

  @functools.cache
  def compiled(num_steps: int):
    body = jax.shard_map(functools.partial(replica_train, num_steps=num_steps), mesh=mesh,
                         in_specs=(P(), P(), P(), P(), P()), out_specs=P())
    return jax.jit(body, donate_argnums=0)

  def train(state, images, labels, mean, std, num_steps: int = 1) -> TrainState:
    return compiled(int(num_steps))(state, images, labels, mean, std)

  train.compiled = compiled
  return train


def make_eval_step(model, mesh: jax.sharding.Mesh, dtype: Any, chunk: int):
  """Returns ``evaluate(params, batch_stats, images, labels, mask, mean, std) -> (loss, acc)``.

  The test set is sharded over the mesh (padded by `pad_for_eval`); each replica runs its
  shard in chunks of ``chunk`` examples inside one dispatch, and the sums are psum-ed.
  """

  def replica_eval(params, batch_stats, images, labels, mask, mean, std):
    n = images.shape[0] // chunk
    variables = {'params': params, 'batch_stats': batch_stats}

    def chunk_sums(i):
      sl = lambda a: lax.dynamic_slice_in_dim(a, i * chunk, chunk)
      x = data.normalize(sl(images), mean, std, dtype=dtype)
      logits = model.apply(variables, x, train=False)
      w = sl(mask)
      loss = (cross_entropy(logits, sl(labels)) * w).sum()
      correct = ((logits.argmax(-1) == sl(labels)) * w).sum()
      return loss, correct

    losses, corrects = lax.map(chunk_sums, jnp.arange(n))
    loss, correct = losses.sum(), corrects.sum()
    total = lax.psum(mask.sum(), AXIS)
    return lax.psum(loss, AXIS) / total, lax.psum(correct, AXIS) / total

  body = jax.shard_map(replica_eval, mesh=mesh,
                       in_specs=(P(), P(), P(AXIS), P(AXIS), P(AXIS), P(), P()),
                       out_specs=(P(), P()))
  return jax.jit(body)


@jax.jit
def all_finite(tree: Any) -> jax.Array:
  """Whether every leaf of ``tree`` is finite (checked before a checkpoint is written)."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def pad_for_eval(images: np.ndarray, labels: np.ndarray, num_devices: int,
                 chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Pads the test set to a multiple of num_devices * chunk; the mask marks real examples."""
  n = len(labels)
  multiple = num_devices * chunk
  padded = -(-n // multiple) * multiple
  mask = np.zeros(padded, np.float32)
  mask[:n] = 1.0
  pad = padded - n
  images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
  labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
  return images, labels, mask
