"""lrsched: learning-rate schedules for JAX and Optax.

Every schedule is a pure, jit-compatible ``optax.Schedule`` (``step -> value``) that
composes with any Optax transform, e.g.::

  import optax, lrsched
  schedule = lrsched.one_cycle(max_lr=0.8, total_steps=10_000)
  momentum = lrsched.one_cycle_momentum(total_steps=10_000)
  tx = lrsched.sgd(schedule, momentum=momentum, weight_decay=1e-4)
"""

from lrsched._base import REGISTRY, Schedule, as_step

# -- classic decays --
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

# -- warm restarts --
from lrsched.restarts import sgdr

# -- composition and large-batch rules --
from lrsched.compose import scale_lr, sequence, to_steps, warmup

# -- cyclical --
from lrsched.cyclical import cyclic, cyclic_momentum, exp_range, triangular, triangular2

# -- 1cycle --
from lrsched.one_cycle import (
  caffe_one_cycle,
  fastai_one_cycle,
  fastai_one_cycle_momentum,
  one_cycle,
  one_cycle_momentum,
  smith_one_cycle,
  smith_one_cycle_momentum,
  super_convergence,
)

# -- optimizers --
from lrsched.optimizers import adamw, hyperparams, lars, sgd

# -- accuracy-driven decay --
from lrsched.plateau import (
  PlateauState,
  ReduceLROnPlateau,
  reduce_lr_on_plateau,
  reduce_on_plateau,
  report_metric,
)

__version__ = '0.1.0'
