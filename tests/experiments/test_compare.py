"""experiments.compare end to end on tiny arms: report, resumption, divergence, checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import compare, plots, presets, train
from experiments.config import Config, ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE_DIR = os.path.join(os.path.dirname(ROOT), 'shared', 'reference',
                             'super-convergence-logs')
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def tiny(**changes) -> Config:
  base = dict(model='resnet8', dataset='synthetic', synthetic_examples=256, batch_size=32,
              steps=4, schedule='one_cycle(max_lr=0.2)', momentum='0.9', bn_group_size=4,
              eval_every=2, checkpoint_every=2, log_every=1)
  base.update(changes)
  return Config(**base)


SCHEDULES = ['constant(lr=1e30)', 'one_cycle(max_lr=0.2)', 'constant(lr=0.05)']
# A stand-in for a paper preset whose schedule is the second arm's.
PRESET = presets.Preset('tiny-paper', 'a test', 'a paper', dict(schedule=SCHEDULES[1]),
                        paper_accuracy=0.924, log_accuracy=0.9244,
                        reference_log='clr3SS5kFig1a')


@pytest.fixture(scope='module')
def comparison(tmp_path_factory):
  """Three arms; the first diverges, the two after it still train."""
  workdir = str(tmp_path_factory.mktemp('compare'))
  arms = compare.arms_from_schedules(tiny(), SCHEDULES, PRESET)
  assert [a.preset for a in arms] == [None, PRESET, None]  # its numbers go to its schedule
  results = compare.compare(arms, workdir)
  return workdir, arms, results


def test_a_diverging_arm_is_recorded_and_the_others_finish(comparison):
  workdir, arms, results = comparison
  diverged, first, second = results
  assert diverged['status'] == 'diverged' and diverged['diverged_lr'] == pytest.approx(1e30)
  assert 0 <= diverged['diverged_step'] < 4
  assert json.load(open(os.path.join(workdir, arms[0].name, compare.DIVERGED_FILE)))['step'] \
      == diverged['diverged_step']
  for r in (first, second):
    assert r['status'] == 'finished' and r['steps'] == 4 and r['total_steps'] == 4
    assert 0 <= r['final_test_accuracy'] <= 1 and r['images_per_sec'] > 0
    assert os.path.exists(os.path.join(workdir, r['arm'], 'summary.json'))


def test_table_json_and_figure_are_written(comparison):
  workdir, arms, results = comparison
  table = open(os.path.join(workdir, 'comparison.md')).read()
  assert table.startswith('Data: synthetic\n')
  assert table.count('\n| ') == 4  # the header and three arms
  assert 'diverged at step' in table and '(lr=1e+30)' in table
  assert '`one_cycle(max_lr=0.2)`' in table
  assert table.count('92.4%') == 1 and table.count('92.44%') == 1  # the preset's numbers
  saved = json.load(open(os.path.join(workdir, 'comparison.json')))
  assert [a['arm'] for a in saved['arms']] == [a.name for a in arms]
  assert saved['arms'][1]['final_test_accuracy'] == results[1]['final_test_accuracy']
  with open(os.path.join(workdir, 'comparison.png'), 'rb') as f:
    assert f.read(8) == PNG_SIGNATURE
  import matplotlib.image
  assert matplotlib.image.imread(os.path.join(workdir, 'comparison.png')).shape[0] > 300


def test_rerunning_trains_no_finished_or_diverged_arm(comparison, monkeypatch):
  workdir, arms, results = comparison

  def fail(*args, **kwargs):
    raise AssertionError('a finished arm was trained again')

  monkeypatch.setattr(train, 'train_and_evaluate', fail)
  again = compare.compare(arms, workdir)
  assert [r['status'] for r in again] == [r['status'] for r in results]
  assert [r['final_test_accuracy'] for r in again] == [r['final_test_accuracy'] for r in results]


def test_report_only_trains_nothing_and_reports_what_is_there(comparison, tmp_path,
                                                             monkeypatch):
  workdir, arms, results = comparison
  monkeypatch.setattr(train, 'train_and_evaluate',
                      lambda *a, **k: pytest.fail('report_only trained an arm'))
  fresh = compare.compare(arms, str(tmp_path / 'fresh'), report_only=True)
  assert [r['status'] for r in fresh] == ['not run'] * len(arms)
  assert (tmp_path / 'fresh' / 'comparison.png').exists()
  again = compare.compare(arms, workdir, report_only=True)
  assert [r['status'] for r in again] == [r['status'] for r in results]


def test_arms_that_disagree_in_data_or_model_are_refused_before_anything_runs(tmp_path):
  workdir = tmp_path / 'refused'
  for changes, field in ((dict(synthetic_examples=128), 'synthetic_examples'),
                         (dict(model='resnet14'), 'model'), (dict(seed=1), 'seed')):
    arms = [compare.Arm('a', tiny()), compare.Arm('b', tiny(**changes))]
    with pytest.raises(ConfigError, match=rf'differ in .*\({field}: a: .* b: .*'
                                          rf'--allow_differences={field}'):
      compare.compare(arms, str(workdir))
    compare.check_arms(arms, [field])  # allowed when meant
  bad = [compare.Arm('a', tiny()), compare.Arm('b', tiny(schedule='onecycel'))]
  with pytest.raises(ConfigError, match="arm b: --schedule"):
    compare.compare(bad, str(workdir))
  with pytest.raises(ConfigError, match='not compared'):
    compare.check_arms(bad, ['lr'])
  with pytest.raises(ConfigError, match='given twice: a'):
    compare.check_arms([bad[0], bad[0]])
  assert not workdir.exists()


def test_jpeg_copy_is_named_in_the_table():
  config = tiny(dataset='cifar10', data_dir='/data/cifar10-jpeg.npz', train_examples=10_000)
  assert compare.data_label(config, 'CIFAR-10 (JPEG copy) from /data/x.npz') == \
      'CIFAR-10 (JPEG copy), 10000 training examples'
  assert compare.data_label(config) == 'CIFAR-10 (JPEG copy), 10000 training examples'
  assert compare.data_label(config.replace(data_dir='/data/cifar-10-python.tar.gz'),
                            'CIFAR-10 python version') == 'CIFAR-10, 10000 training examples'


@pytest.mark.skipif(not os.path.isdir(REFERENCE_DIR),
                    reason=f"the authors' logs are not at {REFERENCE_DIR}")
def test_overlay_of_the_authors_curves(comparison, monkeypatch):
  workdir, arms, _ = comparison
  curve = plots.read_reference(os.path.join(REFERENCE_DIR, 'clr3SS5kFig1a.csv'))
  assert curve.reference and curve.accuracy[-1] == pytest.approx(0.9244)
  assert curve.x[-1] == 10_000 and float(np.max(curve.lr)) == pytest.approx(3.0, abs=0.01)
  by_epoch = plots.read_reference(os.path.join(REFERENCE_DIR, 'clr3SS5kTr20kTab1.csv'),
                                  x_axis='epoch')
  assert by_epoch.x[-1] == pytest.approx(10_000 * 1000 / 20_000)
  monkeypatch.setattr(train, 'train_and_evaluate', None)  # nothing may train
  # By default the arms' presets' curves; --reference names others.
  compare.compare(arms, workdir, reference_dir=REFERENCE_DIR)
  saved = json.load(open(os.path.join(workdir, 'comparison.json')))
  assert [os.path.basename(p) for p in saved['references']] == ['clr3SS5kFig1a.csv']
  fig1a = compare.arms_from_presets(['sc-fig1a-clr', 'sc-fig1a-step'])
  assert [os.path.basename(p) for p in compare._reference_paths(fig1a, REFERENCE_DIR, None)] \
      == ['clr3SS5kFig1a.csv', 'lr35Fig1a.csv']
  compare.compare(arms, workdir, reference_dir=REFERENCE_DIR,
                  references=['clr3SS5kFig1a', 'lr35Fig1a'], x_axis='epoch')
  saved = json.load(open(os.path.join(workdir, 'comparison.json')))
  assert len(saved['references']) == 2
  with open(os.path.join(workdir, 'comparison.png'), 'rb') as f:
    assert f.read(8) == PNG_SIGNATURE
  with pytest.raises(ConfigError, match=r'available: .*clr3SS5kFig1a'):
    compare.compare(arms, workdir, reference_dir=REFERENCE_DIR, references=['nope'])


def test_cli_refuses_disagreeing_presets_with_exit_2(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.compare', '--presets=sc-fig1a-clr,sc-tab1-clr-40k',
       f'--workdir={tmp_path}'], cwd=ROOT, capture_output=True, text=True, timeout=120,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and '--allow_differences=train_examples' in errors[0]
  assert 'Traceback' not in result.stderr and not os.listdir(tmp_path)
