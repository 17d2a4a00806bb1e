"""Task-vector merges whose weights or masks come from the task vectors themselves: SCE,
RAM and Arcee Fusion.

SCE (Wan et al. 2024, FuseChat 2.0, https://arxiv.org/abs/2408.07990): select, calculate,
erase, over the task vectors tau_i = theta_i - theta_base of M models, shape (M, *shape):

    select     keep the ``select_topk`` fraction of entries (of those with non-zero variance)
               whose variance across the M task vectors is largest; the same entries for all
    calculate  w_i = mean(tau_i^2) / sum_j mean(tau_j^2)      (uniform if the sum is ~0)
    erase      drop entries whose sign disagrees with sgn(sum_i tau_i) (TIES' elect)
    theta      = theta_base + sum_i w_i m_i tau_i / max(sum_i w_i m_i, 1e-6)

The weights come from the task vectors themselves, so the method has no per-model weight.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from evomerge.methods.consensus import sign_sum
from evomerge.methods.spec import MergeMethod, ParamSpec, register

__all__ = ["sce", "ram", "arcee_fusion"]


def _select(taus: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mask (shape of one task vector) of the highest-variance entries across models."""
    if fraction >= 1:
        return torch.ones_like(taus[0])
    var = taus.var(dim=0, unbiased=False)
    k = int(torch.count_nonzero(var) * fraction) if fraction > 0 else 0
    mask = torch.zeros_like(var)
    if k > 0:
        mask.view(-1)[torch.topk(var.abs().reshape(-1), k).indices] = 1
    return mask


def _energy_weights(taus: torch.Tensor) -> torch.Tensor:
    """w_i = mean(tau_i^2) / sum_j mean(tau_j^2), shaped (M, 1, ..., 1) to broadcast."""
    energy = taus.square().reshape(taus.shape[0], -1).mean(dim=1)
    total = float(energy.sum())
    w = torch.full_like(energy, 1.0 / len(energy)) if abs(total) < 1e-6 else energy / total
    return w.reshape(-1, *([1] * (taus.dim() - 1)))


def sce(tensors: Sequence[torch.Tensor], base: torch.Tensor, *, select_topk: float = 1.0,
        int8_mask: bool = False) -> torch.Tensor:
    """Select, calculate, erase (module docstring); ``int8_mask`` is mergekit's memory option
    and changes nothing here."""
    if not tensors:
        return base
    taus = torch.stack([t - base for t in tensors])                        # (M, *shape)
    taus = taus * _select(taus, select_topk)
    keep = sign_sum(taus).to(taus.dtype)
    w = _energy_weights(taus) * keep
    return base + (taus * w).sum(dim=0) / w.sum(dim=0).clamp(min=1e-6)


register(MergeMethod(
    "sce", sce, (
        ParamSpec("select_topk", False, 1.0, low=0.0, high=1.0, search=(0.1, 1.0),
                  doc="fraction of highest-variance entries kept"),
        ParamSpec("int8_mask", False, False, kind=bool,
                  doc="mergekit memory option; accepted, no numerical effect"),
    ), "https://arxiv.org/abs/2408.07990", base="required", min_inputs=1))


def ram(tensors: Sequence[torch.Tensor], base: torch.Tensor, *,
        epsilon: float = 1e-5) -> torch.Tensor:
    """RAM, Reinforced Agent Merging (https://arxiv.org/abs/2601.13572): an entry of a task
    vector contributes when |tau_i| > ``epsilon``; an entry takes the mean of its
    contributors (one contributor: its value whole, not diluted by the others; none: the
    base). theta = theta_base + sum_i c_i tau_i / max(sum_i c_i, 1)."""
    if not tensors:
        return base
    taus = torch.stack([t - base for t in tensors])                        # (M, *shape)
    contributes = taus.abs() > epsilon
    count = contributes.sum(dim=0).clamp(min=1)
    return base + (taus * contributes).sum(dim=0) / count


register(MergeMethod(
    "ram", ram, (
        ParamSpec("epsilon", False, 1e-5, low=0.0, search=(0.0, 1e-3),
                  doc="|task vector| above which an entry contributes"),
    ), "https://arxiv.org/abs/2601.13572", base="required", min_inputs=1))


def _quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """The entry at sorted position floor(q (n - 1)) (O(n) selection, not a sort)."""
    flat = x.reshape(-1)
    return torch.kthvalue(flat, int(q * (flat.numel() - 1)) + 1).values


def arcee_fusion(tensors: Sequence[torch.Tensor], base: torch.Tensor) -> torch.Tensor:
    """Arcee Fusion (https://arcee.ai): take the other model's entries whose importance

        s = |theta - theta_base| * KL(softmax(theta) || softmax(theta_base))   (KL per row)

    reaches median(s) + 1.5 IQR(s) (an outlier fence), the base's elsewhere. mergekit
    estimates the quartiles from a random sample of a million entries on larger tensors; here
    they are exact, so the two agree wherever mergekit does not sample."""
    other = tensors[0]
    p = torch.softmax(other, dim=-1) + 1e-8
    q = torch.softmax(base, dim=-1) + 1e-8
    kl = (p * torch.log(p / q)).sum(dim=-1, keepdim=True)
    s = (other - base).abs() * kl
    fence = _quantile(s, 0.5) + 1.5 * (_quantile(s, 0.75) - _quantile(s, 0.25))
    return base + (other - base) * (s >= fence).to(base.dtype)


register(MergeMethod(
    "arcee_fusion", arcee_fusion, (), "https://arcee.ai", base="required",
    min_inputs=1, max_inputs=1))
