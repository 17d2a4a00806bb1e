"""Export a study's trials as recipes that build; the held-out report on the mini zoo."""

from __future__ import annotations

import json

import pytest
import yaml

from evomerge.cli import main
from evomerge.engine.recipe import load_recipe
from evomerge.search.driver import run_search
from evomerge.search.space import load_space

from .spaces import space_dict


@pytest.fixture(scope="module")
def study_root(mini_zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    run_search(load_space(space_dict(mini_zoo, budget={"trials": 8})), results_root=root)
    return root


@pytest.mark.parametrize("choice", [["--best"], ["--pareto", "0"], ["--trial", "3"]])
def test_export_builds_with_evomerge_merge(study_root, tmp_path, choice, mini_zoo):
    out = tmp_path / "recipe.yaml"
    assert main(["export", "t", "--results", str(study_root), *choice, "-o", str(out)]) == 0
    recipe = load_recipe(out)
    assert recipe.base_model == str(mini_zoo / "base")  # original references, not temp paths
    assert set(yaml.safe_load(out.read_text())["evomerge"]["scores"]) == {
        "add_l1/answer_nll", "maxmin_l2/answer_nll"}
    assert main(["merge", str(out), str(tmp_path / "model"), "-q"]) == 0
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_export_errors(study_root, tmp_path, capsys):
    out = str(tmp_path / "r.yaml")
    assert main(["export", "t", "--results", str(study_root), "--pareto", "99", "-o", out]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["export", "t", "--results", str(study_root), "-o", out]) == 2
    assert "exactly one of --best" in capsys.readouterr().err


def test_front_command(study_root, capsys):
    assert main(["front", "t", "--results", str(study_root)]) == 0
    assert "Pareto front of t" in capsys.readouterr().out


@pytest.mark.slow
def test_report_scores_test_split(study_root, mini_zoo, capsys):
    assert main(["report", "t", "--results", str(study_root), "--levels", "2", "-q"]) == 0
    doc = json.loads((study_root / "t" / "report.json").read_text())
    kinds = {r["kind"] for r in doc["rows"]}
    assert kinds == {"source", "search front", "uniform front"}
    assert [r["name"] for r in doc["rows"] if r["kind"] == "source"] == ["base", "math", "lang"]
    s = doc["summary"]
    from evomerge.search.pareto import hypervolume

    keys = [o["task"] + "/" + o["metric"] for o in doc["objectives"]]
    dirs = [o["direction"] for o in doc["objectives"]]
    for kind in ("search front", "uniform front"):  # recomputed from the rows it reports
        pts = [[r["test"][k] for k in keys] for r in doc["rows"] if r["kind"] == kind]
        hv = s[f"hypervolume_{kind.replace(' ', '_')}"]
        assert hv > 0 and hv == hypervolume(pts, s["reference_point"], dirs)
    assert s["uniform_grid_size"] == 16  # 2 levels x (weight, density) x 2 experts, all distinct
    assert "Held-out report" in (study_root / "t" / "report.md").read_text()
    import matplotlib.image

    img = matplotlib.image.imread(study_root / "t" / "report.png")
    n = len(doc["objectives"])
    assert img.shape[1] == 500 * max(1, n * (n - 1) // 2)  # one 5-inch panel per pair, 100 dpi
