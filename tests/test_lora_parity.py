"""Merges over LoRA adapters against their oracles: mergekit builds ``base+adapter`` recipes
(it merges each adapter with PEFT first), PEFT's ``merge_and_unload`` and
``add_weighted_adapter`` define single adapters and their ``cat`` / ``linear`` / ``ties_svd`` /
``magnitude_prune_svd`` combinations, and PEFT loads the adapter ``evomerge merge --adapter``
writes. float32 within 1e-6; in 16 bits the in-memory weights equal our own export."""

from __future__ import annotations

import math

import pytest
import torch
from lora_models import make_adapter
from oracle import load_dir, max_abs_diff, mergekit_merge

from evomerge.engine import lowrank
from evomerge.engine.adapter_export import merge_to_adapter
from evomerge.engine.materialize import Materializer
from evomerge.engine.merge import merge_to_disk
from evomerge.engine.recipe import load_recipe


def _recipe(method: str, base: str, refs: list[str], params: list[dict], **top):
    doc = {"merge_method": method, "base_model": base, "dtype": "float32", **top,
           "models": [{"model": r, "parameters": p} for r, p in zip(refs, params)]}
    if method == "linear":
        doc.pop("base_model")
    return load_recipe(doc)


def _in_memory(recipe) -> dict[str, torch.Tensor]:
    """The resident weights (eager kernels: compiled ones compute the same bits, test_fused)."""
    mat = Materializer(recipe.referenced_models(), base_model=recipe.base_model, compile=False)
    return {k: v.clone() for k, v in mat.materialize(recipe).state_dict().items()}


@pytest.fixture(scope="module")
def lora_cache(tmp_path_factory):
    """Where mergekit keeps the models it merges its adapters into (shared: built once)."""
    return tmp_path_factory.mktemp("mergekit_lora_cache")


def _check_against_mergekit(recipe, tmp_path, tag: str, cache) -> None:
    expected = mergekit_merge(recipe.to_yaml(), tmp_path / f"mk_{tag}", cache)
    merge_to_disk(recipe, tmp_path / f"ours_{tag}")
    ours = load_dir(tmp_path / f"ours_{tag}")
    assert max_abs_diff(ours, expected) <= 1e-6
    memory = {k: v for k, v in _in_memory(recipe).items() if k in ours}
    assert max_abs_diff(memory, ours) == 0.0  # the search scores what export builds


W = {"weight": 0.7}
TIES = {"weight": 0.8, "density": 0.5}
CASES = {
    "task_arithmetic": ([W, {"weight": -0.4}, {"weight": 0.5}], {}),
    "linear": ([{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.2}], {}),
    "ties": ([TIES, {"weight": 0.6, "density": 0.7}, TIES], {}),
    "breadcrumbs_ties": ([{"weight": 0.7, "density": 0.8, "gamma": 0.05}] * 3, {}),
    "slerp": ([{}], {"parameters": {"t": 0.3}}),  # no factored form: densified per tensor
}


@pytest.mark.parametrize("method", sorted(CASES))
def test_mergekit_builds_the_same_model_from_base_plus_adapter(method, lora_tiny, tmp_path,
                                                               lora_cache):
    base = lora_tiny["base"]
    params, top = CASES[method]
    refs = [f"{base}+{lora_tiny[k]}" for k in ("qv", "rs", "save")][:len(params)]
    _check_against_mergekit(_recipe(method, base, refs, params, **top), tmp_path, method,
                            lora_cache)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A one-layer 256-wide Llama (q_proj has 2^16 entries: sampled TIES thresholds) and two
    adapters on it."""
    from models import save_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("wide_lora")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=256, intermediate_size=512,
                                 num_hidden_layers=1, num_attention_heads=4,
                                 num_key_value_heads=2)).save_pretrained(root / "base")
    save_tokenizer(root / "base", 64)
    base = str(root / "base")
    targets = ("q_proj",)
    return {"base": base, "a": str(make_adapter(root / "a", base, 1, r=8, targets=targets)),
            "b": str(make_adapter(root / "b", base, 2, r=4, targets=targets, scale=0.05))}


@pytest.mark.slow
def test_sampled_thresholds_over_row_blocks_match_mergekit(wide, tmp_path, monkeypatch,
                                                           lora_cache):
    """Magnitude thresholds over adapters, from samples and counts over row blocks of ~20
    rows, are mergekit's exact order statistics."""
    monkeypatch.setattr(lowrank, "BLOCK", 5000)
    refs = [f"{wide['base']}+{wide[k]}" for k in ("a", "b")]
    for method, params in [("ties", [TIES, {"weight": 0.5, "density": 0.3}]),
                           ("breadcrumbs", [{"weight": 0.6, "density": 0.6, "gamma": 0.02}] * 2)]:
        _check_against_mergekit(_recipe(method, wide["base"], refs, params), tmp_path, method,
                                lora_cache)


