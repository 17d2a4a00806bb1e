"""Resolve a recipe parameter for one tensor: filters, layer-depth gradients, precedence.

Semantics follow mergekit so that a recipe builds the same model in both tools:

* a scalar applies as is;
* a list of numbers is a gradient over the slice's depth: with t = i / (n - 1) for output
  layer i of an n-layer slice (t = 1 when n = 1; t = 0 for embeddings, final norm and head),
  the value is linearly interpolated between list[floor(t (L-1))] and the next entry;
* a list of ``{filter, value}`` picks the first entry whose filter is a substring of the tensor
  name (no filter or ``"*"`` matches anything);
* precedence, highest first: slice source > slice > global (``models[i].parameters`` are the
  source parameters of the implicit single slice).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from evomerge.engine.recipe import Conditional, ParamValue

__all__ = ["evaluate", "resolve"]


def evaluate(setting: ParamValue, tensor_name: str, t: float) -> float | bool | None:
    """Value of one setting for ``tensor_name`` at depth ``t`` in [0, 1]; None if no filter
    matches."""
    if isinstance(setting, Conditional):
        setting = [setting]
    if not isinstance(setting, list):
        return setting
    if not setting:
        return None
    if all(isinstance(e, Conditional) for e in setting):
        for cond in setting:
            if cond.filter in (None, "*") or cond.filter in tensor_name:
                return evaluate(cond.value, tensor_name, t)
        return None
    if any(isinstance(e, bool) for e in setting):  # booleans select, they do not blend
        return setting[int(t * (len(setting) - 1))]
    scaled = t * (len(setting) - 1)
    i0 = int(scaled)
    i1 = min(len(setting) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * setting[i0] + frac * setting[i1]


def resolve(
    name: str,
    tables: Iterable[Mapping[str, ParamValue] | None],
    tensor_name: str,
    t: float,
) -> float | bool | None:
    """First non-None value of parameter ``name`` over ``tables`` (highest precedence first)."""
    for table in tables:
        if table is not None and name in table:
            value = evaluate(table[name], tensor_name, t)
            if value is not None:
                return value
    return None
