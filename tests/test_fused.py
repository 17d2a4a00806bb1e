"""The tensor engine computes exactly what the pure method functions compute, and its compiled
two-phase path (sampled brackets, then exact thresholds) gives the same bits as the eager one."""

from __future__ import annotations

from types import MappingProxyType

import pytest
import torch

import evomerge.engine.select as select
from evomerge.engine.fused import TensorEngine, fusable
from evomerge.engine.plan import TensorTask
from evomerge.methods import METHODS

FUSABLE = [m.name for m in METHODS if fusable(m, {}) == "task_vectors"]
N_BIG = select.EXACT_BELOW * 3 + 17  # large enough for the sampled-bracket path


def test_fusable_set():
    assert set(FUSABLE) == {"task_arithmetic", "ties", "breadcrumbs", "breadcrumbs_ties"}
    assert fusable(METHODS.get("linear"), {}) == "linear"
    assert fusable(METHODS.get("ties"), {"rescale": True}) is None
    assert fusable(METHODS.get("dare_ties"), {}) is None


def _task(method, densities, normalize, shape, weight=(0.7, -0.4, 1.1), gamma=(0.02, 0.0, 0.1)):
    sparsify, _ = method.composition
    per_model = {"weight": weight[:len(densities)]}
    if sparsify:
        per_model["density"] = densities
    if sparsify == "magnitude_outliers":
        per_model["gamma"] = gamma[:len(densities)]
    return TensorTask("t", tuple((f"e{i}", "t") for i in range(len(densities))), ("base", "t"),
                      MappingProxyType({"normalize": normalize, "lambda": 1.3}),
                      MappingProxyType(per_model), None, shape)


def _sources(shape, dtype, m=3, seed=0, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    out = {"base": base.to(dtype)}
    for i in range(m):
        out[f"e{i}"] = (base + scale * torch.randn(shape, generator=g)).to(dtype)
    return out


def _run(engine, task, method, src, compute_dtype, out_dtype):
    out = torch.empty(task.shape, dtype=out_dtype)
    engine.run(task, method, lambda m, n: src[m], compute_dtype, out)
    return out


@pytest.mark.parametrize("name", FUSABLE)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("densities", [(0.3, 0.7, 0.5), (1.0, 0.0, 0.05), (0.001, 0.999, 1.0)])
def test_engine_matches_delta_fn(name, normalize, densities):
    method = METHODS.get(name)
    src = _sources((33, 17), torch.float32, seed=len(name))
    task = _task(method, densities, normalize, (33, 17))
    got = _run(TensorEngine(compile=False), task, method, src, None, torch.float32)
    deltas = [src[f"e{i}"] - src["base"] for i in range(3)]
    params = {**task.per_model, "normalize": normalize, "lambda": 1.3}
    expected = method.delta_fn(deltas, src["base"], **params)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def compiled():
    return TensorEngine(compile=True)


@pytest.mark.parametrize("name", FUSABLE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_compiled_two_phase_equals_eager_bitwise(compiled, name, dtype):
    method = METHODS.get(name)
    src = _sources((N_BIG,), dtype, seed=1, scale=0.02)
    task = _task(method, (0.2, 0.55, 0.9), True, (N_BIG,))
    cd = torch.float32
    eager = _run(TensorEngine(compile=False), task, method, src, cd, dtype)
    fast = _run(compiled, task, method, src, cd, dtype)
    assert compiled._tv.compiled  # the two-phase path ran, not the eager fallback
    assert torch.isfinite(eager).all()
    assert torch.equal(eager, fast)


def test_a_missed_bracket_falls_back_to_the_exact_threshold(compiled, monkeypatch):
    """With zero-width brackets the true threshold is almost never inside: the counts catch
    it and the exact selection answers, with the same bits."""
    monkeypatch.setattr(select, "_SIGMAS", 0.0)
    monkeypatch.setattr(select, "bracket", lambda s, n, r: (float(s[0]), float(s[0])))
    method = METHODS.get("ties")
    src = _sources((N_BIG,), torch.bfloat16, seed=2)
    task = _task(method, (0.3, 0.6, 0.8), True, (N_BIG,))
    eager = _run(TensorEngine(compile=False), task, method, src, torch.float32, torch.bfloat16)
    assert torch.equal(eager, _run(TensorEngine(compile=True), task, method, src,
                                   torch.float32, torch.bfloat16))


@pytest.mark.parametrize("sparsify", ["magnitude", "magnitude_outliers"])
@pytest.mark.parametrize("density", [0.0, 0.001, 0.3, 0.999, 1.0])
def test_threshold_ranks_select_the_sorted_values(sparsify, density):
    g = torch.Generator().manual_seed(5)
    mag = torch.randn(1000, generator=g).abs()
    r_lo, r_hi = select.threshold_ranks(sparsify, 1000, density, 0.05)
    ordered = mag.sort().values
    if density >= 1:
        assert (r_lo, r_hi) == (None, None)
    elif density == 0:
        assert (r_lo, r_hi) == (0, 0)
    else:
        assert select.kth_smallest(mag, r_lo) == float(ordered[r_lo - 1])
        kept = (mag >= ordered[r_lo - 1]) & (mag <= (ordered[r_hi - 1] if r_hi else float("inf")))
        target = max(1, int(density * 1000)) if sparsify == "magnitude" else int(density * 1000)
        assert kept.sum().item() == target  # no ties in continuous random data


@pytest.mark.parametrize("r", [1, 500, 99_000, 100_000])
def test_bracket_holds_the_rank(r):
    g = torch.Generator().manual_seed(r)
    values = torch.rand(100_000, generator=g)
    s = select.MagnitudeSample(values, torch.zeros_like(values), torch.float32, "x")
    a, b = s.bracket(r)
    true = float(values.sort().values[r - 1])
    below, inside = int((values < a).sum()), int(((values >= a) & (values <= b)).sum())
    assert a <= true <= b
    assert select.select_in_bracket(values, a, b, below, inside, r) == true
    assert inside < 0.1 * values.numel()


@pytest.mark.parametrize("normalize", [False, True])
def test_linear_matches_linear_method(normalize):
    src = _sources((40, 9), torch.float32, seed=3)
    method = METHODS.get("linear")
    task = TensorTask("t", (("e0", "t"), ("e1", "t"), ("e2", "t")), None,
                      MappingProxyType({"normalize": normalize}),
                      MappingProxyType({"weight": (0.2, 0.5, 0.9)}), None, (40, 9))
    expected = method.fn([src[f"e{i}"] for i in range(3)], None, weight=(0.2, 0.5, 0.9),
                         normalize=normalize)
    for compile in (False, True):
        got = _run(TensorEngine(compile=compile), task, method, src, None, torch.float32)
        assert torch.allclose(got, expected, atol=1e-6, rtol=0)
