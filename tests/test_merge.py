"""Streaming merge to disk: output layout, sharding, atomicity, and bad inputs via the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from oracle import load_dir
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.cli import main
from evomerge.engine.merge import merge_to_disk
from evomerge.engine.recipe import load_recipe


def _ties(tiny, b=None, method="ties", density_a=0.5, **extra):
    text = f"""
merge_method: {method}
base_model: {tiny['base']}
models:
  - {{model: {tiny['a']}, parameters: {{weight: 0.6, density: {density_a}}}}}
  - {{model: {b or tiny['b']}, parameters: {{weight: 0.4, density: 0.5}}}}
dtype: float32
"""
    return text + "".join(f"{k}: {v}\n" for k, v in extra.items())


def test_output_is_a_loadable_hf_model(tiny, tmp_path):
    out = tmp_path / "m"
    merge_to_disk(load_recipe(_ties(tiny)), out)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "mergekit_config.yml",
            "README.md"} <= names
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("w1 w2 w3", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, 3, 48)
    assert load_recipe(out / "mergekit_config.yml") == load_recipe(_ties(tiny))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp dir left


def test_sharded_output_equals_single_file(tiny, tmp_path):
    recipe = load_recipe(_ties(tiny))
    merge_to_disk(recipe, tmp_path / "one")
    merge_to_disk(recipe, tmp_path / "many", max_shard_bytes=20_000)
    index = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 3
    single, sharded = load_dir(tmp_path / "one"), load_dir(tmp_path / "many")
    assert sorted(single) == sorted(sharded)
    assert all(torch.equal(single[k], sharded[k]) for k in single)
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in single.values())
    AutoModelForCausalLM.from_pretrained(tmp_path / "many")  # HF reads the index


def test_sharded_sources_are_read(tiny, tmp_path):
    merge_to_disk(load_recipe(_ties(tiny)), tmp_path / "sharded_a", max_shard_bytes=20_000)
    merge_to_disk(load_recipe(_ties(tiny, b=str(tmp_path / "sharded_a"))), tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_layer_swap_writes_new_depth_to_config(tiny, tmp_path):
    text = f"""
merge_method: passthrough
slices:
  - sources: [{{model: {tiny['a']}, layer_range: [0, 3]}}]
  - sources: [{{model: {tiny['b']}, layer_range: [1, 4]}}]
"""
    merge_to_disk(load_recipe(text), tmp_path / "deep")
    config = json.loads((tmp_path / "deep" / "config.json").read_text())
    assert config["num_hidden_layers"] == 6
    tensors = load_dir(tmp_path / "deep")
    b = load_dir(tiny["b"])
    assert torch.equal(tensors["model.layers.3.mlp.up_proj.weight"],
                       b["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(tensors["lm_head.weight"], b["lm_head.weight"])  # final from last slice
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "deep").config.num_hidden_layers == 6


def test_tied_embeddings_write_no_lm_head(tiny, tmp_path):
    text = f"""
