from __future__ import annotations

import numpy as np

from evomerge.search.pareto import hypervolume, pareto_front


def test_front_respects_directions():
    pts = [(1, 5), (2, 2), (3, 3), (5, 1), (2, 2)]
    assert pareto_front(pts, ["minimize", "minimize"]) == [0, 1, 3, 4]
    assert pareto_front(pts, ["maximize", "maximize"]) == [0, 2, 3]
    assert pareto_front(pts, ["minimize", "maximize"]) == [0]


def test_hypervolume_golden():
    assert hypervolume([(1, 2), (2, 1)], (3, 3), ["minimize"] * 2) == 3.0
    assert hypervolume([(1, 1, 1)], (2, 3, 4), ["minimize"] * 3) == 6.0
    assert hypervolume([(0.5, 0.5)], (0, 0), ["maximize"] * 2) == 0.25
    assert hypervolume([(4, 4)], (3, 3), ["minimize"] * 2) == 0.0


def test_hypervolume_matches_monte_carlo():
    rng = np.random.default_rng(0)
    pts = rng.random((8, 3))
    ref = np.ones(3)
    samples = rng.random((200_000, 3))
    dominated = np.zeros(len(samples), bool)
    for p in pts:
        dominated |= np.all(samples >= p, axis=1)
    assert abs(hypervolume(pts, ref, ["minimize"] * 3) - dominated.mean()) < 0.005
