"""Merges over LoRA-adapted sources, computed from the adapters' factors.

A tensor of an adapted source (``BASE+ADAPTER``, :mod:`evomerge.engine.lora`) reaches the
merge engine as a :class:`LowRank` value ``x = W0 + s B @ A`` (rank 0: the base's own tensor,
which the adapter leaves alone). Merges that are linear in the task vectors are written from
the factors, with no dense per-adapter delta ever formed (:func:`factorize`)::

    linear           out = c W0 + B_cat @ A_cat     c = sum_i w_i / D, rows of A_i scaled by w_i s_i / D
    task_arithmetic  out = W0 + B_cat @ A_cat       rows of A_i scaled by lambda w_i s_i / D
    lorahub          out = W0 + B_hat @ A_hat       (evomerge.methods.lorahub)

(D = sum_i w_i when normalized, else 1; B_cat = [B_1 ... B_M] (out, R), A_cat (R, in), R the
sum of the ranks): one ``addmm`` of O(out in R) per tensor, and a plain copy of W0 for a tensor
no adapter touches. Methods that need dense task vectors see, for the fused TIES/breadcrumbs
kernel, :class:`RowBlocks` (dense values formed one fixed block of rows at a time, so memory
holds a block per adapter, and every read of an entry gives the same bits: thresholds stay
exact order statistics), and otherwise one dense tensor per input (:func:`densify`), formed
for the tensor at hand and dropped after it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from evomerge.methods import MergeMethod
from evomerge.methods.lorahub import compose

__all__ = ["LowRank", "Factorized", "factorize", "untouched", "write_factorized", "densify",
           "RowBlocks", "BLOCK"]

BLOCK = 1 << 20  # entries per row block of RowBlocks (the fused kernel's chunk size)


@dataclass(frozen=True, eq=False)
class LowRank:
    """One tensor of an adapted model, unmerged: ``base + scale * b @ a``.

    Attributes:
        base: the base model's tensor, as stored (shared by every adapter of that base).
        a: (r, in) factor, or None where the adapter leaves this tensor alone (rank 0).
        b: (out, r) factor, or None.
        scale: alpha / r (alpha / sqrt(r) with rsLoRA).
    """

    base: torch.Tensor
    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    scale: float = 0.0

    @property
    def rank(self) -> int:
        return 0 if self.a is None else self.a.shape[0]


@dataclass(frozen=True)
class Factorized:
    """A merge result ``c * W0 + b @ a`` (no low-rank part when ``a`` is None)."""

    c: float
    a: torch.Tensor | None  # (R, in), compute dtype
    b: torch.Tensor | None  # (out, R)

    @property
    def is_base(self) -> bool:
        """The result is the base tensor itself (cast): nothing to compute."""
        return self.a is None and self.c == 1.0


def densify(x: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``x`` as a dense tensor in ``dtype`` on ``device`` (a LowRank is formed; a tensor is
    cast)."""
    if not isinstance(x, LowRank):
        return x.to(device=device, dtype=dtype)
    base = x.base.to(device=device, dtype=dtype)
    if x.a is None:
        return base
    out = torch.addmm(base.reshape(x.b.shape[0], -1), x.b.to(device, dtype),
                      x.a.to(device, dtype), alpha=x.scale)
    return out.reshape(x.base.shape)


def factorize(method: MergeMethod, inputs: Sequence[Any], base: Any, shared: dict,
              per_model: dict, dtype: torch.dtype, device: torch.device) -> Factorized | None:
    """The merge of ``inputs`` as ``c W0 + B @ A`` (module docstring), or None when it is not
    one: an input that is not an adapter of the same base tensor, or a method that needs dense
    task vectors. ``base`` is the method's base tensor (None for ``linear``)."""
    if not inputs or not all(isinstance(x, LowRank) for x in inputs):
        return None
    w = [float(v) for v in per_model.get("weight", ())]
    if method.name == "linear":
        w0 = inputs[0].base
        if any(x.base is not w0 for x in inputs):
            return None
        div = sum(w) if shared.get("normalize") else 1.0
        c, coef = _ratio(sum(w), div), [_ratio(wi * x.scale, div) for wi, x in zip(w, inputs)]
        return _concat(inputs, coef, c, dtype, device)
    if base is None or isinstance(base, LowRank) or any(x.base is not base for x in inputs):
        return None
    if method.factored:
        ab = compose(inputs, w, dtype, device)
        return Factorized(1.0, *ab) if ab else Factorized(1.0, None, None)
    if method.composition is not None and all(x.a is None for x in inputs):
        return Factorized(1.0, None, None)  # every task vector is 0: W0 + lambda * 0
    if method.composition != (None, None):
        return None
    lam = float(shared.get("lambda", 1.0))
    total = sum(w)
    div = (total if abs(total) >= 1e-8 else 1.0) if shared.get("normalize") else 1.0
    return _concat(inputs, [lam * wi * x.scale / div for wi, x in zip(w, inputs)], 1.0,
                   dtype, device)


