"""Recipes as sources: planned from headers, built once in memory to the bits `evomerge merge`
writes; multi-stage recipes built by `evomerge merge` as by mergekit-multi."""

from __future__ import annotations

import subprocess

import pytest
import torch
import yaml
from oracle import load_dir, max_abs_diff, mergekit_cli

from evomerge.engine.derived import DerivedSource, load_chain, open_model, rename_models
from evomerge.engine.materialize import Materializer
from evomerge.engine.merge import merge_stages, merge_to_disk
from evomerge.engine.recipe import load_recipe
from evomerge.errors import ConfigError


def ties(tiny) -> dict:
    return {"merge_method": "ties", "base_model": tiny["base"], "dtype": "float32",
            "models": [{"model": tiny["a"], "parameters": {"weight": 0.7, "density": 0.5}},
                       {"model": tiny["b"], "parameters": {"weight": 0.4, "density": 0.8}}]}


def test_derived_source_plans_without_weights_and_builds_what_merge_writes(tiny, tmp_path):
    src = DerivedSource("stage", load_recipe(ties(tiny)))
    assert src.num_layers == 4 and src.architecture == "LlamaForCausalLM"
    assert src.shape("model.layers.0.mlp.up_proj.weight") == (64, 32)
    assert src.stored_dtype == torch.float32
    merge_to_disk(load_recipe(ties(tiny)), tmp_path / "m")
    assert max_abs_diff(src.build(), load_dir(tmp_path / "m")) == 0.0


def test_a_recipe_file_is_a_source_of_another_recipe(tiny, tmp_path):
    """A Materializer given a recipe file as a model builds it once and merges over it as
    over a model directory: the same weights as building the stage to disk first."""
    stage = tmp_path / "stage.yaml"
    stage.write_text(yaml.safe_dump(ties(tiny)))
    outer = {"merge_method": "linear", "dtype": "float32",
             "models": [{"model": str(stage), "parameters": {"weight": 0.5}},
                        {"model": tiny["c"], "parameters": {"weight": 0.5}}]}
    mat = Materializer([str(stage), tiny["c"]], device="cpu")
    got = {k: v.detach().clone() for k, v in mat.materialize(load_recipe(outer)).state_dict().items()}
    merge_to_disk(load_recipe(ties(tiny)), tmp_path / "built")
    on_disk = rename_models(outer, {str(stage): str(tmp_path / "built")})
    merge_to_disk(load_recipe(on_disk), tmp_path / "outer")
    want = load_dir(tmp_path / "outer")
    assert max(float((got[k] - want[k]).abs().max()) for k in want) == 0.0


def test_source_errors_say_what_to_do(tiny, tmp_path):
    with pytest.raises(ConfigError, match="only inside a search"):
        open_model("study:ps#best")
    nested = tmp_path / "nested.yaml"
    first = tmp_path / "first.yaml"
    first.write_text(yaml.safe_dump(ties(tiny)))
    nested.write_text(yaml.safe_dump({"merge_method": "passthrough",
                                      "models": [{"model": str(first)}]}))
    with pytest.raises(ConfigError, match="build that one first"):
        open_model(str(nested))


@pytest.mark.parametrize("text, match", [
    ("merge_method: linear\n---\nname: b\nmerge_method: linear\n", "only the last"),
    ("name: a\nmerge_method: x\n---\nname: a\nmerge_method: y\n", "used twice"),
])
def test_bad_chains(text, match):
    with pytest.raises(ConfigError, match=match):
        load_chain(text)


def chain_text(tiny) -> str:
    final = {"merge_method": "passthrough", "dtype": "float32",
             "slices": [{"sources": [{"model": "stage1", "layer_range": [0, 2]}]},
                        {"sources": [{"model": tiny["c"], "layer_range": [1, 4]}]}]}
    return yaml.safe_dump_all([{"name": "stage1", **ties(tiny)}, final])


def test_merge_stages_builds_named_stages_then_the_final_recipe(tiny, tmp_path):
    recipe = tmp_path / "chain.yaml"
    recipe.write_text(chain_text(tiny))
    plans = merge_stages(recipe, tmp_path / "out")
    assert [p.num_layers for p in plans] == [4, 5]
    stage = load_dir(tmp_path / "out-stages" / "stage1")
    out = load_dir(tmp_path / "out")
    assert torch.equal(out["model.layers.1.self_attn.q_proj.weight"],
                       stage["model.layers.1.self_attn.q_proj.weight"])
    assert merge_stages(recipe, tmp_path / "again", tmp_path / "out-stages")[0].num_layers == 5


def test_multistage_recipe_builds_the_same_with_mergekit_multi(tiny, tmp_path):
    MERGEKIT_MULTI = mergekit_cli("mergekit-multi")
    recipe = tmp_path / "chain.yaml"
    recipe.write_text(chain_text(tiny))
    merge_stages(recipe, tmp_path / "ev")
    subprocess.run([MERGEKIT_MULTI, str(recipe), "-I", str(tmp_path / "mk-stages"),
                    "--out-path", str(tmp_path / "mk"), "--no-copy-tokenizer"],
                   check=True, capture_output=True)
    assert max_abs_diff(load_dir(tmp_path / "ev"), load_dir(tmp_path / "mk")) <= 1e-6
