r"""Runs several training arms on the same model, data and seed, and compares them.

  python -m experiments.compare --suite=sc-budget --data_dir=data/cifar10-jpeg.npz \
      --workdir=runs/sc-budget --reference_dir=/path/to/super-convergence-logs
  python -m experiments.compare --presets=sc-fig1a-clr,sc-fig1a-step --data_dir=...
  python -m experiments.compare --preset=sc-fig1a-clr --steps=2000 \
      --schedules='super_convergence(0.1, 3.0, 1000)' --schedules='constant(0.35)'

The arms are presets (``--presets``, or a named ``--suite`` of `experiments.presets`), or
LR schedules (``--schedules``, repeated) on one base configuration (``--preset`` and the
training flags; the preset's paper numbers go with the arm that runs its own schedule).
Training flags given on the command line apply to every arm. Each arm trains in its own
subfolder of ``--workdir`` as a normal run of `experiments.cifar` (so it resumes); an arm
that finished (``summary.json``) or diverged (``diverged.json``: training is deterministic,
it would diverge again) is not run again. A diverging arm is recorded with the step and the
LR where it diverged, and the others go on.

Everything is checked before the first arm trains: every arm's settings, and that the arms
agree on the data (dataset, data_dir, train_examples, synthetic_examples), the model (model,
shortcut, dropout_rate) and the seed, unless ``--allow_differences`` names the fields meant
to differ (a suite names its own, e.g. ``train_examples`` for Table 1's sweep).

Writes ``comparison.md`` (a table), ``comparison.json`` and ``comparison.png`` (test accuracy
against iteration, the LR below, as the paper's Fig. 1a), after every arm. With
``--reference_dir`` (a folder of the authors' logs as CSV: iteration, lr, test_acc, ...), it
overlays their curves, dashed: those named by ``--reference``, or by default those of the
arms' presets.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from absl import app, flags

from experiments import allocator, cifar, presets
from experiments.config import Config, ConfigError

log = logging.getLogger(__name__)

_PRESETS = flags.DEFINE_list('presets', None, 'The arms: presets, by name.')
_SUITE = flags.DEFINE_string('suite', None, 'The arms: a suite of presets (see '
                             '--list_presets).')
_SCHEDULES = flags.DEFINE_multi_string(
    'schedules', None, 'The arms: LR schedule specs on the base configuration (--preset and '
    "the training flags); repeat the flag, or separate specs with ';'.")
_ALLOW = flags.DEFINE_list(
    'allow_differences', [], 'Data or model fields the arms may differ in, e.g. '
    'train_examples.')
_REFERENCE_DIR = flags.DEFINE_string(
    'reference_dir', None, "A folder of the authors' logs as CSV (<name>.csv) to overlay.")
_REFERENCE = flags.DEFINE_list(
    'reference', None, 'The logs to overlay, e.g. clr3SS5kFig1a,lr35Fig1a; default: those of '
    "the arms' presets.")
_REPORT_ONLY = flags.DEFINE_boolean(
    'report_only', False, 'Train nothing: write the report of what the arms hold now (while '
    'another process trains them, say).')
_X_AXIS = flags.DEFINE_enum('x_axis', 'step', ['step', 'epoch'],
                            'The x axis of the figure: iterations or epochs.')

DATA_FIELDS = ('dataset', 'data_dir', 'train_examples', 'synthetic_examples')
MODEL_FIELDS = ('model', 'shortcut', 'dropout_rate')
COMPARED_FIELDS = (*DATA_FIELDS, *MODEL_FIELDS, 'seed')
"""What the arms of a comparison must share unless told otherwise."""

DIVERGED_FILE = 'diverged.json'
DATASET_NAMES = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100', 'synthetic': 'synthetic'}


@dataclasses.dataclass(frozen=True)
class Arm:
  """One training run of a comparison; it trains in ``<workdir>/<name>``."""

  name: str
  config: Config
  preset: presets.Preset | None = None


def arms_from_presets(names: Iterable[str], overrides: dict[str, Any] | None = None
                      ) -> list[Arm]:
  """One arm per preset, with ``overrides`` (e.g. the flags given) on top of each."""
  return [Arm(name, p.config(**(overrides or {})), p)
          for name, p in ((n, presets.get(n)) for n in names)]


def arms_from_schedules(base: Config, schedules: Iterable[str],
                        preset: presets.Preset | None = None) -> list[Arm]:
  """One arm per schedule spec on the ``base`` configuration, named by position and spec.

  ``preset``: the preset ``base`` came from; its numbers and reference curve go with the
  arm whose schedule is the preset's own (and with no other).
  """
  arms = []
  for i, spec in enumerate(schedules):
    slug = re.sub(r'[^A-Za-z0-9.=-]+', '_', spec).strip('_')[:48]
    own = preset is not None and spec.strip() == preset.values.get('schedule')
    arms.append(Arm(f'{i}-{slug}', base.replace(schedule=spec), preset if own else None))
  return arms


def check_arms(arms: Sequence[Arm], allow_differences: Iterable[str] = ()) -> None:
  """ConfigError unless the arms are distinct and share data, model and seed (but for the
  fields of ``allow_differences``)."""
  allow = set(allow_differences)
  unknown = sorted(allow - set(COMPARED_FIELDS))
  if unknown:
    raise ConfigError(f'--allow_differences: {", ".join(unknown)} are not compared; the '
                      f'compared fields are {", ".join(COMPARED_FIELDS)}')
  if len(arms) < 1:
    raise ConfigError('a comparison needs arms: give --presets, --suite or --schedules')
  names = [a.name for a in arms]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise ConfigError(f'arm names must differ; given twice: {", ".join(twice)}')
  first = arms[0]
  for field in COMPARED_FIELDS:
    if field in allow:
      continue
    values = {a.name: getattr(a.config, field) for a in arms}
    if len(set(values.values())) > 1:
      kind = ('data' if field in DATA_FIELDS else 'model' if field in MODEL_FIELDS
              else 'seed')
      detail = ', '.join(f'{name}: {value!r}' for name, value in values.items())
      raise ConfigError(
          f'the arms differ in {kind} ({field}: {detail}); a comparison runs every arm on '
          f'the same model, data and seed as {first.name}. Pass '
          f'--allow_differences={field} if the difference is intended')


def resolve_branches(arms: Sequence[Arm], workdir: str) -> list[Arm]:
  """An arm whose ``init_from`` names another arm (``ARM@STEP``, as the presets of a
  suite do) branches off that arm's folder in ``workdir``; the parent must come first."""
  order = {a.name: i for i, a in enumerate(arms)}
  out = []
  for i, arm in enumerate(arms):
    try:
      parent = arm.config.parent()
    except ConfigError as e:
      raise ConfigError(f'arm {arm.name}: {e}') from None
    if parent is not None and parent[0] in order:
      if order[parent[0]] >= i:
        raise ConfigError(f'arm {arm.name} branches off arm {parent[0]}, which must come '
                          'before it in the arms')
      init_from = f'{os.path.join(workdir, parent[0])}@{parent[1]}'
      arm = dataclasses.replace(arm, config=arm.config.replace(init_from=init_from))
    out.append(arm)
  return out


