"""bench/peers.py: its figures from synthetic runs (exact), pycma's log files parsed, and the
CI miniature (the evomerge half on the mini zoo; mergekit-evolve needs its own virtualenv
and a Ray head, so the miniature skips it and says so)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def _run(evals, gens, total, curve):
    return {"rc": 0, "evals": evals, "total_s": total, "peak_mb": 100.0,
            "generations": [{"evaluations": k} for k in gens],
            "curve": [{"evaluations": k, "time": t, "heldout_score": h} for k, t, h in curve]}


def test_figures_of_a_run():
    from peers_report import program_facts

    # two generations of two evaluations; 1.5 s between them
    run = _run([(1.0, 2.0), (2.0, 4.0), (5.5, 6.5), (6.5, 7.5)], [2, 4], 36.0,
               [(2, 4.0, 0.25), (4, 7.5, 0.5)])
    f = program_facts(run, t_cut=5.0)
    assert f["evaluations"] == 4 and f["eval_s_median"] == 1.0
    assert f["evals_per_hour"] == 400.0 and f["evals_per_hour_steady"] == round(4 / 6.5 * 3600, 1)
    assert f["idle_between_generations_s"] == 1.5 and f["busy_fraction"] == round(5 / 6.5, 3)
    assert (f["heldout_after_N"], f["heldout_after_T"]) == (0.5, 0.25)


def test_goals_from_both_programs():
    from peers_report import summarize

    mk = _run([(0, 10), (10, 20), (20, 30)], [3], 60.0, [(3, 30.0, 0.6)])
    evo = _run([(0, 1), (1, 2), (2, 3)], [1, 2, 3], 6.0, [(1, 1.0, 0.5), (2, 2.0, 0.7), (3, 3.0, 0.7)])
    doc = {"settings": {"zoo": {"runs": {"s0": {"mergekit-evolve": mk, "evomerge": evo}}}}}
    s = summarize(doc)["zoo"]
    assert s["throughput_ratio"] == [10.0] and s["goal_throughput_met"] is True
    assert s["reach"][0]["evomerge_evals_to_reach"] == 2 and s["goal_reach_met"] is False
    alone = summarize({"settings": {"zoo": {"runs": {"s0": {"mergekit-evolve": None,
                                                            "evomerge": evo}}}}})["zoo"]
    assert alone["goal_throughput_met"] is None and alone["throughput_ratio"] == []


def test_pycma_log_and_best_so_far(tmp_path):
    from peers_mergekit import _best_so_far, cma_generations

    (tmp_path / "xrecentbest.dat").write_text(
        '% # iter+eval+sigma+0+fitness+xbest, seed=1\n'
        '1 4 0.16 0 -0.25 0.5 0.5\n2 8 0.15 0 -0.20 0.9 0.1\n3 12 0.14 0 -0.30 0.2 0.8\n')
    rows = cma_generations(tmp_path)
    assert [r["evaluations"] for r in rows] == [4, 8, 12] and rows[1]["x"] == [0.9, 0.1]
    evals = [(i, i + 1.0) for i in range(12)]
    best = _best_so_far(rows, evals)
    assert [b["fitness"] for b in best] == [-0.25, -0.25, -0.30]
    assert best[1]["x"] == [0.5, 0.5] and [b["time"] for b in best] == [4.0, 8.0, 12.0]


@pytest.mark.slow
def test_miniature(mini_zoo, tmp_path):
    from peers import main

    out = tmp_path / "peers_mini.json"
    doc = main(["--mini", "--zoo", str(mini_zoo), "--work", str(tmp_path / "work"),
                "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    zoo = doc["settings"]["zoo"]
    assert zoo["mergekit_evolve"].startswith("skipped in --mini")
    facts = doc["summary"]["zoo"]["seeds"]["s0"]["evomerge"]
    assert facts["evaluations"] == 8 and facts["failed"] == 0 and facts["rc"] == 0
    assert len(facts["curve"]) == 2 and facts["heldout_after_N"] is not None
    assert out.with_suffix(".png").stat().st_size > 0
