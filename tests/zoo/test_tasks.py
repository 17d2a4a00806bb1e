from __future__ import annotations

import pytest

from evomerge.zoo.tasks import L1, L2, TASKS, sample, split_of, to_l2

EVAL = ["add_l1", "maxmin_l2", "add_l2", "sub_l1"]


@pytest.mark.parametrize("task", EVAL)
def test_splits_never_overlap(task):
    prompts = {s: {e.prompt for e in sample(task, s, 300, seed=1)}
               for s in ("validation", "test")}
    train = {e.prompt for e in sample(task, "train", 3000, seed=1, unique=False)}
    assert not prompts["validation"] & prompts["test"]
    assert not (prompts["validation"] | prompts["test"]) & train


def test_l2_problems_share_the_split_of_their_l1_twin():
    for ex in sample("add_l2", "test", 50, seed=0):
        twin = ex.prompt.translate(str.maketrans(L2, L1))
        assert split_of(type(ex)(twin, "")) == "test"


def test_sampling_is_deterministic():
    assert sample("add_l1", "test", 20, seed=3) == sample("add_l1", "test", 20, seed=3)
    assert sample("add_l1", "test", 20, seed=3) != sample("add_l1", "test", 20, seed=4)


@pytest.mark.parametrize("task", list(TASKS))
def test_answers_are_right(task):
    for ex in sample(task, "train", 50, seed=0, unique=False):
        p = ex.prompt.translate(str.maketrans(L2, L1))
        a = ex.answer.translate(str.maketrans(L2, L1))
        if "+" in p or "-" in p:
            a = a[::-1]  # arithmetic answers are written least-significant digit first
        if "+" in p:
            x, y = p[:-1].split("+")
            assert int(a) == int(x) + int(y)
        elif "-" in p:
            x, y = p[:-1].split("-")
            assert int(a) == int(x) - int(y) >= 0
        elif p[0] == "M":
            xs = [int(v) for v in p[1:-1].split(",")]
            assert a == f"{max(xs)},{min(xs)}"
        elif p[0] == "C":
            assert int(a) == int(p[1:-1]) + 1
        elif p[0] == "T":
            assert ex.answer == to_l2(p[1:-1])
    assert TASKS


def test_too_many_distinct_problems_requested_fails():
    with pytest.raises(ValueError, match="distinct test problems"):
        sample("count_l1", "test", 500, seed=0)
