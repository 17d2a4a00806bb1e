"""The main job (`evomerge quickstart`) end to end on the mini zoo with a small budget."""

from __future__ import annotations

import pytest
import yaml
from search.spaces import space_dict

from evomerge.cli.quickstart import quickstart
from evomerge.engine.recipe import load_recipe
from evomerge.search.ledger import default_storage, load_study, open_storage


@pytest.mark.slow
@pytest.mark.e2e
def test_quickstart_writes_front_report_and_best_recipe(mini_zoo, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(space_dict(mini_zoo, name="qs", budget={"trials": 12})))
    results = tmp_path / "results"
    assert quickstart(zoo=str(mini_zoo), space=str(space), results=str(results), quiet=True,
                      profile="mini") == 0
    out = capsys.readouterr().out
    assert "Hypervolume on test" in out and "evomerge dashboard --results" in out
    for name in ("pareto.json", "pareto.png", "report.md", "best_recipe.yaml"):
        assert (results / "qs" / name).is_file(), name
    load_recipe(results / "qs" / "best_recipe.yaml")
    study = load_study(open_storage(default_storage("qs", results)), "qs")
    launch = study.user_attrs["evomerge_launch"]
    assert launch["via"] == "local" and launch["results"] == str(results.resolve())
    assert study.user_attrs["evomerge_driver"]["state"] == "budget"
