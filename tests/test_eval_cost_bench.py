"""The cheaper-fitness benchmark's miniature (bench/eval_cost.py on the mini zoo): part 1's
four estimators against full scores, and part 2's ``--settings`` path that adds a setting
(gp-IRT) to stored per-seed rows against their stored targets."""

from __future__ import annotations

import math

import pytest


@pytest.mark.slow
def test_estimators_rank_candidates_on_the_mini_zoo(mini_zoo):
    from eval_cost import ESTIMATORS, needed, part1

    est = part1(str(mini_zoo), [0], (0.2,))
    assert est["examples_per_task"] == 40 and est["fractions"] == [0.2]
    rho = {name: est["spearman"][f"{name}@0.2/weighted_loss"]["median"] for name in ESTIMATORS}
    # 8 of 40 examples per task: every estimator ranks 100 candidates close to the full
    # score (mini zoo, 3 seeds: >= 0.93 at 2 of 40; results/bench/eval_cost_irt_minizoo.json)
    assert all(0.9 <= r <= 1.0 for r in rho.values()), rho
    assert needed(est)["gpirt"]["fraction"] == 0.2


@pytest.mark.slow
def test_added_setting_is_scored_against_the_stored_targets(mini_zoo):
    from eval_cost import add_settings

    rows = [{"seed": 0, "target": math.inf, "full_final": -math.inf, "full": {
        "examples_to_target": 120, "final_test_loss": 1.0, "examples_total": 120,
        "incumbents": [[120, 1.0]], "examples_to_full_final": 120}}]
    res = add_settings(str(mini_zoo), rows, ["gp-IRT"], candidates=12)
    row = res["per_seed"][0]["gp-IRT"]
    curve = row["incumbents"]
    # any held-out loss reaches an infinite target at the first incumbent; none reaches -inf
    assert row["examples_to_target"] == curve[0][0] and row["examples_to_full_final"] is None
    # warmup of 8 in full (3 tasks x 40), then anchors at 1/20 (2 per task)
    assert row["examples_total"] == 8 * 120 + 4 * 6
    assert [n for n, _ in curve] == sorted(n for n, _ in curve)
    assert set(res["summary"]) == {"full", "gp-IRT"}
