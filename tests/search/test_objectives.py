"""The single-objective scalarization (:func:`weighted_loss`), targets included."""

import pytest

from evomerge.search.objectives import objective_values, weighted_loss
from evomerge.search.space_blocks import Objective


def obj(metric: str, direction: str, **kw) -> Objective:
    return Objective(evaluator="qa", task="t", metric=metric, direction=direction, **kw)


def test_weighted_sum_signs_by_direction():
    objs = [obj("nll", "minimize", weight=2.0), obj("em", "maximize", weight=0.5)]
    assert weighted_loss([1.5, 0.4], objs) == 2.0 * 1.5 - 0.5 * 0.4


@pytest.mark.parametrize("value, counted", [(0.5, 0.5), (0.7, 0.7), (0.9, 0.7)])
def test_maximized_target_caps_the_credit(value, counted):
    """Above its target a maximized objective pays nothing more; below, each unit costs its
    weight."""
    objs = [obj("em", "maximize", weight=4.0, target=0.7), obj("both", "maximize")]
    assert weighted_loss([value, 0.3], objs) == -4.0 * counted - 0.3


@pytest.mark.parametrize("value, counted", [(0.5, 1.0), (1.0, 1.0), (2.5, 2.5)])
def test_minimized_target_floors_the_loss(value, counted):
    assert weighted_loss([value], [obj("nll", "minimize", weight=3.0, target=1.0)]) == 3.0 * counted


def test_target_orders_a_kept_skill_behind_the_composite():
    """The use it was built for: two merges keep a skill past its target; the one better on
    the other objective wins, though it is worse on the kept skill."""
    objs = [obj("add", "maximize", weight=4.0, target=0.7), obj("both", "maximize")]
    assert weighted_loss([0.72, 0.5], objs) < weighted_loss([0.95, 0.4], objs)
    assert weighted_loss([0.60, 0.5], objs) > weighted_loss([0.95, 0.4], objs)  # 0.4 > 0.1


def test_objective_values_refuse_missing_and_nan():
    objs = [obj("em", "maximize", target=0.5)]
    assert objective_values({"t/em": 0.25}, objs) == (0.25,)  # values are stored uncapped
    with pytest.raises(ValueError, match="returned no 't/em'"):
        objective_values({}, objs)
    with pytest.raises(ValueError, match="is nan"):
        objective_values({"t/em": float("nan")}, objs)
