"""LoRA adapters as sources (evomerge/engine/lora.py, lowrank.py, adapter_export.py): header
checks before any weight is read, the factors' arithmetic, what stays resident, and
``evomerge merge --adapter``. Oracles (mergekit, PEFT) are in test_lora_parity.py."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from fuzz_inputs import run_cli, write_yaml
from lora_models import edit_config, make_adapter

from evomerge.engine import lora, lowrank, sources
from evomerge.engine.lora import LoraSource
from evomerge.engine.lowrank import LowRank, RowBlocks, densify
from evomerge.engine.materialize import Materializer
from evomerge.engine.recipe import load_recipe
from evomerge.engine.sources import ModelSource


def _no_reads(monkeypatch):
    """Any tensor read fails the test: what is checked must come from headers."""
    def boom(*a, **k):
        raise AssertionError("a weight was read")
    monkeypatch.setattr(sources, "read_tensor", boom)
    monkeypatch.setattr(lora, "read_tensor", boom)


def test_source_is_the_base_with_the_adapters_scalings(lora_tiny, monkeypatch):
    _no_reads(monkeypatch)
    base = ModelSource(lora_tiny["base"])
    qv = LoraSource(f"{lora_tiny['base']}+{lora_tiny['qv']}")
    assert qv.names == base.names and qv.config == base.config and qv.path == base.path
    q, v = "model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.v_proj.weight"
    assert (qv.rank(q), qv.scale(q), qv.rank(v)) == (4, 2.0, 4)
    assert qv.rank("model.layers.1.mlp.up_proj.weight") == 0
    rs = LoraSource(f"{lora_tiny['base']}+{lora_tiny['rs']}")
    assert rs.scale("model.layers.0.mlp.down_proj.weight") == 16 / math.sqrt(8)
    pat = LoraSource(f"{lora_tiny['base']}+{lora_tiny['pattern']}")
    assert pat.rank("model.layers.0.self_attn.q_proj.weight") == 2
    assert pat.scale("model.layers.0.self_attn.q_proj.weight") == 8 / 2
    assert pat.scale("model.layers.1.self_attn.q_proj.weight") == 8 / 4
    assert pat.scale("model.layers.2.self_attn.v_proj.weight") == 3 / 4
    save = LoraSource(f"{lora_tiny['base']}+{lora_tiny['save']}")
    assert list(save.adapter.replaced) == ["lm_head.weight"]


def _other_width(root: Path) -> str:
    """A Llama twice the tiny base's width (same depth, tokenizer): its adapters do not fit."""
    from models import save_tokenizer, tiny_config
    from transformers import LlamaForCausalLM

    cfg = tiny_config()
    cfg.hidden_size, cfg.intermediate_size = 64, 128
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(root / "wide")
    save_tokenizer(root / "wide")
    return str(root / "wide")


def _bad_adapters(lora_tiny, tiny, root: Path) -> dict[str, tuple[str, str]]:
    """case -> (model reference, words the one-line error must contain)."""
    base, qv = lora_tiny["base"], lora_tiny["qv"]

    def variant(name: str, **changes) -> str:
        shutil.copytree(qv, root / name)
        return f"{base}+{edit_config(root / name, **changes)}"

    shutil.copytree(qv, root / "pickled")
    (root / "pickled" / "adapter_model.safetensors").rename(root / "pickled" / "adapter_model.bin")
    deep = make_adapter(root / "deep", tiny["deep"], 3, targets=("q_proj",))
    wide = make_adapter(root / "wide_ad", _other_width(root), 4)
    return {
        "dora": (variant("dora", use_dora=True), "DoRA"),
        "loha": (variant("loha", peft_type="LOHA"), "LOHA adapter"),
        "bias": (variant("bias", bias="all"), "trains biases"),
        "pissa": (variant("pissa", init_lora_weights="pissa"), "changes the base weights"),
        "qalora": (variant("qalora", use_qalora=True), "use_qalora = True"),
        "rank vs config": (variant("r16", r=16), "rank 4 in its weights but r = 16"),
        "regex pattern": (variant("regex", rank_pattern={"q_pr.*": 2}), "regular expression"),
        "other architecture": (variant("arch", auto_mapping={
            "base_model_class": "GPT2LMHeadModel"}), "trained on a GPT2LMHeadModel"),
        "module the base lacks": (f"{base}+{deep}", "layers.4.self_attn.q_proj, which the base"),
        "other width": (f"{base}+{wide}", "do not fit the weight [32, 32]"),
        "missing base": (f"{root / 'nowhere'}+{qv}", "its base"),
        "adapter without base": (qv, "is a LoRA adapter, not a model"),
        "pickle only": (f"{base}+{root / 'pickled'}", "pickle"),
        "two plus signs": (f"{base}+{qv}+{qv}", "one '+'"),
    }


