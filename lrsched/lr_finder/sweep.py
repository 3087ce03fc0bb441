"""The sweep of an LR range test: its schedule and the compiled training loop."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from lrsched import _base
from lrsched._base import Numeric, Shape
from lrsched.decay import linear
from lrsched.lr_finder.curve import check_hyper, diverged, smoothing_step
from lrsched.lr_finder.result import RangeTestResult

MODES = ('exp', 'linear')


# --------------------------------------------------------------------------------------
# The sweep schedule


@_base.register
def log_linear(init_lr: Numeric, end_lr: Numeric, total_steps: int) -> Shape:
  r"""Geometric interpolation from ``init_lr`` to ``end_lr`` over ``total_steps`` steps.

  .. math:: \eta_t = \eta_0 \, (\eta_{end} / \eta_0)^{\min(t, T) / T}

  The LR is linear in log scale: the exponential sweep of an LR range test (fastai's
  ``SchedExp``; Smith, 2017, §3.3, sweeps linearly instead, see `lrsched.linear`). It grows
  when ``end_lr > init_lr`` and decays otherwise. Step 0 gives exactly ``init_lr`` and
  steps from ``T`` on exactly ``end_lr``.

  Args:
    init_lr: the value at step 0, > 0.
    end_lr: the value at step ``total_steps`` and after, > 0.
    total_steps: T, >= 1.
  """
  _base.check_lr('log_linear', 'init_lr', init_lr, positive=True)
  _base.check_lr('log_linear', 'end_lr', end_lr, positive=True)
  _base.check_steps('log_linear', 'total_steps', total_steps)
  dtype = jnp.result_type(float, init_lr, end_lr)

  def fn(step):
    frac = _base.to_float(jnp.minimum(step, total_steps)) / total_steps
    if _base.is_python_number(init_lr) and _base.is_python_number(end_lr):
      # The log of the ratio in float64: float32 would put a 1e-7 relative error in it.
      value = init_lr * jnp.exp(frac * math.log(end_lr / init_lr))
    else:
      value = init_lr * jnp.power(jnp.asarray(end_lr) / init_lr, frac)
    return jnp.where(step >= total_steps, end_lr, value).astype(dtype)

  return Shape(fn, boundaries=(0, total_steps), total_steps=total_steps)



# --------------------------------------------------------------------------------------
# The test itself


class _Carry(NamedTuple):
  params: Any
  opt_state: Any
  state: Any
  avg: jax.Array    # the un-corrected moving average of the loss
  best: jax.Array   # the lowest smoothed loss so far (inf before the first step)
  done: jax.Array   # diverged: every later step is skipped


class _Record(NamedTuple):
  lr: jax.Array
  loss: jax.Array
  smoothed: jax.Array
  valid: jax.Array
  metric: jax.Array


def _scalar(where: str, name: str, value: Any) -> jax.Array:
  if jnp.shape(value) != ():
    raise TypeError(f'range_test: {where} must return a scalar {name}, got shape '
                    f'{jnp.shape(value)}')
  return value


def _check_batches(batches: Any, num_steps: int) -> Any:
  leaves = jax.tree.leaves(batches)
  if not leaves:
    raise _base.fail('range_test', 'batches must be a pytree of arrays with a leading axis '
                                   'of batches, or a function step -> batch; got no arrays')
  for leaf in leaves:
    shape = np.shape(leaf)
    if not shape or shape[0] < num_steps:
      raise _base.fail('range_test', (
        f'batches must hold at least num_steps={num_steps} batches along the leading axis of '
        f'every array, got an array of shape {shape}; pass more batches or lower num_steps'))
  return jax.device_put(batches)


def range_test(loss_fn: Callable[..., Any], params: optax.Params,
               batches: Any | Callable[[jax.Array], Any], *, min_lr: float, max_lr: float,
               num_steps: int, mode: str = 'exp',
               optimizer: Callable[[optax.ScalarOrSchedule],
                                   optax.GradientTransformation] | None = None,
               smoothing: float = 0.98, diverge_factor: float = 4.0, state: Any = None,
               metric_fn: Callable[[optax.Params, Any], jax.Array] | None = None,
               metric_every: int = 1, chunk_size: int | None = None) -> RangeTestResult:
  r"""The LR range test: trains while the LR sweeps from ``min_lr`` to ``max_lr``.

  Step t computes the loss of batch t, then updates the parameters with
  ``optimizer(schedule)`` at the sweep's LR

  .. math:: \eta_t = \eta_{min} (\eta_{max} / \eta_{min})^{t / (N - 1)} \text{ ('exp')}
            \quad\text{or}\quad
            \eta_t = \eta_{min} + (\eta_{max} - \eta_{min}) \, t / (N - 1) \text{ ('linear')}

  (`log_linear` or `lrsched.linear` over N - 1 steps, so that the last step uses exactly
  ``max_lr``), and records the LR, the loss, its bias-corrected moving average (see
  `smooth`) and, every ``metric_every`` steps, ``metric_fn`` after the update. The test
  stops at the first step that diverges (NaN/inf loss, or the smoothed loss risen above
  the best by more than (``diverge_factor`` - 1) times the best's magnitude; see
  `divergence_step`); that step and the later ones are not recorded and change nothing.

  The sweep is one compiled ``lax.scan`` (with ``chunk_size``, one compiled scan per
  chunk, so that the host stops after the chunk where the loss diverged). It trains a copy
  of ``params``: the caller's arrays are neither changed nor donated.

  The loss convention. Without ``state``, ``loss_fn(params, batch)`` returns the loss or
  ``(loss, aux)`` (aux is ignored). With ``state`` (e.g. Flax's batch statistics, or a
  PRNG key to split), ``loss_fn(params, state, batch)`` returns ``(loss, new_state)``,
  and the state is threaded through the steps; ``metric_fn(params, state)`` gets the
  current state (None without one). For a Flax Linen model with batch norm::

    variables = model.init(key, images[0], train=False)

    def loss_fn(params, batch_stats, batch):
      logits, updates = model.apply({'params': params, 'batch_stats': batch_stats},
                                    batch['image'], train=True, mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()
      return loss, updates['batch_stats']

    def test_accuracy(params, batch_stats):
      logits = model.apply({'params': params, 'batch_stats': batch_stats},
                           test_images, train=False)
      return (logits.argmax(-1) == test_labels).mean()

    result = lrsched.range_test(
        loss_fn, variables['params'], batch_fn, state=variables['batch_stats'],
        min_lr=1e-3, max_lr=3.0, num_steps=400, mode='linear',
        metric_fn=test_accuracy, metric_every=20)
    result.super_convergence().lr     # Smith & Topin's 1cycle max_lr

  Args:
    loss_fn: the training loss, as above. It must be jittable.
    params: the initial parameters (a pytree of arrays); not modified.
    batches: a pytree of arrays whose leading axis indexes at least ``num_steps``
      batches (batch t is ``x[t]`` of every array), or a jittable ``batch_fn(step) ->
      batch`` called with an int32 step inside the scan, e.g. one that slices a dataset
      held on the device: ``lambda t: jax.tree.map(lambda x: x[perm[t]], data)``.
    min_lr: the LR of step 0: > 0 for 'exp', >= 0 for 'linear'.
    max_lr: the LR of the last step, > min_lr.
    num_steps: N, the length of the sweep, >= 2 (fastai: 100; Smith: a few epochs).
    mode: 'exp' (the LR grows geometrically; fastai's ``lr_find``) or 'linear' (Smith's
      tests, e.g. from 0 to 3).
    optimizer: ``lr -> optax.GradientTransformation``; it gets the sweep schedule as its
      learning rate (an ``optax.Schedule``), e.g. ``lambda lr: optax.adamw(lr, b1=0.9)``.
      Default: SGD with momentum 0.9, as in the papers.
    smoothing: beta of the loss's moving average, in [0, 1) (0: no smoothing).
    diverge_factor: k, > 1 (fastai: 4); ``inf`` stops on NaN/inf losses only.
    state: the model's mutable state (see above), or None.
    metric_fn: ``(params, state) -> scalar``, e.g. a test accuracy (Smith & Topin's
      Fig. 2b), evaluated after the update of steps t with (t + 1) % metric_every == 0.
    metric_every: >= 1.
    chunk_size: steps per compiled scan, >= 1; None: all N in one scan. The host checks for
      divergence between chunks; the steps after divergence inside a chunk are skipped
      (``lax.cond``) and cost almost nothing.

  Returns:
    A `RangeTestResult` with the steps before divergence.
  """
  where = 'range_test'
  _base.check_choice(where, 'mode', mode, MODES)
  _base.check_steps(where, 'num_steps', num_steps, 2)
  if mode == 'exp':
    _base.check_lr(where, 'min_lr', min_lr, positive=True)
  else:
    _base.check_lr(where, 'min_lr', min_lr)
  _base.check_lr(where, 'max_lr', max_lr, positive=True)
  if float(max_lr) <= float(min_lr):
    raise _base.fail(where, f'max_lr must be > min_lr (the LR sweeps up), got min_lr='
                            f'{min_lr!r} and max_lr={max_lr!r}')
  check_hyper(where, smoothing, diverge_factor)
  _base.check_steps(where, 'metric_every', metric_every)
  if chunk_size is not None:
    _base.check_steps(where, 'chunk_size', chunk_size)
  for name, fn in (('loss_fn', loss_fn), ('optimizer', optimizer), ('metric_fn', metric_fn)):
    if fn is not None and not callable(fn):
      raise _base.fail(where, f'{name} must be callable, got {fn!r}')

  if callable(batches):
    batch_fn, data = batches, None
  else:
    batch_fn, data = None, _check_batches(batches, num_steps)

  sweep = (log_linear if mode == 'exp' else linear)(min_lr, max_lr, num_steps - 1)
  if optimizer is None:
    optimizer = lambda lr: optax.sgd(lr, momentum=0.9)
  tx = optimizer(sweep)
  dtype = jnp.result_type(float)
  beta, factor = float(smoothing), float(diverge_factor)
  state_tree = jax.tree.structure(state)

  def loss_and_state(p, s, batch):
    if state is None:
      out = loss_fn(p, batch)
      loss = out[0] if isinstance(out, (tuple, list)) else out
      return _scalar('loss_fn', 'loss', loss).astype(dtype), s
    out = loss_fn(p, s, batch)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
      raise TypeError('range_test: with state, loss_fn(params, state, batch) must return '
                      f'(loss, new_state), got {type(out).__name__}')
    loss, new_s = out
    if jax.tree.structure(new_s) != state_tree:
      raise TypeError(f'range_test: loss_fn returned a new state of structure '
                      f'{jax.tree.structure(new_s)}, expected {state_tree}')
    return _scalar('loss_fn', 'loss', loss).astype(dtype), new_s

  def get_batch(t, data):
    if batch_fn is not None:
      return batch_fn(t)
    return jax.tree.map(lambda x: lax.dynamic_index_in_dim(x, t, keepdims=False), data)

  def metric(p, s, t):
    if metric_fn is None:
      return jnp.asarray(jnp.nan, dtype)
    return lax.cond((t + 1) % metric_every == 0,
                    lambda: _scalar('metric_fn', 'metric', metric_fn(p, s)).astype(dtype),
                    lambda: jnp.asarray(jnp.nan, dtype))

  def run(carry, t, data):
    lr = jnp.asarray(sweep(t), dtype)
    (loss, new_state), grads = jax.value_and_grad(loss_and_state, has_aux=True)(
      carry.params, carry.state, get_batch(t, data))
    avg, smoothed = smoothing_step(carry.avg, loss, _base.to_float(t + 1), beta)
    bad = diverged(loss, smoothed, carry.best, factor, jnp)

    def update(_):
      updates, opt_state = tx.update(grads, carry.opt_state, carry.params)
      params = optax.apply_updates(carry.params, updates)
      new = _Carry(params, opt_state, new_state, avg, jnp.minimum(carry.best, smoothed),
                   jnp.asarray(False))
      return new, metric(params, new_state, t)

    def stop(_):
      return carry._replace(done=jnp.asarray(True)), jnp.asarray(jnp.nan, dtype)

    carry, m = lax.cond(bad, stop, update, None)
    return carry, _Record(lr, loss, smoothed, ~bad, m)

  def skip(carry, t, data):
    nan = jnp.asarray(jnp.nan, dtype)
    return carry, _Record(nan, nan, nan, jnp.asarray(False), nan)

  def step(data, carry, t):
    active = (t < num_steps) & ~carry.done
    return lax.cond(active, run, skip, carry, t, data)

  chunk = num_steps if chunk_size is None else min(chunk_size, num_steps)

  @jax.jit
  def init(params, state):
    # Copies, so that donating the carry to the chunks never frees the caller's arrays.
    carry = _Carry(params, tx.init(params), state, jnp.zeros((), dtype),
                   jnp.asarray(jnp.inf, dtype), jnp.asarray(False))
    return jax.tree.map(jnp.copy, carry)

  def scan_chunk(carry, start, data):
    steps = start + jnp.arange(chunk, dtype=jnp.int32)
    return lax.scan(lambda c, t: step(data, c, t), carry, steps)

  # The carry is the test's own copy (see init): donate it to save a copy of the model.
  run_chunk = jax.jit(scan_chunk, donate_argnums=0)

  carry = init(params, state)
  records, steps_run, stopped_early = [], 0, False
  for start in range(0, num_steps, chunk):
    carry, record = run_chunk(carry, jnp.asarray(start, jnp.int32), data)
    records.append(jax.device_get(record))
    steps_run = min(start + chunk, num_steps)
    if steps_run < num_steps and bool(carry.done):
      stopped_early = True
      break

  record = _Record(*(np.concatenate(field) for field in zip(*records, strict=True)))
  valid = record.valid[:steps_run]
  diverged_at = None if valid.all() else int(np.argmin(valid))
  n = steps_run if diverged_at is None else diverged_at
  metrics = metric_steps = None
  if metric_fn is not None:
    metric_steps = np.arange(metric_every - 1, n, metric_every)
    metrics = record.metric[metric_steps]
  return RangeTestResult(record.lr[:n], record.loss[:n], record.smoothed[:n], metrics,
                         metric_steps, diverged_at, stopped_early, steps_run, num_steps)
