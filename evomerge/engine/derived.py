"""Models that recipes build, used as sources of another merge or search (PS+DFS).

A source reference is a model directory, a recipe file (``*.yaml``), or -- in a search space --
a point of another study (``study:NAME#best``, ``#trial=N``, ``#pareto=I``) that the search
pins to a recipe at its start (:mod:`evomerge.search.chain`). A recipe source is planned from
its inputs' headers (names, shapes, config; no weights read) and built once, tensor by tensor
from disk, when a materializer loads it: it then costs one model's memory, like any source.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cached_property
from typing import Any

import torch

from evomerge.engine.lora_source import DiskFetch, LoraSource, open_source
from evomerge.engine.recipe import Recipe, load_recipe
from evomerge.engine.safe_yaml import load_yaml_all
from evomerge.engine.sources import ModelSource, torch_dtype
from evomerge.errors import ConfigError
from evomerge.names import check_name

__all__ = ["DerivedSource", "open_model", "is_recipe_ref", "STUDY_REF", "rename_models",
           "load_chain"]

STUDY_REF = re.compile(r"^study:(?P<name>[\w.-]+)#(?P<sel>best|trial=\d+|pareto=\d+)$")


def is_recipe_ref(ref: str) -> bool:
    """Whether ``ref`` names a recipe rather than a model directory."""
    return ref.startswith("study:") or ref.endswith((".yaml", ".yml"))


def open_model(ref: str, field: str = "model", recipes: Mapping[str, str] | None = None
               ) -> ModelSource | LoraSource | DerivedSource:
    """A model directory as a :class:`ModelSource`, ``BASE+ADAPTER`` as a
    :class:`~evomerge.engine.lora_source.LoraSource`; a recipe (file, or a pinned ``study:``
    reference in ``recipes``) as a :class:`DerivedSource`."""
    if recipes and ref in recipes:
        return DerivedSource(ref, load_recipe(recipes[ref]), field)
    if ref.startswith("study:"):
        raise ConfigError(f"{field} {ref!r}: a study point is a source only inside a search "
                          "(which pins it); export the point (`evomerge export`) and name the "
                          "recipe file instead.")
    if ref.endswith((".yaml", ".yml")):
        return DerivedSource(ref, load_recipe(ref), field)
    return open_source(ref, field)


class DerivedSource:
    """The model ``recipe`` builds, seen through :class:`ModelSource`'s interface; its inputs
    must be model directories (one level of chaining)."""

    def __init__(self, ref: str, recipe: Recipe, field: str = "model") -> None:
        from evomerge.engine.plan import build_plan

        self.ref, self.recipe = ref, recipe
        nested = [r for r in recipe.referenced_models() if is_recipe_ref(r)]
        if nested:
            raise ConfigError(f"{field} {ref!r}: its recipe names another recipe ({nested[0]!r}) "
                              "as a model; build that one first and name its directory.")
        if recipe.tokenizer_settings is not None:
            raise ConfigError(f"{field} {ref!r}: its recipe builds its own vocabulary (a "
                              "tokenizer block); build it with `evomerge merge` and name the "
                              "directory.")
        self.inputs = {r: open_source(r, field=f"{field} {ref!r}: model")
                       for r in recipe.referenced_models()}
        self.plan = build_plan(recipe, self.inputs)
        self._first = self.inputs[recipe.referenced_models()[0]]
        self._shapes = {t.out_name: t.shape for t in self.plan.tasks}
        self.config: dict[str, Any] = self.plan.config
        self.path = self._first.path  # tokenizer files and config template

    @property
    def names(self) -> list[str]:
        return list(self._shapes)

    def __contains__(self, name: str) -> bool:
        return name in self._shapes

    @property
    def num_layers(self) -> int:
        return self.plan.num_layers

    @property
    def vocab_size(self) -> int | None:
        return self._first.vocab_size

    @property
    def architecture(self) -> str:
        return self._first.architecture

    @property
    def tied_embeddings(self) -> bool:
        return self._first.tied_embeddings

    @property
    def tokenizer(self) -> Any:
        return self._first.tokenizer

    @property
    def tokenizer_digest(self) -> str | None:
        return self._first.tokenizer_digest

    @property
    def core_vocab(self) -> Any:
        return self._first.core_vocab

    @cached_property
    def stored_dtype(self) -> torch.dtype:
        return torch_dtype(self.recipe.out_dtype or self.recipe.dtype) or self._first.stored_dtype

    @property
    def nbytes(self) -> int:
        size = torch.empty((), dtype=self.stored_dtype).element_size()
        return sum(size * int(torch.Size(s).numel()) for s in self._shapes.values())

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def dtype(self, name: str) -> torch.dtype:
        return self.stored_dtype

    @torch.no_grad()
    def build(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Every tensor of the model, merged on ``device`` (inputs read from disk per tensor,
        so memory holds the output and one tensor's inputs)."""
        from evomerge.engine.fused import TensorEngine

        device = torch.device(device)
        # compiled on CUDA as the materializer and `evomerge merge` are (the same bits)
        engine, out = TensorEngine(compile=device.type == "cuda"), {}
        fetch = DiskFetch(self.inputs, device)
        for task in self.plan.tasks:
            fetch.clear()
            out[task.out_name] = torch.empty(task.shape, dtype=self.stored_dtype, device=device)
            engine.run(task, self.plan.method, fetch, self.plan.compute_dtype, out[task.out_name])
        return out

    def get(self, name: str, device: str | torch.device = "cpu",
            dtype: torch.dtype | None = None) -> torch.Tensor:
        raise ConfigError(f"{self.ref!r} is a recipe: build it (`evomerge merge`) to read "
                          "single tensors from disk.")


