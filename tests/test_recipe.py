"""Recipe validation: every mistake is one clear sentence naming the field and the value."""

from __future__ import annotations

import pytest

from evomerge.engine.params import evaluate
from evomerge.engine.recipe import Conditional, load_recipe
from evomerge.errors import ConfigError

OK = """
merge_method: ties
base_model: base
models:
  - {model: a, parameters: {weight: [0.2, 0.8], density: 0.5}}
  - {model: b, parameters: {weight: [{filter: self_attn, value: 0.3}, {value: 0.7}]}}
parameters: {lambda: 1.0}
evomerge: {seed: 3, study: demo}
"""


def test_round_trip_is_stable():
    recipe = load_recipe(OK)
    assert load_recipe(recipe.to_yaml()) == recipe
    assert recipe.evomerge.seed == 3
    assert recipe.referenced_models() == ["base", "a", "b"]


@pytest.mark.parametrize("text, message", [
    ("merge_method: tie\nbase_model: x\nmodels: [{model: a}]",
     r"Unknown merge method 'tie'\. Available: linear, .*ties"),
    ("merge_method: ties\nbase_model: x\nmodels: [{model: a, parameters: {weight: 1, densty: 1}}]",
     r"models\[0\]\.parameters: unknown parameter 'densty' for merge method 'ties'; valid: "),
    ("merge_method: ties\nbase_model: x\nmodels: [{model: a, parameters: {weight: 1, density: 1.5}}]",
     r"models\[0\]\.parameters\.density = 1\.5 is above the maximum 1\.0"),
    ("merge_method: ties\nbase_model: x\nmodels: [{model: a, parameters: {weight: 1, density: [0.5, -0.1]}}]",
     r"density = -0\.1 is below the minimum 0\.0"),
    ("merge_method: ties\nbase_model: x\nmodels: [{model: a, parameters: {weight: 1}}]\n"
     "parameters: {normalize: 3}", r"parameters\.normalize must be true or false, got 3"),
    ("merge_method: ties\nmodels: [{model: a, parameters: {weight: 1}}]", r"'ties' needs a base_model"),
    ("merge_method: ties\nbase_model: x\nmodels: [{model: a}]", r"needs parameter 'weight' for model 'a'"),
    ("merge_method: slerp\nbase_model: x\nmodels: [{model: x}, {model: a}]", r"needs parameter 't'"),
    ("merge_method: slerp\nbase_model: x\nmodels: [{model: a}, {model: b}]\nparameters: {t: 0.5}",
     r"'slerp' takes exactly 1 models besides the base, got 2"),
    ("merge_method: model_stock\nbase_model: x\nmodels: [{model: a}]", r"at least 2 models"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\nmodle: 3",
     r"unknown field 'modle'"),
    ("merge_method: linear", r"exactly one of 'models' or 'slices'"),
    ("merge_method: passthrough\nslices: [{sources: [{model: a, layer_range: [3, 1]}]}]",
     r"layer_range \[3, 1\] must satisfy 0 <= start < end"),
    ("merge_method: passthrough\nslices: [{sources: [{model: a, layer_range: [0, 2]}, "
     "{model: b, layer_range: [0, 3]}]}]", r"same number of layers, got \[2, 3\]"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\ndtype: float8",
     r"dtype 'float8' is not one of"),
    ("merge_method: linear\nmodels: [{model: a, parameters: {weight: abc}}]",
     r"field 'models.0.parameters.weight'"),
    ("- just a list", r"must be a YAML mapping"),
    ("merge_method: [unclosed", r"not valid YAML"),
])
def test_bad_recipes_fail_with_one_clear_sentence(text, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_recipe(text)
    assert "\n" not in str(info.value)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_gradient_interpolation_matches_mergekit_semantics():
    grad = [0.0, 1.0, 0.0]
    assert evaluate(grad, "x", 0.0) == 0.0
    assert evaluate(grad, "x", 0.25) == 0.5
    assert evaluate(grad, "x", 0.5) == 1.0
    assert evaluate(grad, "x", 1.0) == 0.0
    assert evaluate([True, False], "x", 0.4) is True  # booleans select, never blend


def test_filters_first_match_wins():
    conds = [Conditional(filter="mlp", value=1.0), Conditional(value=2.0),
             Conditional(filter="self_attn", value=3.0)]
    assert evaluate(conds, "model.layers.0.mlp.up_proj.weight", 0) == 1.0
    assert evaluate(conds, "model.layers.0.self_attn.q_proj.weight", 0) == 2.0
    assert evaluate([Conditional(filter="mlp", value=1.0)], "lm_head.weight", 0) is None
