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
    # a model exported from the front now carries the report's test values in its card
    out = study_root / "front0"
    assert main(["export", "t", "--results", str(study_root), "--pareto", "0",
                 "--model-dir", str(out)]) == 0
    row = next(r for r in doc["rows"] if r["kind"] == "search front")
    text = (out / "README.md").read_text()
    assert f"Trial {row['name'].split()[1]} of" in text
    for key in keys:
        assert f"| {row['validation'][key]:.6g} | {row['test'][key]:.6g} |" in text


def test_export_model_dir_has_the_hub_card_of_its_trial(study_root, tmp_path):
    """`export --model-dir` builds the model in one step; its card names the study, the trial
    and its objective values (as the study holds them), with the front plot."""
    from huggingface_hub import ModelCard
    from matplotlib.image import imread

    from evomerge.commands import open_study
    from evomerge.search.front import front_trials
    from evomerge.search.records import TrialRecord

    out = tmp_path / "model"
    assert main(["export", "t", "--results", str(study_root), "--pareto", "0", "--model-dir",
                 str(out), "--base-model-id", "org/zoo-base"]) == 0
    study, space = open_study("t", results=str(study_root))
    trial = front_trials(study, space)[0]
    text = (out / "README.md").read_text()
    assert ModelCard(text).data.to_dict()["base_model"] == ["org/zoo-base"]
    assert f"Trial {trial.number} of the evomerge study t (" in text
    for obj, value in zip(space.objectives, trial.values):
        assert f"| {obj.key} | {obj.direction} | {value:.6g} |" in text
    assert imread(out / "front.png").shape[:2] == (450, 600)
    written, searched = (load_recipe(r).model_dump(exclude={"evomerge"}) for r in (
        out / "mergekit_config.yml", TrialRecord(trial).recipe))
    assert written == searched
    assert (out / "model.safetensors").is_file()
    assert main(["export", "t", "--results", str(study_root), "--best"]) == 2  # no target
