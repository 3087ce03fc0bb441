"""The LR range test: train briefly while the LR sweeps up, and read LR bounds off the curve.

L. N. Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017
(arXiv:1506.01186), §3.3; L. N. Smith and N. Topin, "Super-Convergence: Very Fast Training
of Neural Networks Using Large Learning Rates", 2017 (arXiv:1708.07120), Fig. 2b; fastai's
``Learner.lr_find``.

`range_test` runs the whole sweep as one compiled ``lax.scan`` (or as a few scans of
``chunk_size`` steps, so that the host can stop after divergence), on its own copy of the
parameters, and returns a `RangeTestResult` of NumPy arrays whose methods turn the curve into
LR suggestions::

  result = lrsched.range_test(loss_fn, params, batches, min_lr=1e-7, max_lr=10.0,
                              num_steps=100, metric_fn=test_accuracy, metric_every=5)
  result.valley().lr                  # fastai's default suggestion, from the loss
  result.clr_bounds()                 # Smith's (base_lr, max_lr), from the test accuracy

The suggestions also work on a curve recorded elsewhere (`RangeTestResult.from_losses`, or
the ``suggest_*`` functions on arrays).

The sweep itself is an lrsched schedule: `log_linear` (``mode='exp'``, fastai's default) or
`lrsched.linear` (``mode='linear'``, Smith's tests, e.g. from 0 to 3).

The modules, each one concept:

* `lrsched.lr_finder.sweep`: the sweep schedule `log_linear` and `range_test`, the
  compiled training loop;
* `lrsched.lr_finder.curve`: the loss's moving average and the divergence rule, shared by
  the sweep and the host;
* `lrsched.lr_finder.suggest`: the rules that read an LR off a curve (`Suggestion`);
* `lrsched.lr_finder.result`: `RangeTestResult`, the recorded curve, with the rules as
  methods and a JSON form.
"""

from lrsched.lr_finder.curve import divergence_step, smooth
from lrsched.lr_finder.result import RangeTestResult
from lrsched.lr_finder.suggest import (
  MIN_POINTS,
  Suggestion,
  smooth_metric,
  suggest_clr_bounds,
  suggest_minimum,
  suggest_steep,
  suggest_super_convergence,
  suggest_valley,
)
from lrsched.lr_finder.sweep import MODES, log_linear, range_test

__all__ = [
  'MIN_POINTS', 'MODES', 'RangeTestResult', 'Suggestion', 'divergence_step', 'log_linear',
  'range_test', 'smooth', 'smooth_metric', 'suggest_clr_bounds', 'suggest_minimum',
  'suggest_steep', 'suggest_super_convergence', 'suggest_valley',
]
