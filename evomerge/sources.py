"""Read source models from (possibly sharded) safetensors, one tensor at a time.

Only safetensors are loaded: pickle checkpoints (``*.bin``, ``*.pt``) can run arbitrary code
on load, so a model that has only those is rejected with a message saying how to convert it.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from evomerge.arch import num_layers_of
from evomerge.errors import ModelError

__all__ = ["ModelSource", "torch_dtype"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}


def torch_dtype(name: str | None) -> torch.dtype | None:
    return None if name is None else _DTYPES[name]


class ModelSource:
    """A model directory in Hugging Face layout (config.json + safetensors).

    Tensors are read lazily with ``safe_open``; file handles stay open for the life of the
    object so repeated reads do not re-parse headers.

    Args:
        ref: the path as written in the recipe (kept for messages and exported recipes).
        field: which recipe field named it, for error messages.
    """

    def __init__(self, ref: str, field: str = "model") -> None:
        self.ref = ref
        self.path = Path(ref).expanduser()
        if not self.path.is_dir():
            raise ModelError(f"{field} {ref!r}: no such model directory.")
        config_path = self.path / "config.json"
        if not config_path.is_file():
            raise ModelError(f"{field} {ref!r}: missing config.json.")
        self.config: dict[str, Any] = json.loads(config_path.read_text())
        self._files = self._index(field)
        self._handles: dict[Path, Any] = {}

    def _index(self, field: str) -> dict[str, Path]:
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return {name: self.path / file for name, file in weight_map.items()}
        single = self.path / "model.safetensors"
        files = [single] if single.is_file() else sorted(self.path.glob("*.safetensors"))
        if not files:
            pickles = [p.name for p in self.path.glob("*") if p.suffix in (".bin", ".pt", ".pth")]
            hint = (f" It has only pickle checkpoints ({', '.join(pickles[:3])}), which evomerge "
                    "does not load; convert them with save_pretrained(safe_serialization=True)."
                    if pickles else "")
            raise ModelError(f"{field} {self.ref!r}: no safetensors weights found.{hint}")
        names: dict[str, Path] = {}
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    names[name] = file
        return names

    def _handle(self, file: Path) -> Any:
        if file not in self._handles:
            self._handles[file] = safe_open(str(file), framework="pt")
        return self._handles[file]

    @property
    def names(self) -> list[str]:
        return list(self._files)

    def __contains__(self, name: str) -> bool:
        return name in self._files

    @cached_property
    def num_layers(self) -> int:
        return num_layers_of(self.config, f"{self.ref}/config.json")

    @property
    def vocab_size(self) -> int | None:
        return self.config.get("vocab_size") or (self.config.get("text_config") or {}).get(
            "vocab_size")

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or [self.config.get("model_type", "?")]
        return str(archs[0])

    @cached_property
    def stored_dtype(self) -> torch.dtype:
        """The dtype most of the model's weights are stored in (headers only)."""
        counts: dict[torch.dtype, int] = {}
        for name in self.names:
            dt = self.dtype(name)
            if dt.is_floating_point:
                counts[dt] = counts.get(dt, 0) + 1
        return max(counts, key=counts.get) if counts else torch.float32

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle(self._files[name]).get_slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        dt = self._handle(self._files[name]).get_slice(name).get_dtype()
        return {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "F64": torch.float64}.get(dt, torch.float32)

    def get(self, name: str, device: str | torch.device = "cpu",
            dtype: torch.dtype | None = None) -> torch.Tensor:
        """Read one tensor onto ``device``, cast to ``dtype`` if given."""
        tensor = self._handle(self._files[name]).get_tensor(name)
        return tensor.to(device=device, dtype=dtype or tensor.dtype)

    def close(self) -> None:
        self._handles.clear()
