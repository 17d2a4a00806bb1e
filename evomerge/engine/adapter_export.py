"""``evomerge merge RECIPE OUT --adapter``: a merge over LoRA adapters of one base, written as
one PEFT LoRA adapter instead of a full model.

It applies where the merge is the base plus a low-rank update in every tensor
(:func:`~evomerge.engine.lowrank.factorize` with c = 1): ``lorahub`` (rank r, LoraHub's
composition), and ``task_arithmetic`` or normalized ``linear`` over adapters only (PEFT's
``cat``: the factors side by side, rank = the sum of the adapters' ranks). Per module the
update is B @ A with A (R, in), B (out, R); modules of lower rank are padded with zero rows
and columns to the largest R (B @ A unchanged), and the adapter is saved with r = lora_alpha
= R (scaling 1) in float32, so ``PeftModel.from_pretrained(base, OUT)`` and its
``merge_and_unload()`` give the weights the search scored::

    evomerge export my_study --best -o recipe.yaml
    evomerge merge recipe.yaml my_adapter/ --adapter
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from evomerge.engine.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, DiskFetch, LoraSource
from evomerge.engine.lowrank import factorize
from evomerge.engine.plan import build_plan
from evomerge.engine.recipe import Recipe
from evomerge.errors import ConfigError

__all__ = ["merge_to_adapter", "adapter_factors"]


def adapter_factors(recipe: Recipe, device: str = "cpu"
                    ) -> tuple[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """(base reference, {module: (A, B)} in float32) of a recipe whose merge is the base plus
    a low-rank update everywhere.

    Raises:
        ConfigError: a tensor that is not (base + low-rank), or layers moved around.
    """
    from evomerge.engine.merge import open_sources

    sources = open_sources(recipe)
    plan = build_plan(recipe, sources)
    fetch = DiskFetch(dict(sources), device)
    adapters = [s for s in sources.values() if isinstance(s, LoraSource)]
    if not adapters:
        raise ConfigError("--adapter writes a merge of LoRA adapters, but the recipe names no "
                          "adapter (BASE+ADAPTER); build it as a model instead.")
    modules = {}
    for task in plan.tasks:
        fetch.clear()
        refs = [*task.inputs, *([task.base] if task.base else [])]
        if any(name != task.out_name for _, name in refs):
            raise ConfigError(f"--adapter needs every tensor built from the base's tensor of "
                              f"the same name, but {task.out_name!r} comes from another "
                              f"layer; build the recipe as a model instead.")
        inputs = [fetch(*r) for r in task.inputs]
        base = fetch(*task.base) if task.base is not None else None
        f = factorize(plan.method, inputs, base, dict(task.shared), dict(task.per_model),
                      torch.float32, torch.device(device))
        if f is None or f.c != 1.0:
            raise ConfigError(
                f"The merge of {task.out_name!r} is not the base plus a low-rank update "
                f"(method {plan.method.name!r}"
                f"{'' if f is None else f', base scaled by {f.c:g}'}); --adapter writes "
                f"lorahub, task_arithmetic or normalized linear merges of adapters only; "
                f"build it as a model instead.")
        if f.a is not None:
            modules[task.out_name.removesuffix(".weight")] = (f.a, f.b)
    return recipe.base_model or adapters[0].base.ref, modules


def merge_to_adapter(recipe: Recipe, out: str | Path, device: str = "cpu") -> dict[str, Any]:
    """Write ``recipe``'s merge as one PEFT LoRA adapter directory ``out`` (module docstring);
    returns its adapter config. Nothing is left behind on failure."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"Output directory {str(out)!r} exists and is not empty.")
    base_ref, modules = adapter_factors(recipe, device)
    if not modules:
        raise ConfigError("The merge leaves the base unchanged (every weight 0): there is no "
                          "adapter to write.")
    rank = max(a.shape[0] for a, _ in modules.values())
    tensors = {}
    for module, (a, b) in modules.items():
        pad = rank - a.shape[0]  # zero rows of A and columns of B: B @ A is unchanged
        a = torch.cat([a, a.new_zeros(pad, a.shape[1])]) if pad else a
        b = torch.cat([b, b.new_zeros(b.shape[0], pad)], dim=1) if pad else b
        tensors[f"base_model.model.{module}.lora_A.weight"] = a.float().cpu().contiguous()
        tensors[f"base_model.model.{module}.lora_B.weight"] = b.float().cpu().contiguous()
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_ref,
              "r": rank, "lora_alpha": rank, "target_modules": sorted(modules),
              "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
              "use_dora": False, "modules_to_save": None, "init_lora_weights": True,
              "inference_mode": True, "rank_pattern": {}, "alpha_pattern": {}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
        (tmp / "mergekit_config.yml").write_text(recipe.to_yaml())
        (tmp / "README.md").write_text(
            f"---\ntags: [lora, evomerge]\nbase_model: {base_ref}\n---\n# Merged LoRA adapter\n\n"
            f"Built by evomerge (`{recipe.merge_method}`) from:\n\n"
            + "\n".join(f"- `{m}`" for m in recipe.referenced_models())
            + f"\n\nRank {rank}, {len(modules)} modules. The recipe is in `mergekit_config.yml`.\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return config
