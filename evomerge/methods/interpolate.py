"""Interpolation methods: linear soup, SLERP, Model Stock, and passthrough."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from evomerge.methods.spec import MergeMethod, ParamSpec, register

__all__ = ["linear", "slerp", "model_stock", "passthrough"]


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def linear(
    tensors: Sequence[torch.Tensor], base: None = None, *, weight: Sequence[float],
    normalize: bool = True,
) -> torch.Tensor:
    """Weighted soup (Wortsman et al. 2022): sum_i w_i theta_i / sum_i w_i (if normalize)."""
    first = tensors[0]
    out = torch.zeros_like(first, dtype=_work_dtype(first))
    for t, w in zip(tensors, weight):
        out.add_(t, alpha=float(w))
    if normalize:
        out.div_(float(sum(weight)))
    return out.to(first.dtype)


def slerp(
    tensors: Sequence[torch.Tensor], base: torch.Tensor, *, t: float,
    dot_threshold: float = 0.9995, eps: float = 1e-8,
) -> torch.Tensor:
    """Spherical interpolation from ``base`` (t=0) to the other model (t=1), treating each
    tensor as one flat vector; falls back to linear interpolation for nearly collinear pairs.

        omega = acos(<v0/|v0|, v1/|v1|>)
        slerp = sin((1-t) omega)/sin(omega) v0 + sin(t omega)/sin(omega) v1
    """
    v0, v1 = base, tensors[0]
    dtype = _work_dtype(v0)
    a, b = v0.reshape(-1).to(dtype), v1.reshape(-1).to(dtype)
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    na = na if na > eps else torch.ones_like(na)
    nb = nb if nb > eps else torch.ones_like(nb)
    dot = ((a / na) * (b / nb)).sum().clamp(-1, 1)
    if dot.abs() > dot_threshold:
        ca, cb = 1 - t, t
    else:
        theta = torch.acos(dot)
        s = torch.sin(theta)
        ca, cb = torch.sin((1 - t) * theta) / s, torch.sin(t * theta) / s
    return (ca * a + cb * b).reshape(v0.shape).to(v0.dtype)


def model_stock(
    tensors: Sequence[torch.Tensor], base: torch.Tensor, *, filter_wise: bool = False
) -> torch.Tensor:
    """Model Stock (Jang et al. 2024, eq. 7): interpolate between the base and the average of
    N fine-tunes with t = N cos(theta) / (1 + (N-1) cos(theta)), cos(theta) the mean pairwise
    cosine between task vectors (per row if ``filter_wise``)."""
    shape = base.shape
    if filter_wise:
        w0 = base.unsqueeze(0) if base.dim() == 1 else base
        ws = [t.unsqueeze(0) if t.dim() == 1 else t for t in tensors]
    else:
        w0, ws = base.reshape(-1), [t.reshape(-1) for t in tensors]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            norms = (torch.norm(a, dim=-1) * torch.norm(b, dim=-1)).clamp(min=1e-6)
            cosines.append(((a * b).sum(dim=-1) / norms).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denom = 1 + (n - 1) * cos
    singular = denom.abs() < 1e-6  # no finite estimate: keep the base
    t = torch.where(singular, torch.zeros_like(cos),
                    n * cos / torch.where(singular, torch.ones_like(denom), denom))
    avg = sum(ws) / n
    return (t * avg + (1 - t) * w0).reshape(shape)


def passthrough(
    tensors: Sequence[torch.Tensor], base: None = None, *, scale: Sequence[float | None]
) -> torch.Tensor:
    """Copy the single input, optionally scaled (layer stacking / frankenmerges)."""
    s = scale[0]
    return tensors[0] if s is None else tensors[0] * s


register(MergeMethod(
    "linear", linear, (
        ParamSpec("weight", True, None, search=(0.0, 1.0), doc="weight of each model"),
        ParamSpec("normalize", False, True, kind=bool, doc="divide by the sum of weights"),
    ), "https://arxiv.org/abs/2203.05482", base="input", min_inputs=1))
register(MergeMethod(
    "slerp", slerp, (
        ParamSpec("t", False, None, low=0.0, high=1.0, search=(0.0, 1.0),
                  doc="0 = base model, 1 = the other model"),
    ), "https://en.wikipedia.org/wiki/Slerp", base="required", min_inputs=1, max_inputs=1))
register(MergeMethod(
    "model_stock", model_stock, (
        ParamSpec("filter_wise", False, False, kind=bool, doc="one ratio per output row"),
    ), "https://arxiv.org/abs/2403.19522", base="required", min_inputs=2))
register(MergeMethod(
    "passthrough", passthrough, (
        ParamSpec("scale", True, None, optional=True, doc="multiply the copied tensor"),
    ), "https://github.com/arcee-ai/mergekit", base="input", min_inputs=1, max_inputs=1))
