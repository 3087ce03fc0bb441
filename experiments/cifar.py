r"""Trains a ResNet or WideResNet on CIFAR with an lrsched schedule, on every device.

  python -m experiments.cifar --schedule=1cycle --lr=0.8 --epochs=95 --workdir=runs/1cycle
  python -m experiments.cifar --preset=sc-fig1a-clr --data_dir=data/cifar10-jpeg.npz
  python -m experiments.cifar --dataset=synthetic --model=resnet20 --steps=20 \
      --batch_size=64 --workdir=/tmp/run
  python -m experiments.cifar --list_presets

Every flag is a field of `experiments.config.Config` (see ``--helpfull``). ``--preset``
starts from a named configuration of `experiments.presets`; flags given on the command
line override its values. Re-running the same command with the same ``--workdir`` resumes.
Multi-host (TPU pod slices, GPU clusters): pass ``--distributed`` on every host.

`experiments.compare` and `experiments.lr_range_test` take these same flags.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import typing
from typing import Any

from absl import app, flags
from absl import logging as absl_logging

from experiments import allocator, presets
from experiments.config import Config

_DISTRIBUTED = flags.DEFINE_boolean(
    'distributed', False, 'Call jax.distributed.initialize() (multi-host jobs). On TPU pods '
    'and SLURM/MPI clusters everything is detected; elsewhere pass the three flags below.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, with --distributed.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'With --distributed.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'With --distributed.')
_PRESET = flags.DEFINE_string(
    'preset', None, 'Start from this named configuration (see --list_presets); flags given '
    'on the command line override its values.')
_LIST_PRESETS = flags.DEFINE_boolean('list_presets', False,
                                     'Print the presets, with their sources, and exit.')


def _define_config_flags() -> None:
  """One flag per Config field, typed from its annotation, with its help text."""
  hints = typing.get_type_hints(Config)
  for field in dataclasses.fields(Config):
    kind = hints[field.name]
    base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
    define = {str: flags.DEFINE_string, int: flags.DEFINE_integer,
              float: flags.DEFINE_float, bool: flags.DEFINE_boolean}[base]
    define(field.name, field.default, field.metadata['help'])


_define_config_flags()


def given_flags(names: typing.Iterable[str] | None = None) -> dict[str, Any]:
  """The Config fields set on the command line (absl's ``present``), with their values."""
  names = [f.name for f in dataclasses.fields(Config)] if names is None else names
  return {name: flags.FLAGS[name].value for name in names if flags.FLAGS[name].present}


def config_from_flags(defaults: dict[str, Any] | None = None) -> Config:
  """Config defaults < ``defaults`` < the --preset's values < flags given on the command line.

  Raises ConfigError for an unknown preset.
  """
  values = dict(defaults or {})
  if _PRESET.value:
    values.update(presets.get(_PRESET.value).values)
  values.update(given_flags())
  return Config.from_dict(values)


def initialize() -> None:
  """Logging, and the multi-host runtime with --distributed (call in main, after parsing)."""
  # Our own progress at INFO; the libraries' INFO chatter (Orbax logs every save through
  # absl) only when asked for with --verbosity.
  logging.getLogger('experiments').setLevel(logging.INFO)
  if not flags.FLAGS['verbosity'].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  if _DISTRIBUTED.value:
    import jax
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)


def early_exit(argv: list[str]) -> int | None:
  """What every binary does before its work: one line for stray arguments (exit 2; the
  whole --help would bury it), and --list_presets (exit 0). None: go on."""
  if len(argv) > 1:
    print(f'error: unexpected arguments {" ".join(argv[1:])!r}: flags are written '
          '--name=value (see --help)', file=sys.stderr)
    return 2
  if _LIST_PRESETS.value:
    print(presets.listing())
    return 0
  return None


def stop_before_training(signum: int, frame: object) -> None:
  """SIGTERM or Ctrl-C while nothing is trained yet (imports, data, compilation): one line,
  and out. The training loop installs its own handler, which saves a checkpoint."""
  print(f'\n{signal.Signals(signum).name}: stopped before training started; nothing to save',
        file=sys.stderr, flush=True)
  sys.exit(128 + signum)


def install_stop_handlers() -> None:
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, stop_before_training)


def main(argv: list[str]) -> int:
  if (code := early_exit(argv)) is not None:
    return code
  install_stop_handlers()
  # Heavy imports after flag parsing, so that --help and flag errors are instant.
  import jax

  from experiments import data, train
  from experiments.config import ConfigError

  initialize()
  try:
    summary = train.train_and_evaluate(config_from_flags(), command=' '.join(sys.argv))
  except (ConfigError, data.DataError) as e:  # bad input: one line, no traceback
    print(f'error: {e}', file=sys.stderr)
    return 2
  except train.TrainingDiverged as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  except train.Interrupted as e:
    print(f'stopped: {e}', file=sys.stderr)
    return 130
  if summary['status'] == 'finished' and jax.process_index() == 0:
    print(f"finished {summary['steps']} steps in {summary['wall_time_s']:.1f} s: final test "
          f"accuracy {summary['final_test_accuracy']}, best {summary['best_test_accuracy']}")
  return 0


if __name__ == '__main__':
  allocator.reexec_with_tuned_malloc()
  app.run(main)