merge_method: task_arithmetic
base_model: {tiny['tied_base']}
models: [{{model: {tiny['tied_a']}, parameters: {{weight: 0.5}}}}]
"""
    merge_to_disk(load_recipe(text), tmp_path / "t")
    assert "lm_head.weight" not in load_dir(tmp_path / "t")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "t")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_failed_merge_leaves_nothing(tiny, tmp_path):
    def boom(done, total):
        if done == 5:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        merge_to_disk(load_recipe(_ties(tiny)), tmp_path / "out", progress=boom)
    assert list(tmp_path.iterdir()) == []


def test_bf16_out_dtype(tiny, tmp_path):
    merge_to_disk(load_recipe(_ties(tiny, out_dtype="bfloat16")), tmp_path / "bf")
    assert all(t.dtype == torch.bfloat16 for t in load_dir(tmp_path / "bf").values())


def _copy_of_b(tiny, path, arch=None, reshape=False, tokenizer=False, tied=False, corrupt=None):
    """A copy of model b with another architecture name, one tensor of another shape, another
    tokenizer of the same size, a tied LM head, or a damaged weight file."""
    path.mkdir()
    tensors = load_dir(tiny["b"])
    if reshape:
        tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 3)
    if tied:
        del tensors["lm_head.weight"]
    save_file(tensors, path / "model.safetensors")
    config = json.loads((Path(tiny["b"]) / "config.json").read_text())
    if arch:
        config["architectures"] = [arch]
    config["tie_word_embeddings"] = tied
    (path / "config.json").write_text(json.dumps(config))
    for f in Path(tiny["b"]).glob("tokenizer*.json"):
        (path / f.name).write_text(f.read_text())
    if tokenizer:  # same 48 ids, two tokens swapped
        tok = json.loads((path / "tokenizer.json").read_text())
        vocab = tok["model"]["vocab"]
        vocab["w1"], vocab["w2"] = vocab["w2"], vocab["w1"]
        (path / "tokenizer.json").write_text(json.dumps(tok))
    weights = path / "model.safetensors"
    if corrupt == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif corrupt == "garbage":
        weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])
    return str(path)


def _run_cli(tmp_path, text, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    code = main(["merge", str(recipe), str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("case, message", [
    ("missing_model", r"no such model directory"),
    ("arch", r"Architecture mismatch"),
    ("vocab", r"Vocabulary size mismatch: .* has 48 tokens but .* has 40"),
    ("depth", r"Models differ in layer count"),
    ("range", r"layer_range \[2, 9\] goes beyond model .*, which has 4 layers"),
    ("pickle", r"no safetensors weights found\. It has only pickle checkpoints"),
    ("unknown_method", r"Unknown merge method 'soup'\. Available: linear"),
    ("bad_param", r"density = 2\.0 is above the maximum 1\.0"),
    ("shape", r"Shape mismatch for tensor"),
    ("tokenizer", r"Tokenizer mismatch: .*token 1 is 'w1' in one and 'w2' in the other"),
    ("tied", r"Tied-embedding mismatch: .*/tied' ties its LM head .* has its own lm_head"),
    ("truncated", r"model\.safetensors: truncated: tensor .* ends at byte \d+ but the file has"),
    ("garbage", r"model\.safetensors: corrupt safetensors header"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, message, tiny, tmp_path, capsys):
    texts = {
        "missing_model": _ties(tiny, b=str(tmp_path / "nope")),
        "vocab": _ties(tiny, b=tiny["vocab"]),
        "depth": _ties(tiny, b=tiny["deep"]),
        "range": f"merge_method: passthrough\nslices: [{{sources: [{{model: {tiny['a']}, "
                 f"layer_range: [2, 9]}}]}}]\n",
        "pickle": _ties(tiny, b=tiny["pickle"]),
        "unknown_method": _ties(tiny, method="soup"),
        "bad_param": _ties(tiny, density_a=2.0),
        "arch": _ties(tiny, b=_copy_of_b(tiny, tmp_path / "arch", arch="MistralForCausalLM")),
        "shape": _ties(tiny, b=_copy_of_b(tiny, tmp_path / "odd", reshape=True)),
        "tokenizer": _ties(tiny, b=_copy_of_b(tiny, tmp_path / "tok", tokenizer=True)),
        "tied": _ties(tiny, b=_copy_of_b(tiny, tmp_path / "tied", tied=True)),
        "truncated": _ties(tiny, b=_copy_of_b(tiny, tmp_path / "trunc", corrupt="truncated")),
        "garbage": _ties(tiny, b=_copy_of_b(tiny, tmp_path / "garb", corrupt="garbage")),
    }
    code, err = _run_cli(tmp_path, texts[case], capsys)
    assert code == 2
    assert err.startswith("evomerge: error: ") and "\n" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_cli_merge_succeeds(tiny, tmp_path, capsys):
    code, _ = _run_cli(tmp_path, _ties(tiny), capsys)
    assert code == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_existing_output_is_refused(tiny, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code, err = _run_cli(tmp_path, _ties(tiny), capsys)
    assert code == 2 and "exists and is not empty" in err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
