"""Checks every registered merge method gets, whatever it is."""

from __future__ import annotations

import pytest
import torch

from evomerge.engine.lowrank import LowRank, densify
from evomerge.errors import UnknownNameError
from evomerge.methods import METHODS, get_method

ALL = [m.name for m in METHODS]
REQUIRED = {"linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs",
            "breadcrumbs_ties", "della", "slerp", "model_stock", "passthrough"}


def _inputs(method, n=2, shape=(16, 12), seed=0):
    """Tensors near a base; for a factored method (lorahub), rank-3 LoRA adapters of it."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    k = max(method.min_inputs, min(n, method.max_inputs or n))
    if method.factored:
        tensors = [LowRank(base, 0.3 * torch.randn(3, shape[1], generator=g),
                           0.3 * torch.randn(shape[0], 3, generator=g), 0.5) for _ in range(k)]
    else:
        tensors = [base + 0.1 * torch.randn(shape, generator=g) for _ in range(k)]
    params = {}
    for p in method.params:
        value = p.default
        if value is None and not p.optional:
            value = 0.5 if p.search is None else sum(p.search) / 2
        params[p.name] = [value] * k if p.per_model else value
    if method.stochastic:
        params["generator"] = torch.Generator().manual_seed(7)
    return tensors, (base if method.base == "required" else None), params


def test_registry_has_every_method_the_issue_names():
    assert REQUIRED <= set(ALL)


def test_unknown_method_lists_valid_names():
    with pytest.raises(UnknownNameError, match=r"Unknown merge method 'tie'\. Available: .*ties"):
        get_method("tie")


@pytest.mark.parametrize("name", ALL)
def test_spec_is_well_formed(name):
    method = get_method(name)
    assert method.paper.startswith("https://")
    for p in method.params:
        assert p.kind in (float, bool)
        if p.search is not None:
            lo, hi = p.search
            assert lo < hi
            assert p.low is None or p.low <= lo
            assert p.high is None or hi <= p.high


@pytest.mark.parametrize("name", ALL)
def test_shape_dtype_and_inputs_untouched(name):
    method = get_method(name)
    tensors, base, params = _inputs(method)
    flat = [u for t in tensors for u in ((t.a, t.b) if method.factored else (t,))]
    before = [t.clone() for t in flat] + ([base.clone()] if base is not None else [])
    out = method.fn(tensors, base, **params)
    like = base if method.factored else tensors[0]
    assert out.shape == like.shape and out.dtype == like.dtype
    assert torch.isfinite(out).all()
    after = flat + ([base] if base is not None else [])
    assert all(torch.equal(x, y) for x, y in zip(before, after))


@pytest.mark.parametrize("name", ALL)
def test_reproducible(name):
    method = get_method(name)
    t1, b1, p1 = _inputs(method)
    t2, b2, p2 = _inputs(method)
    assert torch.equal(method.fn(t1, b1, **p1), method.fn(t2, b2, **p2))


@pytest.mark.parametrize("name", ALL)
def test_identical_inputs_give_that_model(name):
    """Merging copies of one model returns it (every method is an average of some kind)."""
    method = get_method(name)
    tensors, base, params = _inputs(method)
    if method.factored:  # copies of one adapter, weights summing to 1: that adapted model
        params["weight"] = [1.0 / len(tensors)] * len(tensors)
        out = method.fn([tensors[0]] * len(tensors), base, **params)
        assert torch.allclose(out, densify(tensors[0], torch.float32, "cpu"), atol=1e-6)
        return
    same = [tensors[0].clone() for _ in tensors]
    if base is not None:
        base = tensors[0].clone()
    if "weight" in params:
        params["weight"] = [1.0 / len(same)] * len(same) if method.base == "input" else \
            [1.0] * len(same)
    if "lambda" in params:
        params["lambda"] = 1.0
    out = method.fn(same, base, **params)
    assert torch.allclose(out, tensors[0], atol=1e-6)


@pytest.mark.parametrize("name", [m.name for m in METHODS if m.delta_fn is not None])
def test_delta_fn_equals_fn(name):
    method = get_method(name)
    tensors, base, params = _inputs(method, n=3)
    p2 = dict(params)
    if method.stochastic:
        p2["generator"] = torch.Generator().manual_seed(7)
    expected = method.fn(tensors, base, **params)
    got = method.delta_fn([t - base for t in tensors], base, **p2)
    assert torch.allclose(got, expected, atol=1e-6)
