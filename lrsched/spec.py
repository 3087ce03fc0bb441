"""Schedules as data: spec strings, a JSON round trip and a table of the phases.

A command line or a config names a schedule with the constructor call that builds it::

  parse('1cycle', max_lr=0.8, total_steps=10_000)
  parse('cyclic(base_lr=0.1, max_lr=3, step_size_up=5000)')
  parse('warmup(cosine(lr=0.1, total_steps=1000), warmup_steps=50)')
  parse('sequence([triangular(0.1, 1.0, 100), triangular(0.01, 0.1, 100)], '
        'durations=[200, 200])')

A spec is read with `ast`, never evaluated: it may hold only calls to registered schedules
(`REGISTRY`, or an alias from `ALIASES`), numbers, strings, ``True``/``False``/
``None``, ``inf``/``nan`` and lists or tuples of these. ``repr(schedule)`` is such a spec,
so ``parse(repr(s))`` rebuilds ``s``.

``to_json``/``from_json`` store a schedule as ``{"name": ..., "arguments": {...}}`` with
nested schedules as nested objects; ``describe`` prints its phases.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import json
import math
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lrsched import _base
from lrsched._base import Schedule

ALIASES: Mapping[str, str] = MappingProxyType({
    '1cycle': 'one_cycle',
    'onecycle': 'one_cycle',
    'clr': 'triangular',
    'fixed': 'constant',
    'step': 'step_decay',
    'cos': 'cosine',
    'warmup_stable_decay': 'wsd',
    'inverse_sqrt': 'rsqrt',
})
"""Other names a spec may use for a schedule: alias -> registered name."""

REGISTRY = MappingProxyType(_base.REGISTRY)
"""Every schedule constructor by name (read-only): what a spec may call."""

_CONSTANT_NAMES = MappingProxyType({'inf': math.inf, 'nan': math.nan})
# Aliases that are not Python identifiers ('1cycle') are renamed before `ast` reads the spec.
# Strings come first in the pattern so that an alias inside a quoted string is left alone.
_STRING = (r"'''[\s\S]*?'''|" r'"""[\s\S]*?"""|'
           r"'(?:\\.|[^'\\\n])*'|" r'"(?:\\.|[^"\\\n])*"')
_NON_IDENTIFIER_ALIAS = re.compile(
    _STRING + '|(?<![\\w.])(' +
    '|'.join(re.escape(a) for a in ALIASES if not a.isidentifier()) + r')(?!\w)')


def _resolve(name: str) -> str:
  return ALIASES.get(name, name)


def _valid_names() -> str:
  aliases = ', '.join(f'{a} -> {t}' for a, t in ALIASES.items() if t in _base.REGISTRY)
  return f'valid names: {", ".join(sorted(_base.REGISTRY))}; aliases: {aliases}'


def _unknown_name_message(name: str) -> str:
  target = _resolve(name)
  if target != name:  # An alias of a schedule that this installation does not have.
    return f'{name!r} is an alias of {target!r}, which is not a registered schedule'
  candidates = [*_base.REGISTRY, *(a for a, t in ALIASES.items() if t in _base.REGISTRY)]
  close = difflib.get_close_matches(name, candidates, n=1)
  hint = f'; did you mean {close[0]!r}?' if close else ''
  return f'unknown schedule {name!r}{hint}'


# --------------------------------------------------------------------------------------
# Parsing


@dataclasses.dataclass(frozen=True)
class _Source:
  """The spec as written, and the text handed to `ast` (with '1cycle' renamed).

  Error messages point into the spec as written: `position` maps an `ast` position in
  the renamed text back to it.
  """

  spec: str
  text: str
  # (start in text, end in text, start in spec, end in spec) of each renamed alias.
  renames: tuple[tuple[int, int, int, int], ...]

  @classmethod
  def read(cls, spec: str) -> _Source:
    parts, renames, last, shift = [], [], 0, 0
    for m in _NON_IDENTIFIER_ALIAS.finditer(spec):
      if m.group(1) is None:  # A string literal: keep it.
        continue
      new = ALIASES[m.group(1)]
      parts += [spec[last:m.start()], new]
      start = m.start() + shift
      renames.append((start, start + len(new), m.start(), m.end()))
      shift += len(new) - len(m.group(1))
      last = m.end()
    parts.append(spec[last:])
    return cls(spec, ''.join(parts), tuple(renames))

  def _offset_in_spec(self, offset: int) -> int:
    """An offset in `text` as an offset in `spec`."""
    shift = 0
    for start, end, spec_start, spec_end in self.renames:
      if offset < start:
        break
      if offset < end:
        return spec_start
      shift = spec_end - end
    return offset + shift

  def position(self, lineno: int, col: int) -> tuple[int, int]:
    """(1-based line, 0-based character column) in `text` -> the same in `spec`."""
    lines = self.text.split('\n')
    offset = sum(len(line) + 1 for line in lines[:lineno - 1]) + col
    offset = self._offset_in_spec(min(offset, len(self.text)))
    before = self.spec[:offset]
    return before.count('\n') + 1, offset - (before.rfind('\n') + 1)

  def node_span(self, node: ast.AST) -> tuple[int, int, int, int]:
    """The node's (line, col, end line, end col) in `spec`; `ast` counts columns in bytes."""
    lines = self.text.split('\n')

    def chars(lineno: int, byte_col: int) -> int:
      return len(lines[lineno - 1].encode()[:byte_col].decode(errors='ignore'))

    line, col = self.position(node.lineno, chars(node.lineno, node.col_offset))
    end_line, end_col = self.position(node.end_lineno, chars(node.end_lineno, node.end_col_offset))
    return line, col, end_line, end_col

  def segment(self, node: ast.AST) -> str:
    line, col, end_line, end_col = self.node_span(node)
    lines = self.spec.split('\n')
    if line == end_line:
      return lines[line - 1][col:end_col]
    return '\n'.join([lines[line - 1][col:], *lines[line:end_line - 1],
                      lines[end_line - 1][:end_col]])

  def caret(self, line: int, col: int, end_col: int | None = None) -> str:
    """The spec's line `line` with carets under columns [col, end_col)."""
    text = self.spec.split('\n')[line - 1]
    width = max(1, (end_col if end_col is not None else col + 1) - col)
    return f'\n  {text}\n  {" " * col}{"^" * width}'

  def error(self, message: str, node: ast.AST, tail: str = '') -> ValueError:
    """A ValueError: the message, the spec with carets under the node, then the tail."""
    line, col, end_line, end_col = self.node_span(node)
    if end_line != line:
      end_col = None
    return ValueError(message + self.caret(line, col, end_col) + (f'\n{tail}' if tail else ''))


