"""lrsched: learning-rate schedules for JAX and Optax.

Every schedule is a pure, jit-compatible ``optax.Schedule`` (``step -> value``) that
composes with any Optax transform, e.g.::

  import optax, lrsched
  schedule = lrsched.one_cycle(max_lr=0.8, total_steps=10_000)
  momentum = lrsched.one_cycle_momentum(total_steps=10_000)
  tx = lrsched.sgd(schedule, momentum=momentum, weight_decay=1e-4)
"""

# The Schedule type and the registry of constructors.
from lrsched._base import REGISTRY, Schedule, as_step

# Chaining and large-batch rules (Goyal et al. 2017; You et al. 2017).
from lrsched.compose import scale_lr, sequence, to_steps, warmup

# Cyclical learning rates (Smith 2017).
from lrsched.cyclical import cyclic, cyclic_momentum, exp_range, triangular, triangular2

# Classic decays.
from lrsched.decay import (
  constant,
  cosine,
  exponential,
  inverse_time,
  linear,
  multistep,
  polynomial,
  step_decay,
)

# The LR range test and its suggestions from a recorded curve.
from lrsched.lr_finder import (
  RangeTestResult,
  Suggestion,
  divergence_step,
  log_linear,
  range_test,
  smooth,
  suggest_clr_bounds,
  suggest_minimum,
  suggest_steep,
  suggest_super_convergence,
  suggest_valley,
)
from lrsched.momentum import momentum_for

# 1cycle (Smith & Topin 2017; Smith 2018; fastai).
from lrsched.onecycle import (
  caffe_one_cycle,
  fastai_one_cycle,
  fastai_one_cycle_momentum,
  one_cycle,
  one_cycle_momentum,
  smith_one_cycle,
  smith_one_cycle_momentum,
  super_convergence,
)

# Optax optimizers with scheduled LR and momentum.
from lrsched.optimizers import adamw, hyperparams, lars, sgd

# Accuracy-driven decay.
from lrsched.plateau import (
  PlateauState,
  ReduceLROnPlateau,
  reduce_lr_on_plateau,
  reduce_on_plateau,
  report_metric,
)

# Warm restarts (Loshchilov & Hutter 2017).
from lrsched.restarts import sgdr

# Schedules as data.
from lrsched.spec import describe, from_dict, from_json, parse, to_dict, to_json

# Warmup-stable-decay (MiniCPM 2024) and the inverse square root (Vaswani et al. 2017).
from lrsched.warmup_decay import rsqrt, wsd

__version__ = '0.1.0'
