"""Read source models from (possibly sharded) safetensors, one tensor at a time.

Only safetensors are loaded: pickle checkpoints (``*.bin``, ``*.pt``) can run arbitrary code
on load, so a model that has only those is rejected with a message saying how to convert it.

Headers are parsed here (8-byte length, JSON) and checked before any weight is read: every
tensor's byte range must lie inside its file and match its shape and dtype, so a truncated or
corrupt file is one :class:`ModelError` naming the file, never a traceback halfway through a
merge. Tensors are read with plain file reads into their final storage (no memory map), so a
loaded model costs its bytes once, not once more in mapped file pages.

The directory is data (docs/security.md): every file is read only where it lies inside it
(:func:`~evomerge.engine.json_data.confined`), JSON only through the bounded reader of
:mod:`evomerge.engine.json_data`, and config.json's sizes must agree with the tensors, since
a model shell is built from them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from evomerge.engine.arch import is_vocab_tensor, layer_index, num_layers_of
from evomerge.engine.config_io import brief
from evomerge.engine.json_data import TOKENIZER_JSON, confined, parse_json, read_json
from evomerge.errors import ModelError

__all__ = ["ModelSource", "torch_dtype", "read_header", "read_tensor", "TensorEntry",
           "ST_DTYPES", "TOKENIZER_FILES"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "generation_config.json")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}
# safetensors dtype names (the writer uses the inverse)
ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
             "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
             "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit
_MAX_DIMS = 64  # torch's limit on a tensor's dimensions
# A layer's MLP input projection, (intermediate, hidden): Llama-style and GPT-NeoX names.
_MLP_IN = re.compile(r"\.mlp\.(?:up_proj|dense_h_to_4h)\.weight$")
# Keys under which a config gives the embedding a width other than hidden_size (OPT-350m).
_EMBED_WIDTH = ("word_embed_proj_dim", "embedding_size")


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
        header = parse_json(f.read(n), f"{file}: the safetensors header")
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
    _check_shape(file, name, shape, dtype)
    entry = TensorEntry(file, start + lo, dtype, shape)
    if not 0 <= lo <= hi or hi - lo != entry.nbytes:
        raise ModelError(f"{file}: tensor {name!r} has a byte range [{lo}, {hi}) that does not "
                         f"match its shape {list(shape)} and dtype {info['dtype']}.")
    if start + hi > size:
        raise ModelError(f"{file}: truncated: tensor {name!r} ends at byte {start + hi} but the "
                         f"file has {size} bytes.")
    return entry


def _check_shape(file: Path, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """Refuse a shape torch cannot build, even one of no elements: more than 64 dimensions, a
    negative size, or strides (the product of the non-zero sizes, in bytes) of 2**63 or more,
    which overflow torch's int64 sizes (a TypeError or RuntimeError mid-merge otherwise)."""
    if len(shape) > _MAX_DIMS:
        raise ModelError(f"{file}: tensor {name!r} has {len(shape)} dimensions; torch builds "
                         f"tensors of at most {_MAX_DIMS}.")
    item = torch.empty((), dtype=dtype).element_size()
    if min(shape, default=0) < 0 or math.prod(max(d, 1) for d in shape) * item >= 2**63:
        raise ModelError(f"{file}: tensor {name!r} has shape {brief(list(shape))}, which no "
                         "tensor can have "
                         "(a negative size, or 2**63 bytes or more between its rows).")


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
        self._field = field
        config_path = self.path / "config.json"
        if not config_path.is_file():
            raise ModelError(f"{field} {ref!r}: missing config.json.")
        self.config: dict[str, Any] = read_json(self.own(config_path),
                                                f"{field} {ref!r}: config.json")
        if not isinstance(self.config, dict):
            raise ModelError(f"{field} {ref!r}: config.json is not a JSON object.")
        self._entries = self._index(field)
        self._check_sizes()
        for name in TOKENIZER_FILES:  # transformers reads them later: confined now
            if (self.path / name).is_symlink() or (self.path / name).exists():
                self.own(self.path / name)
        for file in (self.path / "additional_chat_templates").glob("*"):  # read as templates
            self.own(file)
        self._check_fast_tokenizer_files()

    def _check_fast_tokenizer_files(self) -> None:
        """transformers opens the ``tokenizer.<version>.json`` that tokenizer_config.json's
        ``fast_tokenizer_files`` names, joined to the directory (``../x`` or an absolute
        name escaped it): each name must be a file of this directory."""
        file = self.path / "tokenizer_config.json"
        data = self._tokenizer_json(file) if file.is_file() else None
        names = data.get("fast_tokenizer_files") if isinstance(data, dict) else None
        if names is not None and not (isinstance(names, list)
                                      and all(isinstance(n, str) for n in names)):
            raise ModelError(f"{self._field} {self.ref!r}: tokenizer_config.json's "
                             "fast_tokenizer_files is not a list of file names.")
        for name in names or []:
            self.own(self.path / name, f"tokenizer_config.json's fast_tokenizer_files entry "
                                       f"{brief(name)}")

    def own(self, file: Path, what: str | None = None, weights: bool = False) -> Path:
        """``file`` of this directory if it lies inside it (see
        :func:`~evomerge.engine.json_data.confined`); ModelError naming it otherwise."""
        return confined(self.path, file, f"{self._field} {self.ref!r}: "
                                         f"{what or self._rel(file)}", weights)

    def _rel(self, file: Path) -> str:
        return str(file.relative_to(self.path)) if file.is_relative_to(self.path) else str(file)

    def _index(self, field: str) -> dict[str, TensorEntry]:
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            return self._sharded(index, field)
        single = self.path / "model.safetensors"
        files = [self.own(f, weights=True) for f in ([single] if single.is_file()
                                                     else sorted(self.path.glob("*.safetensors")))]
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
        data = read_json(self.own(index), f"{field} {self.ref!r}: {index.name}")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str)
                                                       for f in weight_map.values()):
            raise ModelError(f"{field} {self.ref!r}: {index.name} is not a valid shard index "
                             "(a JSON object with a 'weight_map' of tensor -> file name).")
        # an absolute or ../ name would read weights from outside the model: refused
        files = {name: self.own(self.path / file, f"shard {file!r} named by {index.name}",
                                weights=True) for name, file in weight_map.items()}
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

    def _check_sizes(self) -> None:
        """config.json's ``vocab_size``, ``hidden_size`` and ``intermediate_size`` (of its
        ``text_config`` where it has one) against the tensors that carry them: the token
        embedding (vocab, hidden) and a layer's MLP input projection (intermediate, hidden).
        A model shell is built from the config, so a size the tensors do not have would
        allocate what it claims, or fail halfway through a merge. Tensors with other names
        (other architectures) are not checked; quantized (non-float) ones neither.

        Raises:
            ModelError: a size that is not the tensor's, naming the field and the shape.
        """
        text = self.config.get("text_config")
        sizes = text if isinstance(text, dict) else self.config
        embed = next((n for n in self._entries if is_vocab_tensor(n)
                      and not n.startswith(("lm_head", "embed_out"))), None)
        mlp = next((n for n in self._entries if _MLP_IN.search(n)
                    and layer_index(n) is not None), None)
        checks = [(embed, "vocab_size", 0), (mlp, "intermediate_size", 0), (mlp, "hidden_size", 1)]
        if not any(k in sizes for k in _EMBED_WIDTH):
            checks.append((embed, "hidden_size", 1))
        for name, key, axis in checks:
            entry = self._entries.get(name) if name else None
            if (entry is None or key not in sizes or len(entry.shape) != 2
                    or not entry.dtype.is_floating_point):
                continue
            value = sizes[key]
            if isinstance(value, bool) or not isinstance(value, int) or value != entry.shape[axis]:
                raise ModelError(f"{self._field} {self.ref!r}: config.json sets {key} = "
                                 f"{brief(value, 40)} but tensor {name!r} has shape "
                                 f"{list(entry.shape)}; config and tensors must agree.")

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
        # held == {0, ..., count-1}, without building range(count) (config data: any size)
        if held and (len(held) != count or max(held) != count - 1):
            top = max(held) + 1
            detail = (f"hold layers 0-{top - 1}" if len(held) == top
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
    def _tokenizer_tables(self) -> tuple[dict[int, str] | str | None, dict[int, str]]:
        """(core, added): the tokenizer model's own id -> token (``tokenizer.json``'s model
        vocabulary or ``vocab.json``) or a digest of ``tokenizer.model`` (SentencePiece), and
        the tokens added on top (``added_tokens``); (None, {}) without a tokenizer."""
        tj, vj, spm = (self.path / n for n in ("tokenizer.json", "vocab.json", "tokenizer.model"))
        added_json = self.path / "added_tokens.json"
        try:
            if tj.is_file():
                data = self._tokenizer_json(tj)
                vocab = (data.get("model") or {}).get("vocab")
                core = ({int(i): str(t) for t, i in vocab.items()} if isinstance(vocab, dict)
                        else {i: str(v[0]) for i, v in enumerate(vocab or [])})
                return core, {int(tok["id"]): str(tok["content"])
                              for tok in data.get("added_tokens") or []}
            added = ({int(i): str(t) for t, i in self._tokenizer_json(added_json).items()}
                     if added_json.is_file() else {})
            if vj.is_file():
                return {int(i): str(t) for t, i in self._tokenizer_json(vj).items()}, added
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"{self.ref!r}: unreadable tokenizer file ({exc}).") from None
        if spm.is_file():
            digest = hashlib.sha256()
            with open(spm, "rb") as f:  # streamed: any size costs no memory; confined at open
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            return digest.hexdigest(), added
        return None, {}

    def _tokenizer_json(self, file: Path) -> Any:
        """A JSON tokenizer file, bounded (one of TOKENIZER_FILES: confined at open)."""
        return read_json(file, f"{self._field} {self.ref!r}: {file.name}", TOKENIZER_JSON)

    @property
    def core_vocab(self) -> dict[int, str] | str | None:
        """The tokenizer's own vocabulary without tokens added on top (id -> token), a digest
        of a SentencePiece ``tokenizer.model``, or None without a tokenizer."""
        return self._tokenizer_tables[0]

    @cached_property
    def tokenizer(self) -> dict[int, str] | str | None:
        """The tokenizer as id -> token (core vocabulary and added tokens), a digest of
        ``tokenizer.model`` (SentencePiece) and its added tokens, or None if the directory has
        no tokenizer."""
        core, added = self._tokenizer_tables
        if isinstance(core, str):
            return core + json.dumps(sorted(added.items())) if added else core
        return None if core is None else {**core, **added}

    @cached_property
    def tokenizer_digest(self) -> str | None:
        """A digest of :attr:`tokenizer`: the resident materializer plans every candidate, so
        tokenizers are compared by digest there, not token by token."""
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
