"""The element-wise merge kernels, eager or compiled once with ``torch.compile``.

Task arithmetic, TIES and breadcrumbs run through one fused element-wise kernel, which reads
the base and the M experts once and computes, per entry (TIES steps 1-3, Yadav et al. 2023)::

    d_i    = e_i - b                                              task vector, compute dtype
    k_i    = w_i d_i  if lo_i <= |d_i| <= hi_i  else 0           trim (step 1)
    pos    = sum_i k_i >= 0                                       elect (step 2)
    a_i    = (k_i > 0) if pos else (k_i < 0)                      agreement (zeros never agree)
    mixed  = sum_i a_i k_i,  div = sum_i a_i w_i                  disjoint merge (step 3)
    out    = b + lambda * mixed / div (div = 1 where 0; no division unless normalize)

Entries whose magnitude falls inside a sampled bracket of a threshold are written as NaN and
counted, so the exact thresholds can be selected among them afterwards
(:mod:`evomerge.engine.select`, :mod:`evomerge.engine.grouped`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

__all__ = ["task_vector_kernel", "linear_kernel", "FusedKernel", "compiles_exactly", "CHUNK",
           "COUNTS_PER_EXPERT"]

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # entries per kernel call: bounds the eager kernel's fp32 temporaries (4 MB each)
COUNTS_PER_EXPERT = 4  # [#|d| < a_lo, #in lo bracket, #|d| < a_hi, #in hi bracket]


def task_vector_kernel(out: torch.Tensor, counts: torch.Tensor, base: torch.Tensor,
                       experts: Sequence[torch.Tensor], lo: torch.Tensor, hi: torch.Tensor,
                       br: torch.Tensor, w: torch.Tensor, wsum: torch.Tensor, lam: torch.Tensor,
                       normalize: bool, consensus: bool) -> None:
    """Write the merge into ``out`` (module docstring). Flat tensors: out, base, experts (N,);
    lo, hi, w (M,), lam () and wsum () (sum_i w_i, 1 where ~0; computed by the caller, see
    :func:`linear_kernel`) in the compute dtype; br (4M,) brackets [a_lo, b_lo, a_hi, b_hi]
    per expert (inf: none). Entries inside a bracket are written as NaN, and ``counts``
    (4M + 1,) receives, per expert, [#|d| < a_lo, #in lo bracket, #|d| < a_hi, #in hi
    bracket], then the number of entries written as NaN."""
    cd = w.dtype
    b = base.to(cd)
    kept, cnt = [], []
    undecided = None
    for i, e in enumerate(experts):
        d = e.to(cd) - b
        mag = d.abs()
        kept.append(torch.where((mag >= lo[i]) & (mag <= hi[i]), d * w[i], 0.0))
        in_lo = (mag >= br[4 * i]) & (mag <= br[4 * i + 1])
        in_hi = (mag >= br[4 * i + 2]) & (mag <= br[4 * i + 3])
        # A bracket [v, v] (many entries tied at v, e.g. an untouched tensor's zeros) needs no
        # recomputation: its threshold is v itself once the counts confirm it.
        u = (in_lo & (br[4 * i] < br[4 * i + 1])) | (in_hi & (br[4 * i + 2] < br[4 * i + 3]))
        undecided = u if undecided is None else undecided | u
        cnt += [(mag < br[4 * i]).sum(), in_lo.sum(), (mag < br[4 * i + 2]).sum(), in_hi.sum()]
    counts.copy_(torch.stack(cnt + [undecided.sum()]))
    if consensus:
        pos = sum(kept) >= 0
        mixed = torch.zeros_like(b)
        div = torch.zeros_like(b)
        for i, k in enumerate(kept):
            agree = torch.where(pos, k > 0, k < 0)
            mixed = mixed + torch.where(agree, k, 0.0)
            div = div + torch.where(agree, w[i], 0.0)
        div = torch.where(div == 0, 1.0, div)
    else:
        mixed = sum(kept)
        div = wsum
    if normalize:
        mixed = mixed / div
    out.copy_(torch.where(undecided, math.nan, b + lam * mixed))


def linear_kernel(out: torch.Tensor, tensors: Sequence[torch.Tensor], w: torch.Tensor,
                  div: torch.Tensor | None) -> None:
    """Weighted soup into ``out``: sum_i w_i x_i (/ div); flat tensors, w (M,) and div () in
    the compute dtype. ``div`` (sum_i w_i, or None) is computed by the caller: Inductor turns
    a division by an in-kernel reduction into a reciprocal multiply, which eager does not."""
    cd = w.dtype
    acc = tensors[0].to(cd) * w[0]
    for i in range(1, len(tensors)):
        acc = acc + tensors[i].to(cd) * w[i]
    if div is not None:
        acc = acc / div
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
        self._compiled = torch.compile(fn, dynamic=True) if compile else None

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def __call__(self, *args: object, **kwargs: object) -> None:
        if self._compiled is not None:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 -- any backend failure means "use eager"
                log.warning("torch.compile failed (%s); using the eager kernel.", exc)
                self._compiled = None
        return self._fn(*args, **kwargs)


def compiles_exactly(dtype: torch.dtype) -> bool:
    """Inductor computes 16-bit element-wise chains in float32 and rounds once, where eager
    rounds after every op: only float32/float64 compute gives the same bits both ways."""
    return dtype in (torch.float32, torch.float64)
