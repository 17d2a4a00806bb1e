"""The embedded model zoo: a tiny Llama base and experts trained here on synthetic tasks.

* ``tasks`` -- the synthetic tasks (two-language arithmetic and max/min) and their splits;
* ``model`` -- the character tokenizer and the tiny Llama; ``train`` -- the training stages;
* ``data``  -- JSONL helpers; ``build`` -- :func:`build_zoo`: base, experts, lm-eval task files.

Names below are imported on first use, so ``import evomerge.zoo`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"build_zoo": "build", "load_manifest": "build", "PROFILES": "build",
            "Profile": "build", "TASKS": "tasks", "new_model": "model",
            "build_tokenizer": "model", "Stage": "train"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'evomerge.zoo' has no attribute {name!r}")
    return getattr(importlib.import_module(f"evomerge.zoo.{_EXPORTS[name]}"), name)
