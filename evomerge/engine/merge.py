"""``evomerge merge RECIPE OUT``: build a merged model on disk, one tensor at a time.

Peak memory is the inputs of one tensor plus its result. The model is written into a
temporary directory beside ``OUT`` and renamed into place at the end, so an interrupted or
failed merge leaves nothing half-written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from evomerge.engine.fused import TensorEngine
from evomerge.engine.lora import DiskFetch, LoraSource, open_source
from evomerge.engine.plan import MergePlan, build_plan
from evomerge.engine.recipe import Recipe
from evomerge.engine.sources import ModelSource, torch_dtype
from evomerge.engine.writer import ShardedWriter, TensorMeta
from evomerge.errors import ConfigError, ModelError

__all__ = ["open_sources", "merge_to_disk", "merge_stages", "TOKENIZER_FILES"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                   "chat_template.jinja", "generation_config.json")


def open_sources(recipe: Recipe) -> dict[str, ModelSource | LoraSource]:
    """Open every model the recipe names (headers only; ``BASE+ADAPTER`` as an adapted
    source); ModelError if one is missing or an adapter does not fit its base."""
    return {ref: open_source(ref) for ref in recipe.referenced_models()}


def _output_metas(plan: MergePlan, sources: Mapping[str, ModelSource]) -> list[TensorMeta]:
    out = torch_dtype(plan.recipe.out_dtype or plan.recipe.dtype)
    metas = []
    for task in plan.tasks:
        model, name = task.inputs[0] if task.inputs else task.base
        metas.append(TensorMeta(task.out_name, task.shape, out or sources[model].dtype(name)))
    return metas


def _tokenizer_ref(recipe: Recipe) -> str:
    """``tokenizer_source`` if it names a model, else the base (or the first model)."""
    src = recipe.tokenizer_source
    return recipe.referenced_models()[0] if src in (None, "base") else src


def _model_card(recipe: Recipe, plan: MergePlan) -> str:
    models = "\n".join(f"- `{m}`" for m in recipe.referenced_models())
    return (f"---\ntags: [merge, evomerge]\n---\n# Merged model\n\nBuilt by evomerge with the "
            f"`{recipe.merge_method}` method ({plan.method.paper}) from:\n\n{models}\n\n"
            f"Output layers: {plan.num_layers}. The exact recipe is in `mergekit_config.yml`; "
            f"rebuild with `evomerge merge mergekit_config.yml OUT` or `mergekit-yaml`.\n")


def merge_to_disk(recipe: Recipe, out: str | Path, device: str = "cpu",
                  max_shard_bytes: int = 2 * 1024**3,
                  progress: Callable[[int, int], None] | None = None) -> MergePlan:
    """Merge ``recipe`` into the model directory ``out``.

    Args:
        recipe: a validated recipe.
        out: output directory; must not exist yet (or be empty).
        device: where the tensor math runs ("cpu", "cuda", "cuda:1", ...).
        max_shard_bytes: largest safetensors shard.
        progress: called as ``progress(done, total)`` after each tensor.

    Returns:
        The executed plan.

    Raises:
        ConfigError, ModelError: bad recipe or sources; nothing is written.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"Output directory {str(out)!r} exists and is not empty.")
    sources = open_sources(recipe)
    plan = build_plan(recipe, sources)
    tok_ref = _tokenizer_ref(recipe)
    if tok_ref not in sources:
        sources[tok_ref] = open_source(tok_ref, field="tokenizer_source")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write_weights(plan, sources, tmp, device, max_shard_bytes, progress)
        (tmp / "config.json").write_text(json.dumps(plan.config, indent=2))
        for name in TOKENIZER_FILES:
            src = sources[tok_ref].path / name
            if src.is_file():
                shutil.copy2(src, tmp / name)
        (tmp / "mergekit_config.yml").write_text(recipe.to_yaml())
        (tmp / "README.md").write_text(_model_card(recipe, plan))
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return plan


def _write_weights(plan: MergePlan, sources: Mapping[str, ModelSource], tmp: Path, device: str,
                   max_shard_bytes: int, progress: Callable[[int, int], None] | None) -> None:
    fetch = DiskFetch(dict(sources), device)
    # The same engine as the resident materializer: compiled on CUDA, where the materializer
    # compiles too (Triton may contract mul+add into FMA, so both sides must run one kernel);
    # eager on CPU, whose compiled kernels compute the same bits (tested).
    engine = TensorEngine(compile=torch.device(device).type == "cuda")
    metas = _output_metas(plan, sources)
    with torch.no_grad(), ShardedWriter(tmp, metas, max_shard_bytes) as writer:
        for i, (task, meta) in enumerate(zip(plan.tasks, metas)):
            fetch.clear()
            out = torch.empty(task.shape, dtype=meta.dtype, device=device)
            engine.run(task, plan.method, fetch, plan.compute_dtype, out)
            if out.is_floating_point() and not bool(torch.isfinite(out).all()):
                raise ModelError(f"The merge of tensor {task.out_name!r} has non-finite values "
                                 f"(inf or NaN: huge weights or a source with non-finite "
                                 f"weights); nothing was written.")
            writer.write(task.out_name, out)
            if progress:
                progress(i + 1, len(plan.tasks))
        writer.finish()


def merge_stages(path: str | Path, out: str | Path, stages_dir: str | Path | None = None,
                 **options: Any) -> list[MergePlan]:
    """Build the recipe file ``path``. A multi-document recipe (``mergekit-multi``'s
    format: named stages, then the final recipe, which names them as models) builds each
    stage into ``stages_dir/<name>``
    (default ``<out>-stages``; a stage already built there is reused), then the final one
    into ``out``. A single document is one plain merge. ``options`` go to
    :func:`merge_to_disk`. Returns the plans, in order."""
    import yaml

    from evomerge.engine.derived import load_chain, rename_models
    from evomerge.engine.recipe import load_recipe

    path = Path(path)
    text = path.read_text() if path.is_file() else ""
    if "\n---" not in text:  # one document: a plain recipe (its errors name the file)
        return [merge_to_disk(load_recipe(path), out, **options)]
    out = Path(out)
    stages_dir = Path(stages_dir) if stages_dir else out.with_name(f"{out.name}-stages")
    built: dict[str, str] = {}
    plans = []
    for name, text_i in load_chain(text):
        doc = rename_models(yaml.safe_load(text_i), built)
        recipe = load_recipe(doc)
        target = out if name is None else stages_dir / name
        if name is not None and (target / "config.json").is_file():
            built[name] = str(target)
            continue
        plans.append(merge_to_disk(recipe, target, **options))
        if name is not None:
            built[name] = str(target)
    return plans
