"""Merge-method specs: what a method is called, which parameters it takes, and their bounds.

A merge method is a pure tensor function ``fn(tensors, base, **params) -> Tensor`` with no I/O.
``tensors`` are the inputs other than the base (aligned with every per-model parameter list);
``base`` is the base model's tensor, or ``None`` for methods whose base is an ordinary input.
Per-model parameters arrive as lists aligned with ``tensors``; global ones as scalars.

The spec is the single source of truth: recipes are validated against it and the search space
is derived from it (``ParamSpec.search``), so the two cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from evomerge.registry import Registry

__all__ = ["ParamSpec", "MergeMethod", "METHODS", "register", "get_method"]

Scalar = float | bool


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a merge method.

    Attributes:
        name: key in the recipe's ``parameters`` mappings.
        per_model: True for a value per input model (a list at call time), False for one
            global scalar.
        default: value used when the recipe gives none; ``None`` means required
            (or, with ``optional=True``, "absent").
        kind: ``float`` or ``bool``.
        low, high: inclusive validity bounds (``None`` = unbounded); a recipe outside them
            is rejected.
        search: the default search range (low, high) the search space derives; only for
            continuous parameters worth searching.
        optional: the parameter may stay unset (``None`` reaches the function).
        doc: one-line description.
    """

    name: str
    per_model: bool
    default: Scalar | None = None
    kind: type = float
    low: float | None = None
    high: float | None = None
    search: tuple[float, float] | None = None
    optional: bool = False
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is None and not self.optional


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method.

    Attributes:
        name: recipe ``merge_method`` value (same names as mergekit).
        fn: the pure tensor function ``fn(tensors, base, **params) -> Tensor``.
        params: parameter specs, in display order.
        paper: reference link.
        base: "required" -- the base is passed separately as ``base`` (task-vector methods,
            SLERP, Model Stock); "optional" -- passed separately when the recipe names one,
            else ``None`` (Multi-SLERP, NuSLERP: relative to the base if there is one);
            "input" -- the base, if any, is an ordinary input in ``tensors``.
        min_inputs, max_inputs: bounds on ``len(tensors)`` (non-base inputs when
            ``base="required"``).
        stochastic: the function takes a ``generator`` keyword (seeded by the planner).
        delta_fn: for task-vector methods, the same merge expressed on precomputed task
            vectors ``delta_fn(deltas, base, **params)``; lets a resident materializer keep
            task vectors instead of recomputing ``tensor - base`` for every candidate.
        composition: for task-vector methods, the (sparsify, consensus) step names, so that
            accelerated kernels can tell which variant they are computing.
        factored: the method composes LoRA factors (its inputs are adapters of the base,
            :mod:`evomerge.engine.lowrank` values), not dense tensors.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    params: tuple[ParamSpec, ...]
    paper: str
    base: Literal["required", "optional", "input"] = "required"
    min_inputs: int = 1
    max_inputs: int | None = None
    stochastic: bool = False
    delta_fn: Callable[..., torch.Tensor] | None = field(default=None, compare=False)
    composition: tuple[str | None, str | None] | None = None
    factored: bool = False

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        valid = ", ".join(p.name for p in self.params) or "none"
        raise KeyError(f"{name!r} (valid: {valid})")

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]


METHODS: Registry[MergeMethod] = Registry("merge method")


def register(method: MergeMethod) -> MergeMethod:
    """Add ``method`` to :data:`METHODS` and return it."""
    METHODS.add(method.name, method)
    return method


def get_method(name: str) -> MergeMethod:
    """Look a method up by name; an unknown name raises ``UnknownNameError`` listing all."""
    return METHODS.get(name)
