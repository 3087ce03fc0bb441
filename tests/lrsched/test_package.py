"""The lrsched package: no exported name hides a submodule, and the range test's API is public."""

import importlib
import pkgutil
import types
from unittest import mock

import numpy as np

import lrsched

SUBMODULES = sorted(m.name for m in pkgutil.iter_modules(lrsched.__path__))


def test_no_export_shadows_a_submodule():
  # A function named like its module (formerly range_test, one_cycle) made
  # `import lrsched.x as m` give the function and broke mock.patch('lrsched.x.name').
  for name in SUBMODULES:
    module = importlib.import_module(f'lrsched.{name}')
    assert getattr(lrsched, name) is module, name


def test_renamed_modules_import_as_modules():
  import lrsched.lr_finder as lr_finder
  import lrsched.onecycle as onecycle

  assert isinstance(lr_finder, types.ModuleType) and isinstance(onecycle, types.ModuleType)
  assert lrsched.lr_finder.suggest_valley is lrsched.suggest_valley
  assert lrsched.onecycle.one_cycle is lrsched.one_cycle
  assert 'range_test' not in SUBMODULES and 'one_cycle' not in SUBMODULES


def test_the_range_tests_helpers_are_exported():
  for name in ('range_test', 'RangeTestResult', 'Suggestion', 'log_linear', 'smooth',
               'divergence_step', 'suggest_valley', 'suggest_steep', 'suggest_minimum',
               'suggest_clr_bounds', 'suggest_super_convergence'):
    assert getattr(lrsched, name) is getattr(lrsched.lr_finder, name), name


def test_mock_patch_by_module_path():
  with mock.patch('lrsched.lr_finder.MIN_POINTS', 3):
    assert lrsched.lr_finder.MIN_POINTS == 3
  lrs = np.geomspace(1e-4, 1.0, 50)
  with mock.patch('lrsched.lr_finder.smooth', wraps=lrsched.lr_finder.smooth) as spy:
    lrsched.RangeTestResult.from_losses(lrs, np.linspace(2.0, 1.0, 50))
  assert spy.called