def _format_signature(name: str, signature: inspect.Signature) -> str:
  """``cosine(lr, total_steps, min_lr=0.0)``: the call, without annotations."""
  params = [p.replace(annotation=inspect.Parameter.empty)
            for p in signature.parameters.values()]
  return name + str(signature.replace(parameters=params,
                                      return_annotation=inspect.Signature.empty))


def _build(name: str, constructor: Callable[..., Schedule], args: list[Any],
           kwargs: dict[str, Any], where: str, context: Mapping[str, Any],
           note: str = '') -> Schedule:
  """Calls the constructor, after filling unset arguments from `context`."""
  kwargs = dict(kwargs)
  signature = inspect.signature(constructor)  # `register` keeps the body's signature.
  usage = f'signature is {_format_signature(name, signature)}'
  try:
    bound = signature.bind_partial(*args, **kwargs)
  except TypeError as e:
    raise ValueError(f'in {where!r}: {name}: {e}; {usage}') from None
  plain = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
  for param in signature.parameters.values():
    if param.name not in bound.arguments and param.name in context and param.kind in plain:
      kwargs[param.name] = context[param.name]
  missing = [p.name for p in signature.parameters.values()
             if p.default is p.empty and p.kind in plain
             and p.name not in bound.arguments and p.name not in kwargs]
  if missing:
    raise ValueError(f'in {where!r}: {name}: missing required argument'
                     f'{"s" if len(missing) > 1 else ""} {", ".join(map(repr, missing))}'
                     f'{note}; {usage}')
  try:
    return constructor(*args, **kwargs)
  except (ValueError, TypeError) as e:
    raise ValueError(f'in {where!r}: {e}') from None


_NO_CONTEXT: Mapping[str, Any] = MappingProxyType({})


