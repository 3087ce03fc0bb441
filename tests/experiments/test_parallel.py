"""What makes the compiled training step fast on an accelerator, checked on CPU in its HLO.

The timings are the benchmark's job (`experiments.benchmark`, recorded in WORKSPACE.md);
these tests pin the structure that the timings depend on, so that a change that quietly
breaks it fails here: bfloat16 convolutions under float32 parameters and optimizer state,
a donated state updated in place, no host round trip inside the step, the epochs' orders
drawn once per dispatch, no data exchanged between replicas, and the same data stream in
the rolled loop that accelerators run for K steps per dispatch.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lrsched
from experiments import models, parallel, setup

BATCH = 16


def _step(precision: str, num_devices: int = 1, max_lr: float = 0.1, examples: int = 64,
          **kwargs):
  dtype = jnp.bfloat16 if precision == 'bfloat16' else jnp.float32
  model = models.create_model('resnet8', num_classes=10, dtype=dtype, bn_group_size=4)
  tx = lrsched.sgd(lrsched.one_cycle(max_lr, 100) if max_lr else lrsched.constant(0.0),
                   lrsched.one_cycle_momentum(100), weight_decay=1e-4)
  mesh = parallel.make_mesh(jax.devices()[:num_devices])
  steps = parallel.make_train_steps(model, tx, mesh,
                                    parallel.StepConfig(BATCH, 'crop+flip', dtype),
                                    jax.random.key(1), **kwargs)
  state = setup.create_state(model, tx, mesh, jax.random.key(0))
  rng = np.random.default_rng(0)
  put = lambda a: parallel.put_replicated(mesh, a)
  inputs = (put(rng.integers(0, 256, (examples, 32, 32, 3), dtype=np.uint8)),
            put(rng.integers(0, 10, examples, dtype=np.int32)),
            put(np.full(3, 120.0, np.float32)), put(np.full(3, 60.0, np.float32)))
  return steps, state, inputs


def _lowered(steps, state, inputs, num_steps: int = 1):
  return steps.compiled(num_steps).lower(
      state, *inputs, steps.no_order(num_steps, inputs[1].shape[0]))


def _hlo(steps, state, inputs, num_steps: int = 1) -> str:
  """The optimized HLO that XLA runs."""
  return _lowered(steps, state, inputs, num_steps).compile().as_text()


def _float_dtypes(tree) -> set[str]:
  return {str(x.dtype) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


@pytest.fixture(scope='module', params=['float32', 'bfloat16'])
def compiled_step(request):
  steps, state, inputs = _step(request.param)
  return request.param, steps, state, inputs, _hlo(steps, state, inputs)


@pytest.mark.parametrize('precision', ['float32', 'bfloat16'])
def test_convolutions_run_in_the_compute_precision(precision):
  # The program handed to XLA (StableHLO): XLA:CPU itself computes bf16 convolutions in
  # f32, so its optimized HLO would not show what a GPU runs.
  steps, state, inputs = _step(precision)
  text = _lowered(steps, state, inputs).as_text()
  # e.g. `stablehlo.convolution(...) ... : (tensor<16x32x32x3xbf16>, tensor<3x3x3x16xbf16>)
  # -> tensor<16x32x32x16xbf16>`: forward, input-gradient and weight-gradient convolutions.
  types = re.findall(r'stablehlo\.convolution.*: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> '
                     r'(tensor<[^>]*>)', text)
  assert len(types) == 3 * 7 - 1  # 7 convolutions; the input's gradient isn't needed
  expected = 'bf16>' if precision == 'bfloat16' else 'f32>'
  assert {t.rsplit('x', 1)[1] for conv in types for t in conv} == {expected}


def test_parameters_and_optimizer_state_stay_float32(compiled_step):
  _, steps, state, inputs, _ = compiled_step
  state = steps(jax.tree.map(jnp.copy, state), *inputs)  # a copy: the step donates it
  assert _float_dtypes(state.params) == {'float32'}
  assert _float_dtypes(state.batch_stats) == {'float32'}
  assert _float_dtypes(state.opt_state) == {'float32'}


def test_state_is_donated_and_updated_in_place(compiled_step):
  _, steps, state, inputs, hlo = compiled_step
  # Every parameter, statistic and optimizer buffer is updated in place (XLA may leave a
  # scalar or two of the metrics unaliased).
  aliases = re.search(r'input_output_alias=\{(.*?)\}, entry', hlo)
  assert aliases is not None
  aliased = {int(i) for i in re.findall(r'\((\d+), \{\}, may-alias\)', aliases.group(1))}
  arrays = {i for i, leaf in enumerate(jax.tree.leaves(state)) if leaf.size > 1}
  assert len(arrays) > 30 and arrays <= aliased
  fresh = jax.tree.leaves(jax.tree.map(jnp.copy, state))
  steps(jax.tree.unflatten(jax.tree.structure(state), fresh), *inputs)
  assert all(fresh[i].is_deleted() for i in arrays)


def test_steps_have_no_host_round_trip_and_shuffle_once_per_dispatch():
  steps, state, inputs = _step('bfloat16')
  one, three = (_hlo(steps, state, inputs, k) for k in (1, 3))
  for op in ('outfeed', 'infeed', ' send(', ' recv(', 'host-compute'):
    assert op not in three, op
  assert not re.search(r'custom_call_target="[^"]*callback', three)
  # K steps per dispatch are straight-line code on CPU: three steps compile to three times
  # the convolutions of one, where a rolled loop would hold one copy.
  assert three.count(' convolution(') == 3 * one.count(' convolution(') > 0
  # The epochs' orders (a sort each) are drawn at most once per dispatch, not once per
  # step (and only when its epoch differs from the previous dispatch's: the test below).
  assert three.count(' sort(') == one.count(' sort(') > 0


def test_a_dispatch_redraws_the_epoch_orders_only_when_its_epoch_changes():
  # Each dispatch hands its orders to the next (parallel.DataOrder): reused when the next
  # starts in the same epoch, redrawn otherwise, so that a stale one is never read.
  steps, state, inputs = _step('float32', max_lr=0.0, examples=48)  # 3 steps an epoch
  run, fresh = steps.compiled(1), lambda: jax.tree.map(jnp.copy, state)
  first, drawn = run(fresh(), *inputs, steps.no_order(1, 48))
  orders = np.asarray(drawn.orders)
  assert int(drawn.first_epoch) == 0 and sorted(orders[0]) == list(range(48))
  made_up = lambda epoch: parallel.DataOrder(jnp.asarray(orders[:, ::-1]), jnp.int32(epoch))
  # The same epoch: the orders given are the ones read (a made-up one shows it).
  _, kept = run(jax.tree.map(jnp.copy, first), *inputs, made_up(0))
  np.testing.assert_array_equal(kept.orders, orders[:, ::-1])
  # Another epoch's: redrawn, and the step is the one drawn from nothing.
  again, redrawn = run(fresh(), *inputs, made_up(7))
  np.testing.assert_array_equal(redrawn.orders, orders)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(first), strict=True):
    np.testing.assert_array_equal(a, b)
  # `train` keeps them across its calls, into the next epoch: the batches are those of
  # orders drawn afresh at every step (the BN statistics depend on the batches alone).
  kept, drawn_each_time = fresh(), fresh()
  for _ in range(4):
    kept = steps(kept, *inputs)
    drawn_each_time, _ = run(drawn_each_time, *inputs, steps.no_order(1, 48))
  assert int(kept.step) == 4
  for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(drawn_each_time), strict=True):
    np.testing.assert_array_equal(a, b)


def test_replicas_exchange_only_gradients_statistics_and_metrics():
  steps, state, inputs = _step('float32', num_devices=4)
  hlo = _hlo(steps, state, inputs)
  reduced = re.findall(r' all-reduce(?:-start)?\(', hlo)
  # XLA combines the per-leaf all-reduces; whatever it does, the step never gathers
  # or permutes data between replicas: each takes its slice of the batch by index.
  assert reduced
  for op in ('all-gather', 'all-to-all', 'collective-permute'):
    assert op not in hlo, op


def test_the_rolled_loop_of_accelerators_reads_the_same_data_stream():
  # Off CPU the K steps are a rolled loop. Run it here: with a zero LR the parameters stay
  # put, so the batch-norm statistics depend on the batches alone and must match K single
  # steps bit for bit (32 examples, batch 16: the loop's 2 steps end an epoch, the next
  # step starts the next one). Small, because XLA:CPU runs a loop's convolutions slowly.
  one, state, inputs = _step('float32', max_lr=0.0, examples=32)
  rolled, _, _ = _step('float32', max_lr=0.0, examples=32, unroll=False)
  # Really a loop: one copy of the step's convolutions for the 2 steps.
  assert (_hlo(rolled, state, inputs, 2).count(' convolution(')
          == _hlo(one, state, inputs, 1).count(' convolution(') > 0)
  fresh = lambda: jax.tree.map(jnp.copy, state)
  stepped = fresh()
  for _ in range(3):
    stepped = one(stepped, *inputs)
  looped = rolled(rolled(fresh(), *inputs, num_steps=2), *inputs)
  assert int(looped.step) == int(stepped.step) == 3
  for a, b in zip(jax.tree.leaves(looped.batch_stats), jax.tree.leaves(stepped.batch_stats),
                  strict=True):
    np.testing.assert_array_equal(a, b)
