"""The benchmark's settings: its flags, resolved and checked once, and each configuration
planned as the trainer plans it (`experiments.setup.plan`)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence

from absl import flags

# The checkout: where the group processes and the PyTorch reference run, and git is asked.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def define_flags() -> None:
  """Defines the flags; called by ``__main__`` only, so that importing this module defines
  none (several names are also flags of ``experiments.cifar``)."""
  flags.DEFINE_list('models', ['resnet56', 'wrn-28-10'], 'Models to benchmark.')
  flags.DEFINE_list('batch_sizes', None, 'Global batch sizes. Default: 128,512,1000 for '
                    'ResNets, 128,512 for Wide ResNets.')
  flags.DEFINE_list('precisions', ['float32', 'bfloat16'], 'Compute dtypes.')
  flags.DEFINE_list('steps_per_dispatch', ['1', '10'], 'Values of K: training steps scanned '
                    "inside one dispatch (the trainer's --steps_per_dispatch).")
  flags.DEFINE_string(
      'schedules', None, 'Comma-separated LR schedules (names or lrsched specs), timed '
      "interleaved to compare their cost. Bare 'triangular', 'triangular2' and 'clr' get "
      "base_lr=0.08, step_size=2000. Default: the trainer's default schedule.")
  flags.DEFINE_string('momentum', 'cyclical', "Momentum, as the trainer's --momentum.")
  flags.DEFINE_list('convs', ['xla'], "The convolutions' kernels, as the trainer's --conv: "
                    "several (xla,onednn) are timed interleaved in one process.")
  flags.DEFINE_float('lr', 0.8, "The schedules' lr / max_lr where a spec leaves it out.")
  flags.DEFINE_integer('train_examples', 50_000,
                       'Synthetic training-set size (kept on every device).')
  flags.DEFINE_integer('test_examples', 10_000, 'Synthetic test-set size.')
  flags.DEFINE_integer('warmup_steps', 20, 'Untimed steps before timing.')
  flags.DEFINE_integer('samples', 25, 'Timed samples per configuration.')
  flags.DEFINE_integer('steps_per_sample', 10,
                       'Steps per timed sample (rounded up to a multiple of K).')
  flags.DEFINE_integer('eval_repeats', 5, 'Timed passes over the test set.')
  flags.DEFINE_integer('seed', 0, 'Seed of the data, initialisation and augmentation.')
  flags.DEFINE_string('json', None, 'Write the results and the environment here.')
  flags.DEFINE_boolean('quick', False, 'Tiny shapes and few steps (resnet8, batch 16, K=1,2, '
                       '3 samples), for tests; flags given explicitly still apply.')
  flags.DEFINE_boolean('isolate', True, 'Run each (model, batch, precision) group in its own '
                       'process, so that its peak memory and compile time are its own. With '
                       '--noisolate, peak memory is the process\'s peak so far, and the '
                       'PyTorch reference shares the accelerator with this process.')
  flags.DEFINE_boolean('torch', False, 'Also run benchmarks/torch_reference.py on each group '
                       'and report the JAX/PyTorch images/s ratio.')
  flags.DEFINE_boolean('torch_after_group', True, 'Where the reference cannot take its '
                       'samples in turn with the group (accelerators; on CPU it does), run '
                       'it after the group. --isolate gives its group processes '
                       '--notorch_after_group: the parent runs it, with the device free.')
  flags.DEFINE_boolean('torch_compile', True, 'torch.compile the PyTorch reference (off with '
                       '--quick: compiling on CPU takes a minute).')
  flags.DEFINE_string('torch_compile_mode', 'default', 'torch.compile mode of the reference '
                      "('reduce-overhead' for CUDA graphs).")
  flags.DEFINE_string('profile_dir', None, 'Also trace --profile_steps steps of every row '
                      'with jax.profiler into this folder (one subfolder a row) and put a '
                      'summary of the device time in the row (experiments.benchmark.profiling).')
  flags.DEFINE_integer('profile_steps', 20, 'Steps traced per row with --profile_dir '
                       '(rounded up to a multiple of K).')


QUICK = dict(models=['resnet8'], batch_sizes=['16'], precisions=['float32'],
             steps_per_dispatch=['1', '2'], train_examples=256, test_examples=64,
             warmup_steps=2, samples=3, steps_per_sample=1, eval_repeats=2, torch_compile=False,
             profile_steps=2)

SCHEDULE_SHORTHANDS = {
    'triangular': 'triangular(base_lr=0.08, step_size=2000)',
    'triangular2': 'triangular2(base_lr=0.08, step_size=2000)',
    'clr': 'triangular(base_lr=0.08, step_size=2000)',
}
"""Specs for bare cyclical names, which need arguments that no context fills in."""


def split_specs(text: str) -> list[str]:
  """Splits at the commas outside brackets and quotes: 'a(x=1, y=2),b' -> ['a(x=1, y=2)', 'b']."""
  parts, depth, quote, current = [], 0, None, []
  for ch in text:
    if quote:
      quote = None if ch == quote else quote
    elif ch in '\'"':
      quote = ch
    elif ch in '([{':
      depth += 1
    elif ch in ')]}':
      depth -= 1
    elif ch == ',' and depth == 0:
      parts.append(''.join(current).strip())
      current = []
      continue
    current.append(ch)
  parts.append(''.join(current).strip())
  return [p for p in parts if p]


class BenchmarkError(ValueError):
  """A bad flag; its text is one line for the user."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """The resolved flags (see ``--help``); ``batch_sizes=None`` means each model's defaults."""

  models: tuple[str, ...]
  batch_sizes: tuple[int, ...] | None
  precisions: tuple[str, ...]
  steps_per_dispatch: tuple[int, ...]
  schedules: tuple[str, ...]
  momentum: str
  lr: float
  train_examples: int
  test_examples: int
  warmup_steps: int
  samples: int
  steps_per_sample: int
  eval_repeats: int
  seed: int
  quick: bool
  isolate: bool
  torch: bool
  torch_compile: bool
  torch_compile_mode: str
  profile_dir: str | None = None
  profile_steps: int = 20
  convs: tuple[str, ...] = ('xla',)
  torch_after_group: bool = True

  def groups(self) -> Iterator[tuple[str, int, str]]:
    """(model, global batch, precision), in the order they run."""
    for model in self.models:
      default = (128, 512) if model.startswith('wrn') else (128, 512, 1000)
      for batch in self.batch_sizes or default:
        for precision in self.precisions:
          yield model, batch, precision

  def group_flags(self, model: str, batch: int, precision: str, json_path: str) -> list[str]:
    """The command line of a child process that runs one group in isolation."""
    return [f'--models={model}', f'--batch_sizes={batch}', f'--precisions={precision}',
            '--steps_per_dispatch=' + ','.join(map(str, self.steps_per_dispatch)),
            '--schedules=' + ','.join(self.schedules), f'--momentum={self.momentum}',
            f'--lr={self.lr!r}', f'--train_examples={self.train_examples}',
            f'--test_examples={self.test_examples}', f'--warmup_steps={self.warmup_steps}',
            f'--samples={self.samples}', f'--steps_per_sample={self.steps_per_sample}',
            f'--eval_repeats={self.eval_repeats}', f'--seed={self.seed}', '--noquick',
            '--noisolate', f'--json={json_path}',
            # PyTorch: interleaved in the child on CPU, after it (runner) elsewhere.
            f'--{"" if self.torch else "no"}torch', '--notorch_after_group',
            f'--{"" if self.torch_compile else "no"}torch_compile',
            f'--torch_compile_mode={self.torch_compile_mode}',
            f'--profile_steps={self.profile_steps}', '--convs=' + ','.join(self.convs),
            *([f'--profile_dir={self.profile_dir}'] if self.profile_dir else [])]


