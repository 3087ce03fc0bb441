"""Tests for lrsched.spec: spec strings, the JSON and repr round trips, describe."""

import ast
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lrsched
from lrsched import cyclical, spec

# One example per registered schedule (and a few variants). A row whose schedules are not
# all registered is skipped; `test_every_registered_schedule_has_an_example` makes sure no
# registered schedule goes without one.
EXAMPLES = [
    'constant(0.1)',
    'linear(0.1, 0.0, 100)',
    'step_decay(0.1, step_size=30, gamma=0.5)',
    'multistep(0.1, milestones=(30, 60), gamma=0.1)',
    'multistep(lr=0.1, milestones=[30, 60])',
    'exponential(0.1, gamma=0.97, decay_steps=10, staircase=True)',
    'inverse_time(0.1, decay_rate=0.5, decay_steps=10)',
    'polynomial(0.1, total_steps=100, power=2.0, end_lr=1e-4)',
    'cosine(lr=0.1, total_steps=100, min_lr=1e-3)',
    'sgdr(max_lr=0.1, t0=10, t_mult=2, min_lr=1e-4)',
    'warmup(cosine(lr=0.1, total_steps=100), warmup_steps=10)',
    'sequence([linear(0.0, 0.1, 20), cosine(0.1, 80)], durations=[20, 80])',
    'cyclic(base_lr=0.1, max_lr=3.0, step_size_up=50)',
    'triangular(0.1, 1.0, 25)',
    'triangular2(0.1, 1.0, 25)',
    'exp_range(0.1, 1.0, 25, gamma=0.99)',
    'sequence([triangular(0.1, 1.0, 100), triangular(0.01, 0.1, 100)], durations=[200, 200])',
    'cyclic_momentum(base_momentum=0.85, max_momentum=0.95, step_size_up=50)',
    'one_cycle(max_lr=0.8, total_steps=200)',
    'one_cycle_momentum(total_steps=200)',
    'super_convergence(base_lr=0.1, max_lr=3.0, step_size=100)',
    'smith_one_cycle(base_lr=0.08, max_lr=0.8, total_steps=200)',
    'smith_one_cycle_momentum(total_steps=200, step_size=90)',
    'caffe_one_cycle(base_lr=0.08, max_lr=0.8, total_steps=200, annihilation=1e-3)',
    'fastai_one_cycle(max_lr=0.8, total_steps=200)',
    'fastai_one_cycle_momentum(total_steps=200, pct_start=0.3)',
    'log_linear(1e-5, 10.0, 100)',
    'wsd(peak_lr=0.5, total_steps=200, warmup_steps=20, decay="cosine", final_lr=1e-3)',
    'rsqrt(peak_lr=1e-3, warmup_steps=20, total_steps=200, cooldown_steps=40)',
]


def _names(text):
  """The schedule names that a spec calls."""
  text = re.sub(r'(?<![\w.])1cycle\b', 'one_cycle', text)
  return {spec.ALIASES.get(n.id, n.id) for n in ast.walk(ast.parse(text, mode='eval'))
          if isinstance(n, ast.Name) and n.id not in ('inf', 'nan')}


def _skip_unregistered(text):
  missing = sorted(_names(text) - set(spec.REGISTRY))
  if missing:
    pytest.skip(f'not registered yet: {", ".join(missing)}')


def _values(schedule, steps=None):
  """The schedule on a whole range of steps, past its end and its first boundaries."""
  if steps is None:
    steps = max((schedule.total_steps or 0), *schedule.boundaries, 50) + 20
  return np.asarray(schedule(jnp.arange(steps)))


def _assert_same(rebuilt, original):
  assert repr(rebuilt) == repr(original)
  assert rebuilt.boundaries == original.boundaries
  assert rebuilt.total_steps == original.total_steps
  np.testing.assert_array_equal(_values(rebuilt), _values(original))


def _example(name):
  for text in EXAMPLES:
    if text.startswith(name + '('):
      return text
  raise KeyError(name)


# --------------------------------------------------------------------------------------
# Round trips over every registered schedule


