"""LoraHub composition (Huang et al. 2023): LoRA adapters of one base combined factor by
factor into one adapter of the same rank, instead of summing their dense updates::

    A_hat = sum_i w_i sqrt(s_i) A_i        (r, in)
    B_hat = sum_i w_i sqrt(s_i) B_i        (out, r)
    W     = W0 + B_hat @ A_hat

With one scaling s for all adapters (LoraHub's setting) this is s (sum_i w_i B_i)(sum_i w_i A_i);
PEFT's ``add_weighted_adapter(combination_type="linear")`` with weights v_i >= 0 is the same
composition with w_i = sqrt(v_i). The result is a rank-r adapter (``evomerge merge --adapter``
writes it as one PEFT adapter). Inputs are LoRA-adapted tensors (anything with ``a`` (r, in),
``b`` (out, r) and ``scale``; ``a is None`` for a module the adapter leaves alone), so this
method runs only over adapters of the recipe's base.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from evomerge.methods.spec import MergeMethod, ParamSpec, register

__all__ = ["compose", "merge_lorahub", "LORAHUB"]


def compose(inputs: Sequence[Any], weight: Sequence[float], dtype: torch.dtype,
            device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(A_hat, B_hat) of the adapters that touch this tensor, in ``dtype`` on ``device``;
    None if none does. Raises ValueError for adapters of different ranks or a scaling <= 0."""
    a_hat = b_hat = None
    for x, w in zip(inputs, weight):
        if x.a is None:
            continue
        if x.scale <= 0:
            raise ValueError(f"lorahub needs adapters with a positive scaling (alpha / r), "
                             f"got {x.scale}")
        c = float(w) * math.sqrt(x.scale)
        a, b = x.a.to(device, dtype) * c, x.b.to(device, dtype) * c
        if a_hat is not None and a.shape != a_hat.shape:
            raise ValueError(f"lorahub composes adapters of one rank per module, got ranks "
                             f"{a_hat.shape[0]} and {a.shape[0]}")
        a_hat = a if a_hat is None else a_hat + a
        b_hat = b if b_hat is None else b_hat + b
    return None if a_hat is None else (a_hat, b_hat)


def merge_lorahub(tensors: Sequence[Any], base: torch.Tensor, *,
                  weight: Sequence[float]) -> torch.Tensor:
    """``base + B_hat @ A_hat`` (module docstring), in ``base``'s dtype."""
    factors = compose(tensors, weight, base.dtype, base.device)
    if factors is None:
        return base.clone()
    a_hat, b_hat = factors
    return torch.addmm(base.reshape(b_hat.shape[0], -1), b_hat, a_hat).reshape(base.shape)


LORAHUB = register(MergeMethod(
    name="lorahub", fn=merge_lorahub,
    params=(ParamSpec("weight", True, None, search=(-1.5, 1.5),
                      doc="coefficient of each adapter's A and B factors"),),
    paper="https://arxiv.org/abs/2307.13269", base="required", min_inputs=1, factored=True,
))
