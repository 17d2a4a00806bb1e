"""Cheaper fitness: rungs, successive halving, anchors; in the search loop on the mini zoo."""

from __future__ import annotations

import numpy as np
import pytest
from optuna.trial import TrialState

from evomerge.errors import ConfigError
from evomerge.search.driver import run_search
from evomerge.search.executors import InlineExecutor
from evomerge.search.fidelity import FULL, Ladder, fit_anchors, kmeans
from evomerge.search.ledger import counted, default_storage, load_study, open_storage, told_values
from evomerge.search.space import load_space
from evomerge.search.space_blocks import Fidelity, Objective

from .spaces import space_dict

MIN = [Objective(evaluator="e", task="a", metric="m", direction="minimize")]
TWO = MIN + [Objective(evaluator="e", task="b", metric="m", direction="maximize")]


def _ladder(objectives=MIN, scalar=True, **cfg):
    return Ladder(Fidelity(**{"rungs": [0.1, 0.3, 1.0], "eta": 3, **cfg}),
                  {"e": {"a": 100, "b": 7}}, objectives, scalar)


def test_subsets_are_nested_seeded_and_sized():
    ladder = _ladder()
    # Each rung scores the examples its predecessor did not: 10 + 20 + 70 of 100; 1 + 2 + 4 of 7
    r0, r1, r2 = (ladder.subsets(k)["e"] for k in range(3))
    assert [len(r["a"][0]) for r in (r0, r1, r2)] == [10, 20, 70]
    assert [len(r["b"][0]) for r in (r0, r1, r2)] == [1, 2, 4]
    assert sorted(r0["a"][0] + r1["a"][0] + r2["a"][0]) == list(range(100))
    assert r0["a"][1] is None and r0["a"][0] != list(range(10))  # a seeded permutation
    assert ladder.subsets(FULL) is None
    assert _ladder().subsets(1) == ladder.subsets(1)
    assert _ladder(seed=1).subsets(1) != ladder.subsets(1)


def test_successive_halving_keeps_the_best_third():
    ladder = _ladder()
    # The first eta results at a rung go on whatever they are.
    assert [ladder.tell(0, [v]) for v in (5.0, 9.0, 7.0)] == [True] * 3
    # Then: on while fewer than n/eta of the n results so far are better.
    assert ladder.tell(0, [1.0])          # best of 4
    assert not ladder.tell(0, [6.0])      # 2 better of 5: 2 >= 5/3
    assert ladder.tell(0, [4.0])          # 1 better of 6: 1 < 2
    assert ladder.tell(0, [4.5])          # 2 better of 7: 2 < 7/3
    assert not ladder.tell(0, [4.7])      # 3 better (1, 4, 4.5) of 8: 3 >= 8/3
    assert not ladder.tell(2, [0.0]) and not ladder.tell(FULL, [0.0])  # the top ends
    assert not ladder.tell(0, None)


def test_pareto_promotion_for_several_objectives():
    ladder = _ladder(TWO, scalar=False, eta=2)
    for v in ([1.0, 1.0], [2.0, 2.0]):
        assert ladder.tell(0, v)
    assert ladder.tell(0, [0.5, 0.0])     # minimize a, maximize b: dominated by none
    assert not ladder.tell(0, [3.0, 0.0])  # dominated by 2 of 4: not < 2
    # A weighted loss (scalar) would rank [3, 0] by 3 - 0 = 3: behind everyone but one
    scalar = _ladder(TWO, scalar=True, eta=2)
    for v in ([1.0, 1.0], [2.0, 2.0], [0.5, 0.0]):
        scalar.tell(0, v)
    assert not scalar.tell(0, [3.0, 0.0])


def test_anchors_recover_a_clustered_score_exactly():
    """Examples in 5 groups that every candidate answers alike: 5 anchors weighted by their
    groups' sizes give every candidate's full score exactly."""
    rng = np.random.default_rng(0)
    group = rng.integers(0, 5, size=60)
    stats = []
    for _ in range(8):
        per_group = rng.random(5)
        num = per_group[group]
        stats.append({"t/m": [num.tolist(), [1.0] * 60]})
    chosen = fit_anchors(stats, "t", {0: 5 / 60}, ["t/m"], seed=0)
    idx, w = chosen[0]
    assert sorted(group[idx].tolist()) == [0, 1, 2, 3, 4]
    assert sorted(w) == sorted(np.bincount(group).astype(float).tolist()) and sum(w) == 60
    new = rng.random(5)[group]  # a candidate not seen when fitting
    assert np.dot(w, new[idx]) / 60 == pytest.approx(new.mean(), abs=1e-12)