class _Reader:
  """Turns the `ast` of a spec into values, accepting only what a spec may hold."""

  def __init__(self, source: _Source, context: Mapping[str, Any]):
    self.source = source
    self.context = context

  def schedule(self, node: ast.expr, outermost: bool = False) -> Schedule:
    if isinstance(node, ast.Name):  # A bare name is a call without arguments.
      return self._call(node, node, [], [], outermost)
    if isinstance(node, ast.Call):
      return self._call(node, node.func, node.args, node.keywords, outermost)
    raise self.source.error('expected a schedule, e.g. cosine(lr=0.1, total_steps=1000)',
                            node, _valid_names())

  def _call(self, node: ast.expr, func: ast.expr, args: list[ast.expr],
            keywords: list[ast.keyword], outermost: bool) -> Schedule:
    if not isinstance(func, ast.Name):
      raise self.source.error('expected the name of a schedule', func, _valid_names())
    name = _resolve(func.id)
    if name not in _base.REGISTRY:
      # The name as written: '1cycle' reaches `ast` renamed.
      raise self.source.error(_unknown_name_message(self.source.segment(func)), func,
                              _valid_names())
    values = []
    for arg in args:
      if isinstance(arg, ast.Starred):
        raise self.source.error('*arguments are not allowed in a spec', arg)
      values.append(self.value(arg))
    kwargs: dict[str, Any] = {}
    for keyword in keywords:
      if keyword.arg is None:
        raise self.source.error('**arguments are not allowed in a spec', keyword.value)
      if keyword.arg in kwargs:
        raise self.source.error(f'argument {keyword.arg!r} is given twice', keyword)
      kwargs[keyword.arg] = self.value(keyword.value)
    context, note = self.context, ''
    if not outermost:
      context = _NO_CONTEXT
      note = ' (the context passed to parse() fills the outermost schedule only)' * bool(
          self.context)
    return _build(name, _base.REGISTRY[name], values, kwargs, self.source.segment(node),
                  context, note)

  def value(self, node: ast.expr) -> Any:
    """An argument: a number, string, bool, None, list, tuple or a nested schedule."""
    if isinstance(node, ast.Constant):
      if isinstance(node.value, (bool, int, float, str)) or node.value is None:
        return node.value
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
      operand = self.value(node.operand)
      if isinstance(operand, (int, float)) and not isinstance(operand, bool):
        return -operand if isinstance(node.op, ast.USub) else operand
    elif isinstance(node, ast.List):
      return [self.value(e) for e in node.elts]
    elif isinstance(node, ast.Tuple):
      return tuple(self.value(e) for e in node.elts)
    elif isinstance(node, ast.Name) and node.id in _CONSTANT_NAMES:
      return _CONSTANT_NAMES[node.id]
    elif isinstance(node, (ast.Name, ast.Call)):
      return self.schedule(node)
    raise self.source.error(
        'a spec argument must be a number, a string, True/False/None, inf/nan, a list or '
        'tuple of these, or a schedule', node)


def parse(spec: str, /, **context: Any) -> Schedule:
  """Builds the schedule that a spec string names.

  A spec is a call to a registered schedule, with positional or keyword arguments::

    cyclic(base_lr=0.1, max_lr=3, step_size_up=5000)
    warmup(cosine(lr=0.1, total_steps=1000), warmup_steps=50)
    1cycle                      # a bare name is a call without arguments

  Arguments are numbers (``1e-3``, ``-2``), strings, ``True``/``False``/``None``,
  ``inf``/``nan``, lists and tuples, and nested schedule calls. The spec is read with
  `ast` and never evaluated. Names may be aliases (`ALIASES`), e.g. ``1cycle`` for
  ``one_cycle`` or ``clr`` for ``triangular``.

  Args:
    spec: the spec string; ``repr(schedule)`` is one.
    **context: values for the arguments that the spec leaves unset, e.g.
      ``parse(flag, total_steps=run_steps, lr=flag_lr)``. They fill the outermost
      schedule only (a nested piece's length is never overwritten silently), and only
      the arguments its constructor takes: other keys are ignored.

  Returns:
    The schedule.

  Raises:
    ValueError: for an unknown name (the message lists the valid ones and suggests the
      closest), a syntax error or a value a spec may not hold (the message shows the spec
      with a caret under the offending part), a missing argument, or an argument the
      constructor rejects (its message, prefixed with the part of the spec).
  """
  if not isinstance(spec, str):
    raise TypeError(f'spec must be a str, got {type(spec).__name__}')
  source = _Source.read(spec.strip())
  if not source.text:
    raise ValueError('empty schedule spec; ' + _valid_names())
  try:
    tree = ast.parse(source.text, mode='eval')
  except SyntaxError as e:
    line, col = source.position(e.lineno or 1, max((e.offset or 1) - 1, 0))
    raise ValueError(f'cannot parse schedule spec: {e.msg}' + source.caret(line, col)) from None
  return _Reader(source, context).schedule(tree.body, outermost=True)


