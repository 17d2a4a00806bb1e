"""Read source models from (possibly sharded) safetensors, one tensor at a time.

Only safetensors are loaded: pickle checkpoints (``*.bin``, ``*.pt``) can run arbitrary code
on load, so a model that has only those is rejected with a message saying how to convert it.

Headers are parsed here (8-byte length, JSON) and checked before any weight is read: every
tensor's byte range must lie inside its file and match its shape and dtype, so a truncated or
corrupt file is one :class:`ModelError` naming the file, never a traceback halfway through a
merge. Tensors are read with plain file reads into their final storage (no memory map), so a
loaded model costs its bytes once, not once more in mapped file pages.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from evomerge.engine.arch import layer_index, num_layers_of
from evomerge.errors import ModelError

__all__ = ["ModelSource", "torch_dtype", "read_header", "read_tensor", "TensorEntry",
           "ST_DTYPES"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}
# safetensors dtype names (the writer uses the inverse)
ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
             "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
             "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit


def torch_dtype(name: str | None) -> torch.dtype | None:
    return None if name is None else _DTYPES[name]


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: file, absolute byte offset, dtype, shape."""

    file: Path
    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def read_header(file: Path) -> dict[str, TensorEntry]:
    """Parse and check one safetensors file's header (no tensor data is read).

    Raises:
        ModelError: unreadable header, unknown dtype, or a byte range outside the file or
            inconsistent with the tensor's shape.
    """
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelError(f"{file}: not a safetensors file (shorter than its 8-byte header "
                             "length).")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise ModelError(f"{file}: corrupt safetensors header (it claims {n} bytes of "
                             f"header in a {size}-byte file).")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{file}: corrupt safetensors header ({exc}).") from None
    if not isinstance(header, dict):
        raise ModelError(f"{file}: corrupt safetensors header (not a JSON object).")
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        entries[name] = _entry(file, name, info, 8 + n, size)
    return entries