def test_bad_adapters_are_one_sentence_before_any_weight(lora_tiny, tiny, tmp_path, monkeypatch):
    cases = _bad_adapters(lora_tiny, tiny, tmp_path)
    _no_reads(monkeypatch)
    for case, (ref, words) in cases.items():
        recipe = {"merge_method": "task_arithmetic", "base_model": lora_tiny["base"],
                  "models": [{"model": ref, "parameters": {"weight": 1.0}}]}
        out = tmp_path / f"out_{case.replace(' ', '_')}"
        code, err = run_cli(["merge", str(write_yaml(recipe, tmp_path / "r.yaml")), str(out),
                             "-q"])
        assert (code, "\n" in err, out.exists()) == (2, False, False), (case, err)
        assert err.startswith("evomerge: error: ") and words in err, (case, err)


def test_lorahub_needs_adapters_of_the_base_of_one_rank(lora_tiny, tiny, tmp_path, monkeypatch):
    _no_reads(monkeypatch)
    base = lora_tiny["base"]
    for models, words in [([lora_tiny["qv"], lora_tiny["rs"]], "one rank per module"),
                          ([lora_tiny["qv"], None], "is not one")]:
        refs = [f"{base}+{m}" if m else tiny["a"] for m in models]
        recipe = {"merge_method": "lorahub", "base_model": base,
                  "models": [{"model": r, "parameters": {"weight": 0.5}} for r in refs]}
        code, err = run_cli(["merge", str(write_yaml(recipe, tmp_path / "r.yaml")),
                             str(tmp_path / "out"), "-q"])
        assert code == 2 and words in err, err


