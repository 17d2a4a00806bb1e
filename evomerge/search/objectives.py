"""Objective values: directions are data; single-objective optimizers get an explicit loss."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from evomerge.search.space_blocks import Objective

__all__ = ["objective_values", "weighted_loss"]


def objective_values(scores: Mapping[str, float], objectives: Sequence[Objective]
                     ) -> tuple[float, ...]:
    """The objectives' values, in objective order, from an evaluator's named scores.

    Raises:
        ValueError: a score is missing or not finite (the candidate then fails, with this text).
    """
    out = []
    for obj in objectives:
        value = scores.get(obj.key)
        if value is None:
            raise ValueError(f"evaluator {obj.evaluator!r} returned no {obj.key!r}")
        if not math.isfinite(value):
            raise ValueError(f"objective {obj.key!r} is {value}")
        out.append(float(value))
    return tuple(out)


def weighted_loss(values: Sequence[float], objectives: Sequence[Objective]) -> float:
    """The scalarization single-objective optimizers minimize:
    sum_i w_i * (v_i if objective i is minimized else -v_i), where an objective with a
    ``target`` t_i counts max(v_i, t_i) (minimized) or min(v_i, t_i) (maximized): beyond its
    target it no longer pays, below it every unit costs w_i (a soft constraint)."""
    def counted(v: float, o: Objective) -> float:
        if o.target is None:
            return v
        return max(v, o.target) if o.direction == "minimize" else min(v, o.target)
    return sum(o.weight * (counted(v, o) if o.direction == "minimize" else -counted(v, o))
               for v, o in zip(values, objectives))
