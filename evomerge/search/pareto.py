"""Pareto fronts and hypervolume: pure functions of points and directions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pareto_front", "hypervolume", "to_minimization"]


def to_minimization(points: Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """Points with maximized coordinates negated, so that smaller is better everywhere."""
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    return np.asarray(points, dtype=float).reshape(-1, len(directions)) * signs


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points (duplicates of a front point all stay).

    >>> pareto_front([(1, 5), (2, 2), (3, 3), (5, 1)], ["minimize", "minimize"])
    [0, 1, 3]
    """
    p = to_minimization(points, directions)
    front = []
    for i in range(len(p)):
        dominated = np.any(np.all(p <= p[i], axis=1) & np.any(p < p[i], axis=1))
        if not dominated:
            front.append(i)
    return front


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float],
                directions: Sequence[str]) -> float:
    """Volume dominated by ``points`` and bounded by ``reference`` (exact, by slicing the
    last objective; fine for the fronts a search produces).

    >>> hypervolume([(1, 2), (2, 1)], (3, 3), ["minimize", "minimize"])
    3.0
    """
    if len(points) == 0:  # e.g. no uniform grid for a data-flow space
        return 0.0
    p = to_minimization(points, directions)
    ref = to_minimization([reference], directions)[0]
    p = p[np.all(p < ref, axis=1)]
    return float(_hv(p, ref))


def _hv(p: np.ndarray, ref: np.ndarray) -> float:
    if len(p) == 0:
        return 0.0
    if p.shape[1] == 1:
        return float(ref[0] - p[:, 0].min())
    order = np.argsort(p[:, -1])
    p = p[order]
    total = 0.0
    for i in range(len(p)):
        upper = p[i + 1, -1] if i + 1 < len(p) else ref[-1]
        depth = upper - p[i, -1]
        if depth > 0:
            total += depth * _hv(p[: i + 1, :-1], ref[:-1])
    return total