def _peft(base: str, adapters: dict[str, str]):
    """PEFT's model of ``base`` with ``adapters`` loaded under their names."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    names = list(adapters)
    peft = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
    for name in names[1:]:
        peft.load_adapter(adapters[name], adapter_name=name)
    return peft


def _merged(peft, name: str) -> dict[str, torch.Tensor]:
    peft.set_adapter(name)
    return {k: v.clone() for k, v in peft.merge_and_unload(adapter_names=[name]).state_dict()
            .items()}


@pytest.mark.parametrize("kind", ["qv", "rs", "save", "pattern"])
def test_one_adapter_is_peft_merge_and_unload(kind, lora_tiny):
    """rank/alpha, rsLoRA scaling, modules_to_save, rank_pattern and alpha_pattern."""
    base = lora_tiny["base"]
    expected = _merged(_peft(base, {kind: lora_tiny[kind]}), kind)
    ours = _in_memory(_recipe("task_arithmetic", base, [f"{base}+{lora_tiny[kind]}"], [W | {
        "weight": 1.0}]))
    assert max_abs_diff(ours, expected) <= 1e-6


COMBINATIONS = {  # PEFT's combination, its weights -> our method, its per-adapter parameters
    "cat": ([0.7, -0.4], "task_arithmetic", [{"weight": 0.7}, {"weight": -0.4}]),
    "linear": ([0.49, 0.16], "lorahub", [{"weight": 0.7}, {"weight": 0.4}]),
    "magnitude_prune_svd": ([0.7, 0.5], "breadcrumbs",
                            [{"weight": 0.7, "density": 0.4, "gamma": 0.0},
                             {"weight": 0.5, "density": 0.4, "gamma": 0.0}]),
    # PEFT's TIES divides by the count of agreeing adapters, mergekit's by their weights:
    # the same with unit weights
    "ties_svd": ([1.0, 1.0], "ties", [{"weight": 1.0, "density": 0.4}] * 2),
}


@pytest.mark.parametrize("combination", sorted(COMBINATIONS))
def test_peft_add_weighted_adapter(combination, lora_tiny, tmp_path):
    """The SVD combinations are taken at full rank on square modules, where SVD is exact."""
    base = lora_tiny["base"]
    weights, method, params = COMBINATIONS[combination]
    square = combination.endswith("svd")
    adapters = {k: lora_tiny[k] for k in ("qv", "qv2")}
    if square:  # q_proj and o_proj are 32 x 32
        adapters = {k: str(make_adapter(tmp_path / k, base, i, targets=("q_proj", "o_proj")))
                    for i, k in enumerate(("sa", "sb"))}
    peft = _peft(base, adapters)
    extra = {"svd_rank": 32, "density": 0.4} if square else {}
    peft.add_weighted_adapter(list(adapters), weights, "mix", combination_type=combination,
                              **extra)
    expected = _merged(peft, "mix")
    refs = [f"{base}+{p}" for p in adapters.values()]
    ours = _in_memory(_recipe(method, base, refs, params))
    assert max_abs_diff(ours, expected) <= 1e-6


@pytest.mark.parametrize("method", ["task_arithmetic", "lorahub", "ties", "dare_linear"])
def test_16_bit_weights_in_memory_equal_our_export(method, half, tmp_path):
    base = half["base"]
    dtype = getattr(torch, half["dtype"])
    refs = [f"{base}+{make_adapter(tmp_path / k, base, i, dtype=dtype, targets=('q_proj',))}"
            for i, k in enumerate(("x", "y"))]
    params = [{"weight": 0.6}, {"weight": 0.3}]
    if method in ("ties", "dare_linear"):
        params = [p | {"density": 0.5} for p in params]
    recipe = _recipe(method, base, refs, params, out_dtype=half["dtype"])
    merge_to_disk(recipe, tmp_path / "ours")
    ours = load_dir(tmp_path / "ours")
    memory = {k: v for k, v in _in_memory(recipe).items() if k in ours}
    assert {v.dtype for v in memory.values()} == {getattr(torch, half["dtype"])}
    assert max_abs_diff(memory, ours) == 0.0


def test_peft_loads_the_lorahub_adapter_we_export(lora_tiny, tmp_path):
    """A LoraHub point as one adapter: PEFT's merged weights and its (unmerged) logits equal
    the in-memory candidate's."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = lora_tiny["base"]
    third = make_adapter(tmp_path / "alpha16", base, 21, alpha=16)  # another scaling
    refs = [f"{base}+{lora_tiny['qv']}", f"{base}+{lora_tiny['qv2']}", f"{base}+{third}"]
    recipe = _recipe("lorahub", base, refs, [{"weight": 0.9}, {"weight": -0.6},
                                             {"weight": 1.2}])
    config = merge_to_adapter(recipe, tmp_path / "hub")
    assert (config["r"], config["lora_alpha"]) == (4, 4)
    mat = Materializer(refs, base_model=base)
    ours = mat.materialize(recipe)
    ids = torch.tensor([[1, 5, 9, 2, 7, 30, 11, 4]])
    with torch.no_grad():
        want = ours(ids).logits
        peft = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), tmp_path / "hub")
        got = peft(ids).logits
        merged = peft.merge_and_unload().state_dict()
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert max_abs_diff({k: v for k, v in ours.state_dict().items()}, merged) <= 1e-6
    assert not math.isclose(float((want - AutoModelForCausalLM.from_pretrained(base)(ids)
                                   .logits).abs().max()), 0.0, abs_tol=1e-3)
