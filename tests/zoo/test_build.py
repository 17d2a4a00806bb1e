"""The zoo builder: layout, reuse, determinism, clean restart after an interruption."""

from __future__ import annotations

import json

import pytest
import torch
from oracle import load_dir
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomerge.errors import ConfigError
from evomerge.zoo.build import EVAL_TASKS, ZOO_MODELS, build_zoo, load_manifest
from evomerge.zoo.data import read_jsonl
from evomerge.zoo.tasks import L1, L2


def test_layout(mini_zoo):
    manifest = load_manifest(mini_zoo)
    assert manifest["models"] == list(ZOO_MODELS)
    for name in ZOO_MODELS:
        model = AutoModelForCausalLM.from_pretrained(mini_zoo / name)
        assert type(model).__name__ == "LlamaForCausalLM"
        assert (mini_zoo / name / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(mini_zoo / "base")
    assert tok.decode(tok("12+34=")["input_ids"]) == "12+34="
    for task in EVAL_TASKS:
        for split in ("validation", "test"):
            assert len(read_jsonl(mini_zoo / "tasks" / task / f"{split}.jsonl")) == 40
            assert (mini_zoo / "tasks" / f"zoo_{task}_{split}.yaml").is_file()


def test_saved_l2_rows_are_l1_rows_plus_one_shared_vector(mini_zoo):
    from evomerge.zoo.model import vocab

    v = vocab()
    w = load_dir(mini_zoo / "math")["model.embed_tokens.weight"]
    diffs = torch.stack([w[v[b]] - w[v[a]] for a, b in zip(L1, L2)])
    assert torch.allclose(diffs, diffs[0].expand_as(diffs), atol=1e-5)


def test_lang_expert_only_changed_its_trainable_layers(mini_zoo):
    base, lang = load_dir(mini_zoo / "base"), load_dir(mini_zoo / "lang")
    changed = {k for k in base if not torch.equal(base[k], lang[k])}
    assert any("layers.0." in k for k in changed) and any("layers.1." in k for k in changed)
    assert "model.embed_tokens.weight" in changed
    math = load_dir(mini_zoo / "math")
    assert all(not torch.equal(base[k], math[k]) for k in base if "layers." in k and "proj" in k)


def test_finished_zoo_is_reused(mini_zoo):
    before = (mini_zoo / "base" / "model.safetensors").stat().st_mtime_ns
    build_zoo(mini_zoo, seed=0, profile="mini")
    assert (mini_zoo / "base" / "model.safetensors").stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match="holds a zoo with seed 0"):
        build_zoo(mini_zoo, seed=1, profile="mini")


def test_zoo_built_with_other_settings_is_not_reused(mini_zoo, tmp_path):
    import shutil

    old = tmp_path / "zoo"
    shutil.copytree(mini_zoo, old)
    manifest = json.loads((old / "zoo.json").read_text())
    del manifest["profile_settings"]["expert_mix"]  # as an older evomerge built it
    (old / "zoo.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"built with expert_mix=None.*'maxmin_l1': 0\.2.*delete"):
        build_zoo(old, seed=0, profile="mini")
    manifest["profile_settings"]["expert_lr"]["math"] = 1.5e-3
    (old / "zoo.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"built with expert_lr=.*'math': 0\.0015.*delete"):
        build_zoo(old, seed=0, profile="mini")


def test_deterministic_and_clean_restart_after_interrupt(mini_zoo, tmp_path):
    def stop(stage, done, total):
        if stage == "lang" and done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_zoo(tmp_path / "zoo", seed=0, profile="mini", progress=stop)
    assert not (tmp_path / "zoo").exists()
    build_zoo(tmp_path / "zoo", seed=0, profile="mini")
    assert not (tmp_path / "zoo.partial").exists()
    for name in ZOO_MODELS:
        a, b = load_dir(mini_zoo / name), load_dir(tmp_path / "zoo" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    m1 = json.loads((mini_zoo / "zoo.json").read_text())
    m2 = json.loads((tmp_path / "zoo" / "zoo.json").read_text())
    assert [m1["training"][k]["final_loss"] for k in ZOO_MODELS] == \
        [m2["training"][k]["final_loss"] for k in ZOO_MODELS]


def test_not_a_zoo(tmp_path):
    with pytest.raises(ConfigError, match="is not a built zoo"):
        load_manifest(tmp_path)