def test_every_registered_schedule_has_an_example():
  covered = set().union(*(_names(text) for text in EXAMPLES))
  missing = sorted(set(spec.REGISTRY) - covered)
  assert not missing, f'add a row to EXAMPLES for {missing}'


@pytest.mark.parametrize('text', EXAMPLES)
def test_repr_json_and_describe_round_trip(text):
  _skip_unregistered(text)
  schedule = spec.parse(text)
  assert isinstance(schedule, lrsched.Schedule)
  _assert_same(spec.parse(repr(schedule)), schedule)
  encoded = spec.to_json(schedule)
  json.loads(encoded)  # Standard JSON.
  _assert_same(spec.from_json(encoded), schedule)
  _assert_same(spec.from_dict(spec.to_dict(schedule)), schedule)
  table = spec.describe(schedule)
  assert table.splitlines()[0] == repr(schedule)
  rows = {line.split()[0] for line in table.splitlines()[2:] if line.split()[0].isdigit()}
  assert {str(b) for b in schedule.boundaries} <= rows


def test_arguments_are_as_if_called_directly():
  assert repr(spec.parse('cosine(0.1, 100)')) == repr(lrsched.cosine(0.1, 100))
  assert spec.parse('linear(1e-3, 0.5, 10)').arguments == {
      'init_lr': 1e-3, 'end_lr': 0.5, 'total_steps': 10}
  schedule = spec.parse('multistep(0.1, milestones=(30, 60))')
  assert schedule.arguments['milestones'] == (30, 60)
  assert spec.parse('multistep(0.1, [30, 60])').arguments['milestones'] == [30, 60]


def test_json_keeps_arrays_as_numbers_and_tuples_as_tuples():
  schedule = lrsched.multistep(jnp.float32(0.5), milestones=(3, 6), gamma=np.float64(0.25))
  data = spec.to_dict(schedule)
  assert data == {'name': 'multistep',
                  'arguments': {'lr': 0.5, 'milestones': {'__tuple__': [3, 6]}, 'gamma': 0.25}}
  _assert_same(spec.from_json(spec.to_json(schedule, indent=2)), schedule)


def test_json_nests_schedules_as_objects():
  _skip_unregistered('warmup(cosine(0.1, 100), 10)')
  data = json.loads(spec.to_json(spec.parse('warmup(cosine(0.1, 100), warmup_steps=10)')))
  assert data['name'] == 'warmup'
  assert data['arguments']['schedule'] == {
      'name': 'cosine', 'arguments': {'lr': 0.1, 'total_steps': 100, 'min_lr': 0.0}}
  # A hand-written config may use an alias and leave defaults out.
  config = {'name': 'warmup', 'arguments': {
      'schedule': {'name': 'cos', 'arguments': {'lr': 0.1, 'total_steps': 100}},
      'warmup_steps': 10}}
  assert repr(spec.from_dict(config)) == repr(spec.parse('warmup(cosine(0.1, 100), 10)'))


def test_json_names_an_argument_that_cannot_be_serialised():
  _skip_unregistered('warmup(constant(0.1), 10)')
  schedule = lrsched.warmup(optax.constant_schedule(0.1), warmup_steps=10)
  with pytest.raises(ValueError, match=r"argument 'schedule' of warmup .*callable"):
    spec.to_json(schedule)
  nested = lrsched.sequence([lrsched.constant(0.1), lrsched.warmup(lambda s: 0.1 * s, 5)],
                            durations=[10])
  with pytest.raises(ValueError, match=r"sequence\.schedules\[1\]\.schedule"):
    spec.to_json(nested)


def test_json_names_a_tracer_argument():
  def build(lr):
    spec.to_json(lrsched.cosine(lr, total_steps=10))
    return lr

  with pytest.raises(ValueError, match=r"argument 'lr' of cosine .*JAX tracer"):
    jax.jit(build)(0.1)


