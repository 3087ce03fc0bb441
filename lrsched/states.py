"""The optimizer-state types lrsched looks for inside an Optax state, and the search.

`lrsched.hyperparams` reads the injected hyper-parameters and plateau scales out of any
state, and `lrsched.report_metric` checks which velocity a plateau rule sits beside; both
find nodes of a given type anywhere in a state tree (``optax.chain``'s tuple,
``optax.MultiSteps``' inner state, masked states...). The types live here, below both
`lrsched.optimizers` and `lrsched.plateau`, so that neither has to import the other.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

INJECT_STATES: tuple[type, ...] = tuple(
    cls for cls in (getattr(optax, 'InjectStatefulHyperparamsState', None),
                    getattr(optax, 'InjectHyperparamsState', None))
    if cls is not None)
"""The state types of ``optax.inject_hyperparams`` (the name moved between Optax versions)."""


class CaffeMomentumState(NamedTuple):
  """The velocity of Caffe-form momentum (``lrsched.sgd(..., velocity='caffe')``), which
  holds the learning rate."""

  velocity: optax.Updates


def find_states(tree: Any, types: type | tuple[type, ...]) -> list[tuple[Any, Any]]:
  """Every node of ``tree`` that is an instance of ``types``, with its key path.

  Outer nodes come before the nodes found inside them (an inject state inside another).
  """
  found = [((), tree)] if isinstance(tree, types) else []
  match = lambda x: isinstance(x, types) and x is not tree
  for path, node in jax.tree_util.tree_flatten_with_path(tree, is_leaf=match)[0]:
    if match(node):
      found.extend((path + sub, inner) for sub, inner in find_states(node, types))
  return found
