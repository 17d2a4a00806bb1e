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

A path is scored in memory by :class:`~evomerge.path_model.PathModels` (layers referenced,
not copied) and exported as mergekit ``passthrough`` slices. Scaling the residual stream by
w before a layer and keeping it equals scaling the output projections (``o_proj``,
``down_proj``) of that layer and every later one by 1/w: every norm in a pre-norm decoder is
scale-invariant (up to its epsilon) and the final norm removes the overall factor. So slot k
of the export carries ``scale = 1 / (w_1 * ... * w_k)`` on its output projections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from evomerge.errors import ConfigError
from evomerge.recipe import Recipe, load_recipe
from evomerge.search.genome import Gene
from evomerge.search.space import SearchSpace

__all__ = ["Step", "PathGenome", "path_recipe", "OUT_PROJECTIONS", "out_projections"]

# Pre-norm decoders whose attention and MLP outputs reach the residual stream only through
# these projections (no post-norms: Gemma 2/3 and OLMo 2 normalize after them, so scaling the
# projections would not carry the factor).
OUT_PROJECTIONS = {arch: ("o_proj", "down_proj") for arch in (
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
    "Phi3ForCausalLM", "GemmaForCausalLM", "GraniteForCausalLM")}


@dataclass(frozen=True)
class Step:
    """One layer of a path: layer ``layer`` of model ``model`` (a reference as in recipes),
    entered with the hidden state multiplied by ``scale``."""

    model: str
    layer: int
    scale: float = 1.0


def out_projections(architecture: str) -> tuple[str, ...]:
    """The output projection names of ``architecture``; ConfigError if scaling is unsafe."""
    if architecture not in OUT_PROJECTIONS:
        raise ConfigError(f"dfs.scaling needs a pre-norm decoder whose layers write to the "
                          f"residual stream through o_proj / down_proj only; {architecture} is "
                          f"not one evomerge knows ({', '.join(sorted(OUT_PROJECTIONS))}). "
                          "Use 'scaling: none'.")
    return OUT_PROJECTIONS[architecture]


def path_recipe(path: list[Step], *, dtype: str | None = None, out_dtype: str | None = None,
                projections: tuple[str, ...] = ("o_proj", "down_proj"),
                extras: dict[str, Any] | None = None) -> Recipe:
    """The mergekit ``passthrough`` recipe that builds ``path`` as a standalone model: one
    slice per step, output projections scaled by the inverse running product of the scales
    (module docstring). The steps themselves ride along in ``evomerge.path``."""
    if not path:
        raise ConfigError("A data-flow path needs at least one layer.")
    slices, running = [], 1.0
    for step in path:
        running *= step.scale
        source: dict[str, Any] = {"model": step.model, "layer_range": [step.layer, step.layer + 1]}
        if abs(running - 1.0) > 1e-12:
            c = 1.0 / running
            source["parameters"] = {"scale": [*({"filter": p, "value": c} for p in projections),
                                              {"value": 1.0}]}
        slices.append({"sources": [source]})
    doc: dict[str, Any] = {"merge_method": "passthrough", "slices": slices,
                           "evomerge": {**(extras or {}),
                                        "path": [[s.model, s.layer, s.scale] for s in path]}}
    if dtype:
        doc["dtype"] = dtype
    if out_dtype:
        doc["out_dtype"] = out_dtype
    return load_recipe(doc)


def recipe_path(recipe: Recipe) -> list[Step] | None:
    """The path a recipe carries in ``evomerge.path`` (None for other recipes)."""
    raw = (recipe.evomerge.model_extra or {}).get("path")
    return None if raw is None else [Step(str(m), int(i), float(w)) for m, i, w in raw]


class PathGenome:
    """Genes of a ``dfs`` space over models of ``num_layers`` layers (module docstring); the
    interface of :class:`~evomerge.search.genome.Genome`."""

    def __init__(self, space: SearchSpace, num_layers: int, source_dtype: str | None = None) -> None:
        self.space, self.num_layers, self.source_dtype = space, num_layers, source_dtype
        self.dfs = space.dfs
        self.slots = [(r, alias, i) for r in range(self.dfs.repeats) for alias in space.models
                      for i in range(num_layers)]
        self.groups: list[tuple[int, int]] = []  # no layer groups: the per-layer view is the path
        self.parts = ["all"]
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
