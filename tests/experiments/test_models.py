"""Tests of experiments.models: sizes, dtypes, shortcuts, ghost batch norm, dropout, training.

Big models are only traced (`jax.eval_shape`, `jax.make_jaxpr`): nothing big is compiled or
allocated. Real computations use the tiny resnet8 and wrn-10-1 on a few images.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import models
from experiments.models import layers, resnet

KEYS = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
# Real initialisations use 'rbg' keys: under jit on CPU, threefry keys take seconds to compile
# for a model's few dozen parameters; the models accept any key implementation.
RBG_KEYS = {'params': jax.random.key(0, impl='rbg'), 'dropout': jax.random.key(1, impl='rbg')}


def _images(batch, seed=0):
  return jax.random.normal(jax.random.key(seed), (batch, 32, 32, 3), jnp.float32)


def _abstract_variables(model, batch=2):
  init = functools.partial(model.init, train=False)
  return jax.eval_shape(init, KEYS, jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.float32))


@functools.cache
def _variables(name, shortcut=None):
  """The initial variables of a tiny model: they depend on the architecture only."""
  model = models.create_model(name, num_classes=10, shortcut=shortcut)
  return jax.jit(functools.partial(model.init, train=False))(RBG_KEYS, _images(2))


def _train_forward(name, shortcut=None, dtype=jnp.float32, bn_group_size=None, dropout_rate=0.0):
  """The jitted training-mode forward of a tiny model, compiled once per configuration."""
  return _cached_train_forward(name, shortcut, dtype, bn_group_size, dropout_rate)


@functools.cache
def _cached_train_forward(name, shortcut, dtype, bn_group_size, dropout_rate):
  model = models.create_model(
    name,
    num_classes=10,
    shortcut=shortcut,
    dtype=dtype,
    bn_group_size=bn_group_size,
    dropout_rate=dropout_rate,
  )

  @jax.jit
  def forward(variables, images, key):
    rngs = {'dropout': key}
    return model.apply(variables, images, train=True, rngs=rngs, mutable=['batch_stats'])

  return forward


def _size(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


# --------------------------------------------------------------------------------------
# Parameter counts (trainable parameters: conv/dense weights and biases, BN scale and shift)


@pytest.mark.parametrize(
  'name, exact, published_millions',
  [
    # He et al. 2016, Table 6 (option A): 0.27M, 0.46M, 0.66M, 0.85M, 1.7M.
    ('resnet20', 269_722, 0.27),
    ('resnet32', 464_154, 0.46),
    ('resnet44', 658_586, 0.66),
    ('resnet56', 853_018, 0.85),
    ('resnet110', 1_727_962, 1.7),
    # Zagoruyko & Komodakis 2016 (CIFAR-10): 2.7M, 11.0M, 36.5M, 2.2M.
    ('wrn-16-4', 2_748_890, 2.7),
    ('wrn-16-8', 10_961_370, 11.0),
    ('wrn-28-10', 36_479_194, 36.5),
    ('wrn-40-2', 2_243_546, 2.2),
  ],
)
def test_param_count_matches_published(name, exact, published_millions):
  variables = _abstract_variables(models.create_model(name, num_classes=10))
  count = _size(variables['params'])
  assert count == exact
  # The paper's figure is the count rounded to the digits it prints (1.727962M -> '1.7M').
  decimals = len(repr(published_millions).split('.')[1])
  assert round(count / 1e6, decimals) == published_millions


@pytest.mark.parametrize(
  'name, shortcut, exact',
  [
    ('resnet8', 'A', 75_290),
    ('wrn-10-1', None, 77_850),
    # Option B adds, in the first block of stages 2 and 3, a 1x1 conv + BN:
    # (16*32 + 2*32) + (32*64 + 2*64) = 576 + 2176 = 2752 parameters over option A.
    ('resnet20', 'B', 269_722 + 2752),
    ('resnet56', 'B', 853_018 + 2752),
    # Caffe ResNet-56 (convs have biases; conv w*w*9 + w bias, BN 2w):
    #   stem: 3*16*9 + 16 + 2*16                                    =     480
    #   stage 1: 9 blocks of 2*(16*16*9 + 16) + 2*2*16 = 4704       =  42_336
    #   stage 2: the first block stays at 16 wide (4704),
    #            8 blocks of 2*(32*32*9 + 32) + 2*2*32 = 18_624     = 153_696
    #   stage 3: the first block stays at 32 wide (18_624),
    #            8 blocks of 2*(64*64*9 + 64) + 2*2*64 = 74_112     = 611_520
    #   classifier: 64*10 + 10                                      =     650
    #   total                                                       = 808_682
    ('resnet56', 'caffe', 808_682),
    # Caffe ResNet-20, same terms with 3 blocks per stage:
    # 480 + 3*4704 + (4704 + 2*18_624) + (18_624 + 2*74_112) + 650 = 224_042.
    ('resnet20', 'caffe', 224_042),
  ],
)
def test_param_count_variants(name, shortcut, exact):
  model = models.create_model(name, num_classes=10, shortcut=shortcut)
  assert _size(_abstract_variables(model)['params']) == exact


def test_num_classes_sets_the_classifier():
  variables = _abstract_variables(models.create_model('resnet20', num_classes=100))
  assert variables['params']['classifier']['kernel'].shape == (64, 100)
  assert _size(variables['params']) == 269_722 + 90 * 64 + 90


# --------------------------------------------------------------------------------------
# Shapes and dtypes

VARIANTS = [('resnet8', 'A'), ('resnet8', 'B'), ('resnet8', 'caffe'), ('wrn-10-1', None)]


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('name, shortcut', VARIANTS)
def test_shapes_and_dtypes(name, shortcut, dtype):
  model = models.create_model(name, num_classes=10, dtype=dtype, shortcut=shortcut)
  variables = _abstract_variables(model, batch=4)
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32
  images = jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32)
  train = functools.partial(model.apply, train=True, mutable=['batch_stats'])
  logits, state = jax.eval_shape(train, variables, images, rngs={'dropout': KEYS['dropout']})
  assert (logits.shape, logits.dtype) == ((4, 10), jnp.float32)
  assert jax.tree.map(lambda s: (s.shape, s.dtype), state['batch_stats']) == jax.tree.map(
    lambda s: (s.shape, s.dtype), variables['batch_stats']
  )
  logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, images)
  assert (logits.shape, logits.dtype) == ((4, 10), jnp.float32)
  # The convolutions run in the compute dtype.
  jaxpr = jax.make_jaxpr(functools.partial(model.apply, train=False))(variables, images)
  convs = [e for e in jaxpr.eqns if e.primitive.name == 'conv_general_dilated']
  assert convs and all(v.aval.dtype == dtype for e in convs for v in e.invars)


def test_bfloat16_logits_are_finite_and_close_to_float32():
  images, variables = _images(8), _variables('resnet8', 'caffe')
  outputs = []
  for dtype in (jnp.float32, jnp.bfloat16):
    forward = _train_forward('resnet8', shortcut='caffe', dtype=dtype)
    logits, _ = forward(variables, images, RBG_KEYS['dropout'])
    assert logits.dtype == jnp.float32 and np.isfinite(logits).all()
    outputs.append(logits)
  # Same float32 parameters (same keys): bfloat16 compute changes the logits only a little.
  np.testing.assert_allclose(outputs[1], outputs[0], atol=0.05 * float(jnp.std(outputs[0])))


@pytest.mark.parametrize(
  'name, shortcut, fan, classifier_bound',
  [
    # stem conv: 3x3, 3 -> 16 channels: fan_in = 27, fan_out = 144; classifier fan_in = 64.
    ('resnet8', 'A', 144, 1 / np.sqrt(64)),  # He fan_out; torch nn.Linear
    ('resnet8', 'caffe', 27, np.sqrt(3 / 64)),  # Caffe msra (fan_in); Caffe xavier
    ('wrn-10-1', None, 144, 1 / np.sqrt(64)),
  ],
)
def test_initialisation(name, shortcut, fan, classifier_bound):
  params = _variables(name, shortcut)['params']
  stem = np.asarray(params['stem_conv']['kernel'])
  np.testing.assert_allclose(stem.std(), np.sqrt(2 / fan), rtol=0.15)
  kernel = np.abs(np.asarray(params['classifier']['kernel']))
  assert classifier_bound * 0.9 < kernel.max() <= classifier_bound
  assert not np.asarray(params['classifier']['bias']).any()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    keys = [k.key for k in path]
    if keys[-1] == 'bias':
      assert not np.asarray(leaf).any(), keys  # conv, BN and classifier biases start at 0
    if keys[-1] == 'scale':
      np.testing.assert_array_equal(leaf, 1.0)


# --------------------------------------------------------------------------------------
# Shortcuts: with zero convs the residual branch is 0 and a block returns its shortcut.


def _zero_conv_block(shortcut, x, features=8, strides=2):
  conv = functools.partial(
    nn.Conv,
    padding=((1, 1), (1, 1)),
    use_bias=shortcut == 'caffe',
    kernel_init=nn.initializers.zeros,
  )
  norm = functools.partial(layers.GhostBatchNorm, use_running_average=False)
  block = resnet.BasicBlock(features, strides, shortcut, conv, norm)
  variables = block.init(jax.random.key(0), x)
  return block.apply(variables, x, mutable=['batch_stats'])[0]


def test_option_a_shortcut_subsamples_and_appends_zero_channels():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
  out = _zero_conv_block('A', x)
  expected = np.zeros((2, 3, 3, 8), np.float32)
  expected[..., :4] = np.maximum(np.asarray(x)[:, ::2, ::2, :], 0)
  np.testing.assert_allclose(out, expected, atol=1e-6)


def test_caffe_shortcut_is_caffe_average_pooling_then_zero_channels():
  x = np.asarray(jax.random.normal(jax.random.key(0), (2, 6, 6, 4)))
  out = _zero_conv_block('caffe', jnp.asarray(x))
  # Caffe AVE pooling, kernel 3, stride 2, no padding: ceil((6 - 3) / 2) + 1 = 3 outputs;
  # windows start at 0, 2, 4 and are clipped to the image (the last one covers 2 pixels),
  # and each averages over the pixels it covers.
  pooled = np.zeros((2, 3, 3, 4), np.float32)
  for i in range(3):
    for j in range(3):
      pooled[:, i, j] = x[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].mean(axis=(1, 2))
  expected = np.concatenate([np.maximum(pooled, 0), np.zeros_like(pooled)], axis=-1)
  np.testing.assert_allclose(out, expected, atol=1e-6)


def test_caffe_downsampling_block_keeps_the_old_width():
  params = _abstract_variables(models.create_model('resnet20', num_classes=10, shortcut='caffe'))
  block = params['params']['stage2_block1']
  assert block['conv1']['kernel'].shape == (3, 3, 16, 16)
  assert block['conv2']['kernel'].shape == (3, 3, 16, 16)
  assert block['conv1']['bias'].shape == (16,)
  assert params['params']['stage2_block2']['conv1']['kernel'].shape == (3, 3, 32, 32)


# --------------------------------------------------------------------------------------
# Ghost batch norm


def _bn_input(batch=8):
  x = jax.random.normal(jax.random.key(3), (batch, 3, 3, 4)) * 3.0 + 2.0
  return x.at[: batch // 2].multiply(0.5)  # groups with different statistics


def _bn_variables(module, x):
  variables = module.init(jax.random.key(0), x, use_running_average=True)
  k1, k2 = jax.random.split(jax.random.key(4))
  params = {
    'scale': 1.0 + 0.1 * jax.random.normal(k1, (x.shape[-1],)),
    'bias': 0.1 * jax.random.normal(k2, (x.shape[-1],)),
  }
  return {'params': params, 'batch_stats': variables['batch_stats']}


def test_ghost_bn_uses_per_group_statistics_and_updates_running_averages():
  x, eps, momentum, g = _bn_input(), 1e-5, 0.8, 2
  module = layers.GhostBatchNorm(group_size=g, momentum=momentum, epsilon=eps)
  variables = _bn_variables(module, x)
  y, state = module.apply(variables, x, use_running_average=False, mutable=['batch_stats'])

  xn = np.asarray(x, np.float64).reshape(4, g, 3, 3, 4)
  mean = xn.mean(axis=(1, 2, 3), keepdims=True)
  var = ((xn - mean) ** 2).mean(axis=(1, 2, 3), keepdims=True)  # biased, per group
  scale, bias = (np.asarray(variables['params'][k]) for k in ('scale', 'bias'))
  expected = ((xn - mean) / np.sqrt(var + eps) * scale + bias).reshape(x.shape)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)

  new_mean = (1 - momentum) * mean.mean(axis=0).reshape(4)
  new_var = momentum * 1.0 + (1 - momentum) * var.mean(axis=0).reshape(4)
  np.testing.assert_allclose(state['batch_stats']['mean'], new_mean, rtol=1e-5)
  np.testing.assert_allclose(state['batch_stats']['var'], new_var, rtol=1e-5)
  # The mean of group variances is not the whole-batch variance.
  assert not np.allclose(var.mean(axis=0).reshape(4), xn.var(axis=(0, 1, 2, 3)), rtol=1e-2)

  # Evaluation normalises with the running averages.
  y_eval = module.apply({**variables, **state}, x, use_running_average=True)
  expected = (np.asarray(x) - new_mean) / np.sqrt(new_var + eps) * scale + bias
  np.testing.assert_allclose(y_eval, expected, rtol=1e-5, atol=1e-5)


def test_ghost_bn_debias_keeps_caffes_running_averages():
  # Caffe: sums s <- rho s + stat and weight w <- rho w + 1, evaluated as s / w. Scaled by
  # (1 - rho) that is the EMA of the statistics started at 0, over its own weight.
  x, eps, momentum, g = _bn_input(), 1e-5, 0.999, 2
  module = layers.GhostBatchNorm(group_size=g, momentum=momentum, epsilon=eps, debias=True)
  variables = _bn_variables(module, x)
  assert float(variables['batch_stats']['weight']) == 0.0
  scale, bias = (np.asarray(variables['params'][k]) for k in ('scale', 'bias'))
  # Before any update: mean 0 and variance 1, as without debiasing.
  y0 = module.apply(variables, x, use_running_average=True)
  np.testing.assert_allclose(y0, np.asarray(x) / np.sqrt(1 + eps) * scale + bias, rtol=1e-5)

  batches = [x, 2.0 * x + 1.0, x - 0.5]
  sums, weight, state = np.zeros(4), 0.0, {'batch_stats': variables['batch_stats']}
  var_sums = np.zeros(4)
  for batch in batches:
    _, state = module.apply({'params': variables['params'], **state}, batch,
                            use_running_average=False, mutable=['batch_stats'])
    xn = np.asarray(batch, np.float64).reshape(4, g, 3, 3, 4)
    mean = xn.mean(axis=(1, 2, 3), keepdims=True)
    var = ((xn - mean) ** 2).mean(axis=(1, 2, 3), keepdims=True)
    sums = momentum * sums + mean.mean(axis=0).reshape(4)
    var_sums = momentum * var_sums + var.mean(axis=0).reshape(4)
    weight = momentum * weight + 1.0
  np.testing.assert_allclose(float(state['batch_stats']['weight']), (1 - momentum) * weight,
                             rtol=1e-5)
  # What evaluation normalises with: Caffe's sums over its weight, with no trace of 0 and 1
  # (the plain EMA would still be 99.7% the initial values after 3 updates).
  y = module.apply({'params': variables['params'], **state}, x, use_running_average=True)
  mean, var = sums / weight, var_sums / weight
  np.testing.assert_allclose(y, (np.asarray(x) - mean) / np.sqrt(var + eps) * scale + bias,
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', ['resnet8', 'wrn-10-1'])  # 7 batch norms each
def test_bn_debias_reaches_every_batch_norm_of_a_model(name):
  model = models.create_model(name, num_classes=10, bn_debias=True)
  variables = model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False)
  stats = jax.tree_util.tree_flatten_with_path(variables['batch_stats'])[0]
  weights = [leaf for path, leaf in stats if jax.tree_util.keystr(path).endswith("['weight']")]
  assert len(weights) == 7 and len(stats) == 3 * 7


@pytest.mark.parametrize('group_size', [None, 8])
@pytest.mark.parametrize('use_fast_variance', [False, True])
def test_ghost_bn_with_one_group_equals_flax_batch_norm(group_size, use_fast_variance):
  x = _bn_input()
  ghost = layers.GhostBatchNorm(group_size=group_size, momentum=0.9)
  flax_bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5, use_fast_variance=use_fast_variance)
  variables = _bn_variables(ghost, x)
  out = {}
  for name, module in (('ghost', ghost), ('flax', flax_bn)):
    y, state = module.apply(variables, x, use_running_average=False, mutable=['batch_stats'])
    out[name] = (y, state, module.apply({**variables, **state}, x, use_running_average=True))
  # Ghost BN computes the variance in two passes, like use_fast_variance=False.
  tol = 1e-5 if use_fast_variance else 1e-6
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=tol, atol=tol), *out.values())


@pytest.mark.parametrize('group_size', [None, 4])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_ghost_bn_gradients_are_those_of_autodiff_through_the_statistics(group_size, dtype):
  # The backward pass is batch norm's closed form (a custom VJP): the same gradients as
  # autodiff through the two-pass statistics, for the input, scale and bias, after a ReLU.
  x = _bn_input().astype(dtype)
  ghost = layers.GhostBatchNorm(group_size=group_size, dtype=dtype)
  variables = _bn_variables(ghost, x)
  g = jax.random.normal(jax.random.key(5), x.shape, jnp.float32)

  def ours(params, x):
    y, _ = ghost.apply({**variables, 'params': params}, x, use_running_average=False,
                       mutable=['batch_stats'])
    return (jax.nn.relu(y).astype(jnp.float32) * g).sum()

  def autodiff(params, x):
    group = x.shape[0] if group_size is None else group_size
    xg = x.reshape(x.shape[0] // group, group, *x.shape[1:]).astype(jnp.float32)
    mean = xg.mean(axis=(1, 2, 3), keepdims=True)
    var = jnp.square(xg - mean).mean(axis=(1, 2, 3), keepdims=True)
    y = (xg - mean) * (jax.lax.rsqrt(var + 1e-5) * params['scale']) + params['bias']
    return (jax.nn.relu(y.reshape(x.shape).astype(dtype)).astype(jnp.float32) * g).sum()

  got = jax.grad(ours, argnums=(0, 1))(variables['params'], x)
  want = jax.grad(autodiff, argnums=(0, 1))(variables['params'], x)
  assert jax.tree.map(lambda a: a.dtype, got) == jax.tree.map(lambda a: a.dtype, want)
  tol = 1e-5 if dtype == jnp.float32 else 1e-2
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol,
      atol=tol * float(np.abs(np.asarray(b, np.float32)).max())), got, want)


def test_ghost_bn_rejects_a_batch_not_divisible_by_the_group_size():
  module = layers.GhostBatchNorm(group_size=3)
  x = _bn_input(8)
  variables = module.init(jax.random.key(0), x, use_running_average=True)
  with pytest.raises(ValueError, match=r'batch of 8 examples .* bn_group_size=3'):
    module.apply(variables, x, use_running_average=False, mutable=['batch_stats'])
  # In a model too, at trace time.
  model = models.create_model('resnet8', num_classes=10, bn_group_size=3)
  variables = _abstract_variables(model, batch=8)
  apply = functools.partial(model.apply, train=True, mutable=['batch_stats'])
  with pytest.raises(ValueError, match=r'batch of 8 examples .* bn_group_size=3'):
    jax.eval_shape(apply, variables, jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.float32))


def test_ghost_bn_does_not_depend_on_the_number_of_devices():
  # 16 examples in groups of 2 on 1 device, sharded over 8 devices under jit, and split
  # over 8 devices with shard_map (each module instance sees its own 2 examples).
  x = jax.random.normal(jax.random.key(5), (16, 3, 3, 4)) * 2.0 + 1.0
  module = layers.GhostBatchNorm(group_size=2)
  variables = _bn_variables(module, x)
  apply = functools.partial(module.apply, use_running_average=False, mutable=['batch_stats'])
  single = jax.jit(apply)(variables, x)

  mesh = jax.make_mesh((8,), ('data',))
  sharded_x = jax.device_put(x, jax.NamedSharding(mesh, jax.P('data')))
  sharded = jax.jit(apply)(variables, sharded_x)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-6), sharded, single)

  per_device = jax.shard_map(
    lambda v, x: apply(v, x)[0],
    mesh=mesh,
    in_specs=(jax.P(), jax.P('data')),
    out_specs=jax.P('data'),
  )
  y = jax.jit(per_device)(variables, sharded_x)
  np.testing.assert_allclose(y, single[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('name, shortcut', [('resnet8', 'caffe'), ('wrn-10-1', None)])
def test_ghost_bn_groups_are_independent_in_a_model(name, shortcut):
  images, variables = _images(8), _variables(name, shortcut)
  changed = images.at[4:].set(_images(4, seed=1) * 2.0 + 1.0)
  outputs = {}
  for group_size in (4, None):
    forward = _train_forward(name, shortcut=shortcut, bn_group_size=group_size)
    outputs[group_size] = [forward(variables, x, RBG_KEYS['dropout'])[0] for x in (images, changed)]
  before, after = outputs[4]
  np.testing.assert_allclose(after[:4], before[:4], rtol=1e-6, atol=1e-6)
  assert not np.allclose(after[4:], before[4:])
  # Whole-batch statistics mix the groups: the same change moves the first four outputs.
  before, after = outputs[None]
  assert not np.allclose(after[:4], before[:4], rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------
# Dropout and training


def test_wrn_dropout_only_in_training():
  model = models.create_model('wrn-10-1', num_classes=10, dropout_rate=0.3)
  images, variables = _images(8), _variables('wrn-10-1')
  train = functools.partial(_train_forward('wrn-10-1', dropout_rate=0.3), variables, images)
  k1, k2 = jax.random.key(10, impl='rbg'), jax.random.key(11, impl='rbg')
  assert not np.allclose(train(k1)[0], train(k2)[0])
  np.testing.assert_array_equal(train(k1)[0], train(k1)[0])
  # Without dropout the key plays no part.
  no_dropout = functools.partial(_train_forward('wrn-10-1'), variables, images)
  np.testing.assert_array_equal(no_dropout(k1)[0], no_dropout(k2)[0])

  @jax.jit
  def evaluate(key):
    return model.apply(variables, images, train=False, rngs={'dropout': key})

  np.testing.assert_array_equal(evaluate(k1), evaluate(k2))
  # Evaluation needs no 'dropout' rng.
  logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, images)
  assert logits.shape == (8, 10)


@pytest.mark.parametrize(
  'name, kwargs',
  [
    ('resnet8', {'bn_group_size': 4, 'bn_momentum': 0.95}),
    ('wrn-10-1', {'dropout_rate': 0.1, 'dtype': jnp.bfloat16}),
  ],
)
def test_training_steps_reduce_the_loss(name, kwargs):
  model = models.create_model(name, num_classes=10, **kwargs)
  images = _images(8)
  labels = jnp.arange(8) % 10
  variables = _variables(name, kwargs.get('shortcut'))

  @jax.jit
  def step(params, batch_stats, key):
    def loss_fn(params):
      logits, state = model.apply(
        {'params': params, 'batch_stats': batch_stats},
        images,
        train=True,
        rngs={'dropout': key},
        mutable=['batch_stats'],
      )
      loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
      return loss, state['batch_stats']

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
    return params, new_stats, loss, grads

  params, stats = variables['params'], variables['batch_stats']
  losses = []
  for i in range(4):
    params, new_stats, loss, grads = step(params, stats, jax.random.key(100 + i, impl='rbg'))
    losses.append(float(loss))
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert not jax.tree.all(jax.tree.map(np.allclose, new_stats, stats))
    stats = new_stats
  assert losses[-1] < losses[0]
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))


# --------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
  'name, kwargs, match',
  [
    ('vgg16', {}, 'Unknown model'),
    ('ResNet56', {}, 'Unknown model'),
    ('resnet21', {}, '6n \\+ 2'),
    ('resnet2', {}, '6n \\+ 2'),
    ('wrn-15-4', {}, '6n \\+ 4'),
    ('wrn-4-1', {}, '6n \\+ 4'),
    ('wrn-16-0', {}, 'widen factor'),
    ('wrn-16-4', {'shortcut': 'A'}, 'shortcut applies to ResNets only'),
  ],
)
def test_bad_names_list_the_valid_ones(name, kwargs, match):
  with pytest.raises(ValueError, match=match) as info:
    models.create_model(name, num_classes=10, **kwargs)
  assert ', '.join(models.NAMES) in str(info.value)


@pytest.mark.parametrize(
  'kwargs, match',
  [
    ({'shortcut': 'C'}, 'shortcut'),
    ({'dropout_rate': 0.1}, 'dropout_rate'),
    ({'bn_group_size': 0}, 'bn_group_size'),
    ({'bn_momentum': 1.0}, 'bn_momentum'),
    ({'dtype': jnp.int32}, 'dtype'),
    ({'num_classes': 0}, 'num_classes'),
  ],
)
def test_bad_arguments(kwargs, match):
  kwargs = {'num_classes': 10, **kwargs}
  with pytest.raises(ValueError, match=match):
    models.create_model('resnet20', **kwargs)


def test_every_listed_name_builds():
  for name in models.NAMES:
    model = models.create_model(name, num_classes=10)
    assert _size(_abstract_variables(model)['params']) > 0
  # Names outside the list parse too.
  depth = models.create_model('resnet14', num_classes=10).blocks_per_stage * 6 + 2
  assert depth == 14
  assert models.create_model('wrn-22-3', num_classes=10).widen_factor == 3
