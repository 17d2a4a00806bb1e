"""The benchmark-gaming guard: a warning when a space searches on a common benchmark's test set.

A search tunes the merge to the very examples it is scored on, so a benchmark's score read
from the searched examples says little about the benchmark. mergekit-evolve refuses such
tasks unless a flag is given; evomerge warns, for every space, when an lm-eval task whose
name starts like a common benchmark's (``arc_``, ``hellaswag``, ``mmlu``, ...; a ``_train``
task is fine) is searched and the evaluator has no ``test`` block that reads other
documents (another split, other tasks, or a disjoint ``offset``/``limit`` window)::

    harness: {type: lm_eval, tasks: [arc_easy], shuffle: true, limit: 500,
              test: {offset: 500, limit: null}}      # search on 500, report on the rest
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["BENCHMARK_PREFIXES", "benchmark_tasks", "benchmark_warnings", "warn_benchmarks"]

log = logging.getLogger(__name__)

# mergekit-evolve's list, plus the Open LLM Leaderboard's and the code benchmarks' names.
BENCHMARK_PREFIXES = (
    "mmlu", "hendrycks", "agieval", "gsm8k", "hellaswag", "winogrande", "arc_", "ai2_arc",
    "truthfulqa", "bigbench", "piqa", "openbookqa", "leaderboard",
    "ifeval", "bbh", "gpqa", "minerva_math", "musr", "humaneval", "mbpp",
)
# Options that choose which documents an evaluator reads.
_DOC_KEYS = ("tasks", "lm_eval_tasks", "split", "offset", "limit", "shuffle", "shuffle_seed",
             "files")
_warned: set[tuple[str, str]] = set()


def benchmark_tasks(tasks: list[str]) -> list[str]:
    """The tasks among ``tasks`` named like a common benchmark's test set."""
    return [t for t in tasks if t.startswith(BENCHMARK_PREFIXES) and not t.endswith("_train")]


def _held_out(options: Mapping[str, Any]) -> bool:
    """Whether the ``test`` block reads documents the search does not: another split or
    task list, or an offset window past the searched one."""
    test = options.get("test")
    if not isinstance(test, Mapping):
        return False
    if any(k in test and test[k] != options.get(k) for k in ("tasks", "lm_eval_tasks", "split",
                                                              "files")):
        return True
    if test.get("shuffle", options.get("shuffle")) != options.get("shuffle") or \
            test.get("shuffle_seed", options.get("shuffle_seed")) != options.get("shuffle_seed"):
        return False  # another order: the windows may overlap
    start, limit = int(options.get("offset") or 0), options.get("limit")
    test_start = int(test.get("offset", start) or 0)
    test_limit = test.get("limit", limit)
    if limit is not None and test_start >= start + int(limit):
        return True
    return test_limit is not None and test_start + int(test_limit) <= start


def _findings(evaluators: Mapping[str, Any], objectives: list[Any]):
    """(evaluator, task) pairs searched on a benchmark's test set without held-out documents."""
    for name, cfg in evaluators.items():
        opts = cfg.options()
        if cfg.type == "lm_eval":
            tasks = list(opts.get("tasks") or
                         [o.task for o in objectives if o.evaluator == name])
        elif cfg.type == "answers" and opts.get("split") != "train":
            tasks = list(opts.get("lm_eval_tasks") or [])
        else:
            continue
        if not _held_out(opts):
            yield from ((name, task) for task in benchmark_tasks(tasks))


def benchmark_warnings(evaluators: Mapping[str, Any], objectives: list[Any]) -> list[str]:
    """One sentence per (evaluator, benchmark task) searched without held-out documents.

    ``evaluators``: name -> config with ``type`` and ``options()`` (a space's evaluators);
    ``objectives``: the space's objectives (their ``evaluator`` and ``task``)."""
    return [_message(name, task) for name, task in _findings(evaluators, objectives)]


def _message(name: str, task: str) -> str:
    return (f"evaluators.{name} searches on lm-eval task {task!r}, a common benchmark's test "
            "set: the merge is tuned to the examples its score is read from. Search on another "
            "split or subset and report on held-out documents (a 'test' block, e.g. "
            "{offset: 500} after limit: 500; docs/migrating_from_mergekit_evolve.md).")


def warn_benchmarks(evaluators: Mapping[str, Any], objectives: list[Any]) -> list[str]:
    """Log :func:`benchmark_warnings` once per process and (evaluator, task); returns them."""
    found = list(_findings(evaluators, objectives))
    for key in found:
        if key not in _warned:
            _warned.add(key)
            log.warning(_message(*key))
    return [_message(*key) for key in found]
