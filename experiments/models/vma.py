"""Varying-axes typing inside ``shard_map`` for the models' custom VJPs and custom calls.

A custom call (`jax.ffi.ffi_call`, `jax.pure_callback`) wants its operands typed alike and
returns results typed invariant, and a custom VJP's backward must return each cotangent
typed as its primal; inside ``shard_map`` each replica reads a varying batch and invariant
(replicated) weights, and its results vary as the batch does.
"""

from __future__ import annotations

import jax
from jax import lax


def axes(x) -> tuple[str, ...]:
  """The mesh axes over which ``x`` varies inside ``shard_map`` (() outside)."""
  aval = jax.typeof(x)
  manual = getattr(aval, 'manual_axis_type', None)  # jax 0.10
  names = manual.varying if manual is not None else getattr(aval, 'vma', ())  # jax >= 0.11
  return tuple(sorted(names))


def match(*operands):
  """The operands, each cast to vary over every axis any of them varies over.

  Autodiff transposes the cast of a replicated kernel into a sum of its gradient over the
  replicas: the all-reduce the data-parallel step needs.
  """
  union = sorted(set().union(*(axes(x) for x in operands)))
  return tuple(_cast(x, union) for x in operands)


def like(result, *operands):
  """``result`` typed varying over the axes its operands vary over."""
  return _cast(result, sorted(set().union(*(axes(x) for x in operands))))


def _cast(x, names):
  extra = tuple(a for a in names if a not in axes(x))
  return lax.pcast(x, extra, to='varying') if extra else x
