"""The parameter-space genome: per-layer merge coefficients, method genes and layer swaps,
and the map from a point to a recipe.

Genes are derived from the search space and the merge methods' parameter specs:

* ``method``                    categorical, when the space lists several methods;
* ``{param}.{alias}.g{G}.{part}`` a per-model parameter of source ``alias`` in layer group G;
* ``{param}.g{G}.{part}``         a global parameter (e.g. ``lambda``) in layer group G;
* ``swap.g{G}``                  categorical: who supplies layer group G (layer swapping).

``part`` is ``all``, or ``attn`` / ``mlp`` with ``split_attn_mlp``; group ``io`` holds the
embeddings, final norm and LM head when ``granularity.embeddings`` is on.

Continuous optimizers see the genome as a point in the unit cube: a float gene is one
coordinate mapped linearly onto its bounds; a categorical gene with k choices takes k
coordinates and decodes to the choice with the largest one (argmax; ties go to the first),
which keeps the map deterministic and lets CMA-ES move smoothly between choices. Optuna
samplers see named parameters with Float / Categorical distributions instead.

The decoded recipe uses ``slices`` (one per layer group) with per-source parameters and
``{filter, value}`` lists for attention / MLP / embeddings, so it is a valid mergekit config.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evomerge.engine.recipe import Recipe, load_recipe
from evomerge.search.gene import Gene
from evomerge.search.space import SWAP_BASE, SWAP_MERGE, SearchSpace

__all__ = ["ParamGenome"]


class ParamGenome:
    """Genes of ``space`` over models of ``num_layers`` layers, and the decoding to recipes
    (implements :class:`~evomerge.search.gene.Genome`)."""

    def __init__(self, space: SearchSpace, num_layers: int, source_dtype: str | None = None) -> None:
        self.space = space
        self.num_layers = num_layers
        self.source_dtype = source_dtype  # stored dtype of the sources, e.g. "bfloat16"
        k = space.granularity.layers_per_group
        k = num_layers if k == "all" else k
        self.groups = [(s, min(s + k, num_layers)) for s in range(0, num_layers, k)]
        self.parts = ["attn", "mlp"] if space.granularity.split_attn_mlp else ["all"]
        self.genes = self._genes()

    # ---- genes -------------------------------------------------------------------------
    def _genes(self) -> list[Gene]:
        space = self.space
        genes: list[Gene] = []
        methods = space.methods
        if len(methods) > 1:
            genes.append(Gene("method", choices=tuple(m.name for m in methods)))
        slots = [(f"g{g}", part) for g in range(len(self.groups)) for part in self.parts]
        if space.granularity.embeddings and methods:
            slots.append(("io", "all"))
        for pname, (lo, hi) in space.searched.items():
            per_model = any(m.param(pname).per_model for m in methods if pname in m.param_names)
            for group, part in slots:
                if per_model:
                    genes += [Gene(f"{pname}.{alias}.{group}.{part}", lo, hi)
                              for alias in space.models]
                else:
                    genes.append(Gene(f"{pname}.{group}.{part}", lo, hi))
        if space.layer_swap:
            genes += [Gene(f"swap.g{g}", choices=tuple(space.swap_choices))
                      for g in range(len(self.groups))]
        return genes

    @property
    def dim(self) -> int:
        return sum(g.width for g in self.genes)

    def distributions(self) -> dict[str, Any]:
        return {g.name: g.distribution() for g in self.genes}

    # ---- unit cube <-> named parameters -------------------------------------------------
    def from_unit(self, x: np.ndarray) -> dict[str, Any]:
        """Named parameters of unit-cube point ``x`` (clipped to [0, 1])."""
        x = np.clip(np.asarray(x, dtype=float), 0.0, 1.0)
        params: dict[str, Any] = {}
        i = 0
        for g in self.genes:
            if g.flag:
                params[g.name] = bool(x[i] > 0.5)
            elif g.choices:
                params[g.name] = g.choices[int(np.argmax(x[i:i + g.width]))]
            else:
                params[g.name] = float(g.low + x[i] * (g.high - g.low))
            i += g.width
        return params

    def to_unit(self, params: dict[str, Any]) -> np.ndarray:
        """A unit-cube point that decodes to ``params`` (categoricals one-hot)."""
        out = []
        for g in self.genes:
            v = params[g.name]
            if g.flag:
                out.append(0.75 if v else 0.25)
            elif g.choices:
                out += [1.0 if c == v else 0.0 for c in g.choices]
            else:
                out.append((float(v) - g.low) / (g.high - g.low))
        return np.array(out)

    def start_point(self) -> np.ndarray:
        """The uniform merge as a unit-cube point: per-model ``weight`` 1/n (a soup), other
        parameters at their spec default, categoricals undecided (ties decode to the first
        choice: the first method, ``merge`` for swaps); kept 0.1 inside the bounds so CMA-ES
        can move both ways."""
        n = len(self.space.models)
        specs = {p.name: p for m in self.space.methods for p in m.params}
        out = []
        for g in self.genes:
            if g.choices:
                out += [0.5] * g.width
                continue
            pname = g.name.split(".", 1)[0]
            spec = specs.get(pname)
            value = 1.0 / n if pname == "weight" else (
                spec.default if spec is not None and isinstance(spec.default, float)
                else (g.low + g.high) / 2)
            out.append(float(np.clip((value - g.low) / (g.high - g.low), 0.1, 0.9)))
        return np.array(out)

    # ---- parameters -> recipe ------------------------------------------------------------
    def _value(self, params: dict[str, Any], pname: str, alias: str | None, group: str,
               part: str) -> float:
        key = f"{pname}.{alias}.{group}.{part}" if alias else f"{pname}.{group}.{part}"
        return params[key]

    def _setting(self, params: dict[str, Any], pname: str, alias: str | None, g: int,
                 first: bool, last: bool) -> Any:
        """A parameter's value for slice ``g``: per-part filters, plus io filters at the ends."""
        entries = []
        io = self.space.granularity.embeddings
        if io and first:
            entries.append({"filter": "embed_tokens",
                            "value": self._value(params, pname, alias, "io", "all")})
        if io and last:
            v = self._value(params, pname, alias, "io", "all")
            entries += [{"filter": "lm_head", "value": v}, {"filter": "model.norm", "value": v}]
        group = f"g{g}"
        if self.parts == ["all"]:
            value = self._value(params, pname, alias, group, "all")
            return [*entries, {"value": value}] if entries else value
        entries.append({"filter": "mlp", "value": self._value(params, pname, alias, group, "mlp")})
        entries.append({"value": self._value(params, pname, alias, group, "attn")})
        return entries

    def recipe(self, params: dict[str, Any], extras: dict[str, Any] | None = None) -> Recipe:
        """The mergekit-compatible recipe of ``params`` (model references as in the space)."""
        space = self.space
        swaps = [params.get(f"swap.g{g}", SWAP_MERGE) for g in range(len(self.groups))]
        meta = {"seed": space.seed, **(extras or {})}
        doc: dict[str, Any] = {"evomerge": meta}
        dtype, out_dtype = space.recipe_dtypes(self.source_dtype)
        if dtype:
            doc["dtype"] = dtype
        if out_dtype:
            doc["out_dtype"] = out_dtype
        if not space.methods:  # pure layer swap: each group copied from one model
            doc["merge_method"] = "passthrough"
            doc["slices"] = [{"sources": [{"model": self._path(c), "layer_range": list(r)}]}
                             for c, r in zip(swaps, self.groups)]
            return load_recipe(doc)
        method = next(m for m in space.methods if m.name == space.method_name(params))
        slices = [self._slice(params, method, g, swaps[g]) for g in range(len(self.groups))]
        fixed = {k: v for k, v in space.fixed.items() if k in method.param_names}
        doc.update(merge_method=method.name, slices=slices)
        if method.base == "required":
            doc["base_model"] = space.base_model
        if fixed:
            doc["parameters"] = fixed
        return load_recipe(doc)

    def _path(self, choice: str) -> str:
        return self.space.base_model if choice == SWAP_BASE else self.space.models[choice]

    def _slice(self, params: dict[str, Any], method, g: int, swap: str) -> dict[str, Any]:
        r = list(self.groups[g])
        first, last = g == 0, g == len(self.groups) - 1
        searched = [p for p in self.space.searched if p in method.param_names]
        sources = []
        if method.base == "required":
            sources.append({"model": self.space.base_model, "layer_range": r})
        slice_params: dict[str, Any] = {}
        for alias, path in self.space.models.items():
            own: dict[str, Any] = {}
            for p in searched:
                if method.param(p).per_model:
                    own[p] = self._setting(params, p, alias, g, first, last)
            if swap != SWAP_MERGE:  # this group is copied from one model: select it by weight
            # (the recipe no longer depends on this group's coefficients)
                own = {"weight": 1.0 if swap == alias else 0.0}
                if "density" in method.param_names:
                    own["density"] = 1.0
            sources.append({"model": path, "layer_range": r, "parameters": own})
        for p in searched:
            if not method.param(p).per_model and swap == SWAP_MERGE:
                slice_params[p] = self._setting(params, p, None, g, first, last)
        if swap != SWAP_MERGE:
            if "lambda" in method.param_names:
                slice_params["lambda"] = 1.0
            if "normalize" in method.param_names:
                slice_params["normalize"] = True
        out = {"sources": sources}
        if slice_params:
            out["parameters"] = slice_params
        return out
