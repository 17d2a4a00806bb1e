"""Per-tensor merge engine shared by the streaming merge and the resident materializer.

Both paths hand every output tensor to one :class:`TensorEngine`, so a recipe evaluated in
memory during the search and the same recipe built by ``evomerge merge`` run the same
arithmetic: inputs are cast to the recipe's ``dtype`` (the compute dtype, mergekit's meaning),
merged, and cast once to the output dtype when written.

Task arithmetic, TIES and breadcrumbs run through one fused element-wise kernel (compiled with
``torch.compile`` where the engine is told to compile), which reads the base and the M experts
once and computes, per entry (TIES steps 1-3, Yadav et al. 2023)::

    d_i    = e_i - b                                              task vector, compute dtype
    k_i    = w_i d_i  if lo_i <= |d_i| <= hi_i  else 0           trim (step 1)
    pos    = sum_i k_i >= 0                                       elect (step 2)
    a_i    = (k_i > 0) if pos else (k_i < 0)                      agreement (zeros never agree)
    mixed  = sum_i a_i k_i,  div = sum_i a_i w_i                  disjoint merge (step 3)
    out    = b + lambda * mixed / div (div = 1 where 0; no division unless normalize)

The trim thresholds lo_i/hi_i are exact order statistics of |d_i| (:mod:`evomerge.engine.select`);
entries equal to a threshold are kept. On large tensors the kernel first takes a sampled
bracket of each threshold instead, counts the entries below it and marks those inside with NaN;
only those few are recomputed with the exact thresholds (same element-wise code).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import torch

from evomerge.engine.lowrank import LowRank, RowBlocks, densify, factorize, write_factorized
from evomerge.engine.select import (
    EXACT_BELOW,
    MagnitudeSample,
    kth_smallest,
    select_in_bracket,
    threshold_ranks,
)
from evomerge.errors import ConfigError
from evomerge.methods import MergeMethod

__all__ = ["fusable", "task_vector_kernel", "linear_kernel", "FusedKernel", "TensorEngine"]

log = logging.getLogger(__name__)

_SPARSIFY = (None, "magnitude", "magnitude_outliers")
_CONSENSUS = (None, "sum")
_INF = math.inf
CHUNK = 1 << 20  # entries per kernel call: bounds the eager kernel's fp32 temporaries (4 MB each)
Fetch = Callable[[str, str], torch.Tensor]


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


def task_vector_kernel(out: torch.Tensor, counts: torch.Tensor, base: torch.Tensor,
                       experts: Sequence[torch.Tensor], lo: torch.Tensor, hi: torch.Tensor,
                       br: torch.Tensor, w: torch.Tensor, wsum: torch.Tensor, lam: torch.Tensor,
                       normalize: bool, consensus: bool) -> None:
    """Write the merge into ``out`` (module docstring). Flat tensors: out, base, experts (N,);
    lo, hi, w (M,), lam () and wsum () (sum_i w_i, 1 where ~0; computed by the caller, see
    :func:`linear_kernel`) in the compute dtype; br (4M,) brackets [a_lo, b_lo, a_hi, b_hi]
    per expert (inf: none). Entries inside a bracket are written as NaN, and ``counts`` (4M,)
    receives, per expert, [#|d| < a_lo, #in lo bracket, #|d| < a_hi, #in hi bracket]."""
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
    counts.copy_(torch.stack(cnt))
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


class TensorEngine:
    """Computes one output tensor of a plan into a preallocated ``out``.

    Magnitude thresholds of tensors of at least ``EXACT_BELOW`` entries come from sampled
    brackets (samples cached per source tensor for the engine's life), smaller ones from a
    full selection; the values are the exact order statistics either way.

    Args:
        compile: compile the fused kernels (the eager ones compute the same bits; tested).
    """

    def __init__(self, compile: bool = True) -> None:
        self._tv = FusedKernel(compile, task_vector_kernel)
        self._linear = FusedKernel(compile, linear_kernel)
        self._samples: dict[tuple[str, str, str], MagnitudeSample] = {}

    @property
    def compiled(self) -> bool:
        """Whether the task-vector kernel runs compiled (it falls back to eager for good
        when compilation fails)."""
        return self._tv.compiled

    def run(self, task, method: MergeMethod, fetch: Fetch, compute_dtype: torch.dtype | None,
            out: torch.Tensor) -> None:
        """Merge ``task`` into ``out`` (cast once to ``out.dtype``), on ``out``'s device.

        ``fetch(model, name)`` returns a source tensor as stored, on ``out``'s device or in
        host memory (offload): task-vector merges then stream it to the device chunk by chunk,
        so device memory holds ``out`` plus a few chunks; other methods copy whole tensors. An
        adapted source's tensor is a :class:`~evomerge.engine.lowrank.LowRank` value, merged
        from its factors where the method allows (:mod:`evomerge.engine.lowrank`)."""
        inputs = [fetch(*r) for r in task.inputs]
        base = fetch(*task.base) if task.base is not None else None
        if any(isinstance(x, LowRank) for x in [*inputs, base]):
            self._adapted(task, method, inputs, base, compute_dtype, out)
            return
        if method.factored:
            raise ConfigError(f"Merge method {method.name!r} composes LoRA adapters: every "
                              f"model of the recipe must be an adapter of its base "
                              f"(BASE+ADAPTER), but {task.out_name!r} has full-model inputs.")
        self._dense(task, method, inputs, base, compute_dtype, out)

    def _dense(self, task, method: MergeMethod, inputs: list[torch.Tensor],
               base: torch.Tensor | None, compute_dtype: torch.dtype | None,
               out: torch.Tensor) -> None:
        from evomerge.engine.plan import execute

        dev = out.device
        kind = fusable(method, task.shared) if task.inputs else None
        if kind == "task_vectors" and base is not None:
            self._task_vectors(task, method, base.reshape(-1), [e.reshape(-1) for e in inputs],
                               compute_dtype, out.view(-1))
        elif kind == "linear":
            tensors = [t.reshape(-1).to(dev, non_blocking=True) for t in inputs]
            w = torch.tensor(task.per_model["weight"], device=out.device,
                             dtype=compute_dtype or tensors[0].dtype)
            kernel = self._linear if _compiles_exactly(w.dtype) else linear_kernel
            div = w.sum() if task.shared.get("normalize") else None
            kernel(out.view(-1), tensors, w, div)
        else:
            table = dict(zip(task.inputs, inputs))
            if task.base is not None:
                table[task.base] = base

            def cast(model: str, name: str) -> torch.Tensor:
                t = table[(model, name)].to(dev, non_blocking=True)
                return t if compute_dtype is None else t.to(compute_dtype)
            out.copy_(execute(task, method, cast))

    def _adapted(self, task, method: MergeMethod, inputs: list, base,
                 compute_dtype: torch.dtype | None, out: torch.Tensor) -> None:
        """A task with adapted inputs: from the factors when the merge is linear in them, by
        row blocks for the fused task-vector kernel, else densified per tensor."""
        dev = out.device
        w0 = base if base is not None else inputs[0]
        w0 = w0.base if isinstance(w0, LowRank) else w0
        cd = compute_dtype or w0.dtype
        f = factorize(method, inputs, base, task.shared, task.per_model, cd, dev)
        if f is not None:
            write_factorized(out, w0, f, cd)
            return
        if method.factored:
            raise ConfigError(f"Merge method {method.name!r} composes LoRA adapters of the "
                              f"recipe's base: every model must be BASE+ADAPTER over that base "
                              f"(tensor {task.out_name!r} has another input).")
        blocks = base is not None and not isinstance(base, LowRank) and all(
            isinstance(x, LowRank) and x.base is base for x in inputs)
        if blocks and fusable(method, task.shared) == "task_vectors":
            experts = [RowBlocks(x, cd, dev) for x in inputs]
            self._task_vectors(task, method, base.reshape(-1), experts, cd, out.view(-1))
            return
        self._dense(task, method, [densify(x, cd, dev) for x in inputs],
                    None if base is None else densify(base, cd, dev), cd, out)

    def _task_vectors(self, task, method: MergeMethod, base: torch.Tensor, experts: list,
                      compute_dtype: torch.dtype | None, out: torch.Tensor) -> None:
        """TIES-family merge of flat ``experts`` (tensors, or RowBlocks) into flat ``out``."""
        sparsify, consensus = method.composition
        cd, dev, n, m = compute_dtype or base.dtype, out.device, base.numel(), len(experts)
        density = task.per_model.get("density", (1.0,) * m)
        gamma = task.per_model.get("gamma", (0.01,) * m)
        ranks = [threshold_ranks(sparsify, n, density[i], gamma[i]) for i in range(m)]
        w = torch.tensor(task.per_model["weight"], device=dev, dtype=cd)
        lam = torch.tensor(task.shared.get("lambda", 1.0), device=dev, dtype=cd)
        total = w.sum()
        wsum = torch.where(total.abs() < 1e-8, 1.0, total)
        flags = (w, wsum, lam, bool(task.shared.get("normalize")), consensus is not None)
        no_br = torch.full((4 * m,), _INF, device=dev, dtype=cd)
        sparse = any(r != (None, None) for r in ranks)
        if not (sparse and n >= EXACT_BELOW):
            lo, hi = self._exact(ranks, base, experts, cd, dev)
            self._kernel(out, base, experts, lo, hi, no_br, flags)
            return
        samples = [self._sample(task, i, experts[i], base, cd) for i in range(m)]
        brackets = [[s.bracket(r) if r else (_INF, _INF) for r in rk]
                    for s, rk in zip(samples, ranks)]
        br = torch.tensor([v for pair in brackets for ab in pair for v in ab], device=dev, dtype=cd)
        lo = torch.tensor([_bound(rk[0], ab[0][0], 0.0) for rk, ab in zip(ranks, brackets)],
                          device=dev, dtype=cd)
        hi = torch.tensor([_bound(rk[1], ab[1][1], _INF) for rk, ab in zip(ranks, brackets)],
                          device=dev, dtype=cd)
        counts = self._kernel(out, base, experts, lo, hi, br, flags)
        idx = torch.isnan(out).nonzero().squeeze(1)
        at = idx if base.device == dev else idx.to(base.device)
        sub_base = base[at].to(dev, non_blocking=True)
        sub_experts = [e[at].to(dev, non_blocking=True) for e in experts]
        exact = self._refine(ranks, brackets, counts, sub_base, sub_experts, cd)
        if exact is None:  # a bracket missed (or NaNs): select over the whole tensor instead
            lo, hi = self._exact(ranks, base, experts, cd, dev)
            self._kernel(out, base, experts, lo, hi, no_br, flags)
            return
        sub_out = torch.empty(idx.numel(), dtype=out.dtype, device=dev)
        self._kernel(sub_out, sub_base, sub_experts, *exact, no_br, flags)
        out[idx] = sub_out

    def _kernel(self, out: torch.Tensor, base: torch.Tensor, experts: Sequence[torch.Tensor],
                lo: torch.Tensor, hi: torch.Tensor, br: torch.Tensor, flags: tuple) -> list[int]:
        """The task-vector kernel; returns its counts. Eager runs and host-held inputs go in
        CHUNK-sized slices (bounded temporaries, bounded device copies); a compiled kernel
        over device inputs keeps no temporaries and runs in one call."""
        dev = out.device
        compiled = self._tv.compiled and _compiles_exactly(lo.dtype)
        kernel = self._tv if compiled else task_vector_kernel
        step = out.numel() if compiled and base.device == dev else CHUNK
        views = [e for e in experts if isinstance(e, RowBlocks)]
        if views:  # one row block of each adapter per call: the bits of RowBlocks
            step = views[0].block
        counts = torch.zeros(br.numel(), dtype=torch.int64, device=dev)
        part = torch.empty_like(counts)
        for s in range(0, out.numel(), max(step, 1)):
            sl = slice(s, s + step)
            kernel(out[sl], part, base[sl].to(dev, non_blocking=True),
                   [e[sl].to(dev, non_blocking=True) for e in experts], lo, hi, br, *flags)
            counts += part
        return counts.tolist()

    def _sample(self, task, i: int, expert: torch.Tensor, base: torch.Tensor,
                cd: torch.dtype) -> MagnitudeSample:
        key = (task.inputs[i][0], task.base[0], task.inputs[i][1], str(cd))
        if key not in self._samples:
            self._samples[key] = MagnitudeSample(expert, base, cd, task.inputs[i][1])
        return self._samples[key]

    @staticmethod
    def _exact(ranks, base: torch.Tensor, experts: Sequence[torch.Tensor], cd: torch.dtype,
               dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact thresholds by selection over each full |d_i| (small tensors, and the rare
        missed bracket): one tensor of workspace, filled chunk by chunk."""
        lo, hi = [], []
        mag = (torch.empty(base.numel(), dtype=cd, device=dev)
               if any(r_lo for r_lo, _ in ranks) else None)
        for (r_lo, r_hi), e in zip(ranks, experts):
            if r_lo:
                for s in range(0, mag.numel(), CHUNK):
                    sl = slice(s, s + CHUNK)
                    torch.abs(e[sl].to(dev).to(cd) - base[sl].to(dev).to(cd), out=mag[sl])
            lo.append(_INF if r_lo == 0 else kth_smallest(mag, r_lo) if r_lo else 0.0)
            hi.append(_INF if r_hi == 0 else kth_smallest(mag, r_hi) if r_hi else _INF)
        return (torch.tensor(lo, device=dev, dtype=cd), torch.tensor(hi, device=dev, dtype=cd))

    @staticmethod
    def _refine(ranks, brackets, counts: list[int], sub_base: torch.Tensor,
                sub_experts: Sequence[torch.Tensor], cd: torch.dtype):
        """Exact thresholds from the flagged entries, or None if a bracket missed."""
        lo, hi = [], []
        b = sub_base.to(cd)
        for i, ((r_lo, r_hi), pair, e) in enumerate(zip(ranks, brackets, sub_experts)):
            mag = (e.to(cd) - b).abs()
            found = []
            for j, (r, (a, bb)) in enumerate(zip((r_lo, r_hi), pair)):
                if not r:
                    found.append((_INF if r == 0 else 0.0) if j == 0 else _INF)
                    continue
                v = select_in_bracket(mag, a, bb, counts[4 * i + 2 * j],
                                      counts[4 * i + 2 * j + 1], r)
                if v is None:
                    return None
                found.append(v)
            lo.append(found[0])
            hi.append(found[1])
        dev = sub_base.device
        return torch.tensor(lo, device=dev, dtype=cd), torch.tensor(hi, device=dev, dtype=cd)


def _compiles_exactly(dtype: torch.dtype) -> bool:
    """Inductor computes 16-bit element-wise chains in float32 and rounds once, where eager
    rounds after every op: only float32/float64 compute gives the same bits both ways."""
    return dtype in (torch.float32, torch.float64)


def _bound(rank: int | None, inside: float, unbounded: float) -> float:
    """A provisional threshold: any value inside the bracket decides every entry outside it."""
    if rank is None:
        return unbounded
    return _INF if rank == 0 else inside