def _ints(name: str, values: Sequence[str]) -> tuple[int, ...]:
  try:
    result = tuple(int(v) for v in values)
  except ValueError:
    raise BenchmarkError(f'--{name} must be comma-separated integers, got '
                         f'{",".join(values)!r}') from None
  if not result or min(result) < 1:
    raise BenchmarkError(f'--{name} must be integers >= 1, got {",".join(values)!r}')
  return result


def settings_from_flags() -> Settings:
  """The flags, with --quick's values for those not given explicitly; checks them all."""
  f = flags.FLAGS
  value = lambda name: (QUICK[name] if f['quick'].value and name in QUICK
                        and not f[name].present else f[name].value)
  schedules = value('schedules')
  if schedules is None:
    from experiments.config import Config
    schedules = Config().schedule
  settings = Settings(
      models=tuple(value('models')),
      batch_sizes=None if value('batch_sizes') is None else _ints('batch_sizes',
                                                                  value('batch_sizes')),
      precisions=tuple(value('precisions')),
      steps_per_dispatch=_ints('steps_per_dispatch', value('steps_per_dispatch')),
      schedules=tuple(split_specs(schedules)),
      **{name: value(name) for name in (
          'momentum', 'lr', 'train_examples', 'test_examples', 'warmup_steps', 'samples',
          'steps_per_sample', 'eval_repeats', 'seed', 'quick', 'isolate', 'torch',
          'torch_compile', 'torch_compile_mode', 'torch_after_group', 'profile_dir',
          'profile_steps')},
      convs=tuple(value('convs')))
  for name in ('train_examples', 'test_examples', 'warmup_steps', 'samples',
               'steps_per_sample', 'eval_repeats', 'profile_steps'):
    if getattr(settings, name) < 1:
      raise BenchmarkError(f'--{name} must be >= 1, got {getattr(settings, name)}')
  if not settings.models or not settings.precisions or not settings.schedules:
    raise BenchmarkError('--models, --precisions and --schedules must not be empty')
  from experiments.models.conv import CONVS
  if not settings.convs or len(set(settings.convs)) != len(settings.convs) or any(
      c not in CONVS for c in settings.convs):
    raise BenchmarkError(f'--convs must list each of {", ".join(CONVS)} at most once, got '
                         f'{",".join(settings.convs)!r}')
  if len(set(settings.schedules)) != len(settings.schedules):
    raise BenchmarkError(f'--schedules lists a schedule twice: {",".join(settings.schedules)}')
  # Every configuration is checked before anything is compiled or any process started.
  for model, batch, precision in settings.groups():
    for schedule in settings.schedules:
      plan(settings, model, batch, precision, schedule)
  return settings


def plan(settings: Settings, model: str, batch: int, precision: str, schedule: str):
  """One configuration checked and resolved as the trainer resolves it (its
  `experiments.setup.Plan`); BenchmarkError if it is bad. (K is not part of it: the
  benchmark compiles each K's program itself.)"""
  from experiments import setup
  from experiments.config import Config, ConfigError

  config = Config(model=model, batch_size=batch, precision=precision, dataset='synthetic',
                  schedule=SCHEDULE_SHORTHANDS.get(schedule, schedule),
                  momentum=settings.momentum, lr=settings.lr, seed=settings.seed,
                  synthetic_examples=settings.train_examples)
  try:
    setup.build_model(config)
    # As the trainer resolves it: the schedules span its default run (95 epochs) of this
    # training set. The device count is checked when the group runs.
    return config, setup.plan(config, settings.train_examples, num_devices=1)
  except ConfigError as e:
    raise BenchmarkError(f'{model} batch {batch} {precision} schedule {schedule!r}: '
                         f'{e}') from None
