"""Task-vector merges of many tensors at once, with one host round trip per candidate.

On a GPU the per-tensor work of TIES is small (a 4M-entry tensor is read in microseconds), so
what costs is waiting: every ``float(t)``, ``.tolist()``, ``nonzero()`` or pageable host-to-
device copy stalls the host until the device has caught up. For the tensors of a plan (all of
a candidate's task-vector tensors, or one tensor for the streaming merge), this module:

1. builds every tensor's parameters on the host (weights, lambda, provisional thresholds from
   the sampled brackets, :mod:`evomerge.engine.select`) into one table per (experts, dtype)
   group, sent to the device in one non-blocking copy from pinned memory;
2. selects the exact thresholds of small tensors on the device, many tensors per launch
   (their magnitudes stacked, sorted along rows, each row's rank gathered);
3. runs the fused kernel of every tensor (:mod:`evomerge.engine.kernels`), which marks entries
   inside a bracket with NaN and counts them into one device table;
4. reads that table once (the one synchronization);
5. for each tensor with marked entries, selects each exact threshold among them on the
   device and recomputes those entries; a bracket that missed (the counts say so; probability
   < 1e-5 per threshold) is answered by an exact selection over the whole tensor.

The thresholds are the exact order statistics whichever step found them, so every path writes
the same bits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from evomerge.engine.kernels import CHUNK, FusedKernel, compiles_exactly, task_vector_kernel
from evomerge.engine.lowrank import RowBlocks
from evomerge.engine.select import (
    EXACT_BELOW,
    MagnitudeSample,
    kth_smallest,
    threshold_ranks,
)

__all__ = ["TaskVectorBatch"]

_INF = math.inf
_ALIGN = 8  # table fields start at multiples of 8 entries (16-byte aligned views for bf16)
_STACK = 1 << 24  # entries of stacked magnitudes per sort, at most


@dataclass
class _Job:
    """One output tensor: flat views, ranks per expert, and its row of the group's table."""

    task: object
    out: torch.Tensor
    base: torch.Tensor
    experts: list[torch.Tensor]
    ranks: list[tuple[int | None, int | None]]
    kind: str  # "dense" (no trim), "exact" (small: selected on the device), "sampled"
    brackets: list | None
    row: int = 0


