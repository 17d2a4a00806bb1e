"""Scoring by generation: decode each prompt on the resident candidate
(:mod:`evomerge.evaluators.decode`), take the answer out of the text and compare it with the
reference. Per example it yields ``(num, den)`` pairs, so generative scores combine over
subsets like every other score of the ``answers`` evaluator:

* ``exact_match``  the extracted answer equals the reference (lm-eval's ``exact_match``);
* ``no_answer``    (with a regex) the pattern found nothing in the generation;
* ``truncated``    the generation hit ``max_new_tokens`` before a stop string or EOS;
* ``gen_tokens``   tokens generated per example (a cost, and a sign of rambling).

For an lm-eval ``generate_until`` task (:class:`LmEvalGeneration`), the task itself scores
each generation: its filter pipelines (``strict-match``, ``flexible-extract``, ...) and its
metrics, one score per (metric, filter) named as the ``lm_eval`` evaluator names them
(``exact_match,strict-match``); its ``generation_kwargs`` set the stop strings and budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from evomerge.errors import ConfigError
from evomerge.evaluators.decode import DecodeOptions, Generation, generate
from evomerge.evaluators.extract import Extract, Match

__all__ = ["GenerativeScorer", "LmEvalGeneration", "Decoder", "COUNTS", "VLLM_SETTINGS",
           "check_vllm_settings"]

# counts every generative scorer reports, with their directions
COUNTS = (("truncated", "minimize"), ("gen_tokens", "minimize"))


def _counts(gens: Sequence[Generation]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    ones = np.ones(len(gens))
    return {"truncated": (np.array([g.finish == "length" for g in gens], dtype=np.float64), ones),
            "gen_tokens": (np.array([len(g.tokens) for g in gens], dtype=np.float64), ones)}


def _encode(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    return [tokenizer.encode(p) for p in prompts]  # as lm-eval's HF model encodes contexts


# The engine settings a space may give (the space is data: vLLM's other arguments include
# trust_remote_code, which runs a model directory's code, and download_dir, a place to write).
def _number(low: float, high: float, whole: bool = False) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        kind = (int,) if whole else (int, float)
        return isinstance(v, kind) and not isinstance(v, bool) and low <= v <= high
    return ok, f"a {'whole ' if whole else ''}number from {low:g} to {high:g}"


_FLAG = (lambda v: isinstance(v, bool), "true or false")
VLLM_SETTINGS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "gpu_memory_utilization": _number(0.01, 1.0),
    "max_model_len": _number(1, 10_000_000, whole=True),
    "max_num_seqs": _number(1, 65_536, whole=True),
    "max_num_batched_tokens": _number(1, 10_000_000, whole=True),
    "block_size": _number(1, 256, whole=True),
    "tensor_parallel_size": _number(1, 64, whole=True),
    "swap_space": _number(0, 1024),       # GiB of CPU memory per GPU
    "cpu_offload_gb": _number(0, 1024),
    "enforce_eager": _FLAG,
    "enable_prefix_caching": _FLAG,
    "dtype": (lambda v: v in ("auto", "float16", "bfloat16", "float32", "half", "float"),
              "auto, float16, bfloat16 or float32"),
    "kv_cache_dtype": (lambda v: v in ("auto", "fp8", "fp8_e4m3", "fp8_e5m2"),
                       "auto, fp8, fp8_e4m3 or fp8_e5m2"),
}


def check_vllm_settings(vllm: dict[str, Any]) -> dict[str, Any]:
    """``vllm`` if every key is one of :data:`VLLM_SETTINGS` with a fitting value; else a
    ConfigError naming the key and value."""
    for key, value in vllm.items():
        if key not in VLLM_SETTINGS:
            raise ConfigError(f"vllm.{key} is not an engine setting evomerge passes on (only "
                              f"{', '.join(VLLM_SETTINGS)}).")
        ok, valid = VLLM_SETTINGS[key]
        if not ok(value):
            raise ConfigError(f"vllm.{key} = {repr(value)[:60]} is not {valid}.")
    return dict(vllm)


class Decoder:
    """Where generations come from: :func:`evomerge.evaluators.decode.generate` on the
    resident model, or (backend ``vllm``) a resident vLLM engine loaded with its weights
    (:mod:`evomerge.evaluators.vllm_engine`), shared by the scorers of one evaluator.

    Args:
        vllm: the engine's settings (``dtype``: default the model's; ``gpu_memory_utilization``,
            ``max_model_len``, ``enforce_eager``, ... :data:`VLLM_SETTINGS`; it starts from
            the resident model's directory).
    """

    def __init__(self, vllm: dict[str, Any] | None = None) -> None:
        self._vllm, self._engine = check_vllm_settings(vllm or {}), None

    def new_candidate(self) -> None:
        """The next generations are another candidate's (the engine reloads its weights)."""
        if self._engine is not None:
            self._engine.mark_stale()

    def __call__(self, model: Any, tokenizer: Any, prompts: list[list[int]],
                 options: DecodeOptions, keys: Sequence[int]) -> list[Generation]:
        if options.backend != "vllm":
            return generate(model, tokenizer, prompts, options, keys)
        if self._engine is None:
            from evomerge.evaluators.vllm_engine import VllmEngine

            opts = dict(self._vllm)
            path = getattr(model.config, "_name_or_path", "")
            dtype = opts.pop("dtype", None) or str(next(model.parameters()).dtype).removeprefix(
                "torch.")
            self._engine = VllmEngine.shared(path, dtype, **opts)
        return self._engine.generate(model, tokenizer, prompts, options, keys)


