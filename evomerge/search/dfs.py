"""Data-flow-space genome (Sakana's DFS, Akiba et al. 2024, arXiv:2403.13187, sec. 3.2).

The layers of all M models are laid out in order -- model after model, each model's layers
in order -- and repeated r times: T = M*L*r slots. Genes:

* ``on.r{R}.{alias}.l{I}``   flag: slot (repetition R, layer I of ``alias``) is on the path;
* ``scale.{a}.{b}``          ``scaling: pair``: the hidden state entering a layer of model b
                             right after a layer of model a is multiplied by W[a, b]
                             (Sakana's W; the first layer counts as following its own model);
* ``scale.r{R}.{alias}.l{I}`` ``scaling: slot``: one factor per slot.

The path is the flagged slots in slot order, cut at ``max_length``. CMA-ES sees a flag as one
coordinate thresholded at 0.5 (as Sakana); Optuna samplers see a categorical False / True.

A path (a list of :class:`~evomerge.engine.paths.Step`) is scored in memory by
:class:`~evomerge.engine.path_model.PathModels` (layers referenced, not copied) and exported
as mergekit ``passthrough`` slices (:func:`~evomerge.engine.paths.path_recipe`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evomerge.engine.paths import Step, path_recipe
from evomerge.engine.recipe import Recipe
from evomerge.errors import ConfigError
from evomerge.search.gene import Gene
from evomerge.search.space import SearchSpace

__all__ = ["PathGenome"]


class PathGenome:
    """Genes of a ``dfs`` space over models of ``num_layers`` layers (module docstring);
    implements :class:`~evomerge.search.gene.Genome`."""

    def __init__(self, space: SearchSpace, num_layers: int, source_dtype: str | None = None) -> None:
        self.space, self.num_layers, self.source_dtype = space, num_layers, source_dtype
        self.dfs = space.dfs
        self.slots = [(r, alias, i) for r in range(self.dfs.repeats) for alias in space.models
                      for i in range(num_layers)]
        self.genes = self._genes()

    def _genes(self) -> list[Gene]:
        genes = [Gene(f"on.r{r}.{a}.l{i}", flag=True) for r, a, i in self.slots]
        lo, hi = self.dfs.scale
        if self.dfs.scaling == "pair":
            genes += [Gene(f"scale.{a}.{b}", lo, hi) for a in self.space.models
                      for b in self.space.models]
        elif self.dfs.scaling == "slot":
            genes += [Gene(f"scale.r{r}.{a}.l{i}", lo, hi) for r, a, i in self.slots]
        return genes

    @property
    def dim(self) -> int:
        return len(self.genes)

    def distributions(self) -> dict[str, Any]:
        return {g.name: g.distribution() for g in self.genes}

    def from_unit(self, x: np.ndarray) -> dict[str, Any]:
        """Named parameters of unit-cube point ``x``: flags on above 0.5, scales linear."""
        x = np.clip(np.asarray(x, dtype=float), 0.0, 1.0)
        return {g.name: bool(v > 0.5) if g.flag else float(g.low + v * (g.high - g.low))
                for g, v in zip(self.genes, x)}

    def to_unit(self, params: dict[str, Any]) -> np.ndarray:
        return np.array([(0.75 if params[g.name] else 0.25) if g.flag
                         else (float(params[g.name]) - g.low) / (g.high - g.low)
                         for g in self.genes])

    def start_point(self) -> np.ndarray:
        """``dfs.start``'s own model (its layers once, in order, unscaled), 0.25 inside the
        flag threshold and with scales at 1."""
        start = self.dfs.start or next(iter(self.space.models))
        out = []
        for g in self.genes:
            if g.flag:
                _, r, alias, _ = g.name.split(".")
                out.append(0.75 if (r, alias) == ("r0", start) else 0.25)
            else:
                out.append((1.0 - g.low) / (g.high - g.low))
        return np.array(out)

    def path(self, params: dict[str, Any]) -> list[Step]:
        """The steps of ``params`` (model references as in the space)."""
        chosen = [(r, a, i) for r, a, i in self.slots if params[f"on.r{r}.{a}.l{i}"]]
        chosen = chosen[:self.dfs.max_length]
        steps, prev = [], None
        for r, a, i in chosen:
            if self.dfs.scaling == "pair":
                w = params[f"scale.{prev or a}.{a}"]
            elif self.dfs.scaling == "slot":
                w = params[f"scale.r{r}.{a}.l{i}"]
            else:
                w = 1.0
            steps.append(Step(self.space.models[a], i, float(w)))
            prev = a
        return steps

    def recipe(self, params: dict[str, Any], extras: dict[str, Any] | None = None) -> Recipe:
        """The passthrough recipe of ``params``' path (:func:`path_recipe`)."""
        path = self.path(params)
        if not path:
            raise ConfigError("This candidate's path is empty: no slot is on.")
        dtype, out_dtype = self.space.recipe_dtypes(self.source_dtype)
        return path_recipe(path, dtype=dtype, out_dtype=out_dtype,
                           extras={"seed": self.space.seed, **(extras or {})})
