"""Consensus steps: decide, per entry, which (weighted, sparsified) task vectors agree.

Input ``deltas`` has shape (M, *shape): M weighted task vectors. Output is a boolean mask of
the same shape; masked-out entries do not contribute to the merge (TIES step 3).
"""

from __future__ import annotations

import torch

__all__ = ["sign_sum", "sign_count", "CONSENSUS"]


def sign_sum(deltas: torch.Tensor) -> torch.Tensor:
    """TIES elect (Yadav et al. 2023, step 2): gamma = sgn(sum_t tau_t), ties -> +1; an entry
    agrees when its sign equals gamma. Zero entries never agree (they carry no sign)."""
    majority = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
    return deltas.sign() == majority


def sign_count(deltas: torch.Tensor) -> torch.Tensor:
    """Majority by count of signs instead of by summed magnitude."""
    signs = deltas.sign()
    majority = torch.where(signs.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
    return signs == majority


CONSENSUS = {"sum": sign_sum, "count": sign_count}
