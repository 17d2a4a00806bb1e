"""Genes and the genome contract every search space's genome meets.

A genome maps between three views of a candidate: a point of the unit cube (what CMA-ES
moves), named gene values (what Optuna samplers draw and the study stores), and the recipe
they decode to (what workers build). :class:`Genome` is that contract;
:class:`~evomerge.search.param_genome.ParamGenome` (per-layer coefficients, method genes,
layer swaps) and :class:`~evomerge.search.dfs.PathGenome` (data-flow paths) implement it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from evomerge.engine.recipe import Recipe

__all__ = ["Gene", "Genome", "genome_hash", "recipe_hash"]


@dataclass(frozen=True)
class Gene:
    """One coordinate (float) or choice (categorical) of the genome."""

    name: str
    low: float = 0.0
    high: float = 1.0
    choices: tuple[str, ...] | None = None
    flag: bool = False  # on/off: one coordinate thresholded at 0.5; Optuna: False / True

    @property
    def width(self) -> int:
        """Unit-cube coordinates taken by this gene."""
        return len(self.choices) if self.choices else 1

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution

        if self.flag:
            return CategoricalDistribution([False, True])
        if self.choices:
            return CategoricalDistribution(list(self.choices))
        return FloatDistribution(self.low, self.high)


@runtime_checkable
class Genome(Protocol):
    """What the search needs of a genome.

    Attributes:
        genes: the genes, in unit-cube order.
        num_layers: layers of the source models.
        source_dtype: stored dtype of the sources (e.g. ``"bfloat16"``), or None.
    """

    genes: list[Gene]
    num_layers: int
    source_dtype: str | None

    @property
    def dim(self) -> int:
        """Unit-cube coordinates (a categorical gene with k choices takes k)."""

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions by gene name."""

    def from_unit(self, x: np.ndarray) -> dict[str, Any]:
        """Named gene values of unit-cube point ``x`` (clipped to [0, 1])."""

    def to_unit(self, params: dict[str, Any]) -> np.ndarray:
        """A unit-cube point that decodes to ``params``."""

    def start_point(self) -> np.ndarray:
        """Where CMA-ES starts (a uniform soup, or a source's own path)."""

    def recipe(self, params: dict[str, Any], extras: dict[str, Any] | None = None) -> Recipe:
        """The mergekit-compatible recipe of ``params``; ConfigError if it builds nothing."""


def genome_hash(params: dict[str, Any]) -> str:
    """Stable hash of a parameter set (floats rounded to 1e-9)."""
    canon = {k: (round(v, 9) if isinstance(v, float) else v) for k, v in sorted(params.items())}
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:16]


def recipe_hash(recipe: Recipe) -> str:
    """Hash of what a recipe builds (provenance in the ``evomerge`` block aside, except the
    seed that DARE drops depend on). Different genomes can decode to the same recipe --
    e.g. coefficients of a layer group that a layer-swap gene copies whole -- and the
    duplicate cache keys on this, so the same model is never evaluated twice."""
    doc = recipe.model_dump(mode="json", exclude_none=True)
    doc["evomerge"] = {"seed": recipe.evomerge.seed}
    return hashlib.sha256(json.dumps(_round(doc), sort_keys=True).encode()).hexdigest()[:16]


def _round(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 9)
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    return obj
