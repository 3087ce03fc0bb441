"""The lrsched package: no exported name hides a submodule, and the range test's API is public."""

import ast
import importlib
import pathlib
import pkgutil
import types
from unittest import mock

import numpy as np

import lrsched
from lrsched import lr_finder, onecycle, spec

SUBMODULES = sorted(m.name for m in pkgutil.iter_modules(lrsched.__path__))


def test_no_export_shadows_a_submodule():
  # A function named like its module (formerly range_test, one_cycle) made
  # `import lrsched.x as m` give the function and broke mock.patch('lrsched.x.name').
  for name in SUBMODULES:
    module = importlib.import_module(f'lrsched.{name}')
    assert getattr(lrsched, name) is module, name


def test_renamed_modules_import_as_modules():
  import lrsched.lr_finder as lr_finder

  assert isinstance(lr_finder, types.ModuleType) and isinstance(onecycle, types.ModuleType)
  assert lr_finder.suggest_valley is lr_finder.suggest.suggest_valley
  assert onecycle.one_cycle is lrsched.one_cycle
  assert 'range_test' not in SUBMODULES and 'one_cycle' not in SUBMODULES


def test_the_range_test_is_at_the_top_and_its_helpers_one_import_away():
  assert lrsched.range_test is lr_finder.range_test
  assert lrsched.RangeTestResult is lr_finder.RangeTestResult
  for name in ('Suggestion', 'log_linear', 'smooth', 'divergence_step', 'suggest_valley',
               'suggest_steep', 'suggest_minimum', 'suggest_clr_bounds',
               'suggest_super_convergence'):
    assert callable(getattr(lr_finder, name)) and not hasattr(lrsched, name), name


def test_every_registered_schedule_is_at_the_top_or_named_in_the_package_docstring():
  # The variants that reproduce one source live in their family's module; the package
  # docstring (the table of where they are) must name each, so none is lost.
  for name, constructor in spec.REGISTRY.items():
    if not hasattr(lrsched, name):
      assert f'``{name}``' in lrsched.__doc__, name
      module = importlib.import_module(constructor.__module__)
      assert getattr(module, name) is constructor
    else:
      assert getattr(lrsched, name) is constructor, name


def test_the_top_level_is_small_and_imports_no_cycle():
  public = [n for n in vars(lrsched) if not n.startswith('_')
            and not isinstance(getattr(lrsched, n), types.ModuleType)]
  assert len(public) <= 36, sorted(public)
  # lrsched.plateau and lrsched.optimizers both build on lrsched.states, not on each other.
  for name in ('plateau', 'states'):
    tree = ast.parse(pathlib.Path(importlib.import_module(f'lrsched.{name}').__file__)
                     .read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {f'{node.module}.{a.name}' for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) for a in node.names}
    assert not {'lrsched.optimizers', 'lrsched.lrsched.optimizers'} & imported, name


def test_mock_patch_by_module_path():
  with mock.patch('lrsched.lr_finder.MIN_POINTS', 3):
    assert lr_finder.MIN_POINTS == 3
  lrs = np.geomspace(1e-4, 1.0, 50)
  # Patched where it is looked up, as mock's docs say: the result module.
  with mock.patch('lrsched.lr_finder.result.smooth', wraps=lr_finder.smooth) as spy:
    lrsched.RangeTestResult.from_losses(lrs, np.linspace(2.0, 1.0, 50))
  assert spy.called