def rename_models(doc: Any, names: Mapping[str, str]) -> Any:
    """``doc`` (a parsed recipe) with every model reference that is a key of ``names``
    replaced: ``base_model``, ``models[].model``, ``slices[].base_model``,
    ``slices[].sources[].model``, ``tokenizer_source`` and the models of an
    ``evomerge.path``. Nothing else is touched, so a stage named like a method or a filter
    (``ties``, ``mlp``) renames only the models it stands for."""
    if not isinstance(doc, dict):
        return doc
    ren = lambda ref: names.get(ref, ref) if isinstance(ref, str) else ref  # noqa: E731
    out = dict(doc)
    for key in ("base_model", "tokenizer_source"):
        if key in out:
            out[key] = ren(out[key])
    if isinstance(out.get("models"), list):
        out["models"] = [{**e, "model": ren(e.get("model"))} if isinstance(e, dict) and "model" in e
                         else e for e in out["models"]]
    if isinstance(out.get("slices"), list):
        out["slices"] = [_rename_slice(sl, ren) for sl in out["slices"]]
    extras = out.get("evomerge")
    if isinstance(extras, dict) and isinstance(extras.get("path"), list):
        out["evomerge"] = {**extras, "path": [
            [ren(step[0]), *step[1:]] if isinstance(step, list) and step else step
            for step in extras["path"]]}
    return out


def _rename_slice(sl: Any, ren: Any) -> Any:
    if not isinstance(sl, dict):
        return sl
    out = dict(sl)
    if "base_model" in out:
        out["base_model"] = ren(out["base_model"])
    if isinstance(out.get("sources"), list):
        out["sources"] = [{**s, "model": ren(s.get("model"))} if isinstance(s, dict) and "model" in s
                          else s for s in out["sources"]]
    return out


def load_chain(text: str, source: str = "recipe") -> list[tuple[str | None, dict[str, Any]]]:
    """(stage name or None for the final recipe, recipe mapping) of a multi-document recipe,
    in order; a single document gives one unnamed stage. Stage names are safe names
    (:mod:`evomerge.names`): each becomes a directory under the stages directory. Raises
    ConfigError on a bad chain (``source`` names it)."""
    docs = load_yaml_all(text, source)
    out, names = [], set()
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: document {i + 1} is not a mapping.")
        d = dict(d)
        name = d.pop("name", None)
        if name is None and i != len(docs) - 1:
            raise ConfigError(f"{source}: document {i + 1} has no 'name': only the last stage "
                              "may be unnamed.")
        if name is not None:
            check_name(name, f"stage name of document {i + 1} of {source}")
        if name in names:
            raise ConfigError(f"{source}: stage name {name!r} is used twice.")
        names.add(name)
        out.append((name, d))
    return out
