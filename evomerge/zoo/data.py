"""Encoding of zoo examples into padded id/label batches, and JSONL task files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from evomerge.errors import ConfigError
from evomerge.jsonl import read_rows
from evomerge.zoo.model import vocab
from evomerge.zoo.tasks import Example

__all__ = ["encode", "read_jsonl", "write_jsonl"]

_VOCAB = vocab()
PAD = _VOCAB["<pad>"]


def encode(examples: Sequence[Example], device: str | torch.device = "cpu"
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(ids, labels, attention_mask)``, each (B, T). Labels are the next
    token at answer positions (answer characters + the newline) and -100 elsewhere, already
    shifted: ``labels[:, t]`` is the target for ``logits[:, t]``."""
    seqs, starts = [], []
    for ex in examples:
        text = ex.prompt + ex.answer + "\n"
        seqs.append([_VOCAB[c] for c in text])
        starts.append(len(ex.prompt))
    t_max = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t_max), PAD, dtype=torch.long)
    labels = torch.full((len(seqs), t_max), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), t_max), dtype=torch.long)
    for i, (s, p) in enumerate(zip(seqs, starts)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, p - 1: len(s) - 1] = torch.tensor(s[p:])  # position t predicts token t+1
    return ids.to(device), labels.to(device), mask.to(device)


def write_jsonl(path: Path, examples: Sequence[Example]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(ex.as_dict()) + "\n" for ex in examples))


def read_jsonl(path: str | Path) -> list[Example]:
    """Read ``{"prompt", "answer"}`` lines; a malformed line fails naming the file and line."""
    out = []
    for n, row in read_rows(path, ("prompt", "answer"), '{"prompt": ..., "answer": ...}'):
        out.append(Example(row["prompt"], row["answer"]))
        unknown = set(out[-1].prompt + out[-1].answer) - set(_VOCAB)
        if unknown:
            raise ConfigError(f"{path}:{n}: characters {sorted(unknown)} are not in the zoo "
                              "vocabulary.")
    return out