def data_label(config: Config, source: str | None = None) -> str:
  """The data in words for the table: 'CIFAR-10 (JPEG copy)' for the packed JPEG copy."""
  label = DATASET_NAMES.get(config.dataset, config.dataset)
  jpeg = ('JPEG copy' in source if source is not None
          else str(config.data_dir or '').endswith('.npz'))
  if jpeg:
    label += ' (JPEG copy)'
  if config.train_examples is not None:
    label += f', {config.train_examples} training examples'
  return label


# --------------------------------------------------------------------------------------
# Running


def compare(arms: Sequence[Arm], workdir: str, *, allow_differences: Iterable[str] = (),
            reference_dir: str | None = None, references: Sequence[str] | None = None,
            x_axis: str = 'step', devices: list[Any] | None = None,
            command: str | None = None, report_only: bool = False) -> list[dict[str, Any]]:
  """Runs the arms that have not run yet, one after the other, and writes the report.

  ``report_only``: trains nothing; writes the report of what the arms' workdirs hold now
  (an arm still training elsewhere shows its curve so far, as ``incomplete``).

  Returns one result dict per arm (as in ``comparison.json``). Raises ConfigError (before
  anything trains) for arms that disagree or a bad setting of any arm.
  """
  import jax

  from experiments import setup, train

  arms = [dataclasses.replace(a, config=a.config.replace(workdir=os.path.join(workdir, a.name)))
          for a in arms]
  arms = resolve_branches(arms, workdir)
  check_arms(arms, allow_differences)
  num_devices = len(jax.devices() if devices is None else devices)
  plans = {}
  for arm in arms:  # every arm is checked before the first one trains
    try:
      plans[arm.name] = setup.plan(arm.config, setup.nominal_train_size(arm.config),
                                   num_devices)
      setup.check_resumable(arm.config, arm.config.workdir)
    except ConfigError as e:
      raise ConfigError(f'arm {arm.name}: {e}') from None
  reference_paths = _reference_paths(arms, reference_dir, references)

  results = {arm.name: _result(arm, plans[arm.name]) for arm in arms}
  report = lambda: write_report(arms, results, plans, workdir, reference_paths, x_axis)
  for arm in [] if report_only else arms:
    if results[arm.name]['status'] in ('finished', 'diverged'):
      log.info('arm %s: %s before, not run again', arm.name, results[arm.name]['status'])
      continue
    log.info('arm %s: training (%s)', arm.name, arm.config.schedule)
    try:
      summary = train.train_and_evaluate(arm.config, command=command, devices=devices)
    except train.TrainingDiverged as e:
      log.warning('arm %s diverged: %s', arm.name, e)
      if jax.process_index() == 0:
        with open(os.path.join(arm.config.workdir, DIVERGED_FILE), 'w') as f:
          json.dump({'step': e.step, 'lr': e.lr, 'message': str(e)}, f, indent=2)
      results[arm.name] = _result(arm, plans[arm.name], diverged=e)
      report()
      continue
    results[arm.name] = _result(arm, plans[arm.name], summary)
    report()
    if summary['status'] != 'finished':  # stopped by a signal: stop the comparison too
      log.warning('stopped in arm %s; run the same command to resume', arm.name)
      break
  report()
  return [results[a.name] for a in arms]


