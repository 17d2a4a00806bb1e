"""Fast scorer for prompt/answer data on any Hugging Face causal LM, with its own tokenizer.

Data: JSONL lines ``{"prompt": ..., "answer": ..., "choices": [...]?}`` per task, or the
documents of lm-eval tasks. Each candidate costs one teacher-forced forward pass per batch
(plus, with ``generate``, one batched decode with a KV cache), against lm-eval's request
machinery per call.

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
* with ``generate: true``, scores of the generations (:mod:`.generative`): ``exact_match``
  (the answer taken out of the generation by ``extract`` — by default the whole text, cut at
  the first stop string and stripped — equals the answer), ``no_answer``, ``truncated``,
  ``gen_tokens``; an lm-eval ``generate_until`` task scores its generations with its own
  filters and metrics (``exact_match,strict-match``, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evomerge.errors import ConfigError, ModelError
from evomerge.evaluators.base import Metric, SubsetEvaluator, register_evaluator
from evomerge.evaluators.chat_render import render_chat_prompts
from evomerge.evaluators.decode import BACKENDS, DecodeOptions
from evomerge.evaluators.extract import extraction
from evomerge.evaluators.generative import Decoder, GenerativeScorer, LmEvalGeneration
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
        generate: also score generations (batched decoding with a KV cache; module
            docstring).
        teacher_forced: score the teacher-forced metrics (``answer_nll`` ...); False with
            ``generate`` scores generations only.
        stop: strings that end a generation (default: a newline).
        max_new_tokens: generation budget per example.
        extract: how the answer is taken out of a generation: a preset (``exact``, ``gsm8k``,
            ``gsm8k_flexible``, ``answer_is``) or ``{preset?, regex, group_select, fallback}``
            (:mod:`evomerge.evaluators.extract`).
        match: lm-eval ``exact_match`` options (``ignore_case``, ``ignore_punctuation``,
            ``regexes_to_ignore``) over the preset's.
        do_sample, temperature, top_k, top_p, seed: seeded sampling instead of greedy
            decoding (each example's draws fixed by ``seed``, the same for every candidate).
        gen_batch_size, token_budget: rows and rows x (prompt + max_new_tokens) tokens per
            decoding batch (default rows: ``batch_size``).
        decode_backend: ``auto``, ``loop``, ``hf`` or ``hf_static``
            (:mod:`evomerge.evaluators.decode`), or ``vllm``: a resident vLLM engine loaded
            with each candidate's weights (:mod:`evomerge.evaluators.vllm_engine`).
        vllm: that engine's settings (``gpu_memory_utilization``, ``max_model_len``,
            ``enforce_eager``, ``dtype``, ...: :data:`~evomerge.evaluators.generative.VLLM_SETTINGS`).
        num_fewshot: few-shot examples in the prompts of lm-eval ``generate_until`` tasks.
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
                 split: str | None = None, teacher_forced: bool = True,
                 extract: str | dict[str, Any] | None = None,
                 match: dict[str, Any] | None = None, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 gen_batch_size: int | None = None, token_budget: int = 65536,
                 decode_backend: str = "auto", num_fewshot: int = 0,
                 vllm: dict[str, Any] | None = None) -> None:
        if bool(files) == bool(lm_eval_tasks):
            raise ConfigError("The answers evaluator needs 'files' ({task: path.jsonl}) or "
                              "'lm_eval_tasks' (task names), one of the two.")
        if not (teacher_forced or generate):
            raise ConfigError("The answers evaluator scores nothing with teacher_forced false "
                              "and generate false; set one of them.")
        if decode_backend not in (*BACKENDS, "vllm"):
            raise ConfigError(f"decode_backend {decode_backend!r} is not one of "
                              f"{', '.join(BACKENDS)}, vllm.")
        if vllm and decode_backend != "vllm":
            raise ConfigError("The 'vllm' options apply to decode_backend 'vllm' only; set it "
                              f"or drop them (decode_backend is {decode_backend!r}).")
        lm_gen: dict[str, Any] = {}
        if files:
            self._examples = {t: read_examples(p)[:limit] for t, p in files.items()}
        else:
            from evomerge.evaluators.task_docs import task_examples

            self._examples = task_examples(list(lm_eval_tasks or []), include_path, split, limit,
                                           num_fewshot, lm_gen)
        self._batch, self._chat, self._system = batch_size, chat_template, system
        self._generate, self._teacher = generate, teacher_forced
        self._end, self._eos_ends = terminator, eos_ends_answer
        options = DecodeOptions(max_new_tokens, tuple(stop or ["\n"]), do_sample, temperature,
                                top_k, top_p, seed, gen_batch_size or batch_size, token_budget,
                                decode_backend)
        ex, mt = extraction(extract, match)
        self._decoder = Decoder(vllm)  # one vLLM engine (if any) for every task
        self._scorers = {t: LmEvalGeneration(*lm_gen[t], options, self._decoder) if t in lm_gen
                         else GenerativeScorer(options, ex, mt, self._decoder)
                         for t in self._examples} if generate else {}
        self._encoded: dict[str, Any] | None = None
        self._tok_id: int | None = None
        self._refused: tuple[int, ModelError] | None = None  # (tokenizer id, its error)

    def sizes(self) -> dict[str, int]:
        return {t: len(exs) for t, exs in self._examples.items()}

    def _metric_names(self, task: str) -> list[tuple[str, str]]:
        exs = self._examples[task]
        names = [("answer_nll", "minimize"), ("token_acc", "maximize"),
                 ("greedy_match", "maximize")] if self._teacher else []
        if self._teacher and exs and all("choices" in ex for ex in exs):
            names.append(("choice_acc", "maximize"))
        if self._generate:
            names += self._scorers[task].metric_names()
        return [(self.renamed.get(m, m), d) for m, d in names]

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return tuple(Metric(f"{t}/{m}", d) for t in self._examples
                     for m, d in self._metric_names(t))

    def _prompts(self, tokenizer: Any) -> dict[str, list[str]]:
        """Each task's prompts, through the tokenizer's chat template with ``chat_template``
        (rendered at once, by a bounded child process: the template is data)."""
        if not self._chat:
            return {t: [ex["prompt"] for ex in exs] for t, exs in self._examples.items()}
        system = [{"role": "system", "content": self._system}] if self._system else []
        turns = [system + [{"role": "user", "content": ex["prompt"]}]
                 for exs in self._examples.values() for ex in exs]
        rendered = iter(render_chat_prompts(tokenizer, turns))
        return {t: [next(rendered) for _ in exs] for t, exs in self._examples.items()}

    def _encode(self, tokenizer: Any) -> dict[str, Any]:
        """Token ids per task, built once per tokenizer (the resident model's never changes)."""
        if self._encoded is None or self._tok_id != id(tokenizer):
            if self._refused is not None and self._refused[0] == id(tokenizer):
                raise self._refused[1]  # a template that failed is not rendered again
            try:
                prompts_of = self._prompts(tokenizer)
            except ModelError as exc:
                self._refused = (id(tokenizer), exc)
                raise
            self._encoded = {}
            for task, prompts in prompts_of.items():
                exs = self._examples[task]
                keep = self._chat  # the template's closing newline is not the answer's
                answers = [encode_pair(tokenizer, p, ex["answer"] + self._end, keep)
                           for p, ex in zip(prompts, exs)]
                choices = [[encode_pair(tokenizer, p, c, keep) for c in ex["choices"]]
                           for p, ex in zip(prompts, exs) if "choices" in ex]
                self._encoded[task] = (prompts, answers, choices)
            self._tok_id = id(tokenizer)
        return self._encoded

    def score(self, model: Any, tokenizer: Any, subset: dict | None = None,
              per_example: bool = False):
        self._decoder.new_candidate()  # a vLLM engine reloads the weights once per call
        return super().score(model, tokenizer, subset, per_example)

    def example_stats(self, model: Any, tokenizer: Any, task: str,
                      indices: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        prompts, answers, choices = self._encode(tokenizer)[task]
        exs = [self._examples[task][i] for i in indices]
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if self._teacher:
            out.update(self._teacher_stats(model, tokenizer, task, indices, answers, choices))
        if self._generate:
            out.update(self._scorers[task].stats(model, tokenizer, [prompts[i] for i in indices],
                                                 [ex["answer"] for ex in exs], indices.tolist()))
        return {self.renamed.get(k, k): v for k, v in out.items()}

    def _teacher_stats(self, model: Any, tokenizer: Any, task: str, indices: np.ndarray,
                       answers: list, choices: list) -> dict[str, tuple[np.ndarray, np.ndarray]]:
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
        return out

    def _choice_right(self, model: Any, exs: list[dict], choices: list[list]) -> np.ndarray:
        flat = [pair for cs in choices for pair in cs]
        lls = iter(loglikelihoods(model, flat, self._batch))
        right = []
        for ex, cs in zip(exs, choices):
            scores = [next(lls)[0] for _ in cs]
            right.append(ex["choices"][max(range(len(cs)), key=scores.__getitem__)]
                         == ex["answer"])
        return np.array(right, dtype=np.float64)
