"""A study opened in optuna-dashboard (a real server process): it lists the study with its
objective names, its note saying what it is, and its trials with the recipe as text."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest
from servers import free_port, serving

from evomerge.engine.recipe import load_recipe
from evomerge.search.driver import run_search
from evomerge.search.ledger import load_study, open_storage
from evomerge.search.records import StudyRecord, TrialRecord
from evomerge.search.space import load_space

from .spaces import space_dict


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.slow
@pytest.mark.e2e
def test_optuna_dashboard_shows_objective_names_note_and_trials(mini_zoo, tmp_path):
    space = load_space(space_dict(mini_zoo, budget={"trials": 2},
                                  optimizer={"name": "cma", "popsize": 2, "seed": 0}))
    run_search(space, results_root=tmp_path)
    url = f"sqlite:///{tmp_path}/t/study.db"
    study = load_study(open_storage(url), "t")
    keys = ["add_l1/answer_nll", "maxmin_l2/answer_nll"]
    assert study.metric_names == keys
    port = free_port()
    exe = Path(sys.executable).parent / "optuna-dashboard"
    base = f"http://127.0.0.1:{port}/api/studies"
    with serving([str(exe), url, "--host", "127.0.0.1", "--port", str(port)], base,
                 tmp_path / "dashboard.log", timeout=120):
        (summary,) = _get(base)["study_summaries"]
        assert (summary["study_name"], summary["directions"]) == ("t", ["minimize"] * 2)
        detail = _get(f"{base}/{summary['study_id']}?after=0")
    assert detail["objective_names"] == keys
    note = detail["note"]["body"]
    assert note == StudyRecord(study).description
    assert note.startswith("evomerge study **t**: ties merges of math, lang")
    assert "- `add_l1/answer_nll` (minimize, evaluator `zoo`)" in note
    assert len(detail["trials"]) == 2
    for shown, trial in zip(detail["trials"], study.get_trials()):
        attrs = {a["key"]: a["value"] for a in shown["user_attrs"]}
        assert attrs["recipe"] == TrialRecord(trial).recipe  # YAML text, not a JSON blob
        assert load_recipe(attrs["recipe"]).merge_method == "ties"