class GenerativeScorer:
    """Exact match of extracted answers against references (JSONL ``answers`` tasks).

    Args:
        options: decoding options.
        extract, match: answer extraction and comparison (:mod:`evomerge.evaluators.extract`).
        decoder: where generations come from (:class:`Decoder`).
    """

    def __init__(self, options: DecodeOptions, extract: Extract, match: Match,
                 decoder: Decoder | None = None) -> None:
        self.options, self.extract, self.match = options, extract, match
        self.decode = decoder or Decoder()

    def metric_names(self) -> list[tuple[str, str]]:
        names = [("exact_match", "maximize")]
        if self.extract.regex is not None:
            names.append(("no_answer", "minimize"))
        return names + list(COUNTS)

    def stats(self, model: Any, tokenizer: Any, prompts: Sequence[str], references: Sequence[str],
              keys: Sequence[int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per metric, per example ``(num, den)``; ``keys`` name the examples (their draws
        when sampling)."""
        gens = self.decode(model, tokenizer, _encode(tokenizer, prompts), self.options, keys)
        found = [self.extract(g.text) for g in gens]
        ref = [r if self.extract.regex is not None else r.strip() for r in references]
        right = [self.match(f if f is not None else self.extract.fallback, r)
                 for f, r in zip(found, ref)]
        ones = np.ones(len(gens))
        out = {"exact_match": (np.array(right, dtype=np.float64), ones)}
        if self.extract.regex is not None:
            out["no_answer"] = (np.array([f is None for f in found], dtype=np.float64), ones)
        return {**out, **_counts(gens)}


class LmEvalGeneration:
    """An lm-eval ``generate_until`` task's documents, scored by the task's own filters and
    metrics on our generations.

    Args:
        task: the lm-eval task object.
        docs: its documents to score (one split).
        contexts: each document's prompt as lm-eval builds it (few-shot, description).
        options: decoding options; the task's ``generation_kwargs`` override ``stop``,
            ``max_new_tokens`` and sampling (as lm-eval runs the task).
        decoder: where generations come from (:class:`Decoder`).
    """

    def __init__(self, task: Any, docs: list[dict], contexts: list[str],
                 options: DecodeOptions, decoder: Decoder | None = None) -> None:
        from evomerge.compat import task_filters

        self.task, self.docs, self.contexts = task, docs, contexts
        self.decode = decoder or Decoder()
        self._filters = task_filters(task)
        self.options = _task_options(task, options)
        self._metrics = list(task.higher_is_better().items())

    def metric_names(self) -> list[tuple[str, str]]:
        return [(f"{m},{name}", "maximize" if hib else "minimize")
                for name, _ in self._filters for m, hib in self._metrics] + list(COUNTS)

    def stats(self, model: Any, tokenizer: Any, prompts: Sequence[str],
              references: Sequence[str], keys: Sequence[int]
              ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """As :meth:`GenerativeScorer.stats`; ``keys`` index the task's documents and
        ``references`` are unused (the task knows its targets)."""
        gens = self.decode(model, tokenizer, _encode(tokenizer, prompts), self.options, keys)
        docs = [self.docs[k] for k in keys]
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        ones = np.ones(len(gens))
        for name, filters in self._filters:
            resps: Any = [[g.text] for g in gens]
            for make in filters:  # FilterEnsemble.apply, on plain responses
                resps = make().apply(resps, docs)
            per_doc = [self.task.process_results(d, [r]) for d, r in zip(docs, list(resps))]
            for metric, _ in self._metrics:
                out[f"{metric},{name}"] = (np.array([float(p[metric]) for p in per_doc]), ones)
        return {**out, **_counts(gens)}


def _task_options(task: Any, options: DecodeOptions) -> DecodeOptions:
    """``options`` with the task's generation kwargs applied, as lm-eval's HF model reads them
    (``until`` plus the EOS text; ``max_gen_toks`` else 256; greedy unless ``do_sample``)."""
    kw = dict(task.config.generation_kwargs or {})
    until = kw.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    budget = next((kw[k] for k in ("max_gen_toks", "max_new_tokens", "max_tokens")
                   if k in kw), 256)
    temperature = float(kw.get("temperature", 0.0) or 0.0)
    sample = bool(kw.get("do_sample", False)) and temperature > 0
    return replace(options, stop=tuple(until), max_new_tokens=int(budget), do_sample=sample,
                   temperature=temperature if sample else 1.0,
                   top_p=float(kw.get("top_p", 1.0) or 1.0), top_k=int(kw.get("top_k", 0) or 0))
