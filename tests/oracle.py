"""mergekit as a test oracle (used only by tests; evomerge never imports mergekit)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file


def mergekit_merge(recipe_yaml: str, out: Path, lora_cache: Path | None = None
                   ) -> dict[str, torch.Tensor]:
    """Run mergekit's in-process ``run_merge`` (what ``mergekit-yaml`` calls) and load the
    result; ``lora_cache``: where mergekit merges ``base+adapter`` models first (with PEFT)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = MergeConfiguration.model_validate(yaml.safe_load(recipe_yaml))
    options = MergeOptions(copy_tokenizer=False, quiet=True,
                           lora_merge_cache=str(lora_cache) if lora_cache else None)
    run_merge(config, str(out), options)
    return load_dir(out)


def load_dir(path: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def mergekit_cli(name: str) -> str:
    """The path of mergekit's ``name`` command (``mergekit-yaml``, ``mergekit-multi``): next to
    this interpreter, else on PATH. Without it the test skips, unless
    EVOMERGE_REQUIRE_MERGEKIT=1 (CI), where a missing oracle is a failure."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        if os.environ.get("EVOMERGE_REQUIRE_MERGEKIT") == "1":
            pytest.fail(f"{name} is not installed and EVOMERGE_REQUIRE_MERGEKIT=1")
        pytest.skip(f"{name} not installed")
    return found
