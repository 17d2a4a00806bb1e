"""The search loop end to end on the mini zoo (in-process workers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from optuna.trial import TrialState

from evomerge.engine.recipe import load_recipe
from evomerge.search.driver import run_search
from evomerge.search.ledger import counted, default_storage, load_study, open_storage
from evomerge.search.space import load_space

from .spaces import space_dict


def _study(name, root):
    return load_study(open_storage(default_storage(name, root)), name)


def test_cma_search_spends_the_budget_exactly(mini_zoo, tmp_path):
    space = load_space(space_dict(mini_zoo))
    out = run_search(space, results_root=tmp_path)
    assert (out.evaluations, out.stopped) == (10, "budget")  # popsize 4: no overshoot to 12
    study = _study("t", tmp_path)
    trials = study.get_trials()
    assert len(trials) == 10 and all(t.state == TrialState.COMPLETE for t in trials)
    t = trials[-1]
    assert set(t.user_attrs["scores"]) >= {"add_l1/answer_nll", "maxmin_l2/exact_match"}
    assert t.values == [t.user_attrs["scores"]["add_l1/answer_nll"],
                        t.user_attrs["scores"]["maxmin_l2/answer_nll"]]
    assert load_recipe(t.user_attrs["recipe"]).evomerge.model_extra["trial"] == t.number
    assert [x.user_attrs["cma_gen"] for x in trials] == [0] * 4 + [1] * 4 + [2] * 2
    front = json.loads((tmp_path / "t" / "pareto.json").read_text())
    assert front["evaluations"] == 10 and front["front"]
    for f in ("pareto.csv", "pareto.png", "pareto.html"):
        assert (tmp_path / "t" / f).stat().st_size > 0


@pytest.mark.parametrize("name", ["tpe", "nsga2", "random", "gp"])
def test_optuna_samplers(mini_zoo, tmp_path, name):
    opt = {"name": name, "seed": 1, **({"popsize": 4} if name == "nsga2" else {})}
    space = load_space(space_dict(mini_zoo, optimizer=opt, budget={"trials": 6}))
    out = run_search(space, results_root=tmp_path)
    assert out.evaluations == 6
    assert all(t.state == TrialState.COMPLETE for t in _study("t", tmp_path).get_trials())


def test_single_objective_optuna_cmaes_and_best_so_far_plot(mini_zoo, tmp_path):
    objs = space_dict(mini_zoo)["objectives"][:1]
    space = load_space(space_dict(mini_zoo, objectives=objs, budget={"trials": 5},
                                  optimizer={"name": "cmaes", "seed": 0}))
    assert run_search(space, results_root=tmp_path).evaluations == 5
    assert (tmp_path / "t" / "pareto.png").is_file()


def test_diagonal_cma_resumes_to_the_same_candidates(mini_zoo, tmp_path):
    """Separable CMA-ES proposes other points than full CMA-ES (the option reaches pycma),
    and a study stopped after 6 evaluations resumes to the candidates of a 10-evaluation run."""
    def hashes(root):
        return [(t.user_attrs["cma_gen"], t.user_attrs["cma_index"], t.user_attrs["recipe_hash"])
                for t in _study("t", root).get_trials()]

    def space(diagonal, trials):
        opt = {"name": "cma", "popsize": 4, "seed": 0, "diagonal": diagonal}
        return load_space(space_dict(mini_zoo, optimizer=opt, budget={"trials": trials}))

    run_search(space(True, 10), results_root=tmp_path / "ref")
    run_search(space(False, 10), results_root=tmp_path / "full")
    ref, full = hashes(tmp_path / "ref"), hashes(tmp_path / "full")
    assert len(ref) == len(full) == 10
    assert {h for *_, h in ref}.isdisjoint(h for *_, h in full)
    run_search(space(True, 10), trials=6, results_root=tmp_path / "r")
    assert run_search(space(True, 10), results_root=tmp_path / "r").evaluations == 10
    assert hashes(tmp_path / "r") == ref


def cands(root):
    """(generation, index, recipe) of every CMA-ES candidate of study ``t`` under ``root``."""
    return sorted((t.user_attrs["cma_gen"], t.user_attrs["cma_index"],
                   t.user_attrs["recipe_hash"]) for t in _study("t", root).get_trials())


def _stopped_in_generation_2(mini_zoo, tmp_path):
    """A 16-evaluation CMA-ES search run whole under ``tmp_path/ref``, and the same search
    stopped after 10 (generations 0, 1 and half of 2, popsize 4) under ``tmp_path/r``."""
    space = load_space(space_dict(mini_zoo, budget={"trials": 16}))
    run_search(space, results_root=tmp_path / "ref")
    run_search(space, trials=10, results_root=tmp_path / "r")
    return space, tmp_path / "r"


def test_resume_from_checkpoint_survives_a_drifting_replay(mini_zoo, tmp_path, caplog):
    """Another machine's arithmetic can make the replay of a study drift: resume then warns,
    starts from the JSON checkpoint, finishes the budget exactly and proposes the candidates
    of the uninterrupted run."""
    import sqlite3

    from evomerge.search.records import S

    CHECKPOINT = S.CHECKPOINT

    space, root = _stopped_in_generation_2(mini_zoo, tmp_path)
    assert _study("t", root).user_attrs[CHECKPOINT]["generation"] == 2
    db = sqlite3.connect(root / "t" / "study.db")  # perturb what the replay reads
    (tid, value), = db.execute(
        "SELECT a.trial_id, a.value_json FROM trial_user_attributes a JOIN trials t "
        "ON a.trial_id = t.trial_id WHERE a.key = 'x' ORDER BY t.number LIMIT 1").fetchall()
    x = json.loads(value)
    x[0] += 1e-3
    db.execute("UPDATE trial_user_attributes SET value_json = ? WHERE trial_id = ? AND "
               "key = 'x'", (json.dumps(x), tid))
    db.commit()
    db.close()
    with caplog.at_level("WARNING", logger="evomerge.search.optimizers"):
        out = run_search(space, results_root=root)
    assert out.evaluations == 16
    assert "differs from CMA-ES generation 0 as replayed" in caplog.text
    assert "drifts from the CMA-ES checkpoint of generation 2" in caplog.text
    assert cands(root) == cands(tmp_path / "ref")


def test_unreadable_checkpoint_falls_back_to_the_whole_replay(mini_zoo, tmp_path, caplog):
    """A checkpoint this pycma cannot read is ignored with a warning: the study is replayed
    to its end (not only up to the checkpoint's generation) and resumes like an
    uninterrupted run."""
    from evomerge.search.records import S

    CHECKPOINT = S.CHECKPOINT

    space, root = _stopped_in_generation_2(mini_zoo, tmp_path)
    study = _study("t", root)
    ckpt = study.user_attrs[CHECKPOINT]
    study.set_user_attr(CHECKPOINT, {**ckpt, "state": {**ckpt["state"], "cma_version": "0.0"}})
    with caplog.at_level("WARNING", logger="evomerge.search.optimizers"):
        assert run_search(space, results_root=root).evaluations == 16
    assert "CMA-ES checkpoint not used" in caplog.text
    assert cands(root) == cands(tmp_path / "ref")


def test_identical_genomes_are_not_evaluated_twice(mini_zoo, tmp_path):
    # 2 layer groups x 3 sources = 9 distinct recipes; ask for 12 evaluations.
    space = load_space(space_dict(mini_zoo, method=None, parameters={}, layer_swap=True,
                                  optimizer={"name": "random", "seed": 0},
                                  budget={"trials": 12}))
    out = run_search(space, results_root=tmp_path)
    assert (out.evaluations, out.stopped) == (9, "exhausted")
    trials = _study("t", tmp_path).get_trials()
    hashes = [t.user_attrs["recipe_hash"] for t in trials if counted(t)]
    assert len(hashes) == len(set(hashes)) == 9
    dups = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert dups and all(t.values == trials[t.user_attrs["duplicate_of"]].values for t in dups)


def test_failing_candidate_becomes_failed_trial(mini_zoo, tmp_path):
    (tmp_path / "flaky.py").write_text(
        "calls = {'n': 0}\n"
        "def score(model, tokenizer):\n"
        "    calls['n'] += 1\n"
        "    if calls['n'] % 3 == 0:\n"
        "        raise RuntimeError('evaluator crashed')\n"
        "    w = float(model.model.layers[0].mlp.up_proj.weight.abs().mean())\n"
        "    return {'w/m': w, 'z/m': float('nan') if calls['n'] == 4 else w}\n")
    objectives = [{"evaluator": "py", "task": t, "metric": "m", "direction": "maximize"}
                  for t in ("w", "z")]
    evaluators = {"py": {"type": "callable", "function": f"{tmp_path}/flaky.py:score",
                         "metrics": {"w/m": "maximize", "z/m": "maximize"}}}
    space = load_space(space_dict(mini_zoo, evaluators=evaluators, objectives=objectives))
    out = run_search(space, results_root=tmp_path / "r")
    assert (out.evaluations, out.failed) == (10, 4)  # calls 3, 6, 9 raise; call 4 is NaN
    failed = [t for t in _study("t", tmp_path / "r").get_trials() if t.state == TrialState.FAIL]
    reasons = sorted(t.user_attrs["fail_reason"] for t in failed)
    assert sum("RuntimeError: evaluator crashed" in r for r in reasons) == 3
    assert any("objective 'z/m' is nan" in r for r in reasons)


def _run_cli_search(space_file, root, trials):
    return subprocess.Popen(
        [sys.executable, "-m", "evomerge", "search", str(space_file), "--results",
         str(root), "--trials", str(trials), "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})


def _complete(root):
    """COMPLETE trials in the study the subprocess writes, read through a read-only SQLite
    connection: opening it with Optuna would create the schema, racing the subprocess doing
    the same (which then failed to open its storage, exit 2, under load)."""
    import sqlite3

    path = root / "t" / "study.db"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:  # the schema is not there yet
        return 0


@pytest.mark.slow
@pytest.mark.e2e
def test_kill_9_then_resume_finishes_budget_like_an_uninterrupted_run(mini_zoo, tmp_path):
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(space_dict(mini_zoo, budget={"trials": 60})))
    ref_root, root = tmp_path / "ref", tmp_path / "killed"
    run_search(load_space(space_file), results_root=ref_root)

    proc = _run_cli_search(space_file, root, 60)
    deadline = time.time() + 120
    while _complete(root) < 6 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    # a wide window (6..59 of 60) so the kill lands mid-search even on a loaded machine
    assert proc.poll() is None, f"the search ended before the kill: {proc.stderr.read()!r}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _complete(root)
    assert 6 <= killed_at < 60

    out = run_search(load_space(space_file), results_root=root)  # = evomerge resume t
    assert out.evaluations == 60
    trials = _study("t", root).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    evaluated = [t for t in trials if counted(t)]
    assert len(evaluated) == 60 and all(t.state == TrialState.COMPLETE for t in evaluated)
    assert len({t.user_attrs["recipe_hash"] for t in evaluated}) == 60  # none evaluated twice
    # CMA-ES state was rebuilt exactly: the same candidates as the uninterrupted run.
    ref = sorted((t.user_attrs["cma_gen"], t.user_attrs["cma_index"], t.user_attrs["recipe_hash"])
                 for t in _study("t", ref_root).get_trials())
    got = sorted((t.user_attrs["cma_gen"], t.user_attrs["cma_index"], t.user_attrs["recipe_hash"])
                 for t in evaluated)
    assert got == ref


def test_resume_cli_and_status(mini_zoo, tmp_path, capsys):
    from evomerge.cli import main

    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(space_dict(mini_zoo, budget={"trials": 4})))
    assert main(["search", str(space_file), "--results", str(tmp_path), "-q"]) == 0
    assert main(["resume", "t", "--results", str(tmp_path), "--trials", "6", "-q"]) == 0
    assert main(["status", "t", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "6/6 evaluations" in out and "Resume:  evomerge resume t" in out
    assert main(["resume", "nope", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (f"No study 'nope' under {tmp_path}/ (looked for {tmp_path}/nope/study.db or "
            f"{tmp_path}/nope/journal.log); pass --storage if it lives elsewhere.") in err
    assert not (tmp_path / "nope").exists()


def test_a_search_continues_its_slurm_journal_and_two_files_are_refused(mini_zoo, tmp_path,
                                                                         capsys):
    """``evomerge search`` under the name of a study a Slurm job ran continues it in its
    journal (no second study in a new study.db); with both files present, ``resume`` and
    ``search`` say so and change nothing."""
    from evomerge.cli import main
    from evomerge.search.ledger import default_journal

    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(space_dict(mini_zoo, budget={"trials": 2})))
    journal = default_journal("t", tmp_path)
    run_search(load_space(str(space_file)), storage=journal, results_root=tmp_path)
    assert main(["search", str(space_file), "--results", str(tmp_path), "--trials", "3",
                 "-q"]) == 0
    assert not (tmp_path / "t" / "study.db").exists()
    trials = load_study(open_storage(journal), "t").get_trials()
    assert len([t for t in trials if counted(t)]) == 3
    run_search(load_space(str(space_file)), results_root=tmp_path, storage=default_storage(
        "t", tmp_path))  # a second study under the name, forced with --storage
    def trials_in_each():
        return [len(load_study(open_storage(url), "t").get_trials())
                for url in (journal, default_storage("t", tmp_path))]

    before = trials_in_each()
    for args in (["resume", "t"], ["search", str(space_file)], ["status", "t"]):
        assert main([*args, "--results", str(tmp_path)]) == 2
        assert (f"Study 't' has two files, {tmp_path}/t/study.db (a local search) and "
                f"{tmp_path}/t/journal.log (a Slurm job); pass --storage sqlite:///{tmp_path}/"
                f"t/study.db or --storage {journal}, or move one aside.") in capsys.readouterr().err
    assert trials_in_each() == before == [3, 2]