# --------------------------------------------------------------------------------------
# JSON

_TUPLE = '__tuple__'  # JSON has no tuples: {"__tuple__": [...]} keeps one a tuple.


def _encode(value: Any, owner: str, path: str) -> Any:
  """An argument as JSON data; `owner` and `path` name it in errors."""
  if isinstance(value, Schedule):
    return _to_dict(value, path)
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  where = f'argument {path.split(".")[-1]!r} of {owner} (at {path})'
  if isinstance(value, jax.core.Tracer):
    raise ValueError(f'cannot serialise {where}: it is a JAX tracer, whose value is not '
                     'known outside the traced function; build the schedule from concrete '
                     'values to serialise it')
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    if not np.issubdtype(np.asarray(value).dtype, np.number):
      raise ValueError(f'cannot serialise {where}: an array of dtype {value.dtype}')
    return np.asarray(value).tolist()
  if isinstance(value, list):
    return [_encode(v, owner, f'{path}[{i}]') for i, v in enumerate(value)]
  if isinstance(value, tuple):
    return {_TUPLE: [_encode(v, owner, f'{path}[{i}]') for i, v in enumerate(value)]}
  kind = 'a callable' if callable(value) else f'a {type(value).__name__}'
  raise ValueError(f'cannot serialise {where}: it is {kind} ({value!r}), which JSON cannot '
                   'hold; only numbers, strings, bools, None, numeric arrays, lists, tuples '
                   'and schedules can be serialised')


def _to_dict(schedule: Schedule, path: str) -> dict[str, Any]:
  return {'name': schedule.name,
          'arguments': {k: _encode(v, schedule.name, f'{path}.{k}')
                        for k, v in schedule.arguments.items()}}


def to_dict(schedule: Schedule) -> dict[str, Any]:
  """The schedule as ``{'name': ..., 'arguments': {...}}``, nested schedules as dicts.

  Raises:
    ValueError: naming the argument when one is not serialisable (a Python callable,
      a JAX tracer, an object).
  """
  if not isinstance(schedule, Schedule):
    raise TypeError(f'expected a lrsched.Schedule, got {type(schedule).__name__}: only '
                    'schedules built by lrsched constructors remember their arguments')
  return _to_dict(schedule, schedule.name)


def _is_schedule_dict(value: Any) -> bool:
  return isinstance(value, dict) and set(value) == {'name', 'arguments'}


def _decode(value: Any, path: str) -> Any:
  if _is_schedule_dict(value):
    return _from_dict(value, path)
  if isinstance(value, dict):
    if set(value) == {_TUPLE} and isinstance(value[_TUPLE], list):
      return tuple(_decode(v, f'{path}[{i}]') for i, v in enumerate(value[_TUPLE]))
    raise ValueError(f'at {path}: expected a schedule {{"name": ..., "arguments": {{...}}}}, '
                     f'got an object with keys {sorted(value)}')
  if isinstance(value, list):
    return [_decode(v, f'{path}[{i}]') for i, v in enumerate(value)]
  return value


def _from_dict(data: Any, path: str | None) -> Schedule:
  at = f'at {path}: ' if path else ''
  if not _is_schedule_dict(data):
    got = f'keys {sorted(data)}' if isinstance(data, dict) else f'a {type(data).__name__}'
    raise ValueError(f'{at}expected a schedule {{"name": ..., "arguments": {{...}}}}, got {got}')
  name, arguments = data['name'], data['arguments']
  if not isinstance(name, str) or not isinstance(arguments, dict):
    raise ValueError(f'{at}"name" must be a string and "arguments" an object')
  if _resolve(name) not in _base.REGISTRY:
    raise ValueError(f'{at}{_unknown_name_message(name)}; {_valid_names()}')
  name = _resolve(name)
  path = path or name
  kwargs = {k: _decode(v, f'{path}.{k}') for k, v in arguments.items()}
  return _build(name, _base.REGISTRY[name], [], kwargs, path, _NO_CONTEXT)


def from_dict(data: Mapping[str, Any]) -> Schedule:
  """Rebuilds a schedule from `to_dict`'s output (a name may also be an alias).

  Raises:
    ValueError: naming the place in the data of an unknown name, a malformed object, a
      missing argument or an argument that the constructor rejects.
  """
  return _from_dict(data, None)


