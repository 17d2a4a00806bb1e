"""Methods that average on the sphere (Karcher mean, Multi-SLERP, NuSLERP), and NearSwap.

Karcher mean (the point minimizing the weighted sum of squared geodesic distances to the
inputs' directions, Karcher 1977; for model merging see https://arxiv.org/abs/2603.04972):
each tensor x_i is a flat vector with norm r_i and direction u_i = x_i / r_i. Starting from
the normalized weighted Euclidean mean m, repeat (at most ``max_iter`` times)

    v = sum_i a_i theta_i / sin(theta_i) (u_i - cos(theta_i) m),  theta_i = acos(<m, u_i>)
    m <- cos(|v|) m + sin(|v|) v / |v|

(the exponential map of the mean log-map), until |v| < ``tol``; the result is
(sum_i a_i r_i) m with equal weights a_i = 1/n.

Multi-SLERP (https://goddard.blog/posts/multislerp-wow-what-a-cool-idea): barycentric
interpolation of n directions. With w the weights (normalized to sum 1), r_i and u_i the
inputs' norms and directions (relative to the base when there is one): m = normalized
sum_i w_i u_i; project each u_i to the tangent space at m, t_i = u_i - <u_i, m> m; average
there, v = sum_i w_i t_i; map back, exp_m(v) = cos|v| m + sin|v| v/|v|; scale by sum_i w_i r_i.

NuSLERP: SLERP of two models (relative to the base when there is one) at t = w_2 / (w_1 +
w_2), over the whole tensor (``nuslerp_flatten``), per row (``nuslerp_row_wise``) or per
column; linear where the two are colinear.

NearSwap (https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001): per entry, take the
other model's value where it is within ``t`` of the base and move toward it in proportion
otherwise: w = clamp(t / |base - other|, 0, 1), out = w other + (1 - w) base.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from evomerge.methods.spec import MergeMethod, ParamSpec, register

__all__ = ["karcher", "multislerp", "nuslerp", "nearswap"]


def _norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x.to(torch.float64 if x.dtype == torch.float64
                                         else torch.float32))


def _initial_mean(units: list[torch.Tensor], alphas: list[float], tol: float) -> torch.Tensor:
    m = sum(a * u for a, u in zip(alphas, units))
    n = _norm(m)
    return units[0].clone() if n.item() < tol else (m / n).to(m.dtype)


def _step(m: torch.Tensor, units: list[torch.Tensor], alphas: list[float],
          tol: float) -> torch.Tensor:
    """The mean log-map at ``m`` (a tangent vector)."""
    v = torch.zeros_like(m)
    flat = m.reshape(-1)
    for a, u in zip(alphas, units):
        c = torch.clamp(torch.dot(flat, u.reshape(-1)), -1.0, 1.0)
        theta = torch.arccos(c)
        if theta.item() >= tol:
            v += a * (theta / torch.sin(theta)) * (u - c * m)
    return v


def karcher(tensors: Sequence[torch.Tensor], base: None = None, *, max_iter: float = 10,
            tol: float = 1e-5) -> torch.Tensor:
    """Weighted (equal weights) Karcher mean of the inputs' directions, scaled by their mean
    norm (module docstring)."""
    if len(tensors) == 1:
        return tensors[0]
    alphas = [1.0 / len(tensors)] * len(tensors)
    norms = [_norm(t) for t in tensors]
    keep = [i for i, r in enumerate(norms) if r.item() > tol]
    if not keep:
        return torch.zeros_like(tensors[0])
    total = sum(alphas[i] for i in keep)
    units = [(tensors[i] / norms[i]).to(tensors[i].dtype) for i in keep]
    weights = [alphas[i] / total for i in keep]
    m = _initial_mean(units, weights, tol)
    for _ in range(int(max_iter)):
        v = _step(m, units, weights, tol)
        size = _norm(v)
        if size.item() < tol:
            break
        m = (torch.cos(size) * m + torch.sin(size) * (v / size)).to(m.dtype)
        r = _norm(m)
        if r.item() > tol:
            m = (m / r).to(m.dtype)
    return sum(a * r for a, r in zip(alphas, norms)) * m


def multislerp(tensors: Sequence[torch.Tensor], base: torch.Tensor | None = None, *,
               weight: Sequence[float], normalize_weights: bool = True,
               eps: float = 1e-8) -> torch.Tensor:
    """Barycentric interpolation on the sphere (module docstring)."""
    if len(tensors) == 1:
        return tensors[0]
    x = torch.stack([t if base is None else t - base for t in tensors]).reshape(len(tensors), -1)
    w = torch.tensor([float(v) for v in weight], dtype=x.dtype, device=x.device)
    if normalize_weights:
        w = w / w.sum()
    r = torch.linalg.vector_norm(x, dim=1, keepdim=True)                   # (n, 1)
    u = x / (r + eps)                                                      # (n, d)
    m = (w[:, None] * u).sum(0)
    if torch.linalg.vector_norm(m) < eps:  # directions cancel: no mean direction
        if len(tensors) != 2:
            raise ValueError("multislerp: the weighted directions sum to zero (antipodal "
                             "inputs with balancing weights); change the weights")
        out = (w[:, None] * x).sum(0)
    else:
        m = m / torch.linalg.vector_norm(m)
        v = (w[:, None] * (u - (u @ m)[:, None] * m)).sum(0)               # tangent at m
        size = torch.linalg.vector_norm(v) + eps
        out = (m * torch.cos(size) + v * (torch.sin(size) / size)) * (w * r[:, 0]).sum()
    out = out.reshape(tensors[0].shape)
    return out if base is None else out + base


def _slerp_rows(t: float, a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """SLERP along the last dimension; linear where a and b are colinear."""
    ua = a / torch.linalg.vector_norm(a, dim=-1, keepdim=True).clamp(min=1e-7)
    ub = b / torch.linalg.vector_norm(b, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = (ua * ub).sum(-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps ** 2
    theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
    curved = (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)
    return torch.where(colinear, (1 - t) * a + t * b, curved)


def nuslerp(tensors: Sequence[torch.Tensor], base: torch.Tensor | None = None, *,
            weight: Sequence[float], nuslerp_row_wise: bool = False,
            nuslerp_flatten: bool = True) -> torch.Tensor:
    """SLERP of two models at t = w_2 / (w_1 + w_2) (module docstring)."""
    total = float(weight[0]) + float(weight[1])
    t = 0.5 if abs(total) < 1e-6 else float(weight[1]) / total
    a, b = (x if base is None else x - base for x in tensors)
    shape = a.shape
    if nuslerp_flatten:
        out = _slerp_rows(t, a.reshape(-1), b.reshape(-1)).reshape(shape)
    elif nuslerp_row_wise:  # each column vector (dimension 0) interpolated on its own
        out = _slerp_rows(t, a.transpose(0, -1), b.transpose(0, -1)).transpose(0, -1)
    else:
        out = _slerp_rows(t, a, b)
    return out if base is None else out + base


def nearswap(tensors: Sequence[torch.Tensor], base: torch.Tensor, *, t: float) -> torch.Tensor:
    """Per entry, w = clamp(t / |base - other|, 0, 1); w other + (1 - w) base."""
    other = tensors[0]
    w = (t / (base - other).abs().clamp(min=1e-6)).clamp(0.0, 1.0)
    return w * other + (1 - w) * base


register(MergeMethod(
    "karcher", karcher, (
        ParamSpec("max_iter", False, 10.0, low=1.0, high=1000.0,  # data: bounded work
                  doc="most fixed-point iterations"),
        ParamSpec("tol", False, 1e-5, low=0.0, doc="stop when the tangent step is shorter"),
    ), "https://arxiv.org/abs/2603.04972", base="input", min_inputs=1))
register(MergeMethod(
    "multislerp", multislerp, (
        ParamSpec("weight", True, None, search=(0.0, 1.0), doc="weight of each model"),
        ParamSpec("normalize_weights", False, True, kind=bool, doc="weights sum to 1"),
        ParamSpec("eps", False, 1e-8, low=0.0, doc="numerical floor"),
    ), "https://goddard.blog/posts/multislerp-wow-what-a-cool-idea", base="optional",
    min_inputs=1))
register(MergeMethod(
    "nuslerp", nuslerp, (
        ParamSpec("weight", True, None, search=(0.0, 1.0), doc="weight of each model"),
        ParamSpec("nuslerp_row_wise", False, False, kind=bool, doc="per row vector"),
        ParamSpec("nuslerp_flatten", False, True, kind=bool, doc="the whole tensor as one"),
    ), "https://github.com/arcee-ai/mergekit", base="optional", min_inputs=2, max_inputs=2))
register(MergeMethod(
    "nearswap", nearswap, (
        ParamSpec("t", False, None, low=0.0, search=(0.0, 1e-3),
                  doc="distance below which the other model's value is taken whole"),
    ), "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001", base="required",
    min_inputs=1, max_inputs=1))
