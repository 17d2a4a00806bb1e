"""A search watched in a tracker, against the real thing offline: an MLflow server the test
starts (SQLite store), W&B in offline mode (its run files read back), trackio's local store.
Each study runs 2 trials, then is resumed to 4: the same run continues."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from servers import free_port, serving

from evomerge.search.driver import run_search
from evomerge.search.front import completed
from evomerge.search.ledger import load_study, open_storage
from evomerge.search.records import StudyRecord
from evomerge.search.space import load_space

from .spaces import space_dict

FILES = {"trials.jsonl", "space.yaml", "best_recipe.yaml", "pareto.json", "pareto.csv",
         "pareto.png", "pareto.html"}


def _space(zoo: Path, tracking: dict | None) -> dict:
    return space_dict(zoo, budget={"trials": 2}, tracking=tracking,
                      optimizer={"name": "cma", "popsize": 2, "seed": 0})


def _search_twice(zoo: Path, root: Path, tracking: dict) -> list:
    """2 trials, then resumed to 4; the study and its completed trials."""
    space = load_space(_space(zoo, tracking))
    run_search(space, results_root=root)
    run_search(space, results_root=root, trials=4)
    study = load_study(open_storage(f"sqlite:///{root}/t/study.db"), "t")
    return study, completed(study)


def _objective_series(trials: list, key_index: int) -> dict[int, float]:
    """Step (finished trials so far, 1-based) -> the value of one objective."""
    return {i + 1: t.values[key_index] for i, t in enumerate(trials)}


@pytest.fixture()
def mlflow_server(tmp_path):
    """``mlflow server`` on a free port with a SQLite store (no job workers)."""
    port, store = free_port(), tmp_path / "mlflow"
    store.mkdir()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{store}/mlflow.db", "--artifacts-destination",
           str(store / "artifacts"), "--workers", "1"]
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with serving(cmd, f"{url}/health", store / "server.log", env=env):
        yield url


@pytest.mark.slow
def test_mlflow_server_gets_one_run_per_study(mini_zoo, tmp_path, mlflow_server):
    from mlflow import MlflowClient

    tracking = {"type": "mlflow", "tracking_uri": mlflow_server, "experiment": "merges"}
    study, trials = _search_twice(mini_zoo, tmp_path, tracking)
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("merges")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == StudyRecord(study).tracking["run_id"]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["space.optimizer.name"] == "cma"
    assert run.data.params["genome.dim"] == "12"
    for i, obj in enumerate(("add_l1/answer_nll", "maxmin_l2/answer_nll")):
        got = {m.step: m.value for m in client.get_metric_history(run.info.run_id,
                                                                   f"objective/{obj}")}
        assert got == pytest.approx(_objective_series(trials, i))
    fronts = client.get_metric_history(run.info.run_id, "generation/front_size")
    assert [m.step for m in fronts][-1] == 4 and fronts[-1].value >= 1
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert names == FILES
    rows = [json.loads(line) for line in Path(client.download_artifacts(
        run.info.run_id, "trials.jsonl", str(tmp_path / "dl"))).read_text().splitlines()]
    assert [r["trial"] for r in rows] == [t.number for t in trials]
    assert {r["state"] for r in rows} == {"COMPLETE"} and {r["worker"] for r in rows} == {
        "in-process"}


@pytest.mark.slow
def test_wandb_offline_run_continues_on_resume(mini_zoo, tmp_path):
    from wandb_files import run_view as wandb_run_view

    tracking = {"type": "wandb", "project": "merges", "mode": "offline",
                "dir": str(tmp_path / "wb")}
    study, trials = _search_twice(mini_zoo, tmp_path, tracking)
    run_files = sorted((tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb"))
    views = [wandb_run_view(f) for f in run_files]
    assert len(views) == 2  # the first search and its resume
    assert {v["run_id"] for v in views} == {StudyRecord(study).tracking["run_id"]}
    assert views[0]["config"]["space"]["name"] == "t"
    assert len(views[0]["config"]["genome"]["genes"]) == 12
    history = {step: row for v in views for step, row in v["history"].items()}
    assert sorted(history) == [1, 2, 3, 4]
    got = {s: r["objective/add_l1/answer_nll"] for s, r in history.items()}
    assert got == pytest.approx(_objective_series(trials, 0))
    assert history[4]["generation/evaluations"] == 4
    assert {r["trial/number"] for r in history.values()} == {t.number for t in trials}
    assert FILES <= set(views[1]["files"])


@pytest.mark.slow
@pytest.mark.e2e
def test_trackio_local_store_through_the_cli_flag(mini_zoo, tmp_path):
    """``--track trackio`` on search and resume; trackio's SQLite store read back."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(_space(mini_zoo, None)))
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio")}
    for args in (["search", str(space)], ["resume", "t", "--trials", "4"]):
        subprocess.run([sys.executable, "-m", "evomerge", *args, "--results", str(tmp_path),
                        "--track", "trackio", "-q"], env=env, check=True, capture_output=True)
    study = load_study(open_storage(f"sqlite:///{tmp_path}/t/study.db"), "t")
    trials = completed(study)
    db = sqlite3.connect(tmp_path / "trackio" / "evomerge.db")
    rows = db.execute("SELECT run_name, step, metrics FROM metrics ORDER BY id").fetchall()
    assert {r[0] for r in rows} == {"t"} == {StudyRecord(study).tracking["run_id"]}
    series: dict[int, dict] = {}
    for _, step, metrics in rows:
        series.setdefault(step, {}).update(json.loads(metrics))
    assert sorted(series) == [1, 2, 3, 4]
    got = {s: m["objective/maxmin_l2/answer_nll"] for s, m in series.items()}
    assert got == pytest.approx(_objective_series(trials, 1))
    config = json.loads(db.execute("SELECT config FROM configs").fetchone()[0])
    assert config["space"]["name"] == "t"
    names = {r[0] for r in db.execute("SELECT name FROM artifacts")}
    assert any(n.endswith("trials.jsonl") for n in names), names


def test_a_failing_tracker_warns_once_and_the_search_goes_on(mini_zoo, tmp_path, caplog):
    """An unreachable MLflow server: one warning, every trial evaluated, nothing stored."""
    tracking = {"type": "mlflow", "tracking_uri": f"http://127.0.0.1:{free_port()}",
                "timeout": 1, "retries": 0}
    with caplog.at_level(logging.WARNING, logger="evomerge.search.tracking"):
        outcome = run_search(load_space(_space(mini_zoo, tracking)), results_root=tmp_path)
    assert outcome.evaluations == 2 and outcome.failed == 0
    warnings = [r for r in caplog.records if r.name == "evomerge.search.tracking"]
    assert len(warnings) == 1 and "the search goes on without it" in warnings[0].message
    study = load_study(open_storage(f"sqlite:///{tmp_path}/t/study.db"), "t")
    assert StudyRecord(study).tracking == {}
