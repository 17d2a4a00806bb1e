"""Bullet: ``num_hidden_layers`` edited consistently in every config while the tensors hold
more layers is refused (the output would silently lose layers)."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from fuzz_inputs import run_cli


@pytest.mark.parametrize("layers", [3, 5])
def test_config_and_tensors_must_agree_on_the_layer_count(tiny, tmp_path, layers):
    refs = {}
    for name in ("base", "a", "b"):
        refs[name] = tmp_path / name
        shutil.copytree(tiny[name], refs[name])
        cfg = json.loads((refs[name] / "config.json").read_text())
        cfg["num_hidden_layers"] = layers  # the tensors hold 4
        (refs[name] / "config.json").write_text(json.dumps(cfg))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"merge_method": "ties", "base_model": str(refs["base"]),
                                      "models": [{"model": str(refs[m]), "parameters": {
                                          "weight": 0.5, "density": 0.5}} for m in "ab"]}))
    code, err = run_cli(["merge", str(recipe), str(tmp_path / "out"), "-q"])
    assert code == 2 and f"says {layers} layers" in err and "0-3" in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()
