"""Golden values for the generalized task-arithmetic core."""

from __future__ import annotations

import torch

from evomerge.methods import get_method


def test_ties_elect_and_disjoint_mean_by_hand():
    base = torch.zeros(3)
    a, b = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([-1.0, 1.0, 1.0])
    # sum = [0, -1, 4] -> gamma = [+, -, +]; agreeing: [{a}, {a}, {a, b}] -> [1/1, -2/1, 4/2]
    out = get_method("ties").fn([a, b], base, weight=[1.0, 1.0], density=[1.0, 1.0])
    assert out.tolist() == [1.0, -2.0, 2.0]


def test_ties_trims_before_electing():
    base = torch.zeros(4)
    a, b = torch.tensor([4.0, -0.1, 0.2, 3.0]), torch.tensor([-1.0, 2.0, 0.1, -0.3])
    # density 0.5 keeps a: [4, 0, 0, 3], b: [-1, 2, 0, 0]; sum [3, 2, 0, 3] -> all +
    out = get_method("ties").fn([a, b], base, weight=[1.0, 1.0], density=[0.5, 0.5])
    assert out.tolist() == [4.0, 2.0, 0.0, 3.0]


def test_task_arithmetic_is_weighted_sum_times_lambda():
    base = torch.ones(2)
    a, b = torch.tensor([2.0, 1.0]), torch.tensor([1.0, 3.0])
    out = get_method("task_arithmetic").fn([a, b], base, weight=[0.5, 0.25], **{"lambda": 2.0})
    assert out.tolist() == [1 + 2 * (0.5 * 1 + 0.25 * 0), 1 + 2 * (0.5 * 0 + 0.25 * 2)]