@pytest.mark.parametrize("block", [1 << 20, 40])
def test_row_blocks_give_each_entry_the_same_bits_however_read(block, monkeypatch):
    monkeypatch.setattr(lowrank, "BLOCK", block)
    g = torch.Generator().manual_seed(0)
    x = LowRank(torch.randn(24, 10, generator=g).bfloat16(), torch.randn(3, 10, generator=g),
                torch.randn(24, 3, generator=g), 0.5)
    view = RowBlocks(x, torch.float32, torch.device("cpu"))
    whole = view[0:240]
    parts = torch.cat([view[s:s + 37] for s in range(0, 240, 37)])
    idx = torch.randperm(240, generator=g)[:100]
    assert torch.equal(parts, whole) and torch.equal(view[idx], whole[idx])
    assert torch.allclose(whole, densify(x, torch.float32, torch.device("cpu")).reshape(-1),
                          atol=1e-6)
    assert view.block == (block // 10) * 10 if block < 240 else view.block >= 240


def _ta(base: str, refs: list[str], weights: list[float], method: str = "task_arithmetic",
        **top):
    doc = {"merge_method": method, "base_model": base, "dtype": "float32",
           "models": [{"model": r, "parameters": {"weight": w}} for r, w in zip(refs, weights)],
           **top}
    if method == "linear":
        doc.pop("base_model")
    return load_recipe(doc)


def test_only_base_factors_and_adapted_tensors_stay_resident(lora_tiny):
    """Sources: the base and the factors. Output: the tensors some adapter touches; the others
    are the base's own tensors (read by the model, never written)."""
    base = lora_tiny["base"]
    refs = [f"{base}+{lora_tiny[k]}" for k in ("qv", "rs", "save")]
    mat = Materializer(refs, base_model=base)
    factors = sum(LoraSource(r).adapter.nbytes for r in refs)
    assert mat.resident_bytes()["sources"] == ModelSource(base).nbytes + factors
    model = mat.materialize(_ta(base, refs, [0.5, 0.3, 0.2]))
    src = ModelSource(base)
    adapted = {n for r in refs for n in [*LoraSource(r).adapter.factors,
                                         *LoraSource(r).adapter.replaced]}
    assert mat.resident_bytes()["model"] == sum(src._entries[n].nbytes for n in adapted)
    up = "model.layers.2.mlp.up_proj.weight"
    assert model.state_dict()[up].data_ptr() == mat._weights[base][up].data_ptr()
    assert len(adapted) == 4 * 4 + 1 and factors < src.nbytes


def test_untouched_tensors_are_rewritten_when_a_candidate_changes_them(lora_tiny):
    """A tensor no adapter touches is the base's own tensor; a linear candidate with
    unnormalized weights scales it (in storage of its own: the base stays as it is), and the
    next candidate shares the base's again."""
    base = lora_tiny["base"]
    refs = [f"{base}+{lora_tiny[k]}" for k in ("qv", "rs")]
    a = _ta(base, refs, [0.7, 0.4])
    b = _ta(base, refs, [0.5, 0.8], method="linear", parameters={"normalize": False})
    mat = Materializer(refs, base_model=base)
    first = {k: v.clone() for k, v in mat.materialize(a).state_dict().items()}
    up = "model.layers.2.mlp.up_proj.weight"
    scaled = mat.materialize(b).state_dict()[up]
    assert torch.allclose(scaled, 1.3 * first[up])
    assert torch.equal(mat._weights[base][up], ModelSource(base).get(up))
    again = mat.materialize(a).state_dict()
    fresh = Materializer(refs, base_model=base).materialize(a).state_dict()
    assert all(torch.equal(again[k], fresh[k]) and torch.equal(first[k], fresh[k])
               for k in fresh)
    assert again[up].data_ptr() == mat._weights[base][up].data_ptr()


def test_merge_as_adapter_writes_one_peft_adapter(lora_tiny, tmp_path):
    base = lora_tiny["base"]
    refs = [f"{base}+{lora_tiny[k]}" for k in ("qv", "rs")]
    recipe = tmp_path / "ta.yaml"
    recipe.write_text(_ta(base, refs, [0.7, -0.4]).to_yaml())
    code, err = run_cli(["merge", str(recipe), str(tmp_path / "ad"), "--adapter", "-q"])
    assert code == 0, err
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    # q_proj carries both adapters (4 + 8), the largest composed rank; k/v/down one of them
    assert (config["r"], config["lora_alpha"]) == (12, 12)
    assert len(config["target_modules"]) == 4 * 4
    again = LoraSource(f"{base}+{tmp_path / 'ad'}")  # evomerge reads its own adapter back
    assert again.rank("model.layers.0.self_attn.v_proj.weight") == 12
    ties = tmp_path / "ties.yaml"
    ties.write_text(load_recipe({"merge_method": "ties", "base_model": base, "models": [
        {"model": r, "parameters": {"weight": 1.0, "density": 0.5}} for r in refs]}).to_yaml())
    code, err = run_cli(["merge", str(ties), str(tmp_path / "ad2"), "--adapter", "-q"])
    assert code == 2 and "not the base plus a low-rank update" in err
    assert not (tmp_path / "ad2").exists()
