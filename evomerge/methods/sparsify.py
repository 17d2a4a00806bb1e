"""Sparsification steps applied to one task vector ``delta = finetuned - base``.

Each function maps ``delta`` (any shape) to a tensor of the same shape with dropped entries set
to zero. Deterministic ones rescale (optionally) to the original L1 norm, as in Model
Breadcrumbs; stochastic ones rescale each kept entry by 1/p_keep, which keeps the merge
unbiased (E[result] = delta), as in DARE (Yu et al. 2023, eq. 2) and DELLA (Deep et al. 2024).
"""

from __future__ import annotations

import torch

__all__ = ["magnitude", "magnitude_outliers", "random_drop", "della_magprune", "SPARSIFIERS"]


def _l1_rescale(masked: torch.Tensor, original: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    before = original.abs().sum()
    after = masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked.mul_(before / after)


def _kth_largest(abs_flat: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value of a flat tensor (k >= 1), in O(n) via ``kthvalue``."""
    n = abs_flat.numel()
    work = abs_flat if abs_flat.device.type != "cpu" else abs_flat.float()
    return torch.kthvalue(work, n - k + 1).values.to(abs_flat.dtype)


def magnitude(
    delta: torch.Tensor, density: float, rescale: bool = False, **_: object
) -> torch.Tensor:
    """TIES trim (Yadav et al. 2023, step 1): keep the ``density`` fraction of largest |delta|.

    k = max(1, int(density * n)) entries survive, and so does every entry tied with the k-th
    largest magnitude: one deterministic rule for both merge paths. Ties are common in real
    checkpoints (bf16 has 8 significant bits, so |delta| repeats), and mergekit keeps exactly
    k (by sort order), so the two differ only on entries whose magnitude equals the threshold.
    """
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    mag = delta.abs()
    threshold = _kth_largest(mag.reshape(-1), k)
    out = delta * (mag >= threshold)
    return _l1_rescale(out, delta) if rescale else out


def magnitude_outliers(
    delta: torch.Tensor, density: float, gamma: float = 0.01, rescale: bool = False,
    **_: object
) -> torch.Tensor:
    """Model Breadcrumbs (Davari & Belilovsky 2023): drop the top ``gamma`` fraction of |delta|
    (outliers) and the smallest entries, keeping ``int(density * n)`` in between.

    In ascending order of magnitude the kept ranks are [n_bot, n_bot + target) with
    target = int(density n), n_top = int(gamma n), n_bot = max(0, n - target - n_top).
    """
    if density >= 1:
        return delta
    n = delta.numel()
    target = int(density * n)
    if target <= 0:
        return torch.zeros_like(delta)
    n_top = int(gamma * n)
    n_bot = max(0, n - target - n_top)
    mag = delta.abs()
    flat = mag.reshape(-1)
    work = flat if flat.device.type != "cpu" else flat.float()
    lo = torch.kthvalue(work, n_bot + 1).values.to(flat.dtype)
    hi = torch.kthvalue(work, n_bot + target).values.to(flat.dtype)
    out = delta * ((mag >= lo) & (mag <= hi))
    return _l1_rescale(out, delta) if rescale else out


def random_drop(
    delta: torch.Tensor,
    density: float,
    rescale: bool = True,
    generator: torch.Generator | None = None,
    **_: object,
) -> torch.Tensor:
    """DARE (Yu et al. 2023): keep each entry with probability p = density, then rescale kept
    entries by 1/p so that E[result] = delta (paper eq. 2)."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    u = torch.rand(delta.shape, generator=generator, device=delta.device, dtype=torch.float32)
    keep = u < density
    out = delta * keep
    return out.mul_(1.0 / density) if rescale else out


def della_magprune(
    delta: torch.Tensor,
    density: float,
    epsilon: float = 0.15,
    rescale: bool = True,
    generator: torch.Generator | None = None,
    **_: object,
) -> torch.Tensor:
    """DELLA MagPrune (Deep et al. 2024): per row, rank entries by |delta|; the keep
    probability grows linearly with rank from density - epsilon (smallest) to
    density + epsilon (largest), so the mean keep rate is ``density``. Kept entries are
    rescaled by 1/p_i (unbiased).

    ``epsilon`` is clamped to min(epsilon, density, 1 - density) so every probability stays in
    [0, 1]: with per-layer density gradients (and in a search) some layers reach densities
    where the requested spread would not fit, and a merge must not fail for that.
    """
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    epsilon = min(epsilon, density, 1 - density)
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    n = rows.shape[1]
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(torch.float32)  # 0 = smallest
    rank_norm = ranks / max(n - 1, 1)
    p = (density - epsilon) + 2 * epsilon * rank_norm
    u = torch.rand(rows.shape, generator=generator, device=delta.device, dtype=torch.float32)
    keep = u < p
    if rescale:  # p > 0 wherever keep is True
        out = torch.where(keep, rows / p.to(rows.dtype), torch.zeros((), dtype=rows.dtype))
    else:
        out = rows * keep
    return out.reshape(delta.shape)


SPARSIFIERS = {
    "magnitude": magnitude,
    "magnitude_outliers": magnitude_outliers,
    "random": random_drop,
    "della_magprune": della_magprune,
}
