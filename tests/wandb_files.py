"""Read a W&B offline run back from its transaction log (``run-<id>.wandb``): the records the
run wrote, as W&B's own protobuf messages (``wandb.proto.wandb_internal_pb2.Record``).

The file is a 7-byte W&B header (``:W&B``, a 2-byte magic, a version byte) and then LevelDB's
log format: 32 KiB blocks (the first one counts the header), each holding chunks of
``crc32 (4) | length (2, LE) | type (1) | data``; type 1 is a whole record, 2/3/4 its first,
middle and last parts."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

_BLOCK, _HEADER, _CHUNK = 32 * 1024, 7, 7


def records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", data[:8]
    out, pos, part = [], _HEADER, b""
    while pos + _CHUNK <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        chunk = data[pos + _CHUNK:pos + _CHUNK + length]
        pos += _CHUNK + length
        if kind == 0 and length == 0:
            continue
        part = chunk if kind in (1, 2) else part + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(part)
            out.append(rec)
    return out


def run_view(path: Path) -> dict[str, Any]:
    """The run's id, config, history rows (step -> {key: value}) and saved files."""
    view: dict[str, Any] = {"config": {}, "history": {}, "files": [], "run_id": None}
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            view["run_id"] = rec.run.run_id
            view["config"].update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            view["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            row = {(i.key or ".".join(i.nested_key)): json.loads(i.value_json)
                   for i in rec.history.item}
            step = rec.history.step.num if rec.history.HasField("step") else row.get("_step")
            view["history"].setdefault(int(step), {}).update(row)
        elif kind == "files":
            view["files"] += [f.path for f in rec.files.files]
    return view