@pytest.mark.parametrize('text, message', [
    ('[1, 2]', 'expected a schedule'),
    ('{"name": "cosine"}', r"got keys \['name'\]"),
    ('{"name": "cosin", "arguments": {}}', "did you mean 'cosine'"),
    ('{"name": "cosine", "arguments": {"lr": 0.1}}', "'total_steps'"),
    ('{"name": "cosine", "arguments": {"lr": -1, "total_steps": 3}}',
     "in 'cosine': cosine: lr must be >= 0"),
    ('{"name": "cosine", "arguments": {"lr": {"a": 1}, "total_steps": 3}}',
     r'at cosine\.lr: expected a schedule'),
    ('{"name": ', 'invalid schedule JSON'),
])
def test_from_json_errors(text, message):
  with pytest.raises(ValueError, match=message):
    spec.from_json(text)


# --------------------------------------------------------------------------------------
# parse


@pytest.mark.parametrize('alias', sorted(spec.ALIASES))
def test_aliases(alias):
  target = spec.ALIASES[alias]
  _skip_unregistered(target)
  expected = spec.parse(_example(target))
  call = _example(target).replace(target, alias, 1)
  assert repr(spec.parse(call)) == repr(expected)
  # A bare name is a call without arguments; the context fills them.
  assert repr(spec.parse(alias, **expected.arguments)) == repr(expected)
  assert repr(spec.parse(f' {alias} ', **expected.arguments)) == repr(expected)


@pytest.mark.parametrize('text, expected', [
    ('constant(lr=1e-3)', lrsched.constant(1e-3)),
    ('constant(+2.5E-1)', lrsched.constant(0.25)),
    ('constant(0)', lrsched.constant(0)),
    ('exponential(0.1, 0.5, staircase=True)', lrsched.exponential(0.1, 0.5, staircase=True)),
    ('exponential(lr=inf, gamma=0.5)', None),
])
def test_values(text, expected):
  if expected is None:
    with pytest.raises(ValueError, match='lr must be finite, got inf'):
      spec.parse(text)
  else:
    assert repr(spec.parse(text)) == repr(expected)


def test_negative_numbers_reach_the_constructor():
  with pytest.raises(ValueError, match=r"^in 'linear\(1e-3, -1, 10\)': linear: end_lr must be "):
    spec.parse('linear(1e-3, -1, 10)')


def test_nested_schedules_and_lists():
  text = 'sequence([triangular(0.1, 1.0, 100), triangular(0.01, 0.1, 100)], durations=[200, 200])'
  _skip_unregistered(text)
  schedule = spec.parse(text)
  first, second = schedule.arguments['schedules']
  assert repr(first) == repr(cyclical.triangular(0.1, 1.0, 100))
  assert repr(second) == repr(cyclical.triangular(0.01, 0.1, 100))
  assert schedule.arguments['durations'] == [200, 200]


def test_nested_warmup():
  _skip_unregistered('warmup(cosine(0.1, 100), 10)')
  schedule = spec.parse('warmup(cos(lr=0.1, total_steps=1000), warmup_steps=50)')
  expected = lrsched.warmup(lrsched.cosine(lr=0.1, total_steps=1000), warmup_steps=50)
  _assert_same(schedule, expected)
  # Specs may span lines, as in a config file.
  _assert_same(spec.parse('warmup(\n  cos(lr=0.1,\n      total_steps=1000),\n'
                          '  warmup_steps=50,\n)'), expected)


def test_context_fills_unset_arguments_and_ignores_others():
  schedule = spec.parse('cosine(lr=0.1)', total_steps=100, lr=5.0, batch_size=128)
  assert repr(schedule) == repr(lrsched.cosine(0.1, 100))
  assert repr(spec.parse('cosine', total_steps=7, lr=0.3)) == repr(lrsched.cosine(0.3, 7))
  # Context also overrides a default the spec leaves unset.
  assert spec.parse('cosine(0.1, 10)', min_lr=0.01).arguments['min_lr'] == 0.01
  # A value in the spec wins.
  assert spec.parse('cosine(0.1, total_steps=50)', total_steps=100).total_steps == 50


def test_context_fills_the_outermost_schedule_only():
  _skip_unregistered('warmup(cosine(0.1, 100), 10)')
  with pytest.raises(ValueError, match=r"cosine: missing required argument 'total_steps' "
                                       r'\(the context .* outermost'):
    spec.parse('warmup(cosine(lr=0.1), warmup_steps=10)', total_steps=100)


