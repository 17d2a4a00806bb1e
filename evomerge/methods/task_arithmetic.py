"""Generalized task arithmetic: every task-vector method is sparsify x consensus.

    tau_t      = theta_t - theta_base                      task vector of model t
    tau_hat_t  = w_t * sparsify(tau_t; density_t)          trim / drop (optional)
    A          = {t : sgn(tau_hat_t) = gamma}              consensus mask (optional)
    tau_m      = sum_{t in A} tau_hat_t / D,   D = sum_{t in A} w_t  if normalize else 1
    theta      = theta_base + lambda * tau_m

task_arithmetic = (none, none); TIES = (magnitude, sign-sum); DARE-TIES = (random, sign-sum);
DARE-linear = (random, none); breadcrumbs = (magnitude_outliers, none); breadcrumbs-TIES =
(magnitude_outliers, sign-sum); DELLA = (della_magprune, sign-sum). Names and defaults match
mergekit so recipes are interchangeable.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch

from evomerge.methods.consensus import CONSENSUS
from evomerge.methods.sparsify import SPARSIFIERS
from evomerge.methods.spec import MergeMethod, ParamSpec, register

__all__ = ["merge_task_vectors", "merge_models"]


def merge_task_vectors(
    deltas: Sequence[torch.Tensor],
    base: torch.Tensor,
    *,
    weight: Sequence[float],
    density: Sequence[float] | None = None,
    gamma: Sequence[float] | None = None,
    epsilon: Sequence[float] | None = None,
    normalize: bool = False,
    rescale: bool = False,
    int8_mask: bool = False,
    generator: torch.Generator | None = None,
    sparsify: str | None = None,
    consensus: str | None = None,
    **kwargs: float,
) -> torch.Tensor:
    """Merge precomputed task vectors ``deltas`` (each shaped like ``base``) into ``base``.

    ``lambda`` arrives through ``kwargs`` because it is a Python keyword. ``int8_mask`` is
    accepted for mergekit compatibility (a memory optimisation there) and has no effect.
    """
    lam = float(kwargs.pop("lambda", 1.0))
    if kwargs:
        raise TypeError(f"unexpected parameters {sorted(kwargs)}")
    if not deltas:
        return base.clone()
    m = len(deltas)
    stacked = torch.empty((m, *base.shape), dtype=base.dtype, device=base.device)  # (M, *shape)
    for i, delta in enumerate(deltas):
        if sparsify is not None:
            extra = {"gamma": gamma[i] if gamma else 0.01, "epsilon": epsilon[i] if epsilon else 0}
            delta = SPARSIFIERS[sparsify](
                delta, density[i] if density else 1.0, rescale=rescale, generator=generator,
                **extra,
            )
        torch.mul(delta, weight[i], out=stacked[i])
    w = torch.tensor(list(weight), dtype=base.dtype, device=base.device)
    w = w.reshape(m, *([1] * base.dim()))  # (M, 1, ..., 1)
    if consensus is not None:
        mask = CONSENSUS[consensus](stacked)
        mixed = (stacked * mask).sum(dim=0)
        divisor = (w * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = stacked.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed /= divisor
    if lam != 1:
        mixed *= lam
    return (base + mixed).to(base.dtype)


def merge_models(
    tensors: Sequence[torch.Tensor], base: torch.Tensor, **params: object
) -> torch.Tensor:
    """The method-level entry point: task vectors are ``tensor - base``."""
    return merge_task_vectors([t - base for t in tensors], base, **params)


_WEIGHT = ParamSpec("weight", True, None, low=None, high=None, search=(0.0, 1.0),
                    doc="scale of each task vector")
_DENSITY = ParamSpec("density", True, 1.0, low=0.0, high=1.0, search=(0.1, 1.0),
                     doc="fraction of task-vector entries kept")
_LAMBDA = ParamSpec("lambda", False, 1.0, low=0.0, high=None, search=(0.5, 1.5),
                    doc="scale of the merged task vector")
_GAMMA = ParamSpec("gamma", True, 0.01, low=0.0, high=1.0, search=(0.0, 0.1),
                   doc="fraction of largest-magnitude outliers dropped (breadcrumbs)")
_EPSILON = ParamSpec("epsilon", True, 0.15, low=0.0, high=0.5, search=(0.01, 0.3),
                     doc="spread of keep probabilities around density (DELLA)")
_INT8 = ParamSpec("int8_mask", False, False, kind=bool,
                  doc="mergekit memory option; accepted, no numerical effect")


def _variant(name: str, sparsify: str | None, consensus: str | None, normalize: bool,
             rescale: bool, paper: str) -> MergeMethod:
    params = [_WEIGHT, _LAMBDA, _INT8,
              ParamSpec("normalize", False, normalize, kind=bool,
                        doc="divide by the summed weights of agreeing models"),
              ParamSpec("rescale", False, rescale, kind=bool,
                        doc="rescale kept entries (1/p when random, L1 norm otherwise)")]
    if sparsify is not None:
        params.insert(1, _DENSITY)
    if sparsify == "magnitude_outliers":
        params.insert(2, _GAMMA)
    if sparsify == "della_magprune":
        params.insert(2, _EPSILON)
    stochastic = sparsify in ("random", "della_magprune")
    # Keyword defaults of the partial; callers (the planner) override them explicitly.
    fixed = {"sparsify": sparsify, "consensus": consensus, "normalize": normalize,
             "rescale": rescale}
    return register(MergeMethod(
        name=name, fn=partial(merge_models, **fixed), params=tuple(params), paper=paper,
        base="required", min_inputs=1, stochastic=stochastic,
        delta_fn=partial(merge_task_vectors, **fixed), composition=(sparsify, consensus),
    ))


TASK_ARITHMETIC = _variant("task_arithmetic", None, None, False, False,
                           "https://arxiv.org/abs/2212.04089")
TIES = _variant("ties", "magnitude", "sum", True, False, "https://arxiv.org/abs/2306.01708")
DARE_TIES = _variant("dare_ties", "random", "sum", False, True, "https://arxiv.org/abs/2311.03099")
DARE_LINEAR = _variant("dare_linear", "random", None, False, True,
                       "https://arxiv.org/abs/2311.03099")
BREADCRUMBS = _variant("breadcrumbs", "magnitude_outliers", None, False, False,
                       "https://arxiv.org/abs/2312.06795")
BREADCRUMBS_TIES = _variant("breadcrumbs_ties", "magnitude_outliers", "sum", False, False,
                            "https://arxiv.org/abs/2312.06795")
DELLA = _variant("della", "della_magprune", "sum", True, True, "https://arxiv.org/abs/2406.11617")
DELLA_LINEAR = _variant("della_linear", "della_magprune", None, False, True,
                        "https://arxiv.org/abs/2406.11617")
