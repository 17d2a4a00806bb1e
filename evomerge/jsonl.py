"""JSONL input files (task examples, texts): one JSON object per non-empty line, each with
the fields its reader needs; a missing file or a malformed line fails with one sentence
naming the file and the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError

__all__ = ["read_rows"]


def read_rows(path: str | Path, fields: tuple[str, ...], expected: str,
              kind: str = "Task file") -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-empty line of ``path``, with ``fields`` made
    strings. ``expected`` ends the message of a malformed line (what a line should be)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{kind} {str(path)!r} does not exist.")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            for f in fields:
                row[f] = str(row[f])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}:{n}: malformed line ({type(exc).__name__}: {exc}); "
                              f"expected {expected}.") from None
        out.append((n, row))
    return out
