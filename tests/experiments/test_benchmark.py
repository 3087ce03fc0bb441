"""Tests of the training benchmark and the PyTorch reference: correctness, never timing."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import benchmark, data, models, parallel, setup
from experiments.config import Config
from experiments.phases import resolve_phases
from tests.xla_flags import with_devices

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAS_TORCH = importlib.util.find_spec('torch') is not None
ROW_FIELDS = ('model', 'parameters', 'batch_size', 'per_device_batch', 'precision', 'conv',
              'schedule',
              'schedule_spec', 'momentum_spec', 'steps_per_dispatch', 'device_kind',
              'device_count', 'lower_s', 'compile_s', 'eval_lower_s', 'eval_compile_s',
              'step_time_ms', 'samples', 'timed_steps', 'train_images_per_sec',
              'eval_images_per_sec', 'flops_per_step', 'compiled_flops_per_step',
              'flops_source', 'flops_per_image',
              'bytes_accessed_per_step', 'tflops', 'peak_basis', 'peak_tflops',
              'peak_fraction', 'peak_memory_bytes', 'compiled_memory_bytes',
              'schedule_cost_ratio', 'profile_dir', 'profile', 'torch', 'jax_over_torch',
              'eval_jax_over_torch', 'eval_chunk', 'sample_step_ms')
TORCH_FIELDS = ('model', 'parameters', 'batch_size', 'precision', 'images_per_sec',
                'step_time_ms', 'compile_s', 'device', 'torch_version',
                'eval_images_per_sec', 'eval_examples', 'eval_batch', 'eval_compile_s')


def _run(args, timeout=300):
  # Two CPU devices: the data-parallel path, and flops summed over devices.
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': with_devices(2)}
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env=env)


def _positive(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _check_times(times: dict) -> None:
  assert set(times) == {'median', 'p10', 'p90'}
  assert 0 < times['p10'] <= times['median'] <= times['p90']


@pytest.fixture(scope='module')
def quick_report(tmp_path_factory):
  folder = tmp_path_factory.mktemp('bench')
  path = folder / 'out.json'
  result = _run(['-m', 'experiments.benchmark', '--quick', '--torch', f'--json={path}',
                 f'--profile_dir={folder / "profile"}'])
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(path.read_text()), result.stdout


def test_quick_run_reports_every_field(quick_report):
  report, stdout = quick_report
  rows = report['results']
  assert [(r['model'], r['batch_size'], r['steps_per_dispatch']) for r in rows] == [
      ('resnet8', 16, 1), ('resnet8', 16, 2)]
  for row in rows:
    assert set(ROW_FIELDS) <= set(row), set(ROW_FIELDS) - set(row)
    assert row['device_count'] == 2 and row['per_device_batch'] == 8
    for key in ('lower_s', 'compile_s', 'eval_compile_s', 'train_images_per_sec',
                'eval_images_per_sec', 'flops_per_step', 'tflops', 'compiled_memory_bytes'):
      assert _positive(row[key]), (key, row[key])
    _check_times(row['step_time_ms'])
    assert row['train_images_per_sec'] == pytest.approx(16e3 / row['step_time_ms']['median'])
    assert row['flops_per_image'] == pytest.approx(row['flops_per_step'] / 16)
    assert row['tflops'] == pytest.approx(
        row['flops_per_step'] / row['step_time_ms']['median'] / 1e9)
    # No peak is known for CPUs, and their backend keeps no memory statistics.
    assert row['peak_fraction'] is None and row['peak_tflops'] is None
    assert row['peak_memory_bytes'] is None or _positive(row['peak_memory_bytes'])
    assert row['schedule_cost_ratio'] is None  # one schedule: nothing to compare
    assert row['schedule_spec'].startswith('smith_one_cycle(')
  # 3 samples of 1 step, rounded up to whole dispatches of K steps.
  assert [r['timed_steps'] for r in rows] == [3, 6]
  env = report['environment']
  for key in ('jax_version', 'jaxlib_version', 'device_kind', 'device_count', 'date',
              'git_commit', 'command'):
    assert key in env, key
  assert env['device_count'] == 2 and env['device_kind'] == rows[0]['device_kind']
  assert '--quick' in env['command'] and env['isolated'] is True
  assert '| model | batch |' in stdout and stdout.count('| resnet8 | 16 | float32 |') == 2


@pytest.mark.skipif(not HAS_TORCH, reason='torch is not importable')
def test_quick_run_compares_with_the_same_torch_model(quick_report):
  rows = quick_report[0]['results']
  reference = rows[0]['torch']
  assert set(TORCH_FIELDS) <= set(reference), reference
  # The same architecture: the same parameter count; one device at the per-device batch.
  assert reference['parameters'] == rows[0]['parameters']
  assert reference['batch_size'] == 8 and reference['device'].startswith('cpu')
  # The evaluation over the same test set in the same chunks as ours.
  assert reference['eval_examples'] == rows[0]['eval_examples']
  assert reference['eval_batch'] == rows[0]['eval_chunk']
  # On CPU its samples were taken in turn with ours: the ratio is the median over the pairs
  # of its time per step over ours (its per-device batch: our per-device images/s over its).
  assert reference['interleaved'] is True
  torch_ms = np.asarray(reference['sample_step_s']) * 1e3
  assert len(torch_ms) == rows[0]['samples'] == 3
  for row in rows:
    assert len(row['sample_step_ms']) == row['samples']
    assert np.median(row['sample_step_ms']) == pytest.approx(row['step_time_ms']['median'])
    assert row['jax_over_torch'] == pytest.approx(
        np.median(torch_ms / np.asarray(row['sample_step_ms'])))
    assert row['eval_jax_over_torch'] == pytest.approx(
        row['eval_images_per_sec'] / 2 / reference['eval_images_per_sec'])


def test_every_row_has_its_own_trace(quick_report):
  from experiments.benchmark import profiling
  rows = quick_report[0]['results']
  assert len({row['profile_dir'] for row in rows}) == len(rows)
  for row in rows:
    assert profiling.newest_trace_file(row['profile_dir']) is not None
    assert row['profile']['timeline'] == 'cpu'  # XLA:CPU's op events, no device timeline
    assert row['profile']['busy_ms_per_step'] > 0


def test_flops_per_step_counts_every_device(quick_report):
  """The cost analysis is of the per-device program; the report sums it over devices."""
  row = quick_report[0]['results'][0]
  config = Config(model='resnet8', batch_size=16, dataset='synthetic', lr=0.8)
  model = models.create_model('resnet8', num_classes=10, bn_momentum=config.bn_momentum)
  total_steps = resolve_phases(config, 256)[1]
  tx = setup.build_optimizer(config, *setup.build_schedules(config, total_steps))
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = setup.create_state(model, tx, mesh, jax.random.key(0))
  step = parallel.make_train_steps(
      model, tx, mesh, parallel.StepConfig(16, 'flip', jnp.float32),
      jax.random.key(1))
  ds = data.load('synthetic', synthetic_size=(256, 64))
  args = [parallel.put_replicated(mesh, a) for a in (
      ds.train_images, ds.train_labels.astype(np.int32), ds.mean, ds.std)]
  lowered = step.compiled(1).lower(state, *args, step.no_order(1, 256))
  # FLOPs of the program before optimisation; the optimised program's as the cross-check.
  assert row['flops_per_step'] == pytest.approx(
      benchmark.cost_analysis(lowered)['flops'], rel=0.02)
  assert row['compiled_flops_per_step'] == pytest.approx(
      benchmark.cost_analysis(lowered.compile())['flops'], rel=0.02)


def test_unknown_costs_are_left_out_and_disagreement_is_logged(caplog):
  class Program:
    def __init__(self, cost):
      self.cost = cost

    def cost_analysis(self):
      return self.cost

  # XLA reports -1 for what it can't count (cuDNN custom calls in some versions).
  assert benchmark.cost_analysis(Program([{'flops': -1.0, 'bytes accessed': 8.0}])) == {
      'bytes accessed': 8.0}
  cost = benchmark.step_cost(Program({'flops': 1e9}), Program({'flops': 1e6}))
  assert cost == {'flops': 1e9, 'flops_source': 'lowered', 'compiled_flops': 1e6}
  assert 'TFLOP/s uses the first' in caplog.text
  # A backend that can't analyse a lowering (JAX returns None): the CPU lowering is used,
  # and without one, the compiled program's count.
  cost = benchmark.step_cost(Program(None), Program({'flops': 1e9}), lambda: Program(
      {'flops': 1.1e9}))
  assert cost['flops'] == 1.1e9 and cost['flops_source'] == 'lowered on cpu'
  cost = benchmark.step_cost(Program(None), Program({'flops': 1e9}))
  assert cost['flops'] == 1e9 and cost['flops_source'] == 'compiled'

  class Unsupported:
    def cost_analysis(self):
      raise NotImplementedError('Lowered.cost_analysis not implemented on platform cuda')

  assert benchmark.cost_analysis(Unsupported()) == {}


def test_the_cpu_lowering_counts_the_flops_of_one_device():
  # Two devices at batch 16 run 8 examples each: one CPU device at batch 8 has the same
  # per-device FLOPs.
  config = Config(model='resnet8', batch_size=16, dataset='synthetic', lr=0.8)
  model = models.create_model('resnet8', num_classes=10)
  tx = setup.build_optimizer(config, *setup.build_schedules(config, 100))
  ds = data.load('synthetic', synthetic_size=(256, 64))
  flops = {}
  for devices, batch in ((2, 16), (1, 8)):
    mesh = parallel.make_mesh(jax.devices()[:devices])
    state = setup.create_state(model, tx, mesh, jax.random.key(0))
    args = [parallel.put_replicated(mesh, a) for a in (
        ds.train_images, ds.train_labels.astype(np.int32), ds.mean, ds.std)]
    cfg = parallel.StepConfig(batch, 'flip', jnp.float32)
    steps = parallel.make_train_steps(model, tx, mesh, cfg, jax.random.key(1))
    flops[devices] = benchmark.cost_analysis(
        steps.compiled(1).lower(state, *args, steps.no_order(1, 256)))['flops']
    if devices == 2:
      on_cpu = benchmark.lower_one_step_on_cpu(model, tx, cfg, 8, jax.random.key(1), state,
                                               args)
  assert benchmark.cost_analysis(on_cpu)['flops'] == pytest.approx(flops[1], rel=1e-6)
  assert flops[2] == pytest.approx(flops[1], rel=0.02)


def test_schedule_cost_comparison_runs(tmp_path):
  path = tmp_path / 'schedules.json'
  result = _run(['-m', 'experiments.benchmark', '--quick', '--schedules=constant,one_cycle',
                 '--steps_per_dispatch=1', '--noisolate', f'--json={path}'])
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads(path.read_text())['results']
  assert [r['schedule'] for r in rows] == ['constant', 'one_cycle']
  assert rows[0]['schedule_spec'] == 'constant(lr=0.8)'
  assert rows[1]['schedule_spec'].startswith('one_cycle(max_lr=0.8, ')
  assert rows[0]['schedule_cost_ratio'] == 1.0
  assert _positive(rows[1]['schedule_cost_ratio'])
  for row in rows:
    _check_times(row['step_time_ms'])
    assert _positive(row['flops_per_step'])
  assert 'vs 1st schedule' in result.stdout


@pytest.mark.skipif(models.conv.check_available('onednn', 'cpu') is not None,
                    reason='oneDNN is not installed')
def test_conv_comparison_runs_both_in_one_process(tmp_path):
  path = tmp_path / 'convs.json'
  result = _run(['-m', 'experiments.benchmark', '--quick', '--convs=xla,onednn',
                 '--steps_per_dispatch=1', '--noisolate', f'--json={path}'])
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads(path.read_text())['results']
  assert [r['conv'] for r in rows] == ['xla', 'onednn']
  for row in rows:
    _check_times(row['step_time_ms'])
    assert _positive(row['eval_images_per_sec']) and _positive(row['eval_compile_s'])
  # The same arithmetic: XLA would count the custom calls as nothing.
  assert rows[1]['flops_per_step'] == rows[0]['flops_per_step']
  assert rows[1]['compiled_flops_per_step'] < rows[0]['compiled_flops_per_step'] / 10
  assert '| conv |' in result.stdout and '| onednn |' in result.stdout


@pytest.mark.parametrize('flag, words', [('--models=resnet7', ('resnet7', 'resnet56')),
                                         ('--convs=xla,torch', ('--convs', 'onednn'))])
def test_bad_flag_is_one_line_and_exit_2(flag, words):
  result = _run(['-m', 'experiments.benchmark', '--quick', flag], timeout=120)
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and all(w in errors[0] for w in words), errors


@pytest.mark.skipif(not HAS_TORCH, reason='torch is not importable')
def test_torch_reference_writes_its_json(tmp_path):
  path = tmp_path / 'torch.json'
  # A Wide ResNet under bfloat16 autocast; eager (torch.compile takes ~40 s on 2 CPU cores).
  result = _run(['benchmarks/torch_reference.py', '--model=wrn-10-2', '--batch_size=8',
                 '--precision=bfloat16', '--train_examples=32', '--warmup_steps=1',
                 '--samples=2', '--steps_per_sample=1', '--eval_examples=20',
                 '--eval_batch=8', '--eval_repeats=2', '--no_compile', '--device=cpu',
                 f'--json={path}'], timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(path.read_text())
  assert json.loads(result.stdout) == out
  assert set(TORCH_FIELDS) <= set(out)
  assert (out['model'], out['batch_size'], out['precision']) == ('wrn-10-2', 8, 'bfloat16')
  assert _positive(out['images_per_sec']) and _positive(out['compile_s'])
  assert (out['eval_examples'], out['eval_batch']) == (20, 8)  # 3 chunks, the last padded
  assert _positive(out['eval_images_per_sec']) and _positive(out['eval_compile_s'])
  _check_times(out['step_time_ms'])
  assert math.isfinite(out['train_loss']) and out['peak_memory_bytes'] is None
  # The same architecture as experiments.models.
  variables = jax.eval_shape(
      lambda: models.create_model('wrn-10-2', num_classes=10).init(
          jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  assert out['parameters'] == sum(x.size for x in jax.tree.leaves(variables['params']))


@pytest.mark.parametrize('kind, precision, matmul_precision, expected', [
    ('NVIDIA H100 80GB HBM3', 'bfloat16', None, 989.0),
    ('NVIDIA H100 80GB HBM3', 'float32', None, 494.0),  # TF32 tensor cores by default
    ('NVIDIA H100 80GB HBM3', 'float32', 'highest', 67.0),
    ('NVIDIA H200', 'bfloat16', None, 989.0),
    ('NVIDIA A100-SXM4-40GB', 'bfloat16', None, 312.0),
    ('NVIDIA H100 PCIe', 'bfloat16', None, None),  # other clocks: unknown
    ('TPU v4', 'float32', None, 275.0),  # one bfloat16 pass by default
    ('TPU v4', 'float32', 'highest', None),
    ('TPU v5 lite', 'bfloat16', None, 197.0),
    ('TPU v5', 'bfloat16', None, 459.0),
    ('TPU v5p', 'bfloat16', None, 459.0),
    ('cpu', 'float32', None, None),
])
def test_peak_tflops(kind, precision, matmul_precision, expected):
  platform = 'tpu' if kind.startswith('TPU') else 'gpu'
  basis = benchmark.peak_basis(platform, precision, matmul_precision)
  assert benchmark.peak_tflops(kind, basis) == expected


@pytest.mark.parametrize('text, expected', [
    ('constant,one_cycle,triangular', ['constant', 'one_cycle', 'triangular']),
    ("one_cycle(max_lr=0.8, anneal='cos'), cyclic(base_lr=0.1, max_lr=3, step_size_up=5)",
     ["one_cycle(max_lr=0.8, anneal='cos')", 'cyclic(base_lr=0.1, max_lr=3, step_size_up=5)']),
    ("sequence([constant(0.1), linear(0.1, 0.0, 10)], boundaries=[5]),x",
     ['sequence([constant(0.1), linear(0.1, 0.0, 10)], boundaries=[5])', 'x']),
    ("f(s='a,b'),g", ["f(s='a,b')", 'g']),
])
def test_split_specs(text, expected):
  assert benchmark.split_specs(text) == expected


def test_failed_group_is_a_row_and_exit_1(tmp_path):
  """A group that fails in its process (here: a batch the 2 devices can't split) is
  reported, with the reason, and the exit status says so."""
  path = tmp_path / 'out.json'
  result = _run(['-m', 'experiments.benchmark', '--quick', '--batch_sizes=15',
                 f'--json={path}'], timeout=120)
  assert result.returncode == 1, result.stderr[-3000:]
  rows = json.loads(path.read_text())['results']
  assert len(rows) == 1 and 'not divisible by the 2 devices' in rows[0]['error']
  assert '| resnet8 | 15 | float32 | error: ' in result.stdout


def _settings(**changes):
  """Small benchmark settings, as `settings_from_flags` would make them."""
  from experiments.benchmark.settings import Settings
  return Settings(**{
      'models': ('resnet8',), 'batch_sizes': (16,), 'precisions': ('float32',),
      'steps_per_dispatch': (1,), 'schedules': ('constant',), 'momentum': 'cyclical',
      'lr': 0.1, 'train_examples': 32, 'test_examples': 16, 'warmup_steps': 1, 'samples': 5,
      'steps_per_sample': 1, 'eval_repeats': 1, 'seed': 0, 'quick': False, 'isolate': True,
      'torch': True, 'torch_compile': False, 'torch_compile_mode': 'default', **changes})


@pytest.mark.skipif(not HAS_TORCH, reason='torch is not importable')
def test_the_interleaved_reference_times_a_sample_when_asked():
  from experiments.benchmark.reference import InterleavedReference
  peer = InterleavedReference(_settings(), {
      'model': 'resnet8', 'per_device_batch': 8, 'precision': 'float32',
      'eval_examples': 20, 'eval_chunk': 8})
  times = [peer.sample(), peer.sample()]  # --samples=5 is not what counts
  result = peer.finish()
  peer.close()
  assert all(_positive(t) for t in times), result
  assert result['sample_step_s'] == times and result['timed_steps'] == 2
  assert result['interleaved'] is True and _positive(result['eval_images_per_sec'])


@pytest.mark.skipif(not HAS_TORCH, reason='torch is not importable')
def test_a_failed_interleaved_reference_is_an_error_not_a_stop():
  from experiments.benchmark.reference import InterleavedReference
  peer = InterleavedReference(_settings(), {
      'model': 'resnet7', 'per_device_batch': 8, 'precision': 'float32',  # no such model
      'eval_examples': 20, 'eval_chunk': 8})
  assert peer.sample() is None
  assert 'exited with' in peer.finish()['error']
  peer.close()


@pytest.mark.skipif(not HAS_TORCH, reason='torch is not importable')
def test_a_closed_interleaved_reference_is_stopped():
  from experiments.benchmark.reference import InterleavedReference
  peer = InterleavedReference(_settings(), {
      'model': 'resnet8', 'per_device_batch': 8, 'precision': 'float32',
      'eval_examples': 20, 'eval_chunk': 8})
  peer.close()  # as the group does when it fails before the evaluation
  assert peer._process.returncode is not None


@pytest.mark.parametrize('torch', [True, False])
def test_a_group_process_runs_pytorch_only_in_turn_with_its_own(torch):
  """Its parent runs the reference after it where it cannot interleave (accelerators)."""
  settings = _settings(torch=torch)
  args = settings.group_flags('resnet8', 16, 'float32', '/tmp/out.json')
  assert ('--torch' in args, '--notorch' in args) == (torch, not torch)
  assert '--notorch_after_group' in args and '--notorch_compile' in args
