"""The fused kernel computes exactly what the pure method functions compute."""

from __future__ import annotations

import pytest
import torch

from evomerge.fused import FusedKernel, fusable, linear_kernel, thresholds
from evomerge.methods import METHODS

FUSABLE = [m.name for m in METHODS if fusable(m, {}) == "task_vectors"]


def test_fusable_set():
    assert set(FUSABLE) == {"task_arithmetic", "ties", "breadcrumbs", "breadcrumbs_ties"}
    assert fusable(METHODS.get("linear"), {}) == "linear"
    assert fusable(METHODS.get("ties"), {"rescale": True}) is None
    assert fusable(METHODS.get("dare_ties"), {}) is None


@pytest.fixture(scope="module", params=[False, True], ids=["eager", "compiled"])
def kernel(request):
    return FusedKernel(compile=request.param)


@pytest.mark.parametrize("name", FUSABLE)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("densities", [(0.3, 0.7, 0.5), (1.0, 0.0, 0.05), (0.001, 0.999, 1.0)])
def test_kernel_matches_delta_fn(kernel, name, normalize, densities):
    method = METHODS.get(name)
    g = torch.Generator().manual_seed(len(name))
    base = torch.randn(33, 17, generator=g)
    deltas = [torch.randn(33, 17, generator=g) * 0.1 for _ in densities]
    weight, gamma = (0.7, -0.4, 1.1), (0.02, 0.0, 0.1)
    params = {"weight": weight, "normalize": normalize, "lambda": 1.3}
    sparsify, consensus = method.composition
    if sparsify:
        params["density"] = densities
    if sparsify == "magnitude_outliers":
        params["gamma"] = gamma
    expected = method.delta_fn(deltas, base, **params)

    bounds = [thresholds(sparsify, d.abs().reshape(-1).sort().values, densities[i], gamma[i])
              for i, d in enumerate(deltas)]
    lo, hi = (torch.tensor(v) for v in zip(*bounds))
    out = torch.empty_like(base)
    kernel(out.view(-1), base.view(-1), [d.view(-1) for d in deltas], lo, hi,
           torch.tensor(weight), torch.tensor(1.3), normalize, consensus is not None)
    assert torch.allclose(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_linear_kernel_matches_linear(compile, normalize):
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(40, 9, generator=g) for _ in range(3)]
    w = (0.2, 0.5, 0.9)
    expected = METHODS.get("linear").fn(xs, None, weight=w, normalize=normalize)
    out = torch.empty_like(xs[0])
    FusedKernel(compile, fn=linear_kernel)(out.view(-1), [x.view(-1) for x in xs],
                                           torch.tensor(w), normalize)
    assert torch.allclose(out, expected, atol=1e-6, rtol=0)
