"""The vocabulary of data-flow paths (Sakana's DFS, arXiv:2403.13187, sec. 3.2): a path is a
list of :class:`Step` (a layer of a source model, entered with the hidden state scaled), built
in memory by :class:`~evomerge.engine.path_model.PathModels` and exported as a mergekit
``passthrough`` recipe (:func:`path_recipe`).

Scaling the residual stream by w before a layer and keeping it equals scaling the output
projections (``o_proj``, ``down_proj``) of that layer and every later one by 1/w: every norm in
a pre-norm decoder is scale-invariant (up to its epsilon) and the final norm removes the
overall factor. So slot k of the export carries ``scale = 1 / (w_1 * ... * w_k)`` on its
output projections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evomerge.engine.recipe import Recipe, load_recipe
from evomerge.errors import ConfigError

__all__ = ["Step", "path_recipe", "recipe_path", "OUT_PROJECTIONS", "out_projections"]

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
