"""Fast in-process scorer for prompt/answer tasks (the zoo's, or any JSONL of that form).

One batched teacher-forced forward pass per batch gives, per task:

* ``answer_nll``  mean negative log-likelihood per answer token (lower is better; smooth,
  the signal a search needs);
* ``token_acc``   fraction of answer tokens that are the argmax;
* ``exact_match`` fraction of examples whose every answer token is the argmax and whose
  argmax after the answer ends it (the newline, or the EOS token). With the prefix teacher-
  forced this equals greedy decoding's exact match (what lm-eval's ``generate_until`` with
  ``until: ["\\n"]`` measures), because greedy decoding follows the same path for as long as
  it is right.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from evomerge.errors import ConfigError
from evomerge.evaluators.base import Evaluator, Metric, register_evaluator
from evomerge.zoo.data import encode, read_jsonl
from evomerge.zoo.model import vocab

__all__ = ["ZooEvaluator", "score_batches"]

_METRICS = (("exact_match", "maximize"), ("token_acc", "maximize"), ("answer_nll", "minimize"))


_NEWLINE, _EOS = vocab()["\n"], vocab()["<eos>"]


@torch.no_grad()
def score_batches(model: Any, batches: list[tuple[torch.Tensor, ...]]) -> dict[str, float]:
    """Scores over pre-encoded ``(ids, labels, mask)`` batches."""
    nll_sum = tok_right = tok_n = ex_right = ex_n = 0.0
    for ids, labels, mask in batches:
        logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V)
        answer = labels != -100                                              # (B, T)
        safe = labels.clamp(min=0)
        logp = torch.log_softmax(logits, dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
        pred = logits.argmax(-1)
        # The terminator may be the newline or EOS: generation stops at either.
        right = ((pred == labels) | ((labels == _NEWLINE) & (pred == _EOS))) & answer
        nll_sum += -(logp * answer).sum().item()
        tok_right += right.sum().item()
        tok_n += answer.sum().item()
        ex_right += (right.sum(1) == answer.sum(1)).sum().item()
        ex_n += ids.shape[0]
    return {"exact_match": ex_right / ex_n, "token_acc": tok_right / tok_n,
            "answer_nll": nll_sum / tok_n}


@register_evaluator("zoo")
class ZooEvaluator(Evaluator):
    """Teacher-forced scorer for prompt/answer JSONL tasks.

    Args:
        tasks: task names; with ``zoo`` they are read from ``zoo/tasks/<task>/<split>.jsonl``.
        zoo: a built zoo directory.
        files: explicit task -> JSONL path mapping (instead of ``zoo``).
        split: "validation" (search) or "test" (reports).
        limit: first N examples per task.
        batch_size: examples per forward pass.
        device: where batches live (default: the model's device at first call).
    """

    def __init__(self, tasks: list[str], zoo: str | None = None,
                 files: dict[str, str] | None = None, split: str = "validation",
                 limit: int | None = None, batch_size: int = 256,
                 device: str | None = None) -> None:
        if not tasks:
            raise ConfigError("The zoo evaluator needs at least one task.")
        if files is None:
            if zoo is None:
                raise ConfigError("The zoo evaluator needs 'zoo' (a zoo directory) or 'files'.")
            files = {t: str(Path(zoo) / "tasks" / t / f"{split}.jsonl") for t in tasks}
        self.tasks = list(tasks)
        self._examples = {t: read_jsonl(files[t])[:limit] for t in tasks}
        self._batch = batch_size
        self._device = device
        self._encoded: dict[str, list[tuple[torch.Tensor, ...]]] | None = None

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return tuple(Metric(f"{t}/{m}", d) for t in self.tasks for m, d in _METRICS)

    def _encode(self, device: torch.device) -> dict[str, list[tuple[torch.Tensor, ...]]]:
        if self._encoded is None:
            self._encoded = {
                t: [encode(ex[i:i + self._batch], self._device or device)
                    for i in range(0, len(ex), self._batch)]
                for t, ex in self._examples.items()}
        return self._encoded

    def __call__(self, model: Any, tokenizer: Any = None) -> dict[str, float]:
        device = next(model.parameters()).device
        out = {}
        for task, batches in self._encode(device).items():
            for metric, value in score_batches(model, batches).items():
                out[f"{task}/{metric}"] = value
        return out
