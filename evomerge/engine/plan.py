"""Plan a merge: for every output tensor, which source tensors feed it and with which
parameters. The plan is computed from tensor names and shapes only (no weights are read), and
serves both the streaming merge to disk and the in-memory materializer.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

from evomerge.engine.arch import LAYER_COUNT_KEYS, place
from evomerge.engine.lora import check_factored
from evomerge.engine.params import resolve
from evomerge.engine.recipe import Recipe, Slice, SliceSource
from evomerge.engine.sources import ModelSource, torch_dtype
from evomerge.errors import ConfigError, ModelError
from evomerge.methods import MergeMethod

__all__ = ["TensorTask", "MergePlan", "build_plan", "execute", "normalized_slices",
           "NORMALIZE_TOLERANCE"]

Ref = tuple[str, str]  # (model reference, tensor name)


@dataclass(frozen=True)
class TensorTask:
    """How to compute one output tensor.

    Attributes:
        out_name: name in the merged checkpoint.
        inputs: (model, tensor) for each input passed as ``tensors`` to the method.
        base: (model, tensor) of the base, for methods with ``base="required"``.
        shared: global parameter values.
        per_model: per-model parameter values, each a tuple aligned with ``inputs``.
        seed: seed of this tensor's random stream (stochastic methods only).
        shape: output shape.
    """

    out_name: str
    inputs: tuple[Ref, ...]
    base: Ref | None
    shared: Mapping[str, Any]
    per_model: Mapping[str, tuple[Any, ...]]
    seed: int | None
    shape: tuple[int, ...]


@dataclass(frozen=True)
class MergePlan:
    """The tasks of one recipe plus what is needed to write the output model."""

    recipe: Recipe
    method: MergeMethod
    tasks: tuple[TensorTask, ...]
    config: dict[str, Any]
    num_layers: int
    compute_dtype: torch.dtype | None


def normalized_slices(recipe: Recipe) -> list[Slice]:
    """``models:`` becomes one slice over all layers; the base joins the inputs if unlisted.

    The layer range of that implicit slice is filled in by :func:`build_plan` (it depends on
    the models' depth), so here it is a placeholder (0, 1).
    """
    if recipe.slices is not None:
        return list(recipe.slices)
    sources = [SliceSource(model=e.model, layer_range=(0, 1), parameters=e.parameters)
               for e in recipe.models or []]
    if recipe.base_model and recipe.base_model not in [s.model for s in sources]:
        sources.append(SliceSource(model=recipe.base_model, layer_range=(0, 1)))
    return [Slice(sources=sources)]


def _full_depth(slices: list[Slice], recipe: Recipe,
                sources: Mapping[str, ModelSource]) -> list[Slice]:
    if recipe.slices is not None:
        return slices
    srcs = [s.model_copy(update={"layer_range": (0, sources[s.model].num_layers)})
            for s in slices[0].sources]
    depths = {s.layer_range[1] for s in srcs}
    if len(depths) > 1:
        detail = ", ".join(f"{s.model!r} has {s.layer_range[1]}" for s in srcs)
        raise ModelError(f"Models differ in layer count ({detail}); use 'slices' to combine them.")
    return [Slice(sources=srcs)]


def _check_models(recipe: Recipe, sources: Mapping[str, ModelSource]) -> None:
    refs = recipe.referenced_models()
    first = sources[refs[0]]
    for ref in refs[1:]:
        other = sources[ref]
        if other.architecture != first.architecture:
            raise ModelError(f"Architecture mismatch: {first.ref!r} is {first.architecture} but "
                             f"{ref!r} is {other.architecture}.")
        if other.vocab_size != first.vocab_size:
            raise ModelError(f"Vocabulary size mismatch: {first.ref!r} has {first.vocab_size} "
                             f"tokens but {ref!r} has {other.vocab_size}; evomerge merges "
                             f"embeddings of one size only (a padded vocabulary included): "
                             f"resize one model's embeddings to the other's and save it first.")
        if other.tied_embeddings != first.tied_embeddings:
            tied, untied = (first, other) if first.tied_embeddings else (other, first)
            raise ModelError(f"Tied-embedding mismatch: {tied.ref!r} ties its LM head to the "
                             f"input embedding but {untied.ref!r} has its own lm_head; merging "
                             f"them would drop one head. Untie {tied.ref!r} (save it with "
                             f"tie_word_embeddings false and an lm_head) or tie the other.")
        _check_tokenizers(first, other)


def _check_tokenizers(first: ModelSource, other: ModelSource) -> None:
    """Same vocabulary size is not the same tokenizer: token ids must mean the same text."""
    if None in (first.tokenizer_digest, other.tokenizer_digest) or (
            first.tokenizer_digest == other.tokenizer_digest):
        return
    a, b = first.tokenizer, other.tokenizer
    if isinstance(a, dict) and isinstance(b, dict):
        i = next((i for i in sorted(set(a) | set(b)) if a.get(i) != b.get(i)), None)
        detail = f"token {i} is {a.get(i)!r} in one and {b.get(i)!r} in the other"
    else:
        detail = "their tokenizer files differ"
    raise ModelError(f"Tokenizer mismatch: {first.ref!r} and {other.ref!r} have different "
                     f"tokenizers ({detail}); merged weights would mix unrelated tokens. Merge "
                     f"only fine-tunes that share the base's tokenizer.")


def _check_ranges(slices: list[Slice], sources: Mapping[str, ModelSource]) -> None:
    for i, sl in enumerate(slices):
        for j, src in enumerate(sl.sources):
            depth = sources[src.model].num_layers
            if src.layer_range[1] > depth:
                raise ConfigError(
                    f"slices[{i}].sources[{j}].layer_range {list(src.layer_range)} goes beyond "
                    f"model {src.model!r}, which has {depth} layers.")


class _Planner:
    def __init__(self, recipe: Recipe, sources: Mapping[str, ModelSource]) -> None:
        self.recipe, self.sources, self.method = recipe, sources, recipe.method
        self.tasks: list[TensorTask] = []

    def add(self, out_name: str, sl: Slice, in_names: list[str], t: float) -> None:
        recipe, method = self.recipe, self.method
        base_ref = sl.base_model or recipe.base_model
        refs = list(zip([s.model for s in sl.sources], in_names))
        for (model, name) in refs:
            if name not in self.sources[model]:
                raise ModelError(f"Model {model!r} has no tensor {name!r} (needed for "
                                 f"{out_name!r}); are the sources the same architecture?")
        shapes = {(m, self.sources[m].shape(n)) for m, n in refs}
        if len({s for _, s in shapes}) > 1:
            detail = ", ".join(f"{m!r} has {list(s)}" for m, s in sorted(shapes))
            raise ModelError(f"Shape mismatch for tensor {out_name!r}: {detail}.")
        base = None
        if method.base in ("required", "optional"):
            base = next(((m, n) for m, n in refs if m == base_ref), None)
            refs = [(m, n) for m, n in refs if m != base_ref]
        shared_tables = [sl.parameters, recipe.parameters]
        shared, per_model = {}, {}
        for spec in method.params:
            if not spec.per_model:
                shared[spec.name] = self._value(spec, shared_tables, out_name, t, None)
                continue
            values = []
            for model, name in refs:
                own = [s.parameters for s in sl.sources if s.model == model]
                values.append(self._value(spec, own + shared_tables, name, t, model))
            per_model[spec.name] = tuple(values)
        _check_normalize(out_name, shared, per_model)
        seed = None
        if method.stochastic:
            seed = zlib.crc32(f"{recipe.evomerge.seed}:{out_name}".encode())
        shape = self.sources[refs[0][0] if refs else base[0]].shape(in_names[0])
        self.tasks.append(TensorTask(out_name, tuple(refs), base, MappingProxyType(shared),
                                     MappingProxyType(per_model), seed, shape))

    def _value(self, spec: Any, tables: list, tensor_name: str, t: float, model: str | None) -> Any:
        value = resolve(spec.name, tables, tensor_name, t)
        if value is None:
            value = spec.default
        if value is None and spec.required:
            who = f" for model {model!r}" if model else ""
            raise ConfigError(f"Parameter {spec.name!r}{who} has no value for tensor "
                              f"{tensor_name!r} (no filter matches it and there is no default).")
        if value is not None and spec.kind is float:
            value = float(value)
        return value


NORMALIZE_TOLERANCE = 0.01


def _check_normalize(out_name: str, shared: Mapping[str, Any],
                     per_model: Mapping[str, tuple[Any, ...]]) -> None:
    """``normalize`` divides the weighted sum by the sum of the weights w: when that sum
    nearly cancels (|sum w| < NORMALIZE_TOLERANCE * sum |w|) the merge is scaled up by
    sum |w| / |sum w| (> 100x), which writes an exploded model; refused instead."""
    w = per_model.get("weight")
    if not w or not (shared.get("normalize") or shared.get("normalize_weights")):
        return
    total, magnitude = sum(w), sum(abs(x) for x in w)
    if magnitude > 0 and abs(total) < NORMALIZE_TOLERANCE * magnitude:
        raise ConfigError(
            f"The weights {list(w)} for tensor {out_name!r} sum to {total:.3g} and normalize "
            f"divides by that sum: it must be at least {NORMALIZE_TOLERANCE:g} times the sum "
            f"of their magnitudes ({magnitude:.3g}) in absolute value, or the merge is scaled "
            f"up {magnitude / max(abs(total), 1e-300):.3g}-fold; change the weights or set "
            "normalize: false.")


def build_plan(recipe: Recipe, sources: Mapping[str, ModelSource]) -> MergePlan:
    """Plan ``recipe`` over opened ``sources`` (keyed by the recipe's model references).

    Raises:
        ModelError: architecture, vocabulary or shape mismatch between sources.
        ConfigError: a layer range beyond a model, or a parameter without a value.
    """
    _check_models(recipe, sources)
    slices = _full_depth(normalized_slices(recipe), recipe, sources)
    _check_ranges(slices, sources)
    planner = _Planner(recipe, sources)
    first, last = slices[0], slices[-1]
    template = sources[first.sources[0].model]
    pre = [n for n in template.names if place(n).group == "embed"]
    post = [n for n in sources[last.sources[0].model].names if place(n).group == "final"]
    for name in pre:
        planner.add(name, first, [name] * len(first.sources), 0.0)
    out_layer = 0
    layer_types: list[Any] = []
    for sl in slices:
        n = sl.num_layers
        for i in range(n):
            t = i / (n - 1) if n > 1 else 1.0
            lead = sl.sources[0]
            src_layer = lead.layer_range[0] + i
            lead_src = sources[lead.model]
            for name in lead_src.names:
                p = place(name)
                if p.group != "layer" or p.layer != src_layer:
                    continue
                in_names = [f"{p.prefix}{s.layer_range[0] + i}.{p.rest}" for s in sl.sources]
                planner.add(f"{p.prefix}{out_layer}.{p.rest}", sl, in_names, t)
            types = lead_src.config.get("layer_types")
            if isinstance(types, list) and src_layer < len(types):
                layer_types.append(types[src_layer])
            out_layer += 1
    for name in post:
        planner.add(name, last, [name] * len(last.sources), 0.0)
    config = _out_config(recipe, sources, first, out_layer, layer_types)
    if recipe.method.factored:
        check_factored(recipe.merge_method, planner.tasks, sources)
    return MergePlan(recipe, recipe.method, tuple(planner.tasks), config, out_layer,
                     torch_dtype(recipe.dtype))


def _out_config(recipe: Recipe, sources: Mapping[str, ModelSource], first: Slice,
                num_layers: int, layer_types: list[Any]) -> dict[str, Any]:
    ref = recipe.base_model or first.sources[0].model
    config = dict(sources[ref].config)
    target = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    keys = [k for k in LAYER_COUNT_KEYS if k in target] or ["num_hidden_layers"]
    target[keys[0]] = num_layers
    if layer_types and len(layer_types) == num_layers and "layer_types" in target:
        target["layer_types"] = layer_types
    out = recipe.out_dtype or recipe.dtype
    if out:
        config["dtype" if "dtype" in config else "torch_dtype"] = out
    return config


def execute(task: TensorTask, method: MergeMethod,
            fetch: Callable[[str, str], torch.Tensor]) -> torch.Tensor:
    """Compute one output tensor; ``fetch(model, name)`` supplies input tensors."""
    tensors = [fetch(m, n) for m, n in task.inputs]
    base = fetch(*task.base) if task.base is not None else None
    params: dict[str, Any] = {**task.shared, **task.per_model}
    if method.stochastic:
        device = (base if base is not None else tensors[0]).device
        params["generator"] = torch.Generator(device=device).manual_seed(task.seed)
    return method.fn(tensors, base, **params)
