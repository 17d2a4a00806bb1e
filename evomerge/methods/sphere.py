"""Methods that average on the sphere: the Karcher (Riemannian) mean, and NearSwap.

Karcher mean (the point minimizing the weighted sum of squared geodesic distances to the
inputs' directions, Karcher 1977; for model merging see https://arxiv.org/abs/2603.04972):
each tensor x_i is a flat vector with norm r_i and direction u_i = x_i / r_i. Starting from
the normalized weighted Euclidean mean m, repeat (at most ``max_iter`` times)

    v = sum_i a_i theta_i / sin(theta_i) (u_i - cos(theta_i) m),  theta_i = acos(<m, u_i>)
    m <- cos(|v|) m + sin(|v|) v / |v|

(the exponential map of the mean log-map), until |v| < ``tol``; the result is
(sum_i a_i r_i) m with equal weights a_i = 1/n.

NearSwap (https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001): per entry, take the
other model's value where it is within ``t`` of the base and move toward it in proportion
otherwise: w = clamp(t / |base - other|, 0, 1), out = w other + (1 - w) base.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from evomerge.methods.spec import MergeMethod, ParamSpec, register

__all__ = ["karcher", "nearswap"]


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


def nearswap(tensors: Sequence[torch.Tensor], base: torch.Tensor, *, t: float) -> torch.Tensor:
    """Per entry, w = clamp(t / |base - other|, 0, 1); w other + (1 - w) base."""
    other = tensors[0]
    w = (t / (base - other).abs().clamp(min=1e-6)).clamp(0.0, 1.0)
    return w * other + (1 - w) * base


register(MergeMethod(
    "karcher", karcher, (
        ParamSpec("max_iter", False, 10.0, low=1.0, doc="most fixed-point iterations"),
        ParamSpec("tol", False, 1e-5, low=0.0, doc="stop when the tangent step is shorter"),
    ), "https://arxiv.org/abs/2603.04972", base="input", min_inputs=1))
register(MergeMethod(
    "nearswap", nearswap, (
        ParamSpec("t", False, None, low=0.0, search=(0.0, 1e-3),
                  doc="distance below which the other model's value is taken whole"),
    ), "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001", base="required",
    min_inputs=1, max_inputs=1))