def to_json(schedule: Schedule, **dumps_kwargs: Any) -> str:
  """The schedule as JSON: ``{"name": ..., "arguments": {...}}``, nested as objects.

  ``from_json(to_json(s))`` has the same repr and the same values as ``s``. Arrays are
  stored as (nested) lists and come back as such; tuples are stored as
  ``{"__tuple__": [...]}`` so that they come back as tuples.

  Args:
    schedule: a `lrsched.Schedule` whose arguments are concrete data.
    **dumps_kwargs: passed to `json.dumps`, e.g. ``indent=2``.

  Raises:
    ValueError: naming the argument when one is not serialisable (a Python callable such
      as a custom ``scale_fn``, a JAX tracer).
  """
  return json.dumps(to_dict(schedule), **dumps_kwargs)


def from_json(text: str) -> Schedule:
  """Rebuilds a schedule from `to_json`'s output."""
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'invalid schedule JSON: {e}') from None
  return from_dict(data)


# --------------------------------------------------------------------------------------
# describe

# Argument names by which a schedule says it is periodic (the CLR and SGDR conventions).
_HALF_CYCLE_UP, _HALF_CYCLE_DOWN = 'step_size_up', 'step_size_down'
_CLR_BOUNDS = (('base_lr', 'max_lr'), ('base_momentum', 'max_momentum'))


def _is_steps(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _period(schedule: Schedule) -> str | None:
  """A line on the schedule's period, when its arguments say it is cyclic."""
  a = schedule.arguments
  up, down = a.get(_HALF_CYCLE_UP), a.get(_HALF_CYCLE_DOWN)
  # Smith's CLR names a half cycle `step_size`; a schedule between two bounds that never
  # ends repeats it (one with a length, such as a 1cycle, does not).
  if (up is None and schedule.total_steps is None
      and any(low in a and high in a for low, high in _CLR_BOUNDS)):
    up = a.get('step_size')
  if _is_steps(up):
    down = up if down is None else down
    if _is_steps(down):
      return f'period: {up + down} steps ({up} up, {down} down)'
  for key in ('period', 'cycle_steps', 'cycle_length', 't0', 't_0', 'first_period'):
    if _is_steps(a.get(key)):
      mult = a.get('t_mult', a.get('period_mult', a.get('cycle_mult', 1)))
      grows = (f', x{mult:g} after each restart'
               if _base.is_python_number(mult) and mult != 1 else '')
      return f'period: {a[key]} steps{grows}'
  return None


def _format(value: Any) -> str:
  v = np.asarray(value)
  if v.ndim == 0:
    return f'{v.item():.6g}'
  return np.array2string(v, separator=', ', formatter={'all': lambda x: f'{x:.6g}'})


def describe(schedule: Schedule, total_steps: int | None = None) -> str:
  """A small table of the schedule's phases: where each starts, its value and length.

  A row for step 0, for each of ``schedule.boundaries`` and for the end: the schedule's
  own ``total_steps`` ("end (holds)": the value stays from there on) and, if given, the
  ``total_steps`` argument ("end of run"), which also drops the boundaries after it.
  Periodic schedules list their first period; when their arguments say they are cyclic
  (CLR's ``step_size_up``/``step_size_down``, SGDR's ``t0``/``t_mult``), a last line gives
  the period.

  Args:
    schedule: a `lrsched.Schedule`.
    total_steps: the length of the run, if the table should stop there.

  Returns:
    The table as text, headed by the schedule's repr.
  """
  end = schedule.total_steps if total_steps is None else total_steps
  steps = {0, *(b for b in schedule.boundaries if end is None or b <= end)}
  if end is not None:
    steps.add(end)
  steps = sorted(steps)
  # vmap, not a call on the array of steps: array hyper-parameters (a sweep) must not
  # broadcast against the steps.
  rows = list(np.asarray(jax.vmap(schedule)(jnp.asarray(steps, dtype=jnp.int32))))
  table = [('step', 'value', 'phase length')]
  for i, (step, value) in enumerate(zip(steps, rows, strict=True)):
    if i + 1 < len(steps):
      length = str(steps[i + 1] - step)
    elif step == schedule.total_steps:
      length = 'end (holds)'
    elif step == end:
      length = 'end of run'
    else:
      length = '-'
    table.append((str(step), _format(value), length))
  widths = [max(len(row[c]) for row in table) for c in range(3)]
  lines = [repr(schedule)]
  lines += ['  ' + '  '.join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in table]
  period = _period(schedule)
  if period:
    lines.append('  ' + period)
  return '\n'.join(lines)


__all__ = ['ALIASES', 'describe', 'from_dict', 'from_json', 'parse', 'to_dict', 'to_json']
