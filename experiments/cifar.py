r"""Trains a ResNet or WideResNet on CIFAR with an lrsched schedule, on every device.

  python -m experiments.cifar --schedule=1cycle --lr=0.8 --epochs=95 --workdir=runs/1cycle
  python -m experiments.cifar --dataset=synthetic --model=resnet20 --steps=20 \
      --batch_size=64 --workdir=/tmp/run

Every flag is a field of `experiments.config.Config` (see ``--helpfull``). Re-running the
same command with the same ``--workdir`` resumes. Multi-host (TPU pod slices, GPU
clusters): pass ``--distributed`` on every host.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import typing

from absl import app, flags

from experiments.config import Config

_DISTRIBUTED = flags.DEFINE_boolean(
    'distributed', False, 'Call jax.distributed.initialize() (multi-host jobs). On TPU pods '
    'and SLURM/MPI clusters everything is detected; elsewhere pass the three flags below.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'host:port of process 0, with --distributed.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'With --distributed.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'With --distributed.')


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


def config_from_flags() -> Config:
  return Config(**{f.name: getattr(flags.FLAGS, f.name) for f in dataclasses.fields(Config)})


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.getLogger().setLevel(logging.INFO)
  # Heavy imports after flag parsing, so that --help and flag errors are instant.
  import jax

  from experiments import data, train
  from experiments.config import ConfigError

  if _DISTRIBUTED.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  try:
    summary = train.train_and_evaluate(config_from_flags(), command=' '.join(sys.argv))
  except (ConfigError, data.DataError) as e:  # bad input: one line, no traceback
    print(f'error: {e}', file=sys.stderr)
    return 2
  except train.TrainingDiverged as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  if summary['status'] == 'finished' and jax.process_index() == 0:
    print(f"finished {summary['steps']} steps in {summary['wall_time_s']:.1f} s: final test "
          f"accuracy {summary['final_test_accuracy']}, best {summary['best_test_accuracy']}")
  return 0


if __name__ == '__main__':
  app.run(main)