def test_kmeans_is_seeded_and_keeps_every_point():
    x = np.random.default_rng(1).normal(size=(50, 3))
    a, ca = kmeans(x, 6, seed=3)
    b, cb = kmeans(x, 6, seed=3)
    assert np.array_equal(a, b) and np.array_equal(ca, cb) and set(a.tolist()) == set(range(6))


def test_fidelity_config_errors():
    with pytest.raises(ValueError, match=r"fidelity.rungs \[0.5, 0.3\] must be increasing"):
        Fidelity(rungs=[0.5, 0.3])
    with pytest.raises(ValueError, match="fidelity.warmup 0 is too small"):
        Fidelity(estimator="anchors", rungs=[0.2])


def test_fidelity_needs_subset_evaluators(mini_zoo, tmp_path):
    evaluators = {"py": {"type": "callable", "function": "math:fabs", "metrics": {"a/m": "maximize"}}}
    objectives = [{"evaluator": "py", "task": "a", "metric": "m", "direction": "maximize"}]
    space = load_space(space_dict(mini_zoo, evaluators=evaluators, objectives=objectives,
                                  fidelity={"rungs": [0.5, 1.0]}))
    with pytest.raises(ConfigError, match="fidelity: evaluator 'py' .callable. cannot score a "
                                          "subset"):
        run_search(space, results_root=tmp_path)
    assert not (tmp_path / "t").exists()


def _study(root):
    return load_study(open_storage(default_storage("t", root)), "t")


def _fid_space(mini_zoo, **over):
    return load_space(space_dict(mini_zoo, budget={"trials": 16},
                                 fidelity={"rungs": [0.25, 0.5, 1.0], "eta": 2},
                                 optimizer={"name": "cma", "popsize": 8, "seed": 0}, **over))


def test_search_prunes_and_counts_examples(mini_zoo, tmp_path):
    """Pruned candidates are stored as such with their rung scores; each rung scores
    ceil(f n) examples per task; the front holds complete candidates only; CMA-ES gets a
    value for every candidate."""
    out = run_search(_fid_space(mini_zoo), results_root=tmp_path)
    assert out.evaluations == 16
    trials = [t for t in _study(tmp_path).get_trials() if counted(t)]
    states = [t.state for t in trials]
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    n = 16  # examples per task (limit); two tasks; each rung adds what its predecessor lacks
    per_rung = [2 * 4, 2 * 4, 2 * 8]
    for t in trials:
        rungs, fid = t.user_attrs["rungs"], t.user_attrs["fidelity"]
        assert [r["rung"] for r in rungs] == list(range(len(rungs)))
        assert [r["examples"] for r in rungs] == per_rung[:len(rungs)]
        assert fid["examples"] == sum(per_rung[:len(rungs)])
        sums = rungs[-1]["totals"]["add_l1/answer_nll"]  # [sum NLL, answer tokens so far]
        assert rungs[-1]["values"][0] == pytest.approx(sums[0] / sums[1], rel=1e-12)
        if t.state == TrialState.PRUNED:
            assert t.user_attrs["fidelity_rung"] == fid["rung"] == len(rungs) - 1 < 2
            assert told_values(t) == tuple(rungs[-1]["values"])
        else:
            assert fid["rung"] == 2 and t.values == rungs[-1]["values"]
    scored = sum(t.user_attrs["fidelity"]["examples"] for t in trials)
    assert scored < 16 * 2 * n  # cheaper than scoring every candidate in full
    import json
    front = json.loads((tmp_path / "t" / "pareto.json").read_text())
    complete = {t.number for t in trials if t.state == TrialState.COMPLETE}
    assert {p["trial"] for p in front["front"]} <= complete
    from evomerge.commands import status
    from evomerge.dashboard.catalog import trial_rows

    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert status("t", results=str(tmp_path))["pruned"] == len(pruned)
    notes = {r["number"]: r["note"] for r in trial_rows(_study(tmp_path))}
    t = pruned[0]
    assert notes[t.number] == (f"pruned at rung {t.user_attrs['fidelity_rung']}; scored up to "
                               f"rung {t.user_attrs['fidelity_rung']}: "
                               f"{t.user_attrs['fidelity']['examples']} examples (subset)")


