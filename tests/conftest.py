"""Shared fixtures: a directory of tiny seeded Llama checkpoints (built once per session)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
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
