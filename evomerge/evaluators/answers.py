"""Fast scorer for prompt/answer data on any Hugging Face causal LM, with its own tokenizer.

Data: JSONL lines ``{"prompt": ..., "answer": ..., "choices": [...]?}`` per task. Each
candidate costs one teacher-forced forward pass per batch (plus, with ``generate``, one
batched greedy decode), against lm-eval's request machinery per call.

Tokenization follows lm-eval's ``loglikelihood`` exactly (:mod:`.likelihood`), so the
log-likelihoods are the same numbers (tested on SmolLM2). Every score is a ratio of
per-example sums, so any subset of the examples can be scored, weighted
(:class:`~evomerge.evaluators.base.SubsetEvaluator`): the cheap fidelities of a search.

Metrics per task:

* ``answer_nll``   mean negative log-likelihood per answer token (lower is better);
* ``token_acc``    fraction of answer tokens that are the argmax;
* ``greedy_match`` fraction of answers whose every token is the argmax (lm-eval's ``acc`` of
  a single-target loglikelihood task);
* ``choice_acc``   (when every example lists ``choices``, the answer among them) fraction of
  examples whose answer has the highest log-likelihood of its choices;
* ``exact_match``  (``generate: true``) fraction of examples whose greedy generation, cut at
  the first stop string and stripped, equals the stripped answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from evomerge.errors import ConfigError
from evomerge.evaluators.base import Metric, SubsetEvaluator, register_evaluator
from evomerge.evaluators.likelihood import encode_pair, loglikelihoods
from evomerge.jsonl import read_rows

__all__ = ["AnswerEvaluator", "encode_pair", "loglikelihoods", "read_examples"]


def read_examples(path: str | Path) -> list[dict[str, Any]]:
    """JSONL examples with ``prompt`` and ``answer`` (and optional ``choices``)."""
    return [row for _, row in read_rows(path, ("prompt", "answer"),
                                        "a JSON object with 'prompt' and 'answer'")]


@register_evaluator("answers")
class AnswerEvaluator(SubsetEvaluator):
    """Teacher-forced (and optionally generative) scorer for prompt/answer JSONL tasks.

    Args:
        files: task name -> JSONL path.
        lm_eval_tasks: instead of ``files``, lm-eval tasks whose documents are the examples
            (prompt, target joined by the task's delimiter, choices; zero-shot), read from
            ``split`` (``validation``, ``test`` or ``train``; default: the split lm-eval
            evaluates) of each; ``include_path``:
            directories of local task YAMLs (without it, lm-eval's built-in tasks).
        limit: first N examples per task.
        batch_size: sequences per forward pass.
        chat_template: wrap each prompt in the tokenizer's chat template (a user turn, with
            ``system`` as the system turn when given, and the generation prompt); the
            template's trailing newline then stays in the prompt, so ``answer_nll`` and the
            other metrics score the answer's own tokens only.
        system: system message for the chat template.
        generate: also score ``exact_match`` by batched greedy decoding.
        stop: strings that end a generation (default: a newline).
        max_new_tokens: generation budget per example.
        terminator: text appended to every answer and scored with it (the zoo: a newline).
        eos_ends_answer: the EOS token where the terminator's last token is expected counts
            as right (generation stops at either).
    """

    renamed: dict[str, str] = {}  # metric name -> the name a subclass reports it under

    def __init__(self, files: dict[str, str] | None = None, limit: int | None = None,
                 batch_size: int = 16, chat_template: bool = False, system: str | None = None,
                 generate: bool = False, stop: list[str] | None = None,
                 max_new_tokens: int = 32, terminator: str = "",
                 eos_ends_answer: bool = False, lm_eval_tasks: list[str] | None = None,
                 include_path: str | list[str] | None = None,
                 split: str | None = None) -> None:
        if bool(files) == bool(lm_eval_tasks):
            raise ConfigError("The answers evaluator needs 'files' ({task: path.jsonl}) or "
                              "'lm_eval_tasks' (task names), one of the two.")
        if files:
            self._examples = {t: read_examples(p)[:limit] for t, p in files.items()}
        else:
            from evomerge.evaluators.task_docs import task_examples

            self._examples = task_examples(list(lm_eval_tasks or []), include_path, split, limit)
        self._batch, self._chat, self._system = batch_size, chat_template, system
        self._generate, self._stop, self._max_new = generate, stop or ["\n"], max_new_tokens
        self._end, self._eos_ends = terminator, eos_ends_answer
        self._encoded: dict[str, Any] | None = None
        self._tok_id: int | None = None

    def sizes(self) -> dict[str, int]:
        return {t: len(exs) for t, exs in self._examples.items()}

    def _metric_names(self, task: str) -> list[tuple[str, str]]:
        exs = self._examples[task]
        names = [("answer_nll", "minimize"), ("token_acc", "maximize"),
                 ("greedy_match", "maximize")]
        if exs and all("choices" in ex for ex in exs):
            names.append(("choice_acc", "maximize"))
        if self._generate:
            names.append(("exact_match", "maximize"))
        return [(self.renamed.get(m, m), d) for m, d in names]

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return tuple(Metric(f"{t}/{m}", d) for t in self._examples
                     for m, d in self._metric_names(t))

    def _prompt(self, tokenizer: Any, prompt: str) -> str:
        if not self._chat:
            return prompt
        turns = ([{"role": "system", "content": self._system}] if self._system else []) + [
            {"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)

    def _encode(self, tokenizer: Any) -> dict[str, Any]:
        """Token ids per task, built once per tokenizer (the resident model's never changes)."""
        if self._encoded is None or self._tok_id != id(tokenizer):
            self._encoded = {}
            for task, exs in self._examples.items():
                prompts = [self._prompt(tokenizer, ex["prompt"]) for ex in exs]
                keep = self._chat  # the template's closing newline is not the answer's
                answers = [encode_pair(tokenizer, p, ex["answer"] + self._end, keep)
                           for p, ex in zip(prompts, exs)]
                choices = [[encode_pair(tokenizer, p, c, keep) for c in ex["choices"]]
                           for p, ex in zip(prompts, exs) if "choices" in ex]
                self._encoded[task] = (prompts, answers, choices)
            self._tok_id = id(tokenizer)
        return self._encoded

    def example_stats(self, model: Any, tokenizer: Any, task: str,
                      indices: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        prompts, answers, choices = self._encode(tokenizer)[task]
        exs = [self._examples[task][i] for i in indices]
        alt = tokenizer.eos_token_id if self._eos_ends else None
        lls = loglikelihoods(model, [answers[i] for i in indices], self._batch, alt_last=alt)
        ones = np.ones(len(indices))
        n_tok = np.array([n for *_, n in lls], dtype=np.float64)
        out = {"answer_nll": (-np.array([ll for ll, *_ in lls]), n_tok),
               "token_acc": (np.array([r for _, _, r, _ in lls], dtype=np.float64), n_tok),
               "greedy_match": (np.array([g for _, g, _, _ in lls], dtype=np.float64), ones)}
        if choices and len(choices) == len(self._examples[task]):
            out["choice_acc"] = (self._choice_right(model, exs, [choices[i] for i in indices]),
                                 ones)
        if self._generate:
            out["exact_match"] = (self._exact(model, tokenizer, [prompts[i] for i in indices],
                                              exs), ones)
        return {self.renamed.get(k, k): v for k, v in out.items()}

    def _choice_right(self, model: Any, exs: list[dict], choices: list[list]) -> np.ndarray:
        flat = [pair for cs in choices for pair in cs]
        lls = iter(loglikelihoods(model, flat, self._batch))
        right = []
        for ex, cs in zip(exs, choices):
            scores = [next(lls)[0] for _ in cs]
            right.append(ex["choices"][max(range(len(cs)), key=scores.__getitem__)]
                         == ex["answer"])
        return np.array(right, dtype=np.float64)

    @torch.no_grad()
    def _exact(self, model: Any, tokenizer: Any, prompts: list[str],
               exs: list[dict]) -> np.ndarray:
        device = next(model.parameters()).device
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
            tokenizer.eos_token_id
        right = []
        for start in range(0, len(prompts), self._batch):
            ids = [tokenizer.encode(p) for p in prompts[start:start + self._batch]]
            width = max(len(s) for s in ids)
            batch = torch.full((len(ids), width), pad, dtype=torch.long)
            mask = torch.zeros_like(batch)
            for r, s in enumerate(ids):  # left padding: every prompt ends at the same column
                batch[r, width - len(s):] = torch.tensor(s)
                mask[r, width - len(s):] = 1
            gen = model.generate(input_ids=batch.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=self._max_new, do_sample=False,
                                 pad_token_id=pad)
            for r, ex in enumerate(exs[start:start + self._batch]):
                text = tokenizer.decode(gen[r, width:], skip_special_tokens=True)
                for s in self._stop:
                    text = text.split(s, 1)[0]
                right.append(text.strip() == ex["answer"].strip())
        return np.array(right, dtype=np.float64)