def _entry(file: Path, name: str, info: Any, start: int, size: int) -> TensorEntry:
    try:
        dtype = ST_DTYPES[info["dtype"]]
        shape = tuple(int(d) for d in info["shape"])
        lo, hi = (int(v) for v in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{file}: tensor {name!r} has a malformed header entry.") from None
    entry = TensorEntry(file, start + lo, dtype, shape)
    if min(shape, default=0) < 0 or not 0 <= lo <= hi or hi - lo != entry.nbytes:
        raise ModelError(f"{file}: tensor {name!r} has a byte range [{lo}, {hi}) that does not "
                         f"match its shape {list(shape)} and dtype {info['dtype']}.")
    if start + hi > size:
        raise ModelError(f"{file}: truncated: tensor {name!r} ends at byte {start + hi} but the "
                         f"file has {size} bytes.")
    return entry


class ModelSource:
    """A model directory in Hugging Face layout (config.json + safetensors).

    Opening it reads config.json and every shard's header (checked, see module docstring);
    tensors are read on demand with :meth:`get`.

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
        try:
            self.config: dict[str, Any] = json.loads(config_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{field} {ref!r}: config.json is not valid JSON ({exc}).") from None
        if not isinstance(self.config, dict):
            raise ModelError(f"{field} {ref!r}: config.json is not a JSON object.")
        self._entries = self._index(field)

    def _index(self, field: str) -> dict[str, TensorEntry]:
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            return self._sharded(index, field)
        single = self.path / "model.safetensors"
        files = [single] if single.is_file() else sorted(self.path.glob("*.safetensors"))
        if not files:
            pickles = [p.name for p in self.path.glob("*") if p.suffix in (".bin", ".pt", ".pth")]
            hint = (f" It has only pickle checkpoints ({', '.join(pickles[:3])}), which evomerge "
                    "does not load; convert them with save_pretrained(safe_serialization=True)."
                    if pickles else "")
            raise ModelError(f"{field} {self.ref!r}: no safetensors weights found.{hint}")
        entries: dict[str, TensorEntry] = {}
        for file in files:
            entries.update(read_header(file))
        return entries

    def _sharded(self, index: Path, field: str) -> dict[str, TensorEntry]:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            files = {name: self.path / str(file) for name, file in weight_map.items()}
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise ModelError(f"{field} {self.ref!r}: {index.name} is not a valid shard index "
                             "(a JSON object with a 'weight_map').") from None
        headers: dict[Path, dict[str, TensorEntry]] = {}
        entries = {}
        for name, file in files.items():
            if file not in headers:
                if not file.is_file():
                    raise ModelError(f"{field} {self.ref!r}: shard {file.name!r} named by "
                                     f"{index.name} is missing.")
                headers[file] = read_header(file)
            if name not in headers[file]:
                raise ModelError(f"{field} {self.ref!r}: {index.name} puts tensor {name!r} in "
                                 f"{file.name!r}, which does not hold it.")
            entries[name] = headers[file][name]
        return entries

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    @cached_property
    def num_layers(self) -> int:
        """The decoder depth, from config.json, which must agree with the weights: a config
        that says fewer layers than the tensors hold would silently drop the rest, one that
        says more would fail halfway through a merge.

        Raises:
            ModelError: no layer count, or the weights hold another number of layers.
        """
        count = num_layers_of(self.config, f"{self.ref}/config.json")
        held = {i for i in map(layer_index, self._entries) if i is not None}
        if held and held != set(range(count)):
            top = max(held) + 1
            detail = (f"hold layers 0-{top - 1}" if held == set(range(top))
                      else f"hold layers {sorted(held)[:8]}{'...' if len(held) > 8 else ''}")
            raise ModelError(f"{self.ref!r}: config.json says {count} layers but its weights "
                             f"{detail}; config and tensors must agree (fix "
                             "num_hidden_layers or the checkpoint).")
        return count

    @property
    def vocab_size(self) -> int | None:
        return self.config.get("vocab_size") or (self.config.get("text_config") or {}).get(
            "vocab_size")

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or [self.config.get("model_type", "?")]
        return str(archs[0])

    @cached_property
    def tied_embeddings(self) -> bool:
        """Whether the LM head is the input embedding: ``tie_word_embeddings`` in the config,
        or a checkpoint without an ``lm_head.weight``."""
        text = self.config.get("text_config") if isinstance(self.config.get("text_config"),
                                                             dict) else self.config
        tied = bool(text.get("tie_word_embeddings", self.config.get("tie_word_embeddings")))
        return tied or not any(n.endswith("lm_head.weight") for n in self._entries)

    @cached_property
    def tokenizer(self) -> dict[int, str] | str | None:
        """The tokenizer as id -> token (``tokenizer.json`` or ``vocab.json``), a digest of
        ``tokenizer.model`` (SentencePiece), or None if the directory has no tokenizer."""
        import hashlib

        tj, vj, spm = (self.path / n for n in ("tokenizer.json", "vocab.json", "tokenizer.model"))
        try:
            if tj.is_file():
                data = json.loads(tj.read_text())
                vocab = (data.get("model") or {}).get("vocab")
                table = ({int(i): str(t) for t, i in vocab.items()} if isinstance(vocab, dict)
                         else {i: str(v[0]) for i, v in enumerate(vocab or [])})
                for tok in data.get("added_tokens") or []:
                    table[int(tok["id"])] = str(tok["content"])
                return table
            if vj.is_file():
                return {int(i): str(t) for t, i in json.loads(vj.read_text()).items()}
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError,
                AttributeError) as exc:
            raise ModelError(f"{self.ref!r}: unreadable tokenizer file ({exc}).") from None
        return hashlib.sha256(spm.read_bytes()).hexdigest() if spm.is_file() else None

    @cached_property
    def tokenizer_digest(self) -> str | None:
        """A digest of :attr:`tokenizer`: the resident materializer plans every candidate, so
        tokenizers are compared by digest there, not token by token."""
        import hashlib

        table = self.tokenizer
        if table is None:
            return None
        text = table if isinstance(table, str) else json.dumps(sorted(table.items()))
        return hashlib.sha256(text.encode()).hexdigest()

    @cached_property
    def stored_dtype(self) -> torch.dtype:
        """The dtype most of the model's floating-point weights are stored in."""
        counts: dict[torch.dtype, int] = {}
        for e in self._entries.values():
            if e.dtype.is_floating_point:
                counts[e.dtype] = counts.get(e.dtype, 0) + math.prod(e.shape)
        return max(counts, key=counts.get) if counts else torch.float32

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name].shape

    def dtype(self, name: str) -> torch.dtype:
        return self._entries[name].dtype

    def get(self, name: str, device: str | torch.device = "cpu",
            dtype: torch.dtype | None = None) -> torch.Tensor:
        """Read one tensor onto ``device``, cast to ``dtype`` if given.

        Raises:
            ModelError: the file changed or vanished since its header was read.
        """
        return read_tensor(self._entries[name], self.ref, name, device, dtype)


def read_tensor(e: TensorEntry, ref: str, name: str, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """Read the tensor at ``e`` (of model ``ref``) onto ``device``, cast to ``dtype`` if given:
    one plain file read into its final storage.

    Raises:
        ModelError: the file changed or vanished since its header was read.
    """
    raw = torch.empty(e.nbytes, dtype=torch.uint8)
    try:
        with open(e.file, "rb") as f:
            f.seek(e.offset)
            got = f.readinto(raw.numpy()) if e.nbytes else 0
    except OSError as exc:
        raise ModelError(f"{ref!r}: cannot read {e.file.name} ({exc.strerror}).") from None
    if got != e.nbytes:
        raise ModelError(f"{ref!r}: {e.file.name} was truncated after it was opened "
                         f"(tensor {name!r} is incomplete).")
    tensor = raw.view(e.dtype).reshape(e.shape)
    return tensor.to(device=device, dtype=dtype or tensor.dtype)