def test_missing_argument_names_it():
  with pytest.raises(ValueError, match=r"^in 'linear\(0\.1\)': linear: missing required "
                                       r"arguments 'end_lr', 'total_steps'; signature is "
                                       r'linear\(init_lr, end_lr, total_steps\)$'):
    spec.parse('linear(0.1)')


def test_unknown_name_lists_the_valid_names_and_suggests():
  with pytest.raises(ValueError) as info:
    spec.parse('cosin(lr=0.1, total_steps=10)')
  message = str(info.value)
  assert message.startswith("unknown schedule 'cosin'; did you mean 'cosine'?")
  assert '  cosin(lr=0.1, total_steps=10)\n  ^^^^^\n' in message
  for name in spec.REGISTRY:
    assert name in message
  for alias, target in spec.ALIASES.items():
    if target in spec.REGISTRY:
      assert f'{alias} -> {target}' in message


def test_unknown_nested_name_points_at_it():
  with pytest.raises(ValueError, match=r"unknown schedule 'cosinus'.*\n"
                                       r'  warmup\(cosinus\(1, 2\), 5\)\n'
                                       r'         \^\^\^\^\^\^\^\n'):
    spec.parse('warmup(cosinus(1, 2), 5)')


def _caret_column(message):
  line = message.splitlines()[2]
  assert set(line.strip()) == {'^'}
  return len(line) - len(line.lstrip()) - 2


@pytest.mark.parametrize('text, bad', [
    ('cosine(lr=0.1, total_steps=100', '('),
    ('cosine(lr=0.1, total_steps=10 0)', '10 0'),
    # The renamed '1cycle' (to 'one_cycle') must not shift the caret.
    ('warmup(1cycle(max_lr=1), warmup_steps=5 5)', '5 5'),
    ('sequence([1cycle, 1cycle], durations=[1,, 2])', ',,'),
    ('cosine(lr=0.1, total_steps=100))', '))'),
])
def test_syntax_errors_show_a_caret(text, bad):
  with pytest.raises(ValueError) as info:
    spec.parse(text)
  message = str(info.value)
  assert message.startswith('cannot parse schedule spec: ')
  assert message.splitlines()[1] == '  ' + text
  column = _caret_column(message)
  assert text.index(bad) <= column <= text.index(bad) + len(bad)


def test_syntax_error_on_a_later_line():
  with pytest.raises(ValueError, match=r'\n  +total_steps=1e\)\n +\^'):
    spec.parse('cosine(\n  lr=0.1,\n  total_steps=1e)')


def test_alias_inside_a_string_is_not_renamed():
  with pytest.raises(ValueError, match=r"lr must be a number .*, got '1cycle'"):
    spec.parse("constant(lr='1cycle')")


@pytest.mark.parametrize('text, bad', [
    ("__import__('os').system('echo pwned')", "__import__('os').system"),
    ("__import__('os')", '__import__'),
    ('constant(lr=__import__("os").getpid())', '__import__("os").getpid'),
    ('constant(().__class__)', '().__class__'),
    ('os.system("ls")', 'os.system'),
    ('(lambda: 0)()', 'lambda: 0'),
    ('constant(lr=1+2)', '1+2'),
    ('constant(lr=[0.1][0])', '[0.1][0]'),
    ('constant(lr={"a": 1})', '{"a": 1}'),
    ('constant(lr=f"{1}")', 'f"{1}"'),
    ('constant(lr=1j)', '1j'),
    ("constant(lr=b'1')", "b'1'"),
    ('constant(lr=-True)', '-True'),
    ('constant(*[0.1])', '*[0.1]'),
    ('constant(**{"lr": 0.1})', '{"lr": 0.1}'),
    ('cosine(0.1, 10, 0, lr=0.1, lr=0.2)', 'lr=0.2'),
    ('0.1', '0.1'),
    ('[constant(0.1)]', '[constant(0.1)]'),
])
def test_only_data_is_accepted(text, bad):
  with pytest.raises(ValueError) as info:
    spec.parse(text)
  message = str(info.value)
  column = _caret_column(message)
  assert message.splitlines()[1] == '  ' + text
  assert column == text.index(bad), message


