"""A quality-diversity archive as a pure function of a study's trials: behaviour descriptors
from the objectives, a grid of cells over them, and the best candidate (lowest weighted loss)
of each cell (MAP-Elites, Mouret & Clune 2015). The ``map_elites`` optimizer
(:mod:`evomerge.search.qd`) keeps the same archive while it searches and stores it in the
study; export (``--archive CELL``), the dashboard and ``pareto.html`` read it from here.

A cell is named by its grid coordinates, ``"3,5"``: descriptor k's value ``d_k`` falls in bin
``floor((d_k - low_k) / (high_k - low_k) * bins)`` (clipped to the grid). By default a
minimized objective's value v enters as ``exp(-v)`` (an answer NLL per token becomes the
answer's per-token probability, in [0, 1]) and a maximized one's as v, over [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from evomerge.errors import ConfigError
from evomerge.search.objectives import weighted_loss
from evomerge.search.optimizer_config import MAX_CELLS
from evomerge.search.records import T

__all__ = ["Grid", "Cell", "grid_of", "archive_cells", "archive_trial"]


@dataclass(frozen=True)
class Grid:
    """Descriptors (objective indices), their ranges and the bins per descriptor."""

    keys: tuple[str, ...]
    index: tuple[int, ...]
    ranges: tuple[tuple[float, float], ...]
    bins: int
    transform: bool  # exp(-v) for minimized objectives (default ranges)
    minimize: tuple[bool, ...]

    def measures(self, values: Sequence[float]) -> list[float]:
        """Descriptor values of a candidate's objective values."""
        out = []
        for i, mini in zip(self.index, self.minimize):
            v = float(values[i])
            # exp(-v) overflows below v = -709; any value that far is at the grid's top
            out.append(math.exp(min(-v, 700.0)) if self.transform and mini else v)
        return out

    def cell(self, measures: Sequence[float]) -> tuple[int, ...]:
        """The grid cell of ``measures``; a value outside a range (or infinite) is clamped
        into its first or last bin, NaN into the first."""
        out = []
        for m, (lo, hi) in zip(measures, self.ranges):
            x = (m - lo) / (hi - lo) * self.bins
            b = 0 if math.isnan(x) or x < 0 else self.bins - 1 if x >= self.bins else int(x)
            out.append(b)
        return tuple(out)


def grid_of(space: Any) -> Grid:
    """The grid of a space whose optimizer is ``map_elites``.

    Raises:
        ConfigError: a descriptor names no objective.
    """
    cfg, objectives = space.optimizer, list(space.objectives)
    keys = [o.key for o in objectives]
    names = cfg.descriptors or keys[:2]
    for name in names:
        if name not in keys:
            raise ConfigError(f"optimizer.descriptors {name!r} is not an objective "
                              f"({', '.join(keys)}).")
    if cfg.bins ** len(names) > MAX_CELLS:
        raise ConfigError(f"optimizer.bins {cfg.bins} over {len(names)} descriptors makes "
                          f"{cfg.bins ** len(names)} cells; the archive holds at most "
                          f"{MAX_CELLS}.")
    index = tuple(keys.index(n) for n in names)
    ranges = tuple(tuple(r) for r in cfg.ranges) if cfg.ranges else ((0.0, 1.0),) * len(names)
    return Grid(tuple(names), index, ranges, cfg.bins, cfg.ranges is None,
                tuple(objectives[i].direction == "minimize" for i in index))


@dataclass(frozen=True)
class Cell:
    """An archive cell and its elite."""

    cell: tuple[int, ...]
    trial: int
    loss: float
    measures: tuple[float, ...]
    values: tuple[float, ...]

    @property
    def name(self) -> str:
        return ",".join(map(str, self.cell))


def archive_cells(trials: Sequence[Any], space: Any) -> list[Cell]:
    """The archive of ``trials``: per cell, the complete trial of lowest weighted loss
    (the first one on a tie), in cell order."""
    from optuna.trial import TrialState

    grid = grid_of(space)
    best: dict[tuple[int, ...], Cell] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.state != TrialState.COMPLETE or T.DUPLICATE_OF in t.user_attrs:
            continue
        m = grid.measures(t.values)
        c = Cell(grid.cell(m), t.number, weighted_loss(t.values, space.objectives),
                 tuple(m), tuple(t.values))
        if c.cell not in best or c.loss < best[c.cell].loss:
            best[c.cell] = c
    return [best[k] for k in sorted(best)]


def archive_trial(trials: Sequence[Any], space: Any, cell: str) -> int:
    """The trial number of archive cell ``cell`` (``"i,j"``).

    Raises:
        ConfigError: the cell is malformed or empty (the message lists the filled cells).
    """
    cells = {c.name: c for c in archive_cells(trials, space)}
    key = ",".join(p.strip() for p in cell.split(","))
    if key not in cells:
        raise ConfigError(f"Archive cell {cell!r} is empty or not a cell; filled cells: "
                          f"{', '.join(cells) or 'none'}.")
    return cells[key].trial
