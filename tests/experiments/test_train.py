"""End-to-end tests of the training binary on fake CPU devices with a tiny ResNet."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import data, parallel, setup, train
from experiments.config import Config, ConfigError
from experiments.metrics import Progress
from tests.xla_flags import with_devices

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny(workdir, **changes) -> Config:
  base = dict(model='resnet8', dataset='synthetic', synthetic_examples=256, batch_size=32,
              steps=6, schedule='one_cycle(max_lr=0.2)', momentum='0.9', bn_group_size=4,
              eval_every=3, checkpoint_every=3, log_every=1, workdir=str(workdir))
  base.update(changes)
  return Config(**base)


def read_checkpoint(workdir, step: int | None = None) -> dict:
  """A checkpoint as numpy arrays, whatever the device layout it was written with."""
  directory = os.path.join(workdir, 'checkpoints')
  if step is None:
    step = max(int(name) for name in os.listdir(directory) if name.isdigit())
  path = os.path.join(directory, str(step), 'default')
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, restore_args=as_numpy)


def evaluations(workdir) -> list[dict]:
  """The evaluation rows of ``metrics.jsonl`` (the others are training rows)."""
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  return [r for r in rows if 'test_accuracy' in r]


def preempt_at(monkeypatch, at_step: int) -> None:
  """A real SIGTERM, delivered once the progress line reaches ``at_step`` (undo with
  ``monkeypatch.undo()``)."""
  original_update = Progress.update

  def preempt_once(self, step, **kwargs):
    original_update(self, step, **kwargs)
    if step == at_step:
      signal.raise_signal(signal.SIGTERM)

  monkeypatch.setattr(Progress, 'update', preempt_once)


def final_params(workdir) -> dict:
  return read_checkpoint(workdir)['params']


def assert_trees_equal(a, b, **tolerance):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b, strict=True):
    if tolerance:
      np.testing.assert_allclose(x, y, **tolerance)
    else:
      np.testing.assert_array_equal(x, y)


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('run')
  summary = train.train_and_evaluate(tiny(workdir))
  return workdir, summary


def test_run_writes_every_output(finished_run):
  workdir, summary = finished_run
  assert summary['status'] == 'finished' and summary['steps'] == 6
  rows = evaluations(workdir)
  assert [r['step'] for r in rows] == [3, 6]
  for row in rows:
    for key in ('step', 'epoch', 'lr', 'momentum', 'train_loss', 'train_accuracy', 'test_loss',
                'test_accuracy', 'images_per_sec', 'elapsed_s'):
      assert key in row and row[key] is not None, key
    assert np.isfinite(row['train_loss']) and 0 <= row['test_accuracy'] <= 1
  assert rows[0]['momentum'] == pytest.approx(0.9)
  saved = json.load(open(workdir / 'summary.json'))
  for key in ('final_test_accuracy', 'best_test_accuracy', 'steps', 'wall_time_s',
              'device_kind', 'device_count', 'command'):
    assert key in saved
  assert saved['device_count'] == jax.device_count()
  assert json.load(open(workdir / 'config.json'))['model'] == 'resnet8'
  assert any(name.startswith('events') for name in os.listdir(workdir / 'tensorboard'))
  assert sorted(os.listdir(workdir / 'checkpoints')) >= ['3', '6']


def test_logged_lr_is_the_schedule_at_the_last_update(finished_run):
  import lrsched
  workdir, _ = finished_run
  schedule = lrsched.one_cycle(max_lr=0.2, total_steps=6)
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  for row in rows:  # after `step` updates, the last one used the LR of step - 1
    assert row['lr'] == pytest.approx(float(schedule(row['step'] - 1)), rel=1e-6)


def test_rerunning_a_finished_run_resumes_without_training(finished_run):
  workdir, first = finished_run
  again = train.train_and_evaluate(tiny(workdir))
  assert again['resumed_from_step'] == 6 and again['steps'] == 6
  assert again['final_test_accuracy'] == first['final_test_accuracy']
  assert len(open(workdir / 'metrics.jsonl').readlines()) == 6  # a row per step (log_every 1)


def test_interrupted_and_resumed_run_ends_bit_identical(finished_run, tmp_path, monkeypatch):
  reference, _ = finished_run
  workdir = tmp_path / 'interrupted'
  preempt_at(monkeypatch, 4)
  summary = train.train_and_evaluate(tiny(workdir))
  assert summary['status'] == 'interrupted' and summary['steps'] == 4
  monkeypatch.undo()
  resumed = train.train_and_evaluate(tiny(workdir))
  assert resumed['resumed_from_step'] == 4 and resumed['status'] == 'finished'
  assert_trees_equal(final_params(workdir), final_params(reference))
  # The wall time counts the first process too (up to its checkpoint), not only this one.
  assert resumed['wall_time_s'] > resumed['this_process_s'] + 0.5 * summary['wall_time_s']
  assert [r['step'] for r in evaluations(workdir)] == [3, 6]


def test_training_rows_reach_metrics_jsonl_as_they_are_logged(finished_run, tmp_path,
                                                             monkeypatch):
  # Stopped at step 2, before the first evaluation: the run already has a curve on disk.
  reference, _ = finished_run
  workdir = tmp_path / 'early'
  preempt_at(monkeypatch, 2)
  assert train.train_and_evaluate(tiny(workdir))['steps'] == 2
  rows = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
  assert [r['step'] for r in rows] == [1, 2] and not evaluations(workdir)
  assert all(np.isfinite(r['train_loss']) and r['lr'] > 0 for r in rows)
  monkeypatch.undo()
  train.train_and_evaluate(tiny(workdir))
  # Resumed: one row per step, each as the uninterrupted run logged it.
  timing = ('images_per_sec', 'elapsed_s')
  strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]
  read = lambda w: [json.loads(line) for line in open(w / 'metrics.jsonl')]
  assert strip(read(workdir)) == strip(read(reference))


@pytest.mark.parametrize('signalled_during_step', [2, 3, 6])
def test_a_stop_never_skips_a_due_evaluation(finished_run, tmp_path, monkeypatch,
                                             signalled_during_step):
  # SIGTERM arrives while the step that ends on an evaluation (3), or the last step (6),
  # is running: the loop evaluates and saves before it stops, and the resumed run's
  # evaluations and results are those of an uninterrupted run.
  reference, reference_summary = finished_run
  workdir = tmp_path / 'stopped'
  make_train_steps = parallel.make_train_steps

  def make_preempted(*args, **kwargs):
    steps, calls = make_train_steps(*args, **kwargs), []

    def preempted(*a, **k):
      calls.append(1)
      if len(calls) == signalled_during_step:
        signal.raise_signal(signal.SIGTERM)
      return steps(*a, **k)
    return preempted

  monkeypatch.setattr(parallel, 'make_train_steps', make_preempted)
  config = tiny(workdir, log_every=3)  # steps 1, 2, 4, 5 are dispatched without a sync
  summary = train.train_and_evaluate(config)
  assert summary['steps'] == signalled_during_step
  assert summary['status'] == ('interrupted' if signalled_during_step < 6 else 'finished')
  monkeypatch.undo()
  resumed = train.train_and_evaluate(config)
  assert resumed['status'] == 'finished'
  assert resumed['final_test_accuracy'] == reference_summary['final_test_accuracy']
  assert_trees_equal(final_params(workdir), final_params(reference))
  assert [r['step'] for r in evaluations(workdir)] == [3, 6]


def test_one_and_four_devices_give_the_same_result(tmp_path):
  # Equal up to the order of the cross-device sums. At the fixture's 1cycle LR (0.2) three
  # steps amplify that rounding chaotically: CI's machine (2026-12-02) saw 3.7e-6 in a
  # batch-norm bias of 3e-4, this dev machine 3e-8. At a small constant LR rounding stays
  # near rounding, and a real error still shows at once: BN groups of 8 instead of 4 on
  # the four devices gave 5.6e-4 (measured on the dev machine, 2026-12-02).
  devices, slow = jax.devices(), dict(steps=3, schedule='constant(lr=0.01)')
  one = train.train_and_evaluate(tiny(tmp_path / 'one', **slow), devices=devices[:1])
  four = train.train_and_evaluate(tiny(tmp_path / 'four', **slow), devices=devices[:4])
  assert one['device_count'] == 1 and four['device_count'] == 4
  assert_trees_equal(final_params(tmp_path / 'one'), final_params(tmp_path / 'four'),
                     rtol=2e-4, atol=1e-5)


def test_with_k_steps_per_dispatch_epoch_evaluations_come_at_the_next_multiple_of_k(
    tmp_path, monkeypatch):
  make_train_steps, dispatched = parallel.make_train_steps, []

  def recording(*args, **kwargs):
    steps = make_train_steps(*args, **kwargs)

    def train_steps(state, images, labels, mean, std, num_steps=1):
      dispatched.append(num_steps)
      return steps(state, images, labels, mean, std, num_steps)
    return train_steps

  monkeypatch.setattr(parallel, 'make_train_steps', recording)
  # 256 examples in batches of 32: an epoch every 8 steps; K = 3.
  summary = train.train_and_evaluate(tiny(tmp_path / 'k3', steps=12, eval_every=None,
                                          steps_per_dispatch=3, log_every=3))
  assert summary['steps'] == 12
  rows = evaluations(tmp_path / 'k3')
  assert [(r['step'], r['epoch']) for r in rows] == [(9, 1.125), (12, 1.5)]
  assert set(dispatched) == {3}  # one compiled program


def test_steps_per_dispatch_gives_the_same_parameters(tmp_path):
  # Two dispatches of 3 steps against 6 of 1. Equal up to float rounding, not bit for bit:
  # XLA fuses the arithmetic of the unrolled steps differently. At the fixture's LRs (up to
  # 0.2) 6 steps amplify that rounding chaotically (measured on the AMD EPYC dev machine,
  # 2026-12-02: 4e-5 absolute in batch-norm biases of 3e-3, machine-dependent), so both
  # runs train at a small constant LR, where rounding stays near rounding (measured: 2.5e-6
  # at most, in parameters that moved about 5e-4) and a wrong batch, order or update
  # (a change of order 5e-4 / 6 per step) would still show at once.
  slow = dict(schedule='constant(lr=0.01)')
  train.train_and_evaluate(tiny(tmp_path / 'k1', **slow))
  summary = train.train_and_evaluate(tiny(tmp_path / 'k3', steps_per_dispatch=3, log_every=3,
                                          **slow))
  assert summary['steps'] == 6
  assert_trees_equal(final_params(tmp_path / 'k3'), final_params(tmp_path / 'k1'),
                     rtol=2e-4, atol=1e-5)


def test_corrupt_latest_checkpoint_falls_back_and_is_kept(finished_run, tmp_path, caplog):
  import shutil
  workdir = tmp_path / 'corrupt'
  shutil.copytree(finished_run[0], workdir)
  latest = workdir / 'checkpoints' / '6'
  for root, _, files in os.walk(latest):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'r+b') as f:
        f.truncate(max(0, os.path.getsize(path) // 2))
  summary = train.train_and_evaluate(tiny(workdir))
  assert summary['resumed_from_step'] == 3 and summary['status'] == 'finished'
  assert 'unreadable' in caplog.text
  assert os.path.isdir(workdir / 'checkpoints_unreadable' / '6')  # nothing saved is lost
  assert_trees_equal(final_params(workdir), final_params(finished_run[0]))


def test_checkpoints_of_another_state_stop_the_run_and_stay_put(finished_run, tmp_path):
  # As if other code had written them: config.json (which would catch a changed flag) is
  # gone, and this run's model has other arrays. Restarting from step 0 over them, or
  # setting them aside as unreadable, would hide the problem.
  import shutil
  workdir = tmp_path / 'other'
  shutil.copytree(finished_run[0], workdir)
  os.remove(workdir / 'config.json')
  with pytest.raises(ConfigError, match=r'checkpoint at step 6 .* holds other arrays'):
    train.train_and_evaluate(tiny(workdir, model='resnet14'))
  assert sorted(os.listdir(workdir / 'checkpoints')) >= ['3', '6']
  assert not (workdir / 'checkpoints_unreadable').exists()


def test_resuming_on_other_data_is_refused(finished_run, tmp_path):
  # --data_dir may change on resume (the data moved), the examples may not: data.json
  # holds the fingerprint of those the run trained on.
  import shutil
  workdir = tmp_path / 'moved'
  shutil.copytree(finished_run[0], workdir)
  saved = json.load(open(workdir / setup.DATA_FILE))
  assert saved['train_examples'] == 256
  assert saved['fingerprint'] == data.load(
      'synthetic', synthetic_size=(256, 51)).fingerprint()
  with open(workdir / setup.DATA_FILE, 'w') as f:
    json.dump({**saved, 'fingerprint': 'another dataset'}, f)
  with pytest.raises(ConfigError, match='holds a run trained on other data'):
    train.train_and_evaluate(tiny(workdir))


def test_nan_loss_stops_naming_step_and_lr_and_keeps_good_checkpoints(tmp_path):
  workdir = tmp_path / 'nan'
  with pytest.raises(train.TrainingDiverged, match=r'NaN or inf .*step \d+ \(lr=1e\+30\)'):
    train.train_and_evaluate(tiny(workdir, schedule='constant(lr=1e30)', checkpoint_every=1))
  directory = workdir / 'checkpoints'
  for step in os.listdir(directory) if directory.exists() else []:
    if step.isdigit():
      params = read_checkpoint(workdir, int(step))['params']
      assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize('changes, message', [
    (dict(model='resnet7'), 'resnet56'),
    (dict(dataset='imagenet'), 'cifar10'),
    (dict(schedule='onecycel'), 'one_cycle'),
    (dict(optimizer='adam'), 'sgd, nesterov, adamw, lars'),
    (dict(batch_size=36, bn_group_size=None), 'not divisible by the 8 devices'),
    (dict(batch_size=64, bn_group_size=3), 'not divisible by --bn_group_size'),
    (dict(batch_size=64, bn_group_size=16), 'per-device batch'),
    (dict(schedule='one_cycle(max_lr=0.1, total_steps=99)'), 'ends at step 99'),
    (dict(momentum='1.5'), 'momentum'),
    (dict(steps=None, epochs=0.0), 'epochs'),
    (dict(batch_size=512), 'larger than the training set'),
    (dict(steps_per_dispatch=2, log_every=2),
     '--steps_per_dispatch=2 does not divide --eval_every=3'),
    (dict(steps_per_dispatch=4, log_every=6, eval_every=8, checkpoint_every=8),
     'divide --log_every=6: a dispatch ends every 6 steps, so a 2-step program'),
    (dict(steps_per_dispatch=6, log_every=6, eval_every=4, checkpoint_every=12),
     'Use --steps_per_dispatch=2, which divides'),
    (dict(dataset='cifar10', data_dir='/nonexistent/cifar'), '/nonexistent/cifar'),
])
def test_bad_input_is_one_clear_error_before_compiling(tmp_path, changes, message):
  start = time.time()
  with pytest.raises((ConfigError, data.DataError), match=message) as info:
    train.train_and_evaluate(tiny(tmp_path / 'bad', **changes))
  assert message in str(info.value).splitlines()[0] or 'valid names' in str(info.value)
  assert not (tmp_path / 'bad' / 'checkpoints').exists()
  assert time.time() - start < 10


def test_workdir_of_another_run_is_refused(finished_run):
  with pytest.raises(ConfigError, match=r'holds a run with other settings.*seed'):
    train.train_and_evaluate(tiny(finished_run[0], seed=1))


def _run_cli(*args, env=None, timeout=300):
  return subprocess.run([sys.executable, '-m', 'experiments.cifar', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu', **(env or {})})


def test_cli_trains_and_writes_the_files(tmp_path):
  result = _run_cli('--dataset=synthetic', '--model=resnet8', '--steps=4', '--batch_size=32',
                    '--synthetic_examples=128', '--momentum=0.9', '--schedule=1cycle',
                    '--lr=0.1', f'--workdir={tmp_path}')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'finished 4 steps' in result.stdout
  for name in ('metrics.jsonl', 'summary.json', 'config.json'):
    assert (tmp_path / name).exists()


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
  result = _run_cli('--model=resnet7', f'--workdir={tmp_path}', timeout=120)
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'resnet56' in errors[0]
  assert 'Traceback' not in result.stderr


def test_cli_without_network_or_data_fails_fast_naming_the_fixes(tmp_path):
  start = time.time()
  result = _run_cli(f'--workdir={tmp_path}', '--steps=1', timeout=120,
                    env={'LRSCHED_TFDS_PROBE_HOST': '127.0.0.1:9',
                         'LRSCHED_CACHE': str(tmp_path / 'cache')})
  assert result.returncode == 2, result.stderr[-2000:]
  assert '--data_dir' in result.stderr and '--dataset=synthetic' in result.stderr
  assert time.time() - start < 60


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_stop_together_on_one_signal_resume_and_match_one_process(tmp_path):
  """2 processes x 2 CPU devices (gloo collectives). SIGTERM to process 1 only: the hosts
  agree at the next sync point, both save the same step and exit cleanly, the same command
  resumes both, and the run ends as 1 process x 4 devices does uninterrupted."""
  workdir = tmp_path / 'multi'
  # At a small constant LR, as in test_one_and_four_devices_give_the_same_result: the
  # order of the cross-device sums differs, and a large LR amplifies that chaotically.
  args = ['--dataset=synthetic', '--model=resnet8', '--steps=20', '--batch_size=32',
          '--synthetic_examples=256', '--schedule=constant(lr=0.01)', '--momentum=0.9',
          '--bn_group_size=4', '--eval_every=10', '--checkpoint_every=5', '--log_every=5',
          '--keep_checkpoints=5',
          f'--workdir={workdir}']
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': with_devices(2)}

  def launch():
    port = _free_port()
    return [subprocess.Popen(
        [sys.executable, '-m', 'experiments.cifar', *args, '--distributed',
         f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
         f'--process_id={i}'], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for i in range(2)]

  procs = launch()
  deadline = time.time() + 300
  while not (workdir / 'checkpoints' / '5').exists():  # training is under way
    assert time.time() < deadline and all(p.poll() is None for p in procs)
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=300) for p in procs]
  stops = []
  for p, (_, err) in zip(procs, outputs, strict=True):
    assert p.returncode == 0, err[-3000:]
    stops += [int(s) for s in re.findall(r'stopped by SIGTERM at step (\d+)', err)]
  assert len(stops) == 2 and stops[0] == stops[1] and stops[0] % 5 == 0, stops
  assert (workdir / 'checkpoints' / str(stops[0])).exists()
  assert not (workdir / 'summary.json').exists()

  procs = launch()
  for p, (_, err) in zip(procs, [p.communicate(timeout=400) for p in procs], strict=True):
    assert p.returncode == 0, err[-3000:]
  summary = json.load(open(workdir / 'summary.json'))
  assert summary['status'] == 'finished' and summary['steps'] == 20
  assert summary['resumed_from_step'] == stops[0]
  assert summary['device_count'] == 4 and summary['process_count'] == 2
  # Before the stop, 2 x 2 devices train as 1 x 4 do (the constant LR makes a 5-step run
  # the first 5 steps of this one). Compared early: 20 steps of differently ordered sums
  # drift apart by 4e-5 in parameters of 1e-3 (measured 2026-12-03), rounding amplified,
  # not an error; the resumed half is bit-identical to an uninterrupted run (tested on one
  # process) and has just finished here with both hosts.
  single = tiny(tmp_path / 'single', steps=5, schedule='constant(lr=0.01)', eval_every=5,
                checkpoint_every=5, log_every=5)
  train.train_and_evaluate(single, devices=jax.devices()[:4])
  assert_trees_equal(read_checkpoint(workdir, 5)['params'], final_params(tmp_path / 'single'),
                     rtol=2e-4, atol=1e-5)


def test_cli_acknowledges_a_stop_at_once_and_a_repeated_sigterm_loses_nothing(tmp_path):
  """The first progress note comes after the first dispatch (not at --log_every); SIGTERM is
  acknowledged on the spot; a second SIGTERM 50 ms later neither kills the run nor skips
  its checkpoint; the same command resumes it."""
  argv = [sys.executable, '-m', 'experiments.cifar', '--dataset=synthetic', '--model=resnet8',
          '--batch_size=32', '--synthetic_examples=128', '--steps=100000', '--momentum=0.9',
          '--schedule=constant(lr=0.05)', '--log_every=1000', '--eval_every=1000',
          '--checkpoint_every=1000', f'--workdir={tmp_path}']
  process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  for line in process.stderr:
    if 'compiled and ran the first dispatch' in line:
      break
  time.sleep(1.0)
  process.send_signal(signal.SIGTERM)
  time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  _, err = process.communicate(timeout=120)
  assert process.returncode == 0, err[-3000:]
  assert 'SIGTERM: stopping after the running step' in err and 'Traceback' not in err
  stopped = int(re.search(r'stopped by SIGTERM at step (\d+)', err).group(1))
  assert os.path.isdir(tmp_path / 'checkpoints' / str(stopped))
  assert stopped < 1000  # within a few steps of the signal, not at a sync point


@pytest.mark.parametrize('where, message', [
    ('file', 'is a file, not a folder'),
    ('under_file', 'lies under the file'),
    ('read_only', 'is not writable'),
])
def test_an_unusable_workdir_is_one_error_before_loading_data(tmp_path, where, message):
  (tmp_path / 'file').write_text('x')
  read_only = tmp_path / 'ro'
  read_only.mkdir()
  read_only.chmod(0o500)
  if where == 'read_only' and os.geteuid() == 0:
    read_only = '/proc/1'  # root writes through permission bits, not into /proc
  workdir = {'file': tmp_path / 'file', 'under_file': tmp_path / 'file' / 'run',
             'read_only': os.path.join(read_only, 'run')}[where]
  with pytest.raises(ConfigError, match=message):
    # The data path does not exist either: the workdir must be checked first.
    train.train_and_evaluate(tiny(workdir, dataset='cifar10', data_dir='/nonexistent'))


def test_an_unknown_augmentation_is_refused_and_leaves_no_config(tmp_path):
  with pytest.raises(ConfigError, match=r"--augment='rotate'.*flip"):
    train.train_and_evaluate(tiny(tmp_path / 'run', augment='rotate'))
  assert not (tmp_path / 'run').exists()


def test_cli_messages_name_the_fix(tmp_path):
  result = _run_cli('--dataset=synthetic', '--schedule=1cycle', '--steps=3',
                    f'--workdir={tmp_path}', timeout=120)
  assert result.returncode == 2 and '--lr=VALUE' in result.stderr
  assert "--schedule='1cycle(max_lr=0.1)'" in result.stderr
  stray = _run_cli('stray', timeout=60)
  assert stray.returncode == 2 and len(stray.stderr.strip().splitlines()) == 1
  assert "unexpected arguments 'stray'" in stray.stderr


def test_compare_lists_the_presets_its_help_points_to():
  result = subprocess.run([sys.executable, '-m', 'experiments.compare', '--list_presets'],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert result.returncode == 0 and 'cpu-budget:' in result.stdout


def test_the_divergence_step_does_not_move_with_the_intervals(tmp_path):
  steps = []
  for i, intervals in enumerate([dict(log_every=1, eval_every=1, checkpoint_every=1),
                                 dict(log_every=6, eval_every=6, checkpoint_every=6)]):
    with pytest.raises(train.TrainingDiverged) as info:
      train.train_and_evaluate(tiny(tmp_path / str(i), schedule='constant(lr=1e30)',
                                    **intervals))
    steps.append(info.value.step)
    if i == 1:  # nothing was saved before the divergence: the message must not claim it
      assert 'no checkpoint was written before it' in str(info.value)
  assert steps[0] == steps[1]


def _largest_file(directory):
  files = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]
  return max(files, key=os.path.getsize)


def test_a_garbled_checkpoint_is_set_aside_and_the_previous_is_used(
    finished_run, tmp_path, caplog):
  """64 random bytes in the middle of its largest file: TensorStore's decoder or, where the
  bytes still decode, the checksum catches it (which one depends on where they land)."""
  import shutil
  workdir = tmp_path / 'garbled'
  shutil.copytree(finished_run[0], workdir)
  target = _largest_file(workdir / 'checkpoints' / '6')
  with open(target, 'r+b') as f:  # still a readable file
    f.seek(os.path.getsize(target) // 2)
    f.write(np.random.default_rng(0).bytes(64))
  summary = train.train_and_evaluate(tiny(workdir))
  assert summary['resumed_from_step'] == 3, caplog.text
  assert 'checkpoint at step 6 is unreadable' in caplog.text
  assert os.path.isdir(workdir / 'checkpoints_unreadable' / '6')
  assert_trees_equal(final_params(workdir), final_params(finished_run[0]))


def test_arrays_that_differ_from_their_checksum_are_set_aside(finished_run, tmp_path, caplog):
  """Arrays that restore but differ from what was saved (here: the record says otherwise)."""
  import shutil
  workdir = tmp_path / 'mismatch'
  shutil.copytree(finished_run[0], workdir)
  path = workdir / 'checksums' / '6.json'
  record = json.loads(path.read_text())
  record['checksums'][0] ^= 1
  path.write_text(json.dumps(record))
  summary = train.train_and_evaluate(tiny(workdir))
  assert summary['resumed_from_step'] == 3, caplog.text
  assert 'checkpoint at step 6 is unreadable' in caplog.text and 'checksum' in caplog.text
  assert os.path.isdir(workdir / 'checkpoints_unreadable' / '6')
  assert_trees_equal(final_params(workdir), final_params(finished_run[0]))


def test_when_no_checkpoint_is_readable_the_restart_says_so(finished_run, tmp_path, caplog):
  import shutil
  workdir = tmp_path / 'none'
  shutil.copytree(finished_run[0], workdir)
  for step in ('3', '6'):
    target = _largest_file(workdir / 'checkpoints' / step)
    with open(target, 'r+b') as f:
      f.truncate(os.path.getsize(target) // 2)
  summary = train.train_and_evaluate(tiny(workdir))
  assert summary['resumed_from_step'] is None and summary['status'] == 'finished'
  assert 'no readable checkpoint' in caplog.text and 'training from step 0' in caplog.text


def test_a_lost_metrics_file_is_reported_and_the_best_accuracy_kept(finished_run, tmp_path,
                                                                    caplog):
  import shutil
  workdir = tmp_path / 'lost'
  shutil.copytree(finished_run[0], workdir)
  shutil.rmtree(workdir / 'checkpoints' / '6')  # resume from 3, after two evaluations
  os.remove(workdir / 'metrics.jsonl')
  summary = train.train_and_evaluate(tiny(workdir))
  assert summary['resumed_from_step'] == 3
  assert 'rows were lost' in caplog.text
  assert summary['best_test_accuracy'] == finished_run[1]['best_test_accuracy']


def test_a_long_cpu_run_names_the_cpu_presets(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(train, 'SLOW_CPU_SECONDS', 0.0)
  train.train_and_evaluate(tiny(tmp_path / 'run'))
  warnings = [r.getMessage() for r in caplog.records if 'more hours' in r.getMessage()]
  assert len(warnings) == 1 and '--preset=cpu-quickstart' in warnings[0]


def test_a_sigterm_before_the_training_loop_is_one_line(tmp_path):
  process = subprocess.Popen(
      [sys.executable, '-m', 'experiments.cifar', '--dataset=synthetic', '--model=resnet8',
       '--steps=5', f'--workdir={tmp_path}'], cwd=ROOT, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  lines = []
  for line in process.stderr:  # the data is loaded; compilation comes next
    lines.append(line)
    if 'test examples' in line:
      break
  process.send_signal(signal.SIGTERM)
  _, err = process.communicate(timeout=120)
  err = ''.join(lines) + err
  assert 'compiled and ran the first dispatch' not in err  # it stopped before training
  assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
  assert 'SIGTERM: stopped before training started' in err and 'Traceback' not in err


@pytest.mark.skipif(importlib.util.find_spec('torch') is None, reason='torch is not installed')
def test_the_tensorboard_writer_does_not_import_torch():
  """tensorboardX imports PyTorch (seconds) where it is installed; the trainer's writer
  hides it for that import, and a later `import torch` still works."""
  probe = ('import sys; from experiments.metrics import _summary_writer; _summary_writer()\n'
           'assert "torch" not in sys.modules, "tensorboardX imported torch"\n'
           'import torch; print(torch.__name__)\n')
  result = subprocess.run([sys.executable, '-c', probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0 and result.stdout.strip() == 'torch', result.stderr[-2000:]
