"""Sparsification: exact kept counts for magnitude methods, statistics for random ones."""

from __future__ import annotations

import pytest
import torch

from evomerge.methods.sparsify import della_magprune, magnitude, magnitude_outliers, random_drop


@pytest.fixture
def delta():
    return torch.randn(200, 50, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("density", [0.01, 0.1, 0.37, 0.9])
def test_magnitude_keeps_exactly_the_largest(delta, density):
    out = magnitude(delta, density)
    k = max(1, int(density * delta.numel()))
    kept = out != 0
    assert kept.sum().item() == k
    assert delta.abs()[kept].min() >= delta.abs()[~kept].max()
    assert torch.equal(out[kept], delta[kept])


def test_magnitude_keeps_every_entry_tied_with_the_threshold():
    delta = torch.tensor([0.5, -0.5, 0.5, 0.1, -0.2, 0.5])
    out = magnitude(delta, 2 / 6)  # k = 2, but four entries share the 2nd-largest magnitude
    assert torch.equal(out, torch.tensor([0.5, -0.5, 0.5, 0.0, 0.0, 0.5]))


def test_magnitude_outliers_drops_top_gamma_and_bottom(delta):
    n = delta.numel()
    out = magnitude_outliers(delta, 0.5, gamma=0.1)
    order = delta.abs().reshape(-1).argsort()
    kept = (out.reshape(-1) != 0)[order]
    n_top, target = int(0.1 * n), int(0.5 * n)
    n_bot = n - target - n_top
    assert kept[n_bot:n_bot + target].all() and not kept[:n_bot].any() and not kept[-n_top:].any()


def test_l1_rescale_preserves_norm(delta):
    out = magnitude(delta, 0.3, rescale=True)
    assert torch.isclose(out.abs().sum(), delta.abs().sum(), rtol=1e-5)


def test_dare_kept_fraction_rescale_and_expectation(delta):
    density = 0.3
    outs = torch.stack([random_drop(delta, density, generator=torch.Generator().manual_seed(s))
                        for s in range(400)])
    kept = outs != 0
    frac = kept.float().mean().item()
    assert abs(frac - density) < 0.005  # 4M Bernoulli(0.3) draws: sd 2.3e-4
    assert torch.allclose(outs[kept], (delta.expand_as(outs) / density)[kept])  # 1/p rescale
    # E[drop(delta)] = delta: error of the mean over 400 draws ~ |delta| sqrt((1-p)/p/400)
    err = (outs.mean(0) - delta).abs() / delta.abs().clamp(min=1e-3)
    assert err.median().item() < 0.1


def test_dare_same_seed_same_mask_other_seed_other_mask(delta):
    a = random_drop(delta, 0.5, generator=torch.Generator().manual_seed(1))
    b = random_drop(delta, 0.5, generator=torch.Generator().manual_seed(1))
    c = random_drop(delta, 0.5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_della_keep_rate_grows_with_magnitude(delta):
    outs = torch.stack([della_magprune(delta, 0.5, epsilon=0.2,
                                       generator=torch.Generator().manual_seed(s))
                        for s in range(200)])
    kept = (outs != 0).float().mean(0)  # per-entry keep rate
    assert abs(kept.mean().item() - 0.5) < 0.01
    ranks = delta.abs().argsort(dim=1).argsort(dim=1)
    low = kept[ranks < 5].mean().item()    # smallest entries of each row: p ~ 0.3
    high = kept[ranks >= 45].mean().item()  # largest: p ~ 0.7
    assert 0.25 < low < 0.35 and 0.65 < high < 0.75
    err = (outs.mean(0) - delta).abs() / delta.abs().clamp(min=1e-3)
    assert err.median().item() < 0.15


def test_della_clamps_epsilon_to_valid_probabilities(delta):
    g = torch.Generator().manual_seed(0)
    out = della_magprune(delta, 0.95, epsilon=0.2, generator=g)  # spread clamped to 0.05
    assert torch.isfinite(out).all()
    outs = torch.stack([della_magprune(delta, 0.1, epsilon=0.3,
                                       generator=torch.Generator().manual_seed(s))
                        for s in range(100)])  # spread clamped to 0.1: p from 0 to 0.2
    assert torch.isfinite(outs).all()
    assert abs((outs != 0).float().mean().item() - 0.1) < 0.01
    smallest = delta.abs().argsort(dim=1)[:, 0]
    assert (outs[:, torch.arange(200), smallest] == 0).all()  # p = 0 at the smallest rank
