"""The study schema: studies written by evomerge before the schema module (and before
per-optimizer settings) still open, export and resume; the typed views read what the loop
writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest

from evomerge.search.driver import run_search
from evomerge.search.export import export_recipe
from evomerge.search.front import front_trials
from evomerge.search.ledger import open_storage, space_of, summary
from evomerge.search.records import S, StudyRecord, T, TrialRecord, migrate_space

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy_studies"


@pytest.fixture
def legacy(mini_zoo, tmp_path, monkeypatch) -> Path:
    """The legacy studies (tests/data/legacy_studies/make_legacy_studies.py, run with the code
    of commit 90101e3) under ``results/``, and their relative model paths (``zoo/...``)
    pointing at the mini zoo, built the same way."""
    for name in ("legacy_cma", "legacy_tpe"):
        (tmp_path / "results" / name).mkdir(parents=True)
        shutil.copy(LEGACY / name / "study.db", tmp_path / "results" / name / "study.db")
    (tmp_path / "zoo").symlink_to(mini_zoo)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _study(root: Path, name: str):
    url = f"sqlite:///{root / 'results' / name / 'study.db'}"
    return optuna.load_study(study_name=name, storage=open_storage(url)), url


def test_legacy_studies_open_with_their_optimizer_settings_migrated(legacy):
    cma, _ = _study(legacy, "legacy_cma")
    tpe, _ = _study(legacy, "legacy_tpe")
    # what the old code stored: every optimizer block carried sigma0 / x0 / diagonal / popsize
    assert {"sigma0", "x0", "diagonal", "popsize"} <= set(tpe.user_attrs[S.SPACE]["optimizer"])
    assert space_of(tpe).optimizer.model_dump() == {"seed": 1, "name": "tpe",
                                                    "n_startup_trials": 10}
    assert space_of(cma).optimizer.model_dump() == {
        "seed": 0, "name": "cma", "popsize": 4, "sigma0": 0.12, "x0": "uniform",
        "x0_from": None, "diagonal": False}
    record = StudyRecord(cma)
    assert (record.num_layers, record.budget, record.driver["state"]) == (2, 6, "budget")
    assert summary(cma)["evaluations"] == 6
    recs = [TrialRecord(t) for t in cma.get_trials()]
    assert all(r.counted and r.recipe and r.recipe_hash and r.scores for r in recs)
    assert [r.attrs[T.CMA_GEN] for r in recs] == [0, 0, 0, 0, 1, 1]


def test_legacy_study_exports_and_resumes_to_its_new_budget(legacy):
    study, _ = _study(legacy, "legacy_cma")
    before = [(t.number, t.user_attrs[T.RECIPE_HASH]) for t in study.get_trials()]
    out = export_recipe(study, space_of(study), legacy / "best.yaml", best=True)
    assert "merge_method: ties" in out.read_text()
    assert len(front_trials(study, space_of(study))) >= 1

    outcome = run_search(space_of(study), study="legacy_cma", trials=10, results_root="results")
    assert (outcome.evaluations, outcome.stopped) == (10, "budget")
    study, _ = _study(legacy, "legacy_cma")
    trials = study.get_trials()
    assert [(t.number, t.user_attrs[T.RECIPE_HASH]) for t in trials[:6]] == before
    assert [t.state.name for t in trials] == ["COMPLETE"] * 10  # no waiting or stale trial
    # CMA-ES went on from the stored generations (the checkpoint of generation 1 was read)
    assert [t.user_attrs[T.CMA_GEN] for t in trials[6:]] == [1, 1, 2, 2]
    assert len({t.user_attrs[T.RECIPE_HASH] for t in trials}) == 10


def test_migrate_space_keeps_what_each_optimizer_takes():
    old = {"name": None, "popsize": None, "sigma0": 0.12, "x0": "uniform", "diagonal": False,
           "seed": 3}
    assert migrate_space({"optimizer": {**old, "name": "nsga2"}})["optimizer"] == {
        "name": "nsga2", "seed": 3}
    assert migrate_space({"optimizer": {**old, "name": "cmaes"}})["optimizer"] == {
        "name": "cmaes", "popsize": None, "sigma0": 0.12, "seed": 3}
    assert migrate_space({"optimizer": {**old, "name": "gp"}})["optimizer"] == {
        "name": "gp", "seed": 3}
    assert migrate_space({"name": "x"}) == {"name": "x"}


def test_a_command_closes_the_study_it_opened(legacy):
    """``evomerge export`` run in-process (tests, notebooks, the benchmarks) leaves no open
    connection behind: without close_storages the engine's pool kept SQLite's -wal/-shm files
    until the garbage collector found it, in the middle of whatever ran next."""
    import gc

    from evomerge.cli import main

    gc.disable()  # the collector must not be what closes it
    try:
        assert main(["export", "legacy_cma", "--results", "results", "--best",
                     "-o", str(legacy / "best.yaml")]) == 0
        left = sorted(p.name for p in (legacy / "results" / "legacy_cma").iterdir())
    finally:
        gc.enable()
    assert left == ["study.db"]
    assert "merge_method: ties" in (legacy / "best.yaml").read_text()