def test_empty_and_non_string_specs():
  with pytest.raises(ValueError, match='empty schedule spec; valid names: '):
    spec.parse('  ')
  with pytest.raises(TypeError, match='spec must be a str'):
    spec.parse(lrsched.constant(0.1))


def test_bad_argument_is_prefixed_with_the_spec_part():
  _skip_unregistered('warmup(cosine(0.1, 100), 10)')
  with pytest.raises(ValueError, match=r"^in 'cosine\(lr=-0\.1, total_steps=10\)': cosine: "
                                       r'lr must be >= 0'):
    spec.parse('warmup(cosine(lr=-0.1, total_steps=10), warmup_steps=5)')
  with pytest.raises(ValueError, match=r"^in 'cosine\(0\.1, 10, 0\.0, 5\)': cosine: too many "
                                       r'positional arguments; signature is cosine\(lr, '):
    spec.parse('cosine(0.1, 10, 0.0, 5)')
  with pytest.raises(ValueError, match=r"unexpected keyword argument 'steps'"):
    spec.parse('cosine(0.1, steps=10)')


# --------------------------------------------------------------------------------------
# describe


def test_describe_multistep():
  table = spec.describe(lrsched.multistep(0.1, milestones=(30, 60)))
  assert table.splitlines() == [
      'multistep(lr=0.1, milestones=(30, 60), gamma=0.1)',
      '  step  value  phase length',
      '  0     0.1    30',
      '  30    0.01   30',
      '  60    0.001  end (holds)',
  ]


def test_describe_with_a_run_length():
  lines = spec.describe(lrsched.multistep(0.1, milestones=(30, 60)), total_steps=40).splitlines()
  assert [line.split() for line in lines[2:]] == [['0', '0.1', '30'], ['30', '0.01', '10'],
                                                  ['40', '0.01', 'end', 'of', 'run']]
  lines = spec.describe(lrsched.cosine(0.1, 100), total_steps=150).splitlines()
  assert [line.split() for line in lines[2:]] == [['0', '0.1', '100'], ['100', '0', '50'],
                                                  ['150', '0', 'end', 'of', 'run']]


def test_describe_a_schedule_that_never_ends():
  lines = spec.describe(lrsched.constant(0.1)).splitlines()
  assert [line.split() for line in lines[1:]] == [['step', 'value', 'phase', 'length'],
                                                  ['0', '0.1', '-']]


def test_describe_gives_the_period_of_cyclic_schedules():
  text = spec.describe(lrsched.sgdr(max_lr=0.1, t0=10, t_mult=2))
  assert text.splitlines()[-1] == '  period: 10 steps, x2 after each restart'
  assert [line.split()[:2] for line in text.splitlines()[2:4]] == [['0', '0.1'], ['10', '0.1']]


@pytest.mark.parametrize('text, period', [
    ('cyclic(base_lr=0.1, max_lr=3.0, step_size_up=50)', '100 steps (50 up, 50 down)'),
    ('cyclic(0.1, 3.0, step_size_up=20, step_size_down=30)', '50 steps (20 up, 30 down)'),
    ('cyclic_momentum(0.85, 0.95, step_size_up=50)', '100 steps (50 up, 50 down)'),
    ('triangular(0.1, 3.0, 25)', '50 steps (25 up, 25 down)'),
    ('exp_range(0.1, 3.0, 25, 0.99)', '50 steps (25 up, 25 down)'),
    ('super_convergence(0.1, 3.0, 25)', None),  # One cycle, then holds.
    ('step_decay(0.1, 25)', None),
])
def test_describe_gives_the_period_of_clr(text, period):
  _skip_unregistered(text)
  lines = spec.describe(spec.parse(text)).splitlines()
  if period is None:
    assert not any('period' in line for line in lines)
  else:
    assert lines[-1] == f'  period: {period}'


def test_describe_array_hyper_parameters():
  text = spec.describe(lrsched.multistep(jnp.array([0.1, 1.0]), milestones=(5,)))
  assert '[0.1, 1]' in text and '[0.01, 0.1]' in text
