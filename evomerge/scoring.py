"""Score models and recipes: load a model directory or materialize a recipe, run evaluators."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError, EvomergeError
from evomerge.evaluators import Evaluator

__all__ = ["load_model", "score", "nested_scores"]


def load_model(target: str | Path, device: str | None = "cpu") -> tuple[Any, Any]:
    """``(model, tokenizer)`` for a model directory or a recipe YAML (merged in memory when
    it keeps the base's depth, otherwise merged to a temporary directory)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.engine.materialize import Materializer, resolve_device
    from evomerge.engine.merge import merge_to_disk
    from evomerge.engine.recipe import load_recipe

    path = Path(target)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{str(path)!r} is not a model directory (no config.json).")
        dev = resolve_device(device)
        model = AutoModelForCausalLM.from_pretrained(path).to(dev).eval()
        return model, AutoTokenizer.from_pretrained(path)
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"{str(target)!r} is neither a model directory nor a recipe YAML.")
    recipe = load_recipe(path)
    refs = recipe.referenced_models()
    mat = Materializer(refs, base_model=recipe.base_model or refs[0], device=device)
    try:  # the tokenizer the merged model is written with (a tokenizer rule's output one)
        return mat.materialize(recipe), mat.tokenizer(recipe)
    except EvomergeError:
        tmp = Path(tempfile.mkdtemp(prefix="evomerge-eval-"))
        try:
            merge_to_disk(recipe, tmp / "model")
            dev = resolve_device(device)
            model = AutoModelForCausalLM.from_pretrained(tmp / "model").to(dev).eval()
            tokenizer = AutoTokenizer.from_pretrained(tmp / "model")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return model, tokenizer


def score(model: Any, tokenizer: Any, evaluators: Sequence[Evaluator]) -> dict[str, float]:
    """All evaluators' scores, merged into one mapping."""
    out: dict[str, float] = {}
    for ev in evaluators:
        out.update(ev(model, tokenizer))
    return out


def nested_scores(scores: dict[str, float]) -> dict[str, dict[str, float]]:
    """``{"task/metric": v}`` as ``{task: {metric: v}}`` (``eval --json``, score tables)."""
    out: dict[str, dict[str, float]] = {}
    for name, value in scores.items():
        task, _, metric = name.partition("/")
        out.setdefault(task, {})[metric] = value
    return out
