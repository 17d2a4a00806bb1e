"""Models whose tokenizers differ, as real fine-tunes' do: tokens added (ChatML, tool calls)
with new embedding rows, and an embedding padded to a multiple of 64.

From the ``smollm2`` fixture (:func:`truncated`: the real tokenizer and embeddings, the first
``layers`` decoder blocks so merges stay fast) or a tiny model (tests/models.py), with seeded
rank-4 deltas in every block (:func:`vocab_variant`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ["truncated", "vocab_variant"]


def truncated(src: str | Path, dest: Path, layers: int = 2) -> Path:
    """``src`` with only its first ``layers`` decoder blocks (tokenizer files copied)."""
    src = Path(src)
    if (dest / "model.safetensors").is_file():
        return dest
    keep = {n: t for n, t in load_file(src / "model.safetensors").items()
            if ".layers." not in n or int(n.split(".layers.")[1].split(".")[0]) < layers}
    _save(src, dest, keep, {"num_hidden_layers": layers})
    return dest


def vocab_variant(base: Path, dest: Path, seed: int, added: list[str] = (),
                  special: bool = True, pad_to: int | None = None) -> Path:
    """``base`` + seeded deltas, with ``added`` tokens appended to its tokenizer (special
    tokens unless ``special`` is false) and embedding rows for them; ``pad_to`` rounds the
    embedding up to a multiple (the extra rows have no token, as in a padded vocabulary)."""
    from transformers import AutoTokenizer

    base = Path(base)
    if (dest / "model.safetensors").is_file():
        return dest
    gen = torch.Generator().manual_seed(seed)
    tensors = load_file(base / "model.safetensors")
    out = {}
    for name, w in tensors.items():
        if w.dim() == 2 and ".layers." in name:
            delta = torch.randn(w.shape[0], 4, generator=gen) @ torch.randn(4, w.shape[1],
                                                                             generator=gen)
            w = (w.float() + delta * (0.2 * w.float().std() / delta.std())).to(w.dtype)
        out[name] = w
    tok = AutoTokenizer.from_pretrained(base)
    if added:
        if special:
            tok.add_special_tokens({"additional_special_tokens": list(added)})
        else:
            tok.add_tokens(list(added))
    rows = len(tok)
    if pad_to:
        rows = -(-rows // pad_to) * pad_to
    for name in ("model.embed_tokens.weight", "lm_head.weight"):  # lm_head: untied models
        if name in out:
            w = out[name]
            extra = torch.randn(rows - w.shape[0], w.shape[1], generator=gen)
            out[name] = torch.cat([w, (extra * w.float().std()).to(w.dtype)])
    _save(base, dest, out, {"vocab_size": rows}, tok)
    return dest


def _save(src: Path, dest: Path, tensors: dict[str, torch.Tensor], config: dict,
          tokenizer=None) -> None:
    """Write beside ``dest`` and rename into place (a cached fixture is never half-built)."""
    tmp = dest.with_name(dest.name + ".part")
    tmp.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            (tmp / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((src / "config.json").read_text()) | config
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    save_file({n: t.contiguous() for n, t in tensors.items()}, tmp / "model.safetensors",
              metadata={"format": "pt"})
    tmp.rename(dest)
