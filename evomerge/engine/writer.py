"""Write sharded safetensors while tensors are still being computed.

The plan knows every output name, shape and dtype before any weight is read, so each shard's
safetensors header (JSON with byte offsets) is written first and tensor bytes are appended as
they are produced: peak memory is the tensor in hand, not a shard buffer.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from evomerge.engine.sources import ST_DTYPES

__all__ = ["TensorMeta", "ShardedWriter"]

_ST_DTYPE = {dtype: name for name, dtype in ST_DTYPES.items()}


@dataclass(frozen=True)
class TensorMeta:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


class ShardedWriter:
    """Streams tensors, in the order of ``metas``, into shards of at most ``max_shard_bytes``.

    Usage: ``with ShardedWriter(dir, metas) as w: for t in tensors: w.write(name, t)``.
    Writes ``model.safetensors`` for one shard, else ``model-0000i-of-0000n.safetensors`` plus
    ``model.safetensors.index.json``, as ``save_pretrained`` does.
    """

    def __init__(self, out_dir: Path, metas: Sequence[TensorMeta],
                 max_shard_bytes: int = 2 * 1024**3) -> None:
        self.out_dir = Path(out_dir)
        self.metas = list(metas)
        self.shards = self._split(max_shard_bytes)
        n = len(self.shards)
        self.files = (["model.safetensors"] if n == 1 else
                      [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
        self._next = 0
        self._shard = -1
        self._fh: BinaryIO | None = None
        self._left = 0

    def _split(self, limit: int) -> list[list[TensorMeta]]:
        shards: list[list[TensorMeta]] = [[]]
        size = 0
        for meta in self.metas:
            if shards[-1] and size + meta.nbytes > limit:
                shards.append([])
                size = 0
            shards[-1].append(meta)
            size += meta.nbytes
        return shards

    def _open_next(self) -> None:
        self._close()
        self._shard += 1
        metas = self.shards[self._shard]
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for m in metas:
            header[m.name] = {"dtype": _ST_DTYPE[m.dtype], "shape": list(m.shape),
                              "data_offsets": [offset, offset + m.nbytes]}
            offset += m.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
        self._fh = open(self.out_dir / self.files[self._shard], "wb")
        self._fh.write(struct.pack("<Q", len(raw)) + raw)
        self._left = len(metas)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next tensor; names must come in plan order."""
        meta = self.metas[self._next]
        if name != meta.name or tuple(tensor.shape) != meta.shape:
            raise RuntimeError(f"expected {meta.name} {meta.shape}, "
                               f"got {name} {tuple(tensor.shape)}")
        if self._left == 0:
            self._open_next()
        data = tensor.detach().to(device="cpu", dtype=meta.dtype).contiguous()
        assert self._fh is not None
        self._fh.write(data.view(torch.uint8).numpy().tobytes() if data.dim() == 0
                       else memoryview(data.view(torch.uint8).numpy()))
        self._left -= 1
        self._next += 1

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def finish(self) -> None:
        """Close the last shard and write the index (multi-shard only)."""
        if self._next != len(self.metas):
            raise RuntimeError(f"only {self._next} of {len(self.metas)} tensors were written")
        self._close()
        if len(self.files) > 1:
            weight_map = {m.name: f for f, shard in zip(self.files, self.shards) for m in shard}
            index = {"metadata": {"total_size": sum(m.nbytes for m in self.metas)},
                     "weight_map": weight_map}
            (self.out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()
