"""The files of model and adapter directories, read as data.

A model directory is downloaded, not written by the user, so what it holds must not steer
evomerge (docs/security.md):

* **confined**: a file of a model directory is used only if it resolves inside that directory
  or, in the Hugging Face cache layout (``snapshots/<rev>/file`` is a symlink to
  ``../../blobs/<hash>``), inside the repository's ``blobs/``. A symlink elsewhere
  (``merges.txt -> ~/.ssh/id_rsa``) would otherwise be read, or copied into a merged model
  the user then shares; a shard index naming ``../../x.safetensors`` likewise.
* **bounded**: a JSON file is read only under a size limit fitting its kind and nested at most
  :data:`MAX_DEPTH` levels; json's recursive parser meets 100,000 nested brackets with a
  RecursionError, and an object nested a few hundred levels deep still breaks whoever walks it
  recursively later (transformers deep-copies configs).

Every refusal is one :class:`~evomerge.errors.ModelError` sentence naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evomerge.errors import ModelError

__all__ = ["confined", "read_json", "parse_json", "MAX_DEPTH", "SMALL_JSON", "TOKENIZER_JSON"]

MAX_DEPTH = 64  # real configs and tokenizers nest < 10 levels
SMALL_JSON = 64 << 20  # config.json, adapter_config.json, the shard index: kB to a few MB
TOKENIZER_JSON = 256 << 20  # tokenizer.json of a 256k vocabulary is ~35 MB; 7x that


def confined(root: Path, file: Path, what: str, weights: bool = False) -> Path:
    """``file``, a file of model directory ``root``, if it resolves inside ``root`` or the
    Hugging Face cache's ``blobs/`` of the repository ``root`` is a snapshot of. With
    ``weights`` (a safetensors file: it must parse as one, so a link to a secret cannot leak
    it) a symlink may point anywhere, to a regular file: shards linked to save disk, an old
    ``huggingface_hub`` local_dir. ``file`` itself must lie in ``root`` either way (no ``..``
    or absolute name).

    Raises:
        ModelError: it resolves anywhere else (a symlink out, ``..``, an absolute path), or
            nowhere (a symlink loop).
    """
    home = root.resolve()
    try:
        target = file.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        raise ModelError(f"{what} is a symlink that resolves nowhere (a loop); a model "
                         "directory's files must be files inside it.") from None
    if target.is_relative_to(home):
        return file
    if weights and file.absolute().parent.resolve().is_relative_to(home) and (
            target.is_file() or not target.exists()):
        return file
    for snapshot in (home, *home.parents):  # snapshots/<rev>[/subfolder]
        if snapshot.parent.name == "snapshots":
            if target.is_relative_to((snapshot.parent.parent / "blobs").resolve()):
                return file
            break
    raise ModelError(f"{what} points outside its model directory (to {str(target)!r}); "
                     "a model directory's files must lie inside it: copy the file in.")


def read_json(file: Path, what: str, limit: int = SMALL_JSON) -> Any:
    """The JSON value in ``file`` (at most ``limit`` bytes, :data:`MAX_DEPTH` levels deep);
    ``what`` names it in messages. Confine the path first (:func:`confined`).

    Raises:
        ModelError: too big, unreadable, not JSON or nested too deep.
    """
    try:
        size = file.stat().st_size
        if size > limit:
            raise ModelError(f"{what} is {size} bytes, more than the {limit >> 20} MiB such a "
                             "file can need; it is not read.")
        data = file.read_bytes()
    except OSError as exc:
        raise ModelError(f"{what} cannot be read ({exc.strerror}).") from None
    return parse_json(data, what)


def parse_json(data: bytes | str, what: str) -> Any:
    """``data`` parsed as JSON, nested at most :data:`MAX_DEPTH` levels.

    Raises:
        ModelError: not UTF-8 JSON, or nested too deep.
    """
    try:
        value = json.loads(data)
    except RecursionError:
        value = None
    except (UnicodeDecodeError, ValueError) as exc:  # ValueError: JSONDecodeError, 4300+ digits
        raise ModelError(f"{what} is not valid JSON ({_short(exc)}).") from None
    else:
        if _depth_ok(value):
            return value
    raise ModelError(f"{what} nests JSON more than {MAX_DEPTH} levels deep; no real file "
                     "does, so it is not read.")


def _depth_ok(value: Any) -> bool:
    """Whether ``value`` nests at most MAX_DEPTH containers: iterative, so a deep value cannot
    overflow the stack here as it would in a recursive walk."""
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, (dict, list)):
                if depth >= MAX_DEPTH:
                    return False
                stack.append((child, depth + 1))
    return True


def _short(exc: Exception) -> str:
    text = str(exc).rstrip(".")
    return text if len(text) <= 200 else text[:197] + "..."