class _Table:
    """Per-tensor parameters of a group of jobs (same expert count and compute dtype): row r
    holds w (M), lo (M), hi (M), brackets (4M), lambda, sum of w, each field aligned."""

    def __init__(self, m: int, cd: torch.dtype, dev: torch.device, rows: list[list[float]]):
        mp = -(-m // _ALIGN) * _ALIGN
        self.m, self.cd, self.dev = m, cd, dev
        self.w, self.lo, self.hi, self.br = 0, mp, 2 * mp, 3 * mp
        self.lam = 3 * mp + -(-4 * m // _ALIGN) * _ALIGN
        self.wsum, width = self.lam + _ALIGN, self.lam + 2 * _ALIGN
        table = []
        for w, lo, hi, br, lam, wsum in rows:
            row = [0.0] * width
            for off, vals in ((self.w, w), (self.lo, lo), (self.hi, hi), (self.br, br),
                              (self.lam, [lam]), (self.wsum, [wsum])):
                row[off:off + len(vals)] = vals
            table.append(row)
        host = torch.tensor(table, dtype=cd)  # each value rounded once, as torch.tensor does
        self.data = to_device(host, dev)
        self.counts = torch.zeros((len(rows), 4 * m + 1), dtype=torch.int64, device=dev)
        self.no_br = torch.full((4 * m,), _INF, dtype=cd, device=dev)

    def args(self, row: int, lo: torch.Tensor | None = None, hi: torch.Tensor | None = None,
             br: torch.Tensor | None = None) -> tuple:
        """(lo, hi, br, w, wsum, lam) views of ``row`` (any of the first three replaced)."""
        d, m = self.data[row], self.m
        return (d[self.lo:self.lo + m] if lo is None else lo,
                d[self.hi:self.hi + m] if hi is None else hi,
                d[self.br:self.br + 4 * m] if br is None else br,
                d[self.w:self.w + m], d[self.wsum], d[self.lam])


def to_device(host: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """``host`` on ``dev`` without a stall: pinned, non-blocking (a pageable copy waits)."""
    if dev.type == "cpu":
        return host
    return host.pin_memory().to(dev, non_blocking=True)


def weight_sum(w: Sequence[float]) -> float:
    """sum_i w_i (1 where ~0) on the host, in float64, rounded once to the compute dtype
    when the table is built: every path divides by the same number."""
    total = math.fsum(w)
    return 1.0 if abs(total) < 1e-8 else total


class TaskVectorBatch:
    """Runs the task-vector kernel over many tensors (module docstring).

    Args:
        kernel: the compiled (or eager) task-vector kernel.
        samples: the cache of magnitude samples, per (expert, base, tensor, dtype).
    """

    def __init__(self, kernel: FusedKernel, samples: dict) -> None:
        self._tv, self._samples = kernel, samples

    def run(self, items: Sequence[tuple], sparsify: str | None, consensus: bool,
            compute_dtype: torch.dtype | None) -> None:
        """Merge every ``(task, flat base, flat experts, flat out)`` item: the experts are
        tensors (on the device, or host-held with offload) or row blocks of adapters
        (:class:`~evomerge.engine.lowrank.RowBlocks`), the output on the merge's device."""
        groups: dict[tuple, list[_Job]] = {}
        rows: dict[tuple, list[list[float]]] = {}
        for task, base, experts, out in items:
            job, row = self._prepare(task, sparsify, base, experts, compute_dtype, out)
            key = (len(job.experts), row[0], out.device, bool(task.shared.get("normalize")))
            job.row = len(rows.setdefault(key, []))
            groups.setdefault(key, []).append(job)
            rows[key].append(row[1:])
        for (m, cd, dev, normalize), jobs in groups.items():
            table = _Table(m, cd, dev, rows[(m, cd, dev, normalize)])
            flags = (normalize, consensus)
            self._exact_on_device([j for j in jobs if j.kind == "exact"], table)
            for j in jobs:
                self._launch(j.out, table.counts[j.row], j.base, j.experts, table.args(j.row),
                             flags)
            sampled = [j for j in jobs if j.kind == "sampled"]
            if sampled:
                counts = table.counts.cpu().tolist()  # the one wait for the device
                for j in sampled:
                    self._refine(j, counts[j.row], table, flags)

    def _prepare(self, task, sparsify: str | None, base: torch.Tensor, experts: list,
                 compute_dtype: torch.dtype | None, out: torch.Tensor) -> tuple[_Job, list]:
        cd, n, m = compute_dtype or base.dtype, base.numel(), len(experts)
        density = task.per_model.get("density", (1.0,) * m)
        gamma = task.per_model.get("gamma", (0.01,) * m)
        ranks = [threshold_ranks(sparsify, n, density[i], gamma[i]) for i in range(m)]
        w = [float(x) for x in task.per_model["weight"]]
        lam = float(task.shared.get("lambda", 1.0))
        lo = [_INF if r_lo == 0 else 0.0 for r_lo, _ in ranks]
        hi = [_INF] * m
        br = [_INF] * (4 * m)
        sparse = any(r != (None, None) for r in ranks)
        kind, brackets = ("dense" if not sparse else "exact" if n < EXACT_BELOW
                          else "sampled"), None
        if kind == "sampled":
            samples = [self._sample(task, i, experts[i], base, cd) for i in range(m)]
            brackets = [[s.bracket(r) if r else (_INF, _INF) for r in rk]
                        for s, rk in zip(samples, ranks)]
            br = [v for pair in brackets for ab in pair for v in ab]
            lo = [_bound(rk[0], ab[0][0], 0.0) for rk, ab in zip(ranks, brackets)]
            hi = [_bound(rk[1], ab[1][1], _INF) for rk, ab in zip(ranks, brackets)]
        job = _Job(task, out, base, experts, ranks, kind, brackets)
        return job, [cd, w, lo, hi, br, lam, weight_sum(w)]

    def _sample(self, task, i: int, expert: torch.Tensor, base: torch.Tensor,
                cd: torch.dtype) -> MagnitudeSample:
        key = (task.inputs[i][0], task.base[0], task.inputs[i][1], str(cd))
        if key not in self._samples:
            self._samples[key] = MagnitudeSample(expert, base, cd, task.inputs[i][1])
        return self._samples[key]

    def _launch(self, out: torch.Tensor, counts: torch.Tensor, base: torch.Tensor,
                experts: Sequence[torch.Tensor], args: tuple, flags: tuple) -> None:
        """The task-vector kernel into ``out`` and ``counts``. Eager runs and host-held
        inputs go in CHUNK-sized slices (bounded temporaries, bounded device copies); a
        compiled kernel over device inputs keeps no temporaries and runs in one call."""
        dev = out.device
        compiled = self._tv.compiled and compiles_exactly(args[0].dtype)
        kernel = self._tv if compiled else task_vector_kernel
        n = out.numel()
        blocks = [e for e in experts if isinstance(e, RowBlocks)]
        if not blocks and (compiled and base.device == dev or n <= CHUNK):
            kernel(out, counts, base.to(dev, non_blocking=True),
                   [e.to(dev, non_blocking=True) for e in experts], *args, *flags)
            return
        step = blocks[0].block if blocks else CHUNK  # an adapter's rows: one block per call
        part = torch.empty_like(counts)
        counts.zero_()
        for s in range(0, n, step):
            sl = slice(s, s + step)
            kernel(out[sl], part, base[sl].to(dev, non_blocking=True),
                   [e[sl].to(dev, non_blocking=True) for e in experts], *args, *flags)
            counts += part

    def _exact_on_device(self, jobs: list[_Job], table: _Table) -> None:
        """Exact thresholds of small tensors, written into the table: per tensor size, the
        magnitudes of many (tensor, expert) rows stacked, sorted once, each row's rank taken."""
        by_size: dict[int, list[tuple[_Job, int]]] = {}
        for j in jobs:
            for i, (r_lo, r_hi) in enumerate(j.ranks):
                if r_lo or r_hi:
                    by_size.setdefault(j.base.numel(), []).append((j, i))
        cd, dev = table.cd, table.dev
        for n, items in by_size.items():
            per = max(1, _STACK // n)
            for s in range(0, len(items), per):
                chunk = items[s:s + per]
                mags = torch.stack([(j.experts[i][0:n].to(dev).to(cd)
                                     - j.base.to(dev).to(cd)).abs() for j, i in chunk])
                ordered = (mags.float() if cd == torch.bfloat16 and dev.type == "cpu"
                           else mags).sort(dim=1).values  # (rows, n)
                picks, cols, rows_ = [], [], []
                for k, (j, i) in enumerate(chunk):
                    for r, off in zip(j.ranks[i], (table.lo, table.hi)):
                        if r:
                            picks.append(k * n + r - 1)
                            rows_.append(j.row)
                            cols.append(off + i)
                idx = to_device(torch.tensor([picks, rows_, cols]), dev)
                values = ordered.reshape(-1)[idx[0]].to(cd)
                table.data[idx[1], idx[2]] = values

    def _refine(self, job: _Job, counts: list[int], table: _Table, flags: tuple) -> None:
        """Exact thresholds from the entries marked NaN, then those entries recomputed; or an
        exact selection over the whole tensor when a bracket missed."""
        m, cd = table.m, table.cd
        ok = all(counts[4 * i + 2 * j] < r <= counts[4 * i + 2 * j] + counts[4 * i + 2 * j + 1]
                 for i, rk in enumerate(job.ranks) for j, r in enumerate(rk) if r)
        if not ok:
            lo, hi = _exact(job.ranks, job.base, job.experts, cd, job.out.device)
            scratch = torch.empty(4 * m + 1, dtype=torch.int64, device=job.out.device)
            self._launch(job.out, scratch, job.base, job.experts,
                         table.args(job.row, lo, hi, table.no_br), flags)
            return
        n_marked = counts[4 * m]
        if n_marked == 0:
            return
        dev = job.out.device
        idx = torch.nonzero_static(torch.isnan(job.out), size=n_marked)[:, 0]
        at = idx if job.base.device == dev else idx.to(job.base.device)
        sub_base = job.base[at].to(dev, non_blocking=True)
        sub_experts = [e[at].to(dev, non_blocking=True) for e in job.experts]
        b = sub_base.to(cd)
        lo, hi, *_ = table.args(job.row)
        lo, hi = lo.clone(), hi.clone()
        for i, (rk, pair, e) in enumerate(zip(job.ranks, job.brackets, sub_experts)):
            mag = None
            for j, (r, (a, bb), dst) in enumerate(zip(rk, pair, (lo, hi))):
                if not r or a == bb:  # unbounded, or a confirmed one-value bracket
                    continue
                mag = (e.to(cd) - b).abs() if mag is None else mag
                inside = torch.where((mag >= a) & (mag <= bb), mag, _INF)
                work = inside.float() if cd == torch.bfloat16 and dev.type == "cpu" else inside
                rank = r - counts[4 * i + 2 * j]
                dst[i] = torch.kthvalue(work, rank).values.to(cd)
        sub_out = torch.empty(n_marked, dtype=job.out.dtype, device=dev)
        scratch = torch.empty(4 * m + 1, dtype=torch.int64, device=dev)
        self._launch(sub_out, scratch, sub_base, sub_experts,
                     table.args(job.row, lo, hi, table.no_br), flags)
        job.out[idx] = sub_out


def _exact(ranks, base: torch.Tensor, experts: Sequence[torch.Tensor], cd: torch.dtype,
           dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact thresholds by selection over each full |d_i| (a missed bracket): one tensor of
    workspace, filled chunk by chunk."""
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


def _bound(rank: int | None, inside: float, unbounded: float) -> float:
    """A provisional threshold: any value inside the bracket decides every entry outside it."""
    if rank is None:
        return unbounded
    return _INF if rank == 0 else inside
