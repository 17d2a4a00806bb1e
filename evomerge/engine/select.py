"""Exact order statistics of task-vector magnitudes without sorted copies.

Magnitude sparsification (TIES, breadcrumbs) needs, per tensor and per candidate, the value of
a given rank of ``|delta|``. Sorting every task vector once and keeping the sorted copy (the
old design) costs one more model copy per expert and a first candidate 20-200x slower than the
next. Instead, per (expert, tensor) we keep a small sorted random sample of ``|delta|``
(:class:`MagnitudeSample`, n/64 values); for a rank r it brackets the r-th smallest value
with overwhelming probability (:func:`bracket`). The fused kernel then counts the entries below
the bracket and flags those inside it, and the exact value is selected among the flagged entries
only (:func:`select_in_bracket`). A bracket that misses (probability < 1e-5 per threshold) is
detected by the counts and answered by an exact selection over the whole tensor, so the
threshold is always the exact order statistic, whichever path computed it.
"""

from __future__ import annotations

import math
import zlib

import torch

__all__ = ["kth_smallest", "threshold_ranks", "MagnitudeSample", "bracket", "select_in_bracket"]

EXACT_BELOW = 1 << 16  # tensors this small are selected exactly (a sample would not pay off)
_SIGMAS = 4.5  # bracket half-width in binomial standard deviations of the sample rank
SAMPLE_SHIFT = 6  # a sample holds n / 64 values: with fp32 magnitudes, 1/16 byte per entry


def kth_smallest(values: torch.Tensor, r: int) -> float:
    """The r-th smallest entry (1-based) of a flat tensor, exactly, in O(n) (``kthvalue``)."""
    work = values if values.device.type != "cpu" or values.dtype != torch.bfloat16 else values.float()
    return float(torch.kthvalue(work, r).values)


def threshold_ranks(sparsify: str | None, n: int, density: float,
                    gamma: float = 0.01) -> tuple[int | None, int | None]:
    """1-based ascending ranks (lo, hi) of the kept magnitude range of one task vector.

    magnitude (TIES trim) keeps k = max(1, int(density n)) largest: lo is rank n - k + 1 and
    every entry >= that value is kept, so entries tied with the threshold are all kept.
    magnitude_outliers (breadcrumbs) keeps ascending ranks [n_bot, n_bot + target) (0-based),
    target = int(density n), n_bot = max(0, n - target - int(gamma n)), ties kept at both ends.
    ``None`` means unbounded; (0, 0) means nothing is kept.
    """
    if sparsify is None or density >= 1 or n == 0:
        return None, None
    if sparsify == "magnitude":
        if density <= 0:
            return 0, 0
        return n - max(1, int(density * n)) + 1, None
    target = int(density * n)
    if target <= 0:
        return 0, 0
    n_bot = max(0, n - target - int(gamma * n))
    return n_bot + 1, n_bot + target


class MagnitudeSample:
    """A sorted random sample of ``|expert - base|`` of one tensor (seeded by its name).

    Args:
        expert, base: flat tensors of one source tensor (any float dtype, same device).
        compute_dtype: the dtype the merge computes in (magnitudes are taken in it).
        name: seeds the sample, so reruns draw the same positions.
    """

    def __init__(self, expert: torch.Tensor, base: torch.Tensor, compute_dtype: torch.dtype,
                 name: str) -> None:
        n = expert.numel()
        self.n = n
        size = min(n, max(EXACT_BELOW // 4, n >> SAMPLE_SHIFT))
        gen = torch.Generator(device=expert.device).manual_seed(zlib.crc32(name.encode()))
        idx = torch.randint(n, (size,), generator=gen, device=expert.device)
        mag = (expert[idx].to(compute_dtype) - base[idx].to(compute_dtype)).abs()
        # (size,) ascending, kept in host memory as a NumPy array (float32 holds every value of
        # a 16-bit compute dtype exactly): brackets are read with no device work at all
        self.values = mag.sort().values.cpu().to(
            torch.float64 if compute_dtype == torch.float64 else torch.float32).numpy()

    def bracket(self, r: int) -> tuple[float, float]:
        return bracket(self.values, self.n, r)


def bracket(sample, n: int, r: int) -> tuple[float, float]:
    """[a, b] that holds the r-th smallest of n values with probability > 1 - 1e-5, from an
    ascending random sample of them (a NumPy array or a tensor): the sample ranks of the r-th
    value are Binomial(s, q)."""
    s = len(sample)
    q = (r - 0.5) / n
    j = q * s
    margin = _SIGMAS * math.sqrt(max(s * q * (1 - q), 1.0)) + 2
    ja, jb = math.floor(j - margin), math.ceil(j + margin)
    a = float(sample[ja]) if ja >= 0 else -math.inf
    b = float(sample[jb]) if jb < s else math.inf
    return a, b


def select_in_bracket(flagged_mag: torch.Tensor, a: float, b: float, below: int,
                      inside: int, r: int) -> float | None:
    """The r-th smallest value overall, given the magnitudes of (at least) every entry inside
    [a, b], the count ``below`` of entries < a and the count ``inside`` in [a, b].

    Returns None when the r-th value is not in the bracket (the caller selects exactly).
    """
    if not below < r <= below + inside:
        return None
    if a == b:  # every entry in the bracket equals a
        return a
    vals = flagged_mag[(flagged_mag >= a) & (flagged_mag <= b)]
    if vals.numel() != inside:  # NaNs or a miscount: never guess
        return None
    return kth_smallest(vals, r - below)