def untouched(method: MergeMethod, inputs: Sequence[Any], base: Any, shared: dict,
              per_model: dict, dtype: torch.dtype) -> torch.Tensor | None:
    """The base tensor W0 when the merge leaves it as it is (every input an adapter that does
    not touch this tensor, and the method maps W0 to W0 in ``dtype``), else None. Cheap: no
    factor is read."""
    if not inputs or not all(isinstance(x, LowRank) and x.a is None for x in inputs):
        return None
    f = factorize(method, inputs, base, shared, per_model, dtype, torch.device("cpu"))
    return None if f is None or not f.is_base else (base if base is not None else inputs[0].base)


def _ratio(num: float, div: float) -> float:
    """num / div with IEEE semantics (a zero sum of weights gives inf/NaN, as the dense
    kernel's division does), in Python floats: a tensor per call cost more than the merge."""
    if div != 0.0:
        return num / div
    if num == 0.0 or math.isnan(num):
        return math.nan
    return math.copysign(math.inf, num) * math.copysign(1.0, div)


def _concat(inputs: Sequence[LowRank], coef: Sequence[float], c: float, dtype: torch.dtype,
            device: torch.device) -> Factorized:
    live = [(x, k) for x, k in zip(inputs, coef) if x.a is not None]
    if not live:
        return Factorized(c, None, None)
    a = torch.cat([x.a.to(device, dtype) * k for x, k in live])  # (R, in)
    b = torch.cat([x.b.to(device, dtype) for x, _ in live], dim=1)  # (out, R)
    return Factorized(c, a, b)


def write_factorized(out: torch.Tensor, base: torch.Tensor, f: Factorized,
                     dtype: torch.dtype) -> None:
    """``out <- c W0 + B @ A`` computed in ``dtype``, cast once to ``out.dtype``."""
    w0 = base.to(device=out.device, dtype=dtype)
    if f.c != 1.0:
        w0 = w0 * f.c
    if f.a is None:
        out.copy_(w0)
        return
    rows = f.b.shape[0]
    out.view(rows, -1).copy_(torch.addmm(w0.reshape(rows, -1), f.b, f.a))


class RowBlocks:
    """The dense values of a :class:`LowRank` as a flat tensor in ``dtype``, formed one fixed
    block of rows at a time (``x[slice]`` and ``x[index_tensor]``): each entry is always
    computed within the same block by the same ``addmm``, so it has the same bits whichever
    entries are asked for together. ``block`` entries per block (whole rows)."""

    def __init__(self, x: LowRank, dtype: torch.dtype, device: torch.device) -> None:
        self.x, self.dtype, self.device = x, dtype, torch.device(device)
        self.rows_total = x.base.shape[0] if x.base.dim() else 1
        self.width = max(1, x.base.numel() // max(self.rows_total, 1))
        self.rows = max(1, BLOCK // self.width)
        self.block = self.rows * self.width
        self._flat_base = x.base.reshape(self.rows_total, self.width)
        self._a = None if x.a is None else x.a.to(self.device, dtype)

    def numel(self) -> int:
        return self.x.base.numel()

    def reshape(self, *shape: int) -> RowBlocks:
        return self  # already flat

    def _block(self, k: int) -> torch.Tensor:
        r0, r1 = k * self.rows, min((k + 1) * self.rows, self.rows_total)
        w0 = self._flat_base[r0:r1].to(self.device, self.dtype)
        if self._a is None:
            return w0.reshape(-1)
        b = self.x.b[r0:r1].to(self.device, self.dtype)
        return torch.addmm(w0, b, self._a, alpha=self.x.scale).reshape(-1)

    def __getitem__(self, key: slice | torch.Tensor) -> torch.Tensor:
        if isinstance(key, slice):
            start, stop, _ = key.indices(self.numel())
            if stop <= start:
                return torch.empty(0, dtype=self.dtype, device=self.device)
            k0, k1 = start // self.block, (stop - 1) // self.block
            parts = [self._block(k) for k in range(k0, k1 + 1)]
            flat = parts[0] if len(parts) == 1 else torch.cat(parts)
            return flat[start - k0 * self.block: stop - k0 * self.block]
        idx = key.to(self.device).reshape(-1)
        out = torch.empty(idx.numel(), dtype=self.dtype, device=self.device)
        if idx.numel() == 0:
            return out
        blocks = idx // self.block
        order = torch.argsort(blocks)
        ids, counts = torch.unique_consecutive(blocks[order], return_counts=True)
        pos = 0
        for k, n in zip(ids.tolist(), counts.tolist()):
            sel = order[pos:pos + n]
            out[sel] = self._block(k)[idx[sel] - k * self.block]
            pos += n
        return out