def _reference_paths(arms: Sequence[Arm], reference_dir: str | None,
                     references: Sequence[str] | None) -> list[str]:
  if reference_dir is None:
    if references:
      raise ConfigError('--reference needs --reference_dir (the folder of the logs)')
    return []
  if not os.path.isdir(reference_dir):
    raise ConfigError(f'--reference_dir={reference_dir} is not a folder')
  if references is None:
    references = list(dict.fromkeys(a.preset.reference_log for a in arms
                                    if a.preset and a.preset.reference_log))
  paths = []
  for name in references:
    path = os.path.join(reference_dir, name if name.endswith('.csv') else name + '.csv')
    if not os.path.isfile(path):
      available = sorted(f[:-4] for f in os.listdir(reference_dir) if f.endswith('.csv'))
      raise ConfigError(f'--reference: no {path}; available: {", ".join(available)}')
    paths.append(path)
  return paths


def _read_json(path: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _metrics(workdir: str) -> list[dict[str, Any]]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:  # a line cut short by a kill
        continue
  return rows


def _result(arm: Arm, plan, summary: dict[str, Any] | None = None,
            diverged: Exception | None = None) -> dict[str, Any]:
  """An arm's row of the comparison, from what its workdir holds."""
  workdir = arm.config.workdir
  if summary is None and diverged is None:
    summary = _read_json(os.path.join(workdir, 'summary.json'))
  diverged_info = (_read_json(os.path.join(workdir, DIVERGED_FILE)) if diverged is None
                   else {'step': diverged.step, 'lr': diverged.lr, 'message': str(diverged)})
  rows = _metrics(workdir)
  speeds = [r['images_per_sec'] for r in rows if r.get('images_per_sec')]
  accuracies = [r['test_accuracy'] for r in rows if r.get('test_accuracy') is not None]
  p = arm.preset
  result = {
      'arm': arm.name, 'preset': p.name if p else None, 'source': p.source if p else None,
      'schedule': arm.config.schedule, 'batch_schedule': arm.config.batch_schedule,
      'total_steps': plan.total_steps, 'total_epochs': plan.epoch_at(plan.total_steps),
      'paper_accuracy': p.paper_accuracy if p else None,
      'log_accuracy': p.log_accuracy if p else None,
      'reference_log': p.reference_log if p else None,
      'images_per_sec': statistics.median(speeds) if speeds else None,
      'best_test_accuracy': max(accuracies) if accuracies else None,
      'workdir': workdir, 'config': dataclasses.asdict(arm.config),
  }
  if diverged_info is not None:
    step = int(diverged_info['step'])
    result.update(status='diverged', steps=step, epochs=plan.epoch_at(step),
                  final_test_accuracy=None, diverged_step=step,
                  diverged_lr=diverged_info['lr'], wall_time_s=None,
                  data=data_label(arm.config), message=diverged_info.get('message'))
  elif summary is not None:
    result.update(status=summary['status'], steps=summary['steps'], epochs=summary['epochs'],
                  final_test_accuracy=summary['final_test_accuracy'],
                  best_test_accuracy=summary['best_test_accuracy'],
                  wall_time_s=summary['wall_time_s'],
                  resumed_from_step=summary.get('resumed_from_step'),
                  **({'this_process_s': summary['this_process_s']}
                     if 'this_process_s' in summary else {}),
                  data=data_label(arm.config, summary.get('data')),
                  device=f"{summary['device_count']} x {summary['device_kind']}")
  else:
    last = rows[-1]['step'] if rows else 0
    result.update(status='not run' if not rows else 'incomplete', steps=last,
                  epochs=plan.epoch_at(last), final_test_accuracy=None, wall_time_s=None,
                  data=data_label(arm.config))
  return result


# --------------------------------------------------------------------------------------
# The report


def _percent(value: float | None, digits: int = 2) -> str:
  return '' if value is None else f'{100 * value:.{digits}f}%'


def _duration(seconds: float | None) -> str:
  if seconds is None:
    return ''
  seconds = round(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s' if m else f'{s}s'


def _status(r: dict[str, Any]) -> str:
  if r['status'] == 'diverged':
    return f"diverged at step {r['diverged_step']} (lr={r['diverged_lr']:.4g})"
  if r['status'] == 'finished' and r.get('resumed_from_step'):
    # Since the checkpoints keep the time spent, wall_time_s counts every part of the run;
    # a summary without this_process_s was written before that, by the last part alone.
    part = '' if 'this_process_s' in r else '; wall time of the last part'
    return f"finished (resumed at step {r['resumed_from_step']}{part})"
  return r['status']


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
  """The comparison as a markdown table (the data in a line above it, or in a column when
  the arms differ in data)."""
  datas = list(dict.fromkeys(r['data'] for r in results))
  header = ['arm', 'schedule', 'iterations', 'epochs', 'final test acc.', 'best test acc.',
            'paper', "authors' log", 'wall time', 'images/s', 'status']
  if len(datas) > 1:
    header.insert(1, 'data')
  lines = [f'Data: {datas[0]}' if len(datas) == 1 else 'Data: see the data column', '',
           '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for r in results:
    schedule = r['schedule'] + (f"; batch {r['batch_schedule']}" if r['batch_schedule'] else '')
    steps = (f"{r['steps']}" if r['steps'] == r['total_steps']
             else f"{r['steps']} of {r['total_steps']}")
    cells = [r['arm'], f'`{schedule}`', steps, f"{r['epochs']:.1f}",
             _percent(r['final_test_accuracy']), _percent(r['best_test_accuracy']),
             _percent(r['paper_accuracy'], 1), _percent(r['log_accuracy']),
             _duration(r['wall_time_s']),
             '' if r['images_per_sec'] is None else f"{r['images_per_sec']:,.0f}", _status(r)]
    if len(datas) > 1:
      cells.insert(1, r['data'])
    lines.append('| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |')
  return '\n'.join(lines) + '\n'


def write_report(arms: Sequence[Arm], results: dict[str, dict[str, Any]], plans: dict[str, Any],
                 workdir: str, reference_paths: Sequence[str], x_axis: str = 'step') -> None:
  """Writes comparison.md, comparison.json and comparison.png (process 0 only)."""
  import jax

  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  ordered = [results[a.name] for a in arms]
  with open(os.path.join(workdir, 'comparison.md'), 'w') as f:
    f.write(markdown_table(ordered))
  with open(os.path.join(workdir, 'comparison.json'), 'w') as f:
    json.dump({'arms': ordered, 'references': list(reference_paths)}, f, indent=2)
  plot(arms, results, plans, os.path.join(workdir, 'comparison.png'), reference_paths, x_axis)


def plot(arms: Sequence[Arm], results: dict[str, dict[str, Any]], plans: dict[str, Any],
         path: str, reference_paths: Sequence[str] = (), x_axis: str = 'step') -> None:
  """The comparison figure: each arm's test accuracy and LR, and the authors' curves."""
  import numpy as np

  from experiments import plots

  curves = []
  colors = {}
  for i, arm in enumerate(arms):
    plan = plans[arm.name]
    color = colors.setdefault(arm.preset.reference_log if arm.preset and
                              arm.preset.reference_log else arm.name, f'C{i}')
    rows = [r for r in _metrics(arm.config.workdir) if r.get('test_accuracy') is not None]
    result = results[arm.name]
    end = result['steps'] if result['status'] == 'diverged' else plan.total_steps
    steps = np.arange(max(end, 1))
    to_x = (lambda s: np.asarray(s, np.float64)) if x_axis == 'step' else (
        lambda s, plan=plan: _epochs(plan, s))
    diverged = None
    if result['status'] == 'diverged':
      diverged = (float(to_x([result['diverged_step']])[0]), float(result['diverged_lr']))
    curves.append(plots.Curve(
        arm.name, to_x([r['step'] for r in rows]), np.asarray([r['test_accuracy'] for r in rows]),
        to_x(steps), np.asarray(plan.lr_schedule(steps), np.float64), diverged_at=diverged,
        color=color))
  next_color = len(arms)
  for path_ in reference_paths:
    name = os.path.splitext(os.path.basename(path_))[0]
    if name not in colors:
      colors[name] = f'C{next_color}'
      next_color += 1
    curve = plots.read_reference(path_, x_axis=x_axis)
    curves.append(dataclasses.replace(curve, color=colors[name]))
  plots.plot_comparison(curves, path, x_axis=x_axis)


def _epochs(plan, steps):
  """The epoch after each step of ``steps`` (vectorised `Plan.epoch_at`)."""
  import numpy as np

  steps = np.asarray(steps, np.int64)
  examples = np.zeros(steps.shape, np.float64)
  for phase in plan.phases:
    inside = steps >= phase.first_step
    examples = np.where(inside, phase.first_example
                        + (steps - phase.first_step) * phase.batch_size, examples)
  return examples / plan.train_size


# --------------------------------------------------------------------------------------
# The binary


def arms_from_flags() -> tuple[list[Arm], tuple[str, ...], str]:
  """(arms, allowed differences, workdir) from the command line."""
  given = sum(x is not None and x != [] for x in (_PRESETS.value, _SUITE.value,
                                                    _SCHEDULES.value))
  if given != 1:
    raise ConfigError('give exactly one of --presets, --suite and --schedules')
  overrides = cifar.given_flags()
  root = overrides.pop('workdir', None)
  allow = tuple(_ALLOW.value)
  if _SCHEDULES.value:
    specs = [s.strip() for value in _SCHEDULES.value for s in value.split(';') if s.strip()]
    preset = presets.get(flags.FLAGS.preset) if flags.FLAGS.preset else None
    arms = arms_from_schedules(cifar.config_from_flags(), specs, preset)
    name = 'schedules'
  else:
    if flags.FLAGS.preset:
      raise ConfigError('--preset sets the base of --schedules; with --presets or --suite, '
                        'list the presets there')
    if _SUITE.value:
      suite = presets.get_suite(_SUITE.value)
      names, allow, name = suite.arms, (*suite.allow_differences, *allow), suite.name
    else:
      names, name = _PRESETS.value, '-'.join(_PRESETS.value)
    arms = arms_from_presets(names, overrides)
  return arms, allow, root or f'runs/compare-{name}'


def main(argv: list[str]) -> int:
  if (code := cifar.early_exit(argv)) is not None:
    return code
  cifar.install_stop_handlers()
  from experiments import data

  cifar.initialize()
  try:
    arms, allow, workdir = arms_from_flags()
    results = compare(arms, workdir, allow_differences=allow,
                      reference_dir=_REFERENCE_DIR.value, references=_REFERENCE.value,
                      x_axis=_X_AXIS.value, command=' '.join(sys.argv),
                      report_only=_REPORT_ONLY.value)
  except (ConfigError, data.DataError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  import jax
  if jax.process_index() == 0:
    print(markdown_table(results))
    print(f'wrote {workdir}/comparison.md, comparison.json and comparison.png')
  # 1: stopped (a signal) before every arm finished or diverged; run again to resume.
  done = _REPORT_ONLY.value or all(r['status'] in ('finished', 'diverged') for r in results)
  return 0 if done else 1


if __name__ == '__main__':
  allocator.reexec_with_tuned_malloc()
  app.run(main)
