"""Bullets: a model listed twice is refused; the base listed among the models with
parameters it cannot use is a warning (legitimate mergekit input); normalize with weights
that nearly cancel (|sum w| below 1% of sum |w|) is refused, naming the tolerance."""

from __future__ import annotations

import yaml
from fuzz_inputs import run_cli


def _merge(doc: dict, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    code, err = run_cli(["merge", str(path), str(tmp_path / "out"), "-q"])
    return code, err, (tmp_path / "out").exists()


def test_a_model_listed_twice_is_refused(tiny, tmp_path):
    doc = {"merge_method": "linear", "models": [
        {"model": tiny["a"], "parameters": {"weight": 0.5}},
        {"model": tiny["a"], "parameters": {"weight": 0.5}}]}
    code, err, wrote = _merge(doc, tmp_path)
    assert code == 2 and "twice" in err and "\n" not in err and not wrote, err
    doc = {"merge_method": "slerp", "base_model": tiny["a"], "parameters": {"t": 0.5},
           "slices": [{"sources": [{"model": tiny["b"], "layer_range": [0, 4]},
                                   {"model": tiny["b"], "layer_range": [0, 4]}]}]}
    code, err, wrote = _merge(doc, tmp_path)
    assert code == 2 and "twice" in err and not wrote, err


def test_the_base_among_the_models_with_parameters_is_a_warning(tiny, tmp_path):
    doc = {"merge_method": "ties", "base_model": tiny["base"], "models": [
        {"model": tiny["base"], "parameters": {"weight": 0.9, "density": 0.5}},
        {"model": tiny["a"], "parameters": {"weight": 0.5, "density": 0.5}}]}
    code, err, wrote = _merge(doc, tmp_path)
    assert code == 0 and wrote
    assert err.startswith("evomerge: warning: models[0] is the base model") and "ignored" in err
    del doc["models"][0]["parameters"]  # mergekit's own idiom: no warning
    code, err, _ = _merge(doc, tmp_path / "again")
    assert code == 0 and err == ""


def test_normalize_over_weights_that_cancel_is_refused(tiny, tmp_path):
    doc = {"merge_method": "linear", "models": [
        {"model": tiny["a"], "parameters": {"weight": 1.0}},
        {"model": tiny["b"], "parameters": {"weight": -0.999999}}]}
    code, err, wrote = _merge(doc, tmp_path)
    assert code == 2 and "normalize" in err and "0.01 times" in err and "\n" not in err, err
    assert not wrote
    doc["parameters"] = {"normalize": False}  # without normalize it is a plain difference
    assert _merge(doc, tmp_path / "n")[0] == 0
