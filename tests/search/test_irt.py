"""IRT estimates (p-IRT, gp-IRT) on data drawn from the models they assume."""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.search.irt import IrtEstimator, fit_irt

N, D = 200, 2


def _gaussian(rng):
    loadings, mean, scale = rng.normal(size=(N, D)), rng.normal(size=N) + 3, rng.random(N) + 0.5
    dens = rng.integers(1, 5, size=N).astype(float)  # tokens per answer: a weighted mean

    def candidate(theta):
        y = mean + scale * (loadings @ theta)
        return {"t/nll": [(y * dens).tolist(), dens.tolist()]}
    return candidate


def _two_pl(rng):
    loadings, offsets = rng.normal(size=(N, D)), rng.normal(size=N)

    def candidate(theta):
        p = 1 / (1 + np.exp(-(loadings @ theta - offsets)))
        return {"t/em": [(rng.random(N) < p).astype(float).tolist(), [1.0] * N]}
    return candidate


def _truth(stats, key):
    num, den = (np.asarray(v) for v in stats[key])
    return num.sum() / den.sum()


def _seen(stats, key, idx):
    return {key: tuple(np.asarray(v)[idx] for v in stats[key])}


def test_pirt_recovers_a_noise_free_factor_model():
    """Scores that follow the linear-Gaussian item model exactly: 10 of 200 examples give the
    full (token-weighted) score to 1e-3, where the 10 examples' own mean is off by ~10%."""
    rng = np.random.default_rng(0)
    candidate = _gaussian(rng)
    warm = [candidate(rng.normal(size=D)) for _ in range(12)]
    idx = rng.choice(N, 10, replace=False)
    est = IrtEstimator(warm, ["t/nll"], {"t/nll": (idx.tolist(), [N / 10] * 10)}, dims=2)
    assert not est.model.binary.any() and est.model.dims == 2
    for _ in range(5):
        c = candidate(rng.normal(size=D))
        got = est.estimate(_seen(c, "t/nll", idx))["t/nll"]
        assert got["pirt"] == pytest.approx(_truth(c, "t/nll"), rel=1e-3)
        assert abs(got["anchors"] - _truth(c, "t/nll")) > 10 * abs(got["pirt"] - _truth(c, "t/nll"))
    assert 0.0 <= est.lam["t/nll"] <= 1.0


def test_two_pl_items_beat_the_anchor_mean_on_binary_scores():
    """0/1 scores drawn from a 2PL model are fitted as 2PL items; over 30 new candidates the
    p-IRT error is a fraction of the plain estimate from the same 10 examples."""
    rng = np.random.default_rng(1)
    candidate = _two_pl(rng)
    warm = [candidate(rng.normal(size=D)) for _ in range(40)]
    idx = rng.choice(N, 10, replace=False)
    est = IrtEstimator(warm, ["t/em"], {"t/em": (idx.tolist(), [N / 10] * 10)}, dims=2)
    assert est.model.binary.all()
    errs = []
    for _ in range(30):
        c = candidate(rng.normal(size=D))
        got = est.estimate(_seen(c, "t/em", idx))["t/em"]
        errs.append([abs(got[k] - _truth(c, "t/em")) for k in ("anchors", "pirt", "gpirt")])
    anchors, pirt, gpirt = np.mean(errs, axis=0)
    assert pirt < anchors / 3 and gpirt <= anchors


def test_gpirt_leans_on_anchors_that_are_exact():
    """Examples in 5 groups answered alike: the 5 weighted anchors are exact, so gp-IRT's
    cross-validated lambda puts (nearly) all weight on them."""
    rng = np.random.default_rng(2)
    group = rng.integers(0, 5, size=60)
    stats = [{"t/m": [rng.random(5)[group].tolist(), [1.0] * 60]} for _ in range(12)]
    idx = [int(np.flatnonzero(group == g)[0]) for g in range(5)]
    w = [float((group == g).sum()) for g in range(5)]
    est = IrtEstimator(stats, ["t/m"], {"t/m": (idx, w)}, dims=2)
    assert est.lam["t/m"] > 0.9
    new = {"t/m": [rng.random(5)[group].tolist(), [1.0] * 60]}
    got = est.estimate(_seen(new, "t/m", idx))["t/m"]
    assert got["anchors"] == pytest.approx(_truth(new, "t/m"), abs=1e-12)
    assert abs(got["gpirt"] - _truth(new, "t/m")) <= abs(got["pirt"] - _truth(new, "t/m"))


def test_items_span_several_scores_with_one_ability():
    """Two scores share each candidate's ability: items are numbered key by key, and a
    constant item (same value for every candidate) is predicted as that value."""
    rng = np.random.default_rng(3)
    stats = []
    for _ in range(6):
        theta = rng.normal()
        stats.append({"a/x": [[theta, 2 * theta, 5.0], [1, 1, 1]],
                      "b/y": [[-theta, 1.0], [1, 1]]})
    model = fit_irt(stats, ["a/x", "b/y"], dims=3)
    assert model.sizes == (3, 2) and model.dims == 1  # rank 1 data, capped
    assert model.items({"b/y": [1], "a/x": [0, 2]}).tolist() == [0, 2, 4]
    pred = model.predict(model.ability(np.array([0]), np.array([0.7])))
    assert pred[2] == pytest.approx(5.0) and pred[4] == pytest.approx(1.0)
    assert pred[1] == pytest.approx(1.4, rel=1e-2) and pred[3] == pytest.approx(-0.7, rel=1e-2)
