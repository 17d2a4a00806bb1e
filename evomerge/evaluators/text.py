"""Perplexity on a text file (one document per line) or a JSONL file with a ``text`` field."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from evomerge.errors import ConfigError
from evomerge.evaluators.base import Evaluator, Metric, register_evaluator
from evomerge.jsonl import read_rows

__all__ = ["PerplexityEvaluator", "read_texts"]


def read_texts(path: str | Path, field: str = "text") -> list[str]:
    """Documents of a ``.txt`` (one per non-empty line) or ``.jsonl`` file; a malformed JSONL
    line fails naming the file and the line."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return [row[field] for _, row in read_rows(
            path, (field,), f"a JSON object with a {field!r} field", kind="Text file")]
    if not path.is_file():
        raise ConfigError(f"Text file {str(path)!r} does not exist.")
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


@register_evaluator("perplexity")
class PerplexityEvaluator(Evaluator):
    """Token-level perplexity over documents (each truncated to ``max_length`` tokens).

    Args:
        path: ``.txt`` or ``.jsonl`` file.
        name: metric prefix (default: the file stem).
        field: JSONL field holding the text.
        max_length: tokens per document.
        batch_size: documents per forward pass.
        limit: first N documents.
    """

    def __init__(self, path: str, name: str | None = None, field: str = "text",
                 max_length: int = 512, batch_size: int = 16, limit: int | None = None) -> None:
        self.name = name or Path(path).stem
        self._texts = read_texts(path, field)[:limit]
        if not self._texts:
            raise ConfigError(f"Text file {path!r} holds no documents.")
        self._max, self._batch = max_length, batch_size

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return (Metric(f"{self.name}/perplexity", "minimize"),)

    @torch.no_grad()
    def __call__(self, model: Any, tokenizer: Any) -> dict[str, float]:
        device = next(model.parameters()).device
        nll, count = 0.0, 0
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        for i in range(0, len(self._texts), self._batch):
            enc = [tokenizer(t, add_special_tokens=False)["input_ids"][: self._max]
                   for t in self._texts[i:i + self._batch]]
            width = max(len(e) for e in enc)
            ids = torch.full((len(enc), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, e in enumerate(enc):
                ids[j, : len(e)] = torch.tensor(e)
                mask[j, : len(e)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target, valid = ids[:, 1:], mask[:, 1:].bool()
            logp = torch.log_softmax(logits, -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
            nll -= logp[valid].sum().item()
            count += int(valid.sum())
        return {f"{self.name}/perplexity": math.exp(nll / max(count, 1))}
