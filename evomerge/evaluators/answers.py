"""Fast scorer for prompt/answer data on any Hugging Face causal LM, with its own tokenizer.

Data: JSONL lines ``{"prompt": ..., "answer": ..., "choices": [...]?}`` per task. Each
candidate costs one teacher-forced forward pass per batch (plus, with ``generate``, one
batched greedy decode), against lm-eval's request machinery per call.

Tokenization follows lm-eval's ``loglikelihood`` exactly, so the log-likelihoods are the
same numbers (tested on SmolLM2): trailing spaces of the prompt move to the answer, the pair
is encoded whole, and the answer's tokens are what follows the prompt's own encoding.

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

import torch

from evomerge.errors import ConfigError
from evomerge.evaluators.base import Evaluator, Metric, register_evaluator
from evomerge.jsonl import read_rows

__all__ = ["AnswerEvaluator", "encode_pair", "loglikelihoods"]


def read_examples(path: str | Path) -> list[dict[str, Any]]:
    """JSONL examples with ``prompt`` and ``answer`` (and optional ``choices``)."""
    return [row for _, row in read_rows(path, ("prompt", "answer"),
                                        "a JSON object with 'prompt' and 'answer'")]


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) the way lm-eval's causal ``loglikelihood`` splits them."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


@torch.no_grad()
def loglikelihoods(model: Any, pairs: list[tuple[list[int], list[int]]], batch_size: int = 16,
                   max_length: int | None = None) -> list[tuple[float, bool, int, int]]:
    """Per pair: (sum log p(continuation | context), every continuation token the argmax,
    number of argmax tokens, number of tokens). Batches are right-padded, longest first.
    Only the continuation's rows get a log-softmax ((n, V) per item, not (T, V))."""
    keys = [(tuple(c), tuple(a)) for c, a in pairs]
    unique = list(dict.fromkeys(keys))  # a pair asked twice is computed once
    if len(unique) < len(pairs):
        done = dict(zip(unique, loglikelihoods(model, [(list(c), list(a)) for c, a in unique],
                                               batch_size, max_length)))
        return [done[k] for k in keys]
    device = next(model.parameters()).device
    max_length = max_length or getattr(model.config, "max_position_embeddings", 2048)
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    out: list[Any] = [None] * len(pairs)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        seqs = [(pairs[i][0] + pairs[i][1])[-(max_length + 1):][:-1] for i in idx]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, :len(s)] = torch.tensor(s)
        # Right padding under causal attention never reaches a real position, so no mask:
        # with one, attention leaves its fused causal path (lm-eval passes none either).
        logits = model(input_ids=ids.to(device)).logits
        for r, i in enumerate(idx):
            cont = pairs[i][1]
            n, end = len(cont), len(seqs[r])
            rows = torch.log_softmax(logits[r, end - n:end].float(), dim=-1)  # (n, V)
            target = torch.tensor(cont, device=rows.device)
            ll = rows.gather(-1, target[:, None]).squeeze(-1)
            right = int((rows.argmax(-1) == target).sum())
            out[i] = (float(ll.sum()), right == n, right, n)
    return out


@register_evaluator("answers")
class AnswerEvaluator(Evaluator):
    """Teacher-forced (and optionally generative) scorer for prompt/answer JSONL tasks.

    Args:
        files: task name -> JSONL path.
        limit: first N examples per task.
        batch_size: sequences per forward pass.
        chat_template: wrap each prompt in the tokenizer's chat template (a user turn, with
            ``system`` as the system turn when given, and the generation prompt).
        system: system message for the chat template.
        generate: also score ``exact_match`` by batched greedy decoding.
        stop: strings that end a generation (default: a newline).
        max_new_tokens: generation budget per example.
    """

    def __init__(self, files: dict[str, str], limit: int | None = None, batch_size: int = 16,
                 chat_template: bool = False, system: str | None = None,
                 generate: bool = False, stop: list[str] | None = None,
                 max_new_tokens: int = 32) -> None:
        if not files:
            raise ConfigError("The answers evaluator needs 'files': {task: path.jsonl}.")
        self._examples = {t: read_examples(p)[:limit] for t, p in files.items()}
        self._batch, self._chat, self._system = batch_size, chat_template, system
        self._generate, self._stop, self._max_new = generate, stop or ["\n"], max_new_tokens
        self._encoded: dict[str, Any] | None = None
        self._tok_id: int | None = None

    @property
    def metrics(self) -> tuple[Metric, ...]:
        out = []
        for task, exs in self._examples.items():
            names = [("answer_nll", "minimize"), ("token_acc", "maximize"),
                     ("greedy_match", "maximize")]
            if exs and all("choices" in ex for ex in exs):
                names.append(("choice_acc", "maximize"))
            if self._generate:
                names.append(("exact_match", "maximize"))
            out += [Metric(f"{task}/{m}", d) for m, d in names]
        return tuple(out)

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
                answers = [encode_pair(tokenizer, p, ex["answer"]) for p, ex in zip(prompts, exs)]
                choices = [[encode_pair(tokenizer, p, c) for c in ex["choices"]]
                           for p, ex in zip(prompts, exs) if "choices" in ex]
                self._encoded[task] = (prompts, answers, choices)
            self._tok_id = id(tokenizer)
        return self._encoded

    def __call__(self, model: Any, tokenizer: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        for task, (prompts, answers, choices) in self._encode(tokenizer).items():
            exs = self._examples[task]
            lls = loglikelihoods(model, answers, self._batch)
            n_tok = sum(n for *_, n in lls)
            out[f"{task}/answer_nll"] = -sum(ll for ll, *_ in lls) / max(n_tok, 1)
            out[f"{task}/token_acc"] = sum(r for _, _, r, _ in lls) / max(n_tok, 1)
            out[f"{task}/greedy_match"] = sum(g for _, g, _, _ in lls) / len(lls)
            if choices and len(choices) == len(exs):
                out[f"{task}/choice_acc"] = self._choice_acc(model, exs, choices)
            if self._generate:
                out[f"{task}/exact_match"] = self._exact_match(model, tokenizer, prompts, exs)
        return out

    def _choice_acc(self, model: Any, exs: list[dict], choices: list[list]) -> float:
        flat = [pair for cs in choices for pair in cs]
        lls = iter(loglikelihoods(model, flat, self._batch))
        right = 0
        for ex, cs in zip(exs, choices):
            scores = [next(lls)[0] for _ in cs]
            right += ex["choices"][max(range(len(cs)), key=scores.__getitem__)] == ex["answer"]
        return right / len(exs)

    @torch.no_grad()
    def _exact_match(self, model: Any, tokenizer: Any, prompts: list[str],
                     exs: list[dict]) -> float:
        device = next(model.parameters()).device
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
            tokenizer.eos_token_id
        right = 0
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
                right += text.strip() == ex["answer"].strip()
        return right / len(prompts)
