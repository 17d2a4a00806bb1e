"""lm-evaluation-harness evaluator: any installed or local task, scored on the in-memory model.

Task objects are built once (``TaskManager(include_path=..., include_defaults=False)`` skips
the ~4 s index of built-in tasks when only local tasks are used) and reused for every
candidate; the ``HFLM`` wrapper is built once per resident model (the materializer writes
merged weights into the same object). A fixed batch size is used: ``auto`` re-probes memory
on every run.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from evomerge.errors import ConfigError
from evomerge.evaluators.base import Evaluator, Metric, register_evaluator
from evomerge.evaluators.chat_render import bounded_lm_eval_chat

__all__ = ["LmEvalEvaluator"]

_LOWER_IS_BETTER = ("perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")


def _cache_encodings(lm: Any) -> None:
    """Tokenize each (context, continuation) pair once per wrapped model and tokenizer; the
    harness re-encodes every request on every call otherwise (a third of its remaining time on
    the zoo tasks)."""
    from evomerge.compat import wrap_encode_pair

    cache: dict[tuple[str, str], Any] = {}

    def wrap(encode: Any) -> Any:
        def encode_pair(context: str, continuation: str) -> Any:
            key = (context, continuation)
            if key not in cache:
                cache[key] = encode(context, continuation)
            return cache[key]

        return encode_pair

    wrap_encode_pair(lm, wrap)


@register_evaluator("lm_eval")
class LmEvalEvaluator(Evaluator):
    """Score with lm-eval tasks.

    Args:
        tasks: lm-eval task names.
        include_path: directory (or directories) of local task YAMLs (e.g. a zoo's ``tasks/``).
        include_defaults: also index lm-eval's built-in tasks (needed for hub tasks).
        limit: first N documents per task (after ``offset``; of the shuffled order with
            ``shuffle``).
        offset: documents skipped before the first scored one, so a search and its held-out
            report can read disjoint subsets of one split (``offset: 0, limit: 500`` and
            ``offset: 500``).
        shuffle: score documents in a random order drawn once with ``shuffle_seed``: every
            candidate reads the same random ``limit`` documents (mergekit-evolve's
            ``shuffle`` draws a new unseeded subset on every evaluation instead).
        batch_size: fixed batch size.
        num_fewshot, apply_chat_template, fewshot_as_multiturn, system_instruction,
            gen_kwargs, fewshot_seed: as ``lm_eval --num_fewshot`` etc. (applied the way
            ``simple_evaluate`` applies them: a task whose YAML fixes 0 shots keeps 0).
        metrics: which metrics to report per task (default: every metric the task defines);
            a metric of a filtered task reads ``exact_match,strict-match`` (metric, filter),
            as lm-eval names it; without a filter, the task's first (often its only one).
    """

    def __init__(self, tasks: list[str], include_path: str | list[str] | None = None,
                 include_defaults: bool | None = None, limit: int | None = None,
                 batch_size: int = 32, metrics: list[str] | None = None,
                 num_fewshot: int | None = None, apply_chat_template: bool | str = False,
                 fewshot_as_multiturn: bool = False, system_instruction: str | None = None,
                 gen_kwargs: dict[str, Any] | None = None, fewshot_seed: int = 1234,
                 offset: int = 0, shuffle: bool = False, shuffle_seed: int = 0) -> None:
        from lm_eval.tasks import TaskManager

        if not tasks:
            raise ConfigError("The lm_eval evaluator needs at least one task.")
        if include_defaults is None:
            include_defaults = include_path is None
        logging.getLogger("lm_eval").setLevel(logging.WARNING)
        manager = TaskManager(include_path=include_path, include_defaults=include_defaults)
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            raise ConfigError(f"Unknown lm-eval task {unknown[0]!r}"
                              + (f" (searched {include_path})" if include_path else "") + ".")
        if fewshot_as_multiturn and not apply_chat_template:
            raise ConfigError("fewshot_as_multiturn needs apply_chat_template (few-shot turns "
                              "are chat messages).")
        check_gen_kwargs(gen_kwargs or {})
        self.tasks = list(tasks)
        self._task_dict = manager.load(self.tasks)
        self._chat = {"apply_chat_template": apply_chat_template,
                      "fewshot_as_multiturn": fewshot_as_multiturn,
                      "system_instruction": system_instruction}
        for _, task in self._tasks():
            _configure(task, num_fewshot, gen_kwargs, fewshot_seed)
        if offset < 0 or (limit is not None and limit < 1):
            raise ConfigError(f"lm_eval offset {offset} / limit {limit}: offset must be >= 0 "
                              "and limit >= 1.")
        self._limit, self._samples = limit, None
        if offset or shuffle:  # lm-eval's `samples`: explicit document indices per task
            self._samples = {name: _indices(len(task.eval_docs), offset, limit, shuffle,
                                            shuffle_seed) for name, task in self._tasks()}
            self._limit = None
        self._batch = batch_size
        self._wanted = metrics
        self._lm: Any = None
        self._lm_model_id: int | None = None
        self._reusing = False
        self._metrics = tuple(
            Metric(f"{name}/{key}", "minimize" if m in _LOWER_IS_BETTER or not hib else "maximize")
            for name, task in self._tasks()
            for m, hib in task.higher_is_better().items()
            for key in _metric_keys(m, _filters(task))
            if metrics is None or key in metrics or m in metrics)

    def _tasks(self):
        from lm_eval.api.task import Task

        def walk(node):
            if isinstance(node, Task):
                yield node.config.task, node
            elif isinstance(node, dict):
                for value in node.values():
                    yield from walk(value)

        yield from walk(self._task_dict)

    def _reuse_requests(self) -> None:
        """Build each task's requests once, not once per candidate.

        ``evaluate`` rebuilds every request from its documents on each call, compiling the
        task's Jinja templates per document: 70% of the harness's time on the zoo tasks. The
        requests (context and continuation strings) do not depend on the model, so after the
        first call each task hands back the same instances with their responses cleared.
        """
        from evomerge.compat import reuse_task_requests

        for _, task in self._tasks():
            reuse_task_requests(task)
        self._reusing = True

    @property
    def metrics(self) -> tuple[Metric, ...]:
        return self._metrics

    def _wrap(self, model: Any, tokenizer: Any) -> Any:
        if self._lm is None or self._lm_model_id != id(model):
            from lm_eval.models.huggingface import HFLM

            device = str(next(model.parameters()).device)
            self._lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self._batch,
                            device=device)
            self._lm_model_id = id(model)
            _cache_encodings(self._lm)
            # the model's chat template is data: rendered by a bounded child process
            self._lm.apply_chat_template = bounded_lm_eval_chat(self._lm)
        return self._lm

    def __call__(self, model: Any, tokenizer: Any) -> dict[str, float]:
        from lm_eval.evaluator import evaluate

        lm = self._wrap(model, tokenizer)
        results = evaluate(lm=lm, task_dict=self._task_dict, limit=self._limit,
                           samples=self._samples, bootstrap_iters=0, log_samples=False,
                           verbosity="ERROR", **self._chat)
        if not self._reusing:
            self._reuse_requests()
        out = {}
        for metric in self._metrics:
            task, name = metric.name.split("/", 1)
            res = results["results"][task]
            value = res.get(name) if "," in name else res.get(
                f"{name},none", next((v for k, v in res.items() if k.startswith(f"{name},")),
                                     None))
            out[metric.name] = float(value) if value is not None else math.nan
        return out


def _indices(n: int, offset: int, limit: int | None, shuffle: bool, seed: int) -> list[int]:
    """Document indices ``offset .. offset + limit`` of ``n``, in a seeded random order with
    ``shuffle`` (the same order for every candidate and for the held-out report)."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    picked = order[offset:None if limit is None else offset + limit]
    if len(picked) == 0:
        raise ConfigError(f"lm_eval offset {offset} leaves no document of a task with {n}.")
    return sorted(int(i) for i in picked)


# Generation settings a space may give lm-eval (they reach ``model.generate``, whose other
# keywords include ``custom_generate`` + ``trust_remote_code``: code from a directory).
GEN_KWARGS = frozenset({"until", "max_gen_toks", "max_new_tokens", "min_new_tokens",
                        "max_length", "do_sample", "temperature", "top_p", "top_k", "min_p",
                        "typical_p", "repetition_penalty", "no_repeat_ngram_size",
                        "num_beams", "length_penalty", "early_stopping"})


def check_gen_kwargs(gen_kwargs: dict[str, Any]) -> None:
    """Refuse a key outside :data:`GEN_KWARGS`, or a value that is not a number, a bool, a
    string or a list of strings."""
    for key, value in gen_kwargs.items():
        if key not in GEN_KWARGS:
            raise ConfigError(f"gen_kwargs.{key} is not a generation setting evomerge passes "
                              f"to lm-eval (only {', '.join(sorted(GEN_KWARGS))}).")
        if not (isinstance(value, (bool, int, float, str)) or (
                isinstance(value, list) and all(isinstance(v, str) for v in value))):
            raise ConfigError(f"gen_kwargs.{key} = {repr(value)[:60]} is not a number, a "
                              "bool, a string or a list of strings.")


def _configure(task: Any, num_fewshot: int | None, gen_kwargs: dict[str, Any] | None,
               seed: int) -> None:
    """Per-run task settings, as lm-eval's ``simple_evaluate`` sets them."""
    if gen_kwargs and task.get_config("output_type") == "generate_until":
        task.set_config(key="generation_kwargs", value=dict(gen_kwargs), update=True)
    if num_fewshot is not None and task.get_config("num_fewshot") != 0:
        task.set_config(key="num_fewshot", value=num_fewshot)
    elif task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=seed)


def _filters(task: Any) -> list[str]:
    """The names of a task's filter pipelines (``none`` when it has none)."""
    flist = getattr(task.config, "filter_list", None) or []
    names = [f["name"] if isinstance(f, dict) else getattr(f, "name", None) for f in flist]
    return [n for n in names if n] or ["none"]


def _metric_keys(metric: str, filters: list[str]) -> list[str]:
    """Score names of one metric: plain for an unfiltered task (``acc``), and one per
    filter otherwise (``exact_match,strict-match``)."""
    return [metric] if filters == ["none"] else [f"{metric},{f}" for f in filters]
