"""Fused task-vector kernel for the resident materializer (torch.compile / Inductor).

Eager TIES makes ~30 full passes over memory per tensor (abs, compare, multiply, sign, ...),
about 80x the cost of copying the output. Given thresholds read from magnitudes sorted once
per task vector, everything else is element-wise, so one compiled loop reads base + M task
vectors and writes the output once: the memory-bound floor of (M + 2) / 2 copies.

The kernel computes, per entry (same math as :func:`evomerge.methods.task_arithmetic.
merge_task_vectors` for sparsify in {none, magnitude, magnitude_outliers}, consensus in
{none, sum}, rescale off)::

    k_i    = w_i d_i  if lo_i <= |d_i| <= hi_i  else 0          trim (TIES step 1)
    pos    = sum_i k_i >= 0                                       elect (TIES step 2)
    a_i    = (k_i > 0) if pos else (k_i < 0)                      agreement (zeros never agree)
    mixed  = sum_i a_i k_i,  div = sum_i a_i w_i                  disjoint merge (step 3)
    out    = base + lambda * mixed / div (div = 1 where 0)

Models are unrolled at trace time, so Inductor emits a single vectorized loop; shapes are
dynamic (inputs are flattened), so one compilation serves every tensor of a model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from evomerge.methods import MergeMethod

__all__ = ["fusable", "thresholds", "task_vector_kernel", "linear_kernel", "FusedKernel"]

log = logging.getLogger(__name__)

_SPARSIFY = (None, "magnitude", "magnitude_outliers")
_CONSENSUS = (None, "sum")


def fusable(method: MergeMethod, shared: dict) -> str | None:
    """Which fused kernel serves ``method`` with these global parameters: "task_vectors",
    "linear" or None (use the method's own function)."""
    if method.name == "linear":
        return "linear"
    if method.composition is None:
        return None
    sparsify, consensus = method.composition
    ok = sparsify in _SPARSIFY and consensus in _CONSENSUS and not shared.get("rescale")
    return "task_vectors" if ok else None


def thresholds(sparsify: str | None, sorted_mag: torch.Tensor, density: float,
               gamma: float = 0.01) -> tuple[float, float]:
    """Kept magnitude range [lo, hi] of one task vector, from its ascending sorted magnitudes.

    Matches :mod:`evomerge.methods.sparsify`: magnitude keeps k = max(1, int(density n))
    largest; breadcrumbs keeps ranks [n_bot, n_bot + int(density n)).
    """
    inf = float("inf")
    if sparsify is None or density >= 1:
        return 0.0, inf
    n = sorted_mag.numel()
    if sparsify == "magnitude":
        if density <= 0:
            return inf, inf
        return float(sorted_mag[n - max(1, int(density * n))]), inf
    target = int(density * n)
    if target <= 0:
        return inf, inf
    n_bot = max(0, n - target - int(gamma * n))
    return float(sorted_mag[n_bot]), float(sorted_mag[n_bot + target - 1])


def task_vector_kernel(out: torch.Tensor, base: torch.Tensor, deltas: Sequence[torch.Tensor],
                       lo: torch.Tensor, hi: torch.Tensor, w: torch.Tensor, lam: torch.Tensor,
                       normalize: bool, consensus: bool) -> None:
    """Write the merge into ``out`` (all tensors flat, shape (N,); lo/hi/w shape (M,))."""
    kept = []
    for i, d in enumerate(deltas):
        mag = d.abs()
        kept.append(torch.where((mag >= lo[i]) & (mag <= hi[i]), d * w[i], 0.0))
    if consensus:
        pos = sum(kept) >= 0
        mixed = torch.zeros_like(base)
        div = torch.zeros_like(base)
        for i, k in enumerate(kept):
            agree = torch.where(pos, k > 0, k < 0)
            mixed = mixed + torch.where(agree, k, 0.0)
            div = div + torch.where(agree, w[i], 0.0)
        div = torch.where(div == 0, 1.0, div)
    else:
        mixed = sum(kept)
        total = w.sum()
        div = torch.where(total.abs() < 1e-8, 1.0, total)
    if normalize:
        mixed = mixed / div
    out.copy_(base + lam * mixed)


def linear_kernel(out: torch.Tensor, tensors: Sequence[torch.Tensor], w: torch.Tensor,
                  normalize: bool) -> None:
    """Weighted soup into ``out``: sum_i w_i x_i (/ sum_i w_i); flat tensors, w shape (M,)."""
    acc = tensors[0] * w[0]
    for i in range(1, len(tensors)):
        acc = acc + tensors[i] * w[i]
    if normalize:
        acc = acc / w.sum()
    out.copy_(acc)


class FusedKernel:
    """A kernel compiled once (dynamic shapes); falls back to eager for good if compilation
    is unavailable (e.g. no C++ compiler), with one warning.

    Args:
        fn: :func:`task_vector_kernel` (default) or :func:`linear_kernel`.
        compile: compile with ``torch.compile``; False runs the same function eagerly.
    """

    def __init__(self, compile: bool = True, fn=task_vector_kernel) -> None:
        self._fn = fn
        self._compiled = None
        if compile:
            self._compiled = torch.compile(fn, dynamic=True)

    def __call__(self, *args: object, **kwargs: object) -> None:
        if self._compiled is not None:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 -- any backend failure means "use eager"
                log.warning("torch.compile failed (%s); using the eager kernel.", exc)
                self._compiled = None
        return self._fn(*args, **kwargs)
