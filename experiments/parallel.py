"""The data-parallel training and evaluation steps: one replica per device.

This is the pmap model written with the current API: ``jax.jit`` over a one-axis
``('data',)`` mesh, with ``jax.shard_map`` for the per-replica body (what ``jax.pmap``
itself lowers to since JAX 0.10). Every replica holds the parameters and the whole
(small) training set; it takes its slice of the global batch by index, augments it and
computes gradients; the gradients are summed over the mesh (by autodiff: the parameters
are replicated) and the batch-norm statistics averaged with ``lax.pmean``.

The data order is one stream of examples: epoch e of the stream is the permutation
``permutation(fold_in(data_key, e), N)`` of the N training examples, the epochs follow one
another, and a step takes the next global batch from the stream, across an epoch's end if
need be (nothing is dropped, as in Caffe; ``lrsched.to_steps`` counts steps the same way).
The example at position p of the stream gets its augmentation from ``fold_in(augment_key,
p)``. A step's batch is the positions ``first_example + (step - first_step) * B + [0, B)``
of its batch phase (`StepConfig`), so that

* runs that differ only in how the stream is cut into batches (a growing batch size, as in
  `Config.batch_schedule`, against the constant batch of an LR decay) see the same
  examples, identically augmented, in the same order;
* the same global batch on 1 or on N devices gives the same result (up to float
  reduction order; the BN statistics come from ghost-BN groups that never span devices),
  except with dropout, whose masks are drawn per replica;
* a run resumed from a checkpoint, in any batch phase, replays exactly the steps it would
  have run.

An epoch's order is a sort of the training set (50,000 keys for CIFAR: 25 ms on two CPU
cores, a tenth of a ResNet-20 step), so a dispatch hands the orders it drew to the next one
(`DataOrder`), which draws anew only when its first epoch differs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
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
  first_nonfinite_step: jax.Array  # -1 while every loss and update so far was finite

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


class DataOrder(NamedTuple):
  """The epoch orders a dispatch read, ``epoch_orders(data_key, first_epoch, count, N)``,
  passed on to the next dispatch. Derived data, never checkpointed: a stale one (another
  epoch's, or none) only costs a redraw, as the step checks ``first_epoch``; the orders
  themselves are trusted, so pass only what a dispatch of the same steps returned."""

  orders: jax.Array  # int32 (count, train_size)
  first_epoch: jax.Array  # int32 scalar; -1: nothing drawn yet


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
  """The static settings of the step; a new value means a new compilation.

  ``first_step`` and ``first_example`` place the step's batch phase in the data stream (see
  the module docstring): the defaults are the whole run at one batch size.
  """

  global_batch: int
  augment: str
  dtype: Any
  first_step: int = 0
  first_example: int = 0


def epochs_spanned(length: int, train_size: int, granule: int = 1) -> int:
  """The most epochs that ``length`` consecutive stream positions can touch, when they start
  at a multiple of ``granule`` (a divisor of ``train_size``; 1 for any start)."""
  if granule < 1 or train_size % granule:
    raise ValueError(f'epochs_spanned: granule={granule} must divide train_size={train_size}')
  # The worst start is the last multiple of `granule` in an epoch.
  return (train_size - granule + length - 1) // train_size + 1


def epoch_orders(data_key: jax.Array, first_epoch: jax.Array, count: int,
                 train_size: int) -> jax.Array:
  """The example orders of epochs ``first_epoch .. first_epoch + count - 1``: an int32
  array of shape (count, train_size) whose row i is ``permutation(fold_in(data_key, e),
  train_size)`` of epoch e = first_epoch + i."""
  epochs = first_epoch + jnp.arange(count, dtype=jnp.int32)
  return jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(data_key, e),
                                                   train_size))(epochs)


def stream_indices(orders: jax.Array, first_epoch: jax.Array, positions: jax.Array
                   ) -> jax.Array:
  """The training-set indices of the examples at stream ``positions``, which lie in the
  epochs of ``orders = epoch_orders(data_key, first_epoch, ...)``."""
  train_size = orders.shape[1]
  return orders[positions // train_size - first_epoch, positions % train_size]


def augment_batch(images: jax.Array, augment_key: jax.Array, positions: jax.Array,
                  mode: str) -> jax.Array:
  """Augments each image with the key of its stream position."""
  keys = jax.vmap(jax.random.fold_in, (None, 0))(augment_key, positions)
  return jax.vmap(lambda image, k: data.augment(image[None], k, mode)[0])(images, keys)


def make_train_steps(model, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                     cfg: StepConfig, key: jax.Array, *, unroll: bool | None = None
                     ) -> Callable[..., TrainState]:
  """Returns ``train(state, images, labels, mean, std, num_steps) -> state``.

  ``num_steps`` (static) updates run inside one dispatch (a ``lax.scan``); ``images`` and
  ``labels`` are the whole training set, replicated on every device. ``state`` is donated.
  ``unroll``: whether the scan is unrolled; default on CPU only (see below).

  ``train.compiled(num_steps)`` is the jitted dispatch itself, ``(state, images, labels,
  mean, std, order) -> (state, order)`` with ``order`` a `DataOrder` (donated too; the first
  from ``train.no_order(num_steps, train_size)``), for ahead-of-time lowering and timing;
  ``train`` keeps the orders between its calls.
  """
  num_devices = mesh.size
  local_batch = cfg.global_batch // num_devices
  data_key, augment_key, dropout_key = jax.random.split(key, 3)

  def stream_start(step: jax.Array) -> jax.Array:
    """The stream position of the first example of ``step``'s global batch."""
    return cfg.first_example + (step - cfg.first_step) * cfg.global_batch

  def epochs_read(num_steps: int, train_size: int) -> int:
    """How many epochs a dispatch of ``num_steps`` steps reads. When the batch size divides
    the epoch, batches start at multiples of it and a single step never reads two."""
    aligned = train_size % cfg.global_batch == 0 and cfg.first_example % cfg.global_batch == 0
    return epochs_spanned(num_steps * cfg.global_batch, train_size,
                          cfg.global_batch if aligned else 1)

  def one_step(state: TrainState, images, labels, mean, std, orders, first_epoch
               ) -> TrainState:
    replica = lax.axis_index(AXIS)
    positions = (stream_start(state.step) + replica * local_batch
                 + jnp.arange(local_batch, dtype=jnp.int32))
    index = stream_indices(orders, first_epoch, positions)
    x = augment_batch(images[index], augment_key, positions, cfg.augment)
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
    # The first step whose loss or update is NaN/inf, whatever the logging intervals.
    finite = jnp.isfinite(loss_sum) & _all_finite(params)
    bad = (m.first_nonfinite_step < 0) & ~finite
    metrics = Metrics(m.loss_sum + loss_sum, m.correct + correct,
                      m.count + cfg.global_batch,
                      jnp.where(bad, state.step, m.first_nonfinite_step))
    return TrainState(state.step + 1, params, batch_stats, opt_state, metrics)

  # XLA:CPU runs the convolutions of a loop body about 35x slower (measured: ResNet-20,
  # batch 128), so on CPU the K steps are unrolled into straight-line code, whose compile
  # time grows with K; elsewhere they stay a loop, compiled once whatever K.
  if unroll is None:
    unroll = mesh.devices.flat[0].platform == 'cpu'

  def replica_train(state, images, labels, mean, std, order, *, num_steps):
    # The orders of the epochs this dispatch reads: the previous dispatch's if it started in
    # the same epoch (they depend on nothing else), else drawn anew. A pure function of the
    # state either way, so resumed and uninterrupted runs read the same batches.
    train_size = labels.shape[0]
    first_epoch = stream_start(state.step) // train_size
    count = order.orders.shape[0]
    orders = lax.cond(order.first_epoch == first_epoch, lambda: order.orders,
                      lambda: epoch_orders(data_key, first_epoch, count, train_size))
    step = lambda state: one_step(state, images, labels, mean, std, orders, first_epoch)
    if num_steps == 1:
      state = step(state)
    else:
      state, _ = lax.scan(lambda state, _: (step(state), None), state, length=num_steps,
                          unroll=unroll)
    return state, DataOrder(orders, first_epoch)

  @functools.cache
  def compiled(num_steps: int):
    # check_vma=True (the default, stated because correctness rests on it): the parameters
    # are invariant over the mesh, so autodiff sums their gradients over the replicas.
    # Without it each replica would apply the gradient of its own slice of the batch.
    body = jax.shard_map(functools.partial(replica_train, num_steps=num_steps), mesh=mesh,
                         in_specs=(P(),) * 6, out_specs=P(), check_vma=True)
    return jax.jit(body, donate_argnums=(0, 5))

  @functools.cache
  def make_no_order(count: int, train_size: int):
    return jax.jit(lambda: DataOrder(jnp.zeros((count, train_size), jnp.int32),
                                     jnp.full((), -1, jnp.int32)),
                   out_shardings=replicated(mesh))

  def no_order(num_steps: int, train_size: int) -> DataOrder:
    """A `DataOrder` with nothing drawn, of the shape a ``num_steps`` dispatch reads."""
    return make_no_order(epochs_read(num_steps, train_size), train_size)()

  kept: dict[tuple[int, int], DataOrder] = {}  # (count, train_size) -> the last one drawn

  def train(state, images, labels, mean, std, num_steps: int = 1) -> TrainState:
    num_steps, train_size = int(num_steps), labels.shape[0]
    shape = (epochs_read(num_steps, train_size), train_size)
    order = kept.pop(shape, None) or no_order(num_steps, train_size)
    state, kept[shape] = compiled(num_steps)(state, images, labels, mean, std, order)
    return state

  train.compiled = compiled
  train.no_order = no_order
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
                       out_specs=(P(), P()), check_vma=True)
  return jax.jit(body)


