"""lrsched: learning-rate schedules for JAX and Optax.

Every schedule is a pure, jit-compatible ``optax.Schedule`` (``step -> value``) that
composes with any Optax transform, e.g.::

  import optax, lrsched
  schedule = lrsched.one_cycle(max_lr=0.8, total_steps=10_000)
  momentum = lrsched.one_cycle_momentum(total_steps=10_000)
  tx = lrsched.sgd(schedule, momentum=momentum, weight_decay=1e-4)

This top level holds the families a user reaches for first. The variants that reproduce
one source exactly are one import away, in the module of their family (all of them are
registered, so spec strings, JSON and presets name them the same way):

* `lrsched.onecycle`: ``super_convergence`` (Smith & Topin 2017), ``smith_one_cycle`` and
  ``smith_one_cycle_momentum`` (Smith 2018), ``caffe_one_cycle`` (Smith's Caffe),
  ``fastai_one_cycle`` and ``fastai_one_cycle_momentum`` (fastai);
* `lrsched.cyclical`: ``triangular``, ``triangular2``, ``exp_range`` (CLR's policies);
* `lrsched.decay`: ``inverse_time`` (Keras's time-based decay);
* `lrsched.plateau`: ``reduce_on_plateau``, the same rule as a transform on the updates;
* `lrsched.lr_finder`: the range test's ``suggest_*`` rules on arrays, ``smooth``,
  ``divergence_step``, ``log_linear``;
* `lrsched.spec`: ``REGISTRY``, every constructor by name.
"""

# The Schedule type.
from lrsched._base import Schedule

# Chaining and large-batch rules (Goyal et al. 2017; You et al. 2017).
from lrsched.compose import scale_lr, sequence, to_steps, warmup

# Cyclical learning rates and momentum (Smith 2017).
from lrsched.cyclical import cyclic, cyclic_momentum

# Classic decays.
from lrsched.decay import constant, cosine, exponential, linear, multistep, polynomial, step_decay

# The LR range test (Smith 2017; Smith & Topin 2017; fastai).
from lrsched.lr_finder import RangeTestResult, range_test
from lrsched.momentum import momentum_for

# 1cycle (Smith & Topin 2017), as PyTorch's OneCycleLR.
from lrsched.onecycle import one_cycle, one_cycle_momentum

# Optax optimizers with scheduled LR and momentum.
from lrsched.optimizers import adamw, hyperparams, lars, sgd

# Accuracy-driven decay (PyTorch's ReduceLROnPlateau).
from lrsched.plateau import reduce_lr_on_plateau, report_metric

# Warm restarts (Loshchilov & Hutter 2017).
from lrsched.restarts import sgdr

# Schedules as data.
from lrsched.spec import describe, from_dict, from_json, parse, to_dict, to_json

# Warmup-stable-decay (MiniCPM 2024) and the inverse square root (Vaswani et al. 2017).
from lrsched.warmup_decay import rsqrt, wsd

__version__ = '0.1.0'
