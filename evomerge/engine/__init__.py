"""The merge engine: recipe -> plan -> kernels -> a model, on disk or in memory. It knows
nothing of the search (no module here imports :mod:`evomerge.search`).

* ``recipe``      -- the validated mergekit-compatible recipe (:func:`load_recipe`);
* ``sources``     -- checked safetensors headers, tensors read on demand (:class:`ModelSource`);
  ``derived``     -- a recipe (or a pinned study point) used as a source model;
  ``lora`` / ``lora_source`` -- a PEFT LoRA adapter over its base (``BASE+ADAPTER``) as a
  source, merged from its factors (``lowrank``); ``adapter_export`` -- a merge as one adapter;
* ``arch``        -- where a tensor sits (layer, part) in the architectures evomerge knows;
* ``plan``        -- one task per output tensor (:func:`build_plan`); ``params`` -- per-tensor
  parameter values; ``select`` / ``fused`` -- the kernels (:class:`TensorEngine`);
* ``merge``       -- build a recipe (or a multi-stage chain) to disk (:func:`merge_to_disk`);
  ``writer`` -- sharded safetensors output;
* ``materialize`` -- the in-memory materializer the search scores (:class:`Materializer`);
  ``shell`` -- models on the meta device; ``paths`` / ``path_model`` -- data-flow paths.

Names below are imported on first use, so ``import evomerge.engine`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Recipe": "recipe", "load_recipe": "recipe", "ModelSource": "sources",
    "open_model": "derived", "DerivedSource": "derived", "build_plan": "plan",
    "TensorEngine": "fused", "merge_to_disk": "merge", "merge_stages": "merge",
    "Materializer": "materialize", "resolve_device": "materialize", "empty_model": "shell",
    "Step": "paths", "path_recipe": "paths", "recipe_path": "paths", "PathModels": "path_model",
    "LoraSource": "lora_source", "merge_to_adapter": "adapter_export",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'evomerge.engine' has no attribute {name!r}")
    return getattr(importlib.import_module(f"evomerge.engine.{_EXPORTS[name]}"), name)