class _Interrupting(InlineExecutor):
    """Stops the search (as Ctrl-C would) at the ``at``-th submission."""

    calls = 0
    at = 0

    def submit(self, trial, recipe_yaml, job=None):
        type(self).calls += 1
        if type(self).calls == type(self).at:
            raise KeyboardInterrupt
        super().submit(trial, recipe_yaml, job)


def test_resume_mid_rung_goes_on_like_an_uninterrupted_run(mini_zoo, tmp_path):
    """Interrupted while a candidate climbs (its rung 0 recorded, rung 1 asked), the resumed
    search takes it up at rung 1 and ends with the same candidates, states and values as a
    search never interrupted."""
    space = _fid_space(mini_zoo)
    run_search(space, results_root=tmp_path / "ref")
    ref = _study(tmp_path / "ref").get_trials()
    # the submission that takes the 5th candidate (first rung results of 4 are in) up a rung
    climb = [t for t in ref if len(t.user_attrs["rungs"]) > 1][1]
    submissions = sum(len(t.user_attrs["rungs"]) for t in ref if t.number < climb.number) + 2
    _Interrupting.calls, _Interrupting.at = 0, submissions
    out = run_search(space, results_root=tmp_path / "r", executor_factory=_Interrupting)
    assert out.stopped == "interrupted"
    broken = [t for t in _study(tmp_path / "r").get_trials() if t.user_attrs.get("interrupted")]
    assert len(broken) == 1 and len(broken[0].user_attrs["rungs"]) == 1
    run_search(space, results_root=tmp_path / "r")
    got = [t for t in _study(tmp_path / "r").get_trials() if counted(t)]

    def outcome(trials):
        return sorted((t.user_attrs["recipe_hash"], t.state.name, told_values(t),
                       len(t.user_attrs["rungs"])) for t in trials if counted(t))

    assert outcome(got) == outcome(ref)
    resumed = [t for t in got if t.user_attrs["recipe_hash"] == broken[0].user_attrs["recipe_hash"]]
    assert resumed[0].user_attrs["rungs"][0] == broken[0].user_attrs["rungs"][0]
    # the resumed candidate scored only its remaining rungs
    assert resumed[0].user_attrs["fidelity"]["examples"] == sum(
        r["examples"] for r in resumed[0].user_attrs["rungs"])


@pytest.mark.parametrize("optimizer", ["tpe", "nsga2"])
def test_optuna_samplers_with_rungs(mini_zoo, tmp_path, optimizer):
    """Pruned trials are Optuna's PRUNED, with the rung value as intermediate value (one
    objective: what TPE reads of a pruned trial)."""
    objectives = space_dict(mini_zoo)["objectives"][:1]
    space = load_space(space_dict(mini_zoo, budget={"trials": 10}, objectives=objectives,
                                  fidelity={"rungs": [0.25, 1.0], "eta": 2},
                                  optimizer={"name": optimizer, "seed": 0,
                                             **({"popsize": 4} if optimizer == "nsga2" else {})}))
    assert run_search(space, results_root=tmp_path).evaluations == 10
    trials = _study(tmp_path).get_trials()
    assert {t.state for t in trials} == {TrialState.PRUNED, TrialState.COMPLETE}
    for t in trials:
        if t.state == TrialState.PRUNED:
            assert t.intermediate_values == {0: t.user_attrs["rungs"][0]["values"][0]}


def test_anchor_estimation_in_the_loop(mini_zoo, tmp_path):
    """The warmup candidates are scored in full, per example; the anchors chosen from them
    are stored in the study; later candidates are scored on the anchors only."""
    space = load_space(space_dict(mini_zoo, budget={"trials": 10},
                                  fidelity={"rungs": [0.25], "estimator": "anchors",
                                            "warmup": 4}))
    run_search(space, results_root=tmp_path)
    study = _study(tmp_path)
    trials = [t for t in study.get_trials() if counted(t)]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    warm = [t for t in trials if t.user_attrs["fidelity"]["rung"] == FULL]
    assert len(warm) == 4 and all("example_stats" in t.user_attrs for t in warm)
    anchors = study.user_attrs["evomerge_anchors"]["0"]["zoo"]
    for task in ("add_l1", "maxmin_l2"):
        idx, w = anchors[task]
        assert len(idx) <= 4 and sum(w) == 16  # ceil(0.25 * 16) anchors stand for 16
    later = [t for t in trials if t not in warm]
    assert later and all(t.user_attrs["fidelity"]["examples"] <= 8 for t in later)
    assert all(t.user_attrs["fidelity"]["estimator"] == "anchors" for t in later)