def make_bn_recalibration(model, mesh: jax.sharding.Mesh, dtype: Any, local_batch: int,
                          bn_momentum: float, images: np.ndarray, augment: str,
                          key: jax.Array):
  """Returns ``recalibrate(params, batch_stats) -> batch_stats``: the batch-norm statistics
  of ``params``, recomputed on fixed training batches.

  Why: a schedule-free optimizer trains at the interpolation y and is evaluated at the
  average x (`experiments.train.evaluation_params`); the running statistics were gathered
  at y, so they are recomputed at x before every evaluation, as Defazio et al. (2024)
  prescribe for batch norm. ``images`` (a fixed sample of the training set, a multiple of
  the global batch) pass in training mode, augmented as in training with a fixed key, in
  batches of the training run's per-device size (so ghost-BN groups are the same): each
  batch's statistics start from zero and the batches weigh equally. The training state's
  own statistics are not touched, so training goes on exactly as without evaluations.
  """
  images = put_sharded(mesh, images)
  positions = put_sharded(mesh, np.arange(images.shape[0], dtype=np.int32))

  def replica(params, batch_stats, images, positions, mean, std):
    zeros = jax.tree.map(jnp.zeros_like, batch_stats)

    def one_batch(i):
      sl = lambda a: lax.dynamic_slice_in_dim(a, i * local_batch, local_batch)
      x = augment_batch(sl(images), key, sl(positions), augment)
      x = data.normalize(x, mean, std, dtype=dtype)
      _, updated = model.apply({'params': params, 'batch_stats': zeros}, x, train=True,
                               mutable=['batch_stats'])
      return updated['batch_stats']

    stats = lax.map(one_batch, jnp.arange(images.shape[0] // local_batch))
    stats = lax.pmean(jax.tree.map(lambda a: a.mean(0), stats), AXIS)
    # From zero, one update leaves (1 - m) x the batch's statistics (and, debiased, a
    # weight of 1 - m, which the evaluation divides out); undo the factor where no weight
    # does it.
    return _undo_decay(stats, bn_momentum)

  body = jax.shard_map(replica, mesh=mesh, in_specs=(P(), P(), P(AXIS), P(AXIS), P(), P()),
                       out_specs=P(), check_vma=True)
  step = jax.jit(body)
  return lambda params, batch_stats, mean, std: step(params, batch_stats, images, positions,
                                                     mean, std)


def _undo_decay(stats: Any, bn_momentum: float) -> Any:
  """Divides the 'mean' and 'var' of every batch-norm layer without a debias 'weight' by
  1 - bn_momentum."""
  if isinstance(stats, Mapping) and 'mean' in stats and 'var' in stats:
    if 'weight' in stats:
      return stats
    return {k: v / (1.0 - bn_momentum) if k in ('mean', 'var') else v
            for k, v in stats.items()}
  if isinstance(stats, Mapping):
    return {k: _undo_decay(v, bn_momentum) for k, v in stats.items()}
  return stats


def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


all_finite = jax.jit(_all_finite)
"""Whether every leaf of ``tree`` is finite (checked before a checkpoint is written)."""


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
