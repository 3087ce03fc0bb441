"""Branching a run off another run's checkpoint (``--init_from``), as WSD decays are run."""

from __future__ import annotations

import json

import pytest

from experiments import compare, setup, train
from experiments.config import Config, ConfigError
from tests.experiments.test_train import assert_trees_equal, final_params, tiny

STABLE = 'wsd(peak_lr=0.2, warmup_steps=2, decay_steps=3)'


@pytest.fixture(scope='module')
def parent(tmp_path_factory):
  """A 6-step WSD run, checkpointed at 3 and 6 (its decay starts at step 3)."""
  workdir = tmp_path_factory.mktemp('parent')
  train.train_and_evaluate(tiny(workdir, schedule=STABLE))
  return workdir


def test_a_branch_with_the_parents_schedule_ends_bit_identical_to_it(parent, tmp_path):
  branch = tmp_path / 'branch'
  summary = train.train_and_evaluate(tiny(branch, schedule=STABLE,
                                          init_from=f'{parent}@3'))
  assert_trees_equal(final_params(branch), final_params(parent))
  assert summary['parent'] == {'workdir': str(parent), 'step': 3}
  assert summary['resumed_from_step'] is None
  assert json.load(open(branch / 'summary.json'))['parent']['step'] == 3
  assert json.load(open(branch / 'config.json'))['init_from'] == f'{parent}@3'
  rows = [json.loads(line) for line in open(branch / 'metrics.jsonl')]
  assert [r['step'] for r in rows] == [4, 5, 6]  # the branch's own steps only
  # Resuming the branch uses its own checkpoint, not the parent's again.
  again = train.train_and_evaluate(tiny(branch, schedule=STABLE, init_from=f'{parent}@3'))
  assert again['resumed_from_step'] == 6


def test_two_decays_from_one_checkpoint_differ_and_leave_the_parent_alone(parent, tmp_path):
  before = final_params(parent)
  linear = train.train_and_evaluate(tiny(
      tmp_path / 'linear', init_from=f'{parent}@3',
      schedule='wsd(peak_lr=0.2, warmup_steps=2, decay_steps=3, decay="linear")'))
  assert linear['status'] == 'finished' and linear['steps'] == 6
  with pytest.raises(AssertionError):
    assert_trees_equal(final_params(tmp_path / 'linear'), before)
  assert_trees_equal(final_params(parent), before)


@pytest.mark.parametrize('changes, message', [
    (dict(init_from='{parent}'), 'give WORKDIR@STEP'),
    (dict(init_from='{parent}@x'), 'give WORKDIR@STEP'),
    (dict(init_from='{parent}@4'), 'has no checkpoint at step 4 (it has 3, 6)'),
    (dict(init_from='{parent}@6'), 'cannot start at step 6'),
    (dict(init_from='{nowhere}@3'), 'holds no readable run'),
    (dict(init_from='{parent}@3', model='resnet20'), "model: 'resnet8' -> 'resnet20'"),
    (dict(init_from='{parent}@3', optimizer='adamw', weight_decay_mode='decoupled'),
     "optimizer: 'sgd' -> 'adamw'"),
])
def test_a_branch_that_does_not_fit_is_one_error_before_compiling(parent, tmp_path, changes,
                                                                  message):
  changes = {k: v.format(parent=parent, nowhere=tmp_path / 'none') if isinstance(v, str)
             else v for k, v in changes.items()}
  with pytest.raises(ConfigError, match=message.replace('(', r'\(').replace(')', r'\)')):
    train.train_and_evaluate(tiny(tmp_path / 'bad', schedule=STABLE, **changes))
  assert not (tmp_path / 'bad' / 'checkpoints').exists()


def test_a_parent_with_another_state_layout_is_refused_naming_the_arrays(parent, tmp_path):
  # Same model and optimizer, but SGD without momentum keeps no velocity: other arrays.
  with pytest.raises(ConfigError, match='holds other arrays than this run trains'):
    train.train_and_evaluate(tiny(tmp_path / 'bad', schedule=STABLE, momentum='none',
                                  init_from=f'{parent}@3'))


def test_a_branch_cannot_start_from_itself(tmp_path):
  with pytest.raises(ConfigError, match='cannot branch off itself'):
    setup.check_parent(tiny(tmp_path, init_from=f'{tmp_path}@3'), str(tmp_path))


def test_compare_resolves_arm_names_and_wants_the_parent_first(tmp_path):
  stable = compare.Arm('stable', Config(schedule='constant(0.1)'))
  branch = compare.Arm('decay', Config(init_from='stable@600'))
  resolved = compare.resolve_branches([stable, branch], str(tmp_path))
  assert resolved[1].config.init_from == f'{tmp_path / "stable"}@600'
  assert compare.resolve_branches([branch], str(tmp_path))[0].config.init_from == 'stable@600'
  with pytest.raises(ConfigError, match='must come before it'):
    compare.resolve_branches([branch, stable], str(tmp_path))
