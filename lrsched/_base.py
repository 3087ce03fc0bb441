"""What every schedule shares: the `Schedule` type, step handling and argument checks.

A schedule constructor (``lrsched.cyclic(...)``, ``lrsched.one_cycle(...)``) checks its
arguments and returns a `Schedule`: a callable ``step -> value`` that is a valid
``optax.Schedule`` and also remembers how it was built, so that it has a readable repr,
round-trips through JSON and can describe its phases.

Steps are handled once, here, for every schedule:

* A step may be a Python or NumPy int, or a JAX integer or float scalar or array.
* It is converted to int32 before any arithmetic, so that the position inside a cycle is
  exact for every step up to ``2**31 - 1`` (a float32 counter cannot even represent
  ``2**24 + 1``). Float steps are floored: schedules are defined on integer steps.
* Steps before 0 clamp to 0, steps above ``2**31 - 1`` to ``2**31 - 1``. Constructors hold
  their final value past their end; none extrapolates, goes negative or raises.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

INT32_MAX = 2**31 - 1

Numeric = float | int | jax.Array | np.ndarray
"""A hyper-parameter value: a Python number, or a JAX/NumPy array or tracer (for vmap sweeps)."""

StepFn = Callable[[jax.Array], jax.Array]
"""The body of a schedule: an int32 step (already clamped to [0, 2**31-1]) -> value."""


# --------------------------------------------------------------------------------------
# Steps


def as_step(step: Any) -> jax.Array:
  """Converts any accepted step to an int32 array clamped to ``[0, 2**31 - 1]``."""
  if isinstance(step, (bool, np.bool_)):
    raise TypeError(f'step must be an integer or float, got the bool {step!r}')
  if isinstance(step, (int, np.integer)):
    # Clamp in Python first: jnp.asarray(2**40) would overflow int32.
    return jnp.asarray(min(max(int(step), 0), INT32_MAX), dtype=jnp.int32)
  step = jnp.asarray(step)
  if jnp.issubdtype(step.dtype, jnp.floating):
    # Clamping in float keeps the cast in range (float32(2**31-1) rounds up to 2**31).
    step = jnp.clip(jnp.floor(step), 0.0, float(2**31 - 128))
    return step.astype(jnp.int32)
  if jnp.issubdtype(step.dtype, jnp.integer):
    if jnp.iinfo(step.dtype).max > INT32_MAX:
      step = jnp.clip(step, 0, INT32_MAX)
    return jnp.maximum(step, 0).astype(jnp.int32)
  raise TypeError(f'step must be an integer or float, got dtype {step.dtype}')


def to_float(x: jax.Array) -> jax.Array:
  """An integer step quantity as a float, for the arithmetic after the exact integer part."""
  return jnp.asarray(x).astype(jnp.result_type(float))


# --------------------------------------------------------------------------------------
# The Schedule type


class Shape(NamedTuple):
  """What a constructor body returns.

  Attributes:
    fn: int32 step -> value. The step it receives is already clamped to [0, 2**31-1].
    boundaries: the steps where a phase starts (a cycle's peak, a restart, a milestone),
      for ``describe()``. Periodic schedules list their first period only.
    total_steps: the step from which a finite schedule holds its final value, or None
      for a schedule that never ends (exponential decay, cyclic, SGDR).
  """

  fn: StepFn
  boundaries: tuple[int, ...] = ()
  total_steps: int | None = None


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Schedule:
  """An ``optax.Schedule`` that remembers the constructor call that made it.

  Call it with a step to get the value. ``repr(schedule)`` is the call that rebuilds it,
  e.g. ``cyclic(base_lr=0.1, max_lr=3.0, step_size_up=5000)``.
  """

  name: str
  arguments: Mapping[str, Any]
  shape: Shape

  def __call__(self, step: Any) -> jax.Array:
    return self.shape.fn(as_step(step))

  @property
  def boundaries(self) -> tuple[int, ...]:
    return self.shape.boundaries

  @property
  def total_steps(self) -> int | None:
    """The step from which the value stays constant; None if the schedule never ends."""
    return self.shape.total_steps

  def __repr__(self) -> str:
    args = ', '.join(f'{k}={_format_value(v)}' for k, v in self.arguments.items())
    return f'{self.name}({args})'


def _format_value(value: Any) -> str:
  if isinstance(value, float):
    return repr(float(value))
  if isinstance(value, (np.ndarray, jax.Array)) and not isinstance(value, jax.core.Tracer):
    if np.ndim(value) == 0:
      return repr(np.asarray(value).item())
    return repr(np.asarray(value).tolist())
  return repr(value)


REGISTRY: dict[str, Callable[..., Schedule]] = {}
"""Every public schedule constructor by name; the spec parser and plot command read it."""


def register(constructor: Callable[..., Shape]) -> Callable[..., Schedule]:
  """Turns a constructor body returning a `Shape` into a public constructor.

  The public constructor has the same signature and docstring, records the arguments it
  was called with (defaults included, so a repr is complete and stable across versions
  that change a default) and is added to `REGISTRY` under its function name.
  """
  signature = inspect.signature(constructor)

  @functools.wraps(constructor)
  def build(*args: Any, **kwargs: Any) -> Schedule:
    try:
      bound = signature.bind(*args, **kwargs)
    except TypeError as e:
      raise TypeError(f'{constructor.__name__}: {e}; signature is '
                      f'{constructor.__name__}{signature}') from None
    bound.apply_defaults()
    shape = constructor(*bound.args, **bound.kwargs)
    return Schedule(constructor.__name__, dict(bound.arguments), shape)

  # What users and IDEs see: the constructor's parameters, returning a Schedule.
  build.__signature__ = signature.replace(return_annotation='Schedule')
  build.__annotations__ = {**constructor.__annotations__, 'return': 'Schedule'}
  if constructor.__name__ in REGISTRY:
    raise RuntimeError(f'schedule {constructor.__name__!r} registered twice')
  REGISTRY[constructor.__name__] = build
  return build


# --------------------------------------------------------------------------------------
# Argument checks. They run when a constructor gets concrete values and are skipped for
# tracers (a vmap over a hyper-parameter), whose values are not known at build time.


def is_concrete(value: Any) -> bool:
  return not isinstance(value, jax.core.Tracer)


def _values(value: Any) -> np.ndarray | None:
  """The value as a float array, or None when it is a tracer."""
  if not is_concrete(value):
    return None
  try:
    return np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError):
    return None


def fail(where: str, message: str) -> ValueError:
  """A ValueError whose text starts with the constructor's name."""
  return ValueError(f'{where}: {message}')


def check_number(where: str, name: str, value: Any) -> None:
  """Numeric hyper-parameters must be numbers or numeric arrays (not strings or None)."""
  if (isinstance(value, (bool, str, bytes)) or
      (is_concrete(value) and _values(value) is None)):
    raise fail(where, f'{name} must be a number or a numeric array, got {value!r}')


def check_finite(where: str, name: str, value: Any) -> None:
  check_number(where, name, value)
  v = _values(value)
  if v is not None and not np.all(np.isfinite(v)):
    raise fail(where, f'{name} must be finite, got {_format_value(value)}')


def check_lr(where: str, name: str, value: Any, *, positive: bool = False) -> None:
  """A learning rate: finite and >= 0 (> 0 with positive=True)."""
  check_finite(where, name, value)
  v = _values(value)
  if v is None:
    return
  if positive and np.any(v <= 0):
    raise fail(where, f'{name} must be > 0, got {_format_value(value)}')
  if np.any(v < 0):
    raise fail(where, f'{name} must be >= 0 (a learning rate is never negative), '
                      f'got {_format_value(value)}')


def check_range(where: str, name: str, value: Any, low: float | None = None,
                high: float | None = None, *, low_open: bool = False,
                high_open: bool = False, hint: str = '') -> None:
  """value must lie in the interval; the message states the interval in math notation."""
  check_finite(where, name, value)
  v = _values(value)
  if v is None:
    return
  ok = np.ones(v.shape, dtype=bool)
  if low is not None:
    ok &= (v > low) if low_open else (v >= low)
  if high is not None:
    ok &= (v < high) if high_open else (v <= high)
  if not np.all(ok):
    interval = (('(' if low_open else '[') + ('-inf' if low is None else f'{low:g}') + ', '
                + ('inf' if high is None else f'{high:g}') + (')' if high_open else ']'))
    raise fail(where, f'{name} must be in {interval}, got {_format_value(value)}'
               + (f'; {hint}' if hint else ''))


def check_order(where: str, low_name: str, low: Any, high_name: str, high: Any) -> None:
  """low <= high, elementwise where both are concrete."""
  lv, hv = _values(low), _values(high)
  if lv is not None and hv is not None and np.any(lv > hv):
    raise fail(where, f'{low_name} must be <= {high_name}, got {low_name}='
                      f'{_format_value(low)} > {high_name}={_format_value(high)}')


def check_steps(where: str, name: str, value: Any, minimum: int = 1) -> None:
  """A step count: a Python int >= minimum and <= 2**31 - 1."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise fail(where, f'{name} must be a Python int (a number of steps), got {value!r}')
  if not minimum <= value <= INT32_MAX:
    raise fail(where, f'{name} must be an int in [{minimum}, 2**31-1], got {value}')


def check_choice(where: str, name: str, value: Any, choices: Iterable[str]) -> None:
  choices = tuple(choices)
  if value not in choices:
    raise fail(where, f'unknown {name} {value!r}; valid: {", ".join(map(repr, choices))}')


def check_increasing(where: str, name: str, values: Sequence[int], minimum: int = 0) -> None:
  """A list of step milestones: ints >= minimum, strictly increasing."""
  if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
    raise fail(where, f'{name} must be a sequence of ints, got {values!r}')
  values = list(values)
  for v in values:
    check_steps(where, f'each of {name}', v, minimum)
  if any(b <= a for a, b in itertools.pairwise(values)):
    raise fail(where, f'{name} must be strictly increasing, got {values}')


def is_python_number(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
