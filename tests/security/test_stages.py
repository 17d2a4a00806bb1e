"""Item 5: the stages of a multi-document recipe are keyed by a hash of their recipe: a
changed stage is rebuilt, a directory evomerge did not build is never taken as a stage, a
stage name is a safe name, and nothing is written outside the stages directory."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from fuzz_inputs import run_cli
from oracle import load_dir


def _chain(tiny, weight: float, name: str = "st") -> str:
    stage = {"name": name, "merge_method": "linear", "dtype": "float32", "models": [
        {"model": tiny["a"], "parameters": {"weight": weight}},
        {"model": tiny["b"], "parameters": {"weight": 1 - weight}}]}
    final = {"merge_method": "passthrough", "dtype": "float32",
             "slices": [{"sources": [{"model": name, "layer_range": [0, 4]}]}]}
    return yaml.safe_dump_all([stage, final], sort_keys=False)


def _direct(tiny, weight: float, tmp_path, tag: str) -> dict:
    doc = yaml.safe_load_all(_chain(tiny, weight)).__next__()
    doc.pop("name")
    path = tmp_path / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert run_cli(["merge", str(path), str(tmp_path / tag), "-q"])[0] == 0
    return load_dir(tmp_path / tag)


def test_a_changed_stage_is_rebuilt_and_a_foreign_one_refused(tiny, tmp_path):
    recipe, stages = tmp_path / "chain.yaml", tmp_path / "stages"
    recipe.write_text(_chain(tiny, 0.3))
    assert run_cli(["merge", str(recipe), str(tmp_path / "o1"), "--stages", str(stages), "-q"])[0] == 0
    recipe.write_text(_chain(tiny, 0.8))  # the stage's recipe changed: it must be rebuilt
    assert run_cli(["merge", str(recipe), str(tmp_path / "o2"), "--stages", str(stages), "-q"])[0] == 0
    got, want = load_dir(tmp_path / "o2"), _direct(tiny, 0.8, tmp_path, "w08")
    assert all(torch.equal(got[k], want[k]) for k in want)
    mark = json.loads((stages / "st" / "evomerge_stage.json").read_text())
    assert mark["stage"] == "st" and len(mark["recipe_sha256"]) == 64

    # a directory named like the stage that evomerge did not build (here: a source model)
    import shutil

    other = tmp_path / "other-stages"
    shutil.copytree(tiny["c"], other / "st")
    code, err = run_cli(["merge", str(recipe), str(tmp_path / "o3"), "--stages", str(other), "-q"])
    assert code == 2 and "evomerge did not build it" in err and "\n" not in err, err
    assert not (tmp_path / "o3").exists() and not (other / "st" / "evomerge_stage.json").exists()


@pytest.mark.parametrize("name, match", [
    ("../../x", "is not allowed"), ("/tmp/abs", "is not allowed"), ("..", "is not allowed"),
    (5, "must be text"), ("a b", "is not allowed"),
])
def test_a_stage_name_is_a_safe_name(tiny, tmp_path, name, match):
    recipe = tmp_path / "work" / "chain.yaml"
    recipe.parent.mkdir()
    text = _chain(tiny, 0.5, name="PLACEHOLDER").replace("PLACEHOLDER", json.dumps(name))
    recipe.write_text(text)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, err = run_cli(["merge", str(recipe), str(tmp_path / "work" / "out"), "-q"])
    assert code == 2 and match in err and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written anywhere
