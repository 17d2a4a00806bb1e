"""Adapted source models: ``BASE+ADAPTER`` (mergekit's spelling) as a source, the model BASE
with the PEFT LoRA adapter ADAPTER applied (:mod:`evomerge.engine.lora` reads and checks the
adapter). A :class:`LoraSource` has :class:`~evomerge.engine.sources.ModelSource`'s interface
(names, shapes, config and tokenizer are the base's) and gives the merge engine
:class:`~evomerge.engine.lowrank.LowRank` values, never dense weights, so a candidate over
adapters costs what the adapters weigh. :class:`DiskFetch` reads sources per tensor for
``evomerge merge``; :func:`check_factored` checks a lorahub plan from the headers.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from evomerge.engine.lora import (
    LoraAdapter,
    is_adapter_dir,
    read_adapter_config,
    split_adapter_ref,
)
from evomerge.engine.lowrank import LowRank, densify
from evomerge.engine.sources import ModelSource
from evomerge.errors import ConfigError

__all__ = ["LoraSource", "open_source", "DiskFetch", "check_factored"]


def open_source(ref: str, field: str = "model") -> ModelSource | LoraSource:
    """A model directory as a :class:`ModelSource`, ``BASE+ADAPTER`` as a :class:`LoraSource`.

    Raises:
        ConfigError: ``ref`` names an adapter directory alone (it needs its base).
        ModelError: see :class:`ModelSource` and :class:`LoraSource`.
    """
    if split_adapter_ref(ref, field) is not None:
        return LoraSource(ref, field)
    if is_adapter_dir(ref):
        base = read_adapter_config(Path(ref).expanduser(), ref, field).get("base_model_name_or_path")
        raise ConfigError(f"{field} {ref!r} is a LoRA adapter, not a model: name it with its "
                          f"base as BASE+ADAPTER (its adapter_config.json names the base "
                          f"{base!r}).")
    return ModelSource(ref, field=field)



class LoraSource:
    """``BASE+ADAPTER`` as a source model (module docstring).

    Raises:
        ConfigError: a malformed reference.
        ModelError: a missing base, or an adapter that does not fit it.
    """

    def __init__(self, ref: str, field: str = "model") -> None:
        base_ref, adapter_ref = split_adapter_ref(ref, field)
        self.ref = ref
        self.base = ModelSource(base_ref, field=f"{field} {ref!r}: its base")
        self.adapter = LoraAdapter(adapter_ref, field=f"{field} {ref!r}: adapter")
        self.adapter.check_base(self.base)
        self.path, self.config = self.base.path, self.base.config

    # ---- the base's interface -------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return self.base.names

    def __contains__(self, name: str) -> bool:
        return name in self.base

    @property
    def num_layers(self) -> int:
        return self.base.num_layers

    @property
    def vocab_size(self) -> int | None:
        return self.base.vocab_size

    @property
    def architecture(self) -> str:
        return self.base.architecture

    @property
    def tied_embeddings(self) -> bool:
        return self.base.tied_embeddings

    @property
    def tokenizer(self) -> Any:
        return self.base.tokenizer

    @property
    def tokenizer_digest(self) -> str | None:
        return self.base.tokenizer_digest

    @property
    def core_vocab(self) -> Any:
        return self.base.core_vocab

    @cached_property
    def stored_dtype(self) -> torch.dtype:
        return self.base.stored_dtype

    @property
    def nbytes(self) -> int:
        return self.base.nbytes

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base.shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return self.base.dtype(name)

    # ---- adapted values -----------------------------------------------------------------
    def rank(self, name: str) -> int:
        """The adapter's rank on tensor ``name`` (0 where it leaves the base's tensor)."""
        f = self.adapter.factors.get(name)
        return 0 if f is None else f.rank

    def scale(self, name: str) -> float:
        f = self.adapter.factors.get(name)
        return 0.0 if f is None else f.scale

    def lowrank(self, name: str, base: torch.Tensor, device: str | torch.device = "cpu"
                ) -> LowRank | torch.Tensor:
        """Tensor ``name`` over the base's tensor ``base`` (read by the caller, so adapters of
        one base share it): a LowRank, or a replaced tensor (modules_to_save)."""
        if name in self.adapter.replaced:
            return self.adapter.read(self.adapter.replaced[name], name, device)
        f = self.adapter.factors.get(name)
        if f is None:
            return LowRank(base)
        return LowRank(base, self.adapter.read(f.a, name, device),
                       self.adapter.read(f.b, name, device), f.scale)

    def get(self, name: str, device: str | torch.device = "cpu",
            dtype: torch.dtype | None = None) -> torch.Tensor:
        """The adapted tensor, dense: W0 + s B A formed in float32, cast to ``dtype`` (default
        the base's)."""
        base = self.base.get(name, device)
        x = self.lowrank(name, base, device)
        dense = densify(x, torch.float32, torch.device(device))
        return dense.to(dtype or base.dtype)


class DiskFetch:
    """``fetch(model, name)`` for the merge engine over opened sources, read from disk per
    tensor: a model's tensor as stored, or an adapted source's value over its base's tensor,
    which is read once for all the adapters of that base (call :meth:`clear` between output
    tensors)."""

    def __init__(self, sources: dict[str, Any], device: str | torch.device = "cpu") -> None:
        self.sources, self.device = sources, device
        self._read: dict[tuple[Path, str], torch.Tensor] = {}

    def clear(self) -> None:
        self._read.clear()

    def _base(self, src: ModelSource, name: str) -> torch.Tensor:
        key = (src.path.resolve(), name)
        if key not in self._read:
            self._read[key] = src.get(name, self.device)
        return self._read[key]

    def __call__(self, model: str, name: str) -> torch.Tensor | LowRank:
        src = self.sources[model]
        if isinstance(src, LoraSource):
            return src.lowrank(name, self._base(src.base, name), self.device)
        return self._base(src, name)


def check_factored(method_name: str, tasks: Any, sources: dict[str, Any]) -> None:
    """A factored method (lorahub) composes adapters of the recipe's base, one rank per
    module, positive scalings: checked from the headers for every tensor of the plan.

    Raises:
        ConfigError: an input that is not an adapter of the base, or mixed ranks.
    """
    for task in tasks:
        if task.base is None:
            continue
        base = sources[task.base[0]]
        where = base.path.resolve() if isinstance(base, ModelSource) else None
        seen: dict[int, str] = {}
        for model, name in task.inputs:
            src = sources[model]
            if not isinstance(src, LoraSource) or src.base.path.resolve() != where:
                raise ConfigError(f"Merge method {method_name!r} composes LoRA adapters of the "
                                  f"base {task.base[0]!r}: model {model!r} is not one (write "
                                  f"it as {task.base[0]}+ADAPTER).")
            rank = src.rank(name)
            if rank and src.scale(name) <= 0:
                raise ConfigError(f"Merge method {method_name!r} needs adapters with a "
                                  f"positive scaling (lora_alpha / r): {model!r} has "
                                  f"{src.scale(name)} on {name}.")
            if rank:
                seen.setdefault(rank, model)
        if len(seen) > 1:
            (r1, m1), (r2, m2) = list(seen.items())[:2]
            raise ConfigError(f"Merge method {method_name!r} composes adapters of one rank per "
                              f"module: {task.out_name} has rank {r1} in {m1!r} and {r2} in "
                              f"{m2!r}; use task_arithmetic (any ranks) instead.")
