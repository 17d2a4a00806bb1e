"""Prompt/answer examples from lm-eval tasks' documents, for the fast ``answers`` scorer.

An lm-eval task knows how to turn a document into a prompt (``doc_to_text``), its target
(``doc_to_target``) and, for multiple choice, its choices (``doc_to_choice``); the target is
joined to the prompt by the task's ``target_delimiter`` (a space by default), as lm-eval
builds its requests. Zero-shot: few-shot contexts are lm-eval's own business (use the
``lm_eval`` evaluator for them), except for ``generate_until`` tasks, whose prompts are the
contexts lm-eval builds (description, ``num_fewshot`` examples) and whose generations the task
scores itself (:class:`~evomerge.evaluators.generative.LmEvalGeneration`).
"""

from __future__ import annotations

import logging
from typing import Any

from evomerge.errors import ConfigError

__all__ = ["task_examples", "GENERATIVE"]

GENERATIVE = "generate_until"

_SPLITS = {"validation": ("has_validation_docs", "validation_docs"),
           "test": ("has_test_docs", "test_docs"),
           "train": ("has_training_docs", "training_docs")}


def task_examples(tasks: list[str], include_path: str | list[str] | None = None,
                  split: str | None = None, limit: int | None = None,
                  num_fewshot: int = 0, generations: dict[str, Any] | None = None,
                  ) -> dict[str, list[dict[str, Any]]]:
    """Examples ``{"prompt", "answer"[, "choices"]}`` per task from ``split`` of each task
    (default: the split lm-eval evaluates, its test split if it has one). For each
    ``generate_until`` task, ``generations`` (when given) receives
    ``(task object, documents, prompts)``.

    Raises:
        ConfigError: an unknown task, a split the task lacks, or a target that is not one
            of its choices.
    """
    from lm_eval.tasks import TaskManager

    if split is not None and split not in _SPLITS:
        raise ConfigError(f"split {split!r} is not one of {', '.join(_SPLITS)}.")
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    manager = TaskManager(include_path=include_path, include_defaults=include_path is None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"Unknown lm-eval task {unknown[0]!r}"
                          + (f" (searched {include_path})" if include_path else "") + ".")
    loaded = manager.load(list(tasks))
    out = {}
    for name in tasks:
        task = _find(loaded, name)
        if split is None:
            docs = task.eval_docs
        else:
            has, read = _SPLITS[split]
            if not getattr(task, has)():
                raise ConfigError(f"lm-eval task {name!r} has no {split} split.")
            docs = getattr(task, read)()
        docs = list(docs)[:limit]
        out[name] = [_example(task, name, doc) for doc in docs]
        if task.OUTPUT_TYPE == GENERATIVE and generations is not None:
            from evomerge.compat import task_context

            contexts = [task_context(task, doc, num_fewshot) for doc in docs]
            for ex, ctx in zip(out[name], contexts):
                ex["prompt"] = ctx
            generations[name] = (task, docs, contexts)
    return out


def _find(node: Any, name: str) -> Any:
    from lm_eval.api.task import Task

    if isinstance(node, Task) and node.config.task == name:
        return node
    if isinstance(node, dict):
        for value in node.values():
            found = _find(value, name)
            if found is not None:
                return found
    return None


def _example(task: Any, name: str, doc: dict) -> dict[str, Any]:
    delim = task.config.target_delimiter if task.config.target_delimiter is not None else " "
    prompt, target = task.doc_to_text(doc), task.doc_to_target(doc)
    if task.OUTPUT_TYPE == "multiple_choice":
        choices = [delim + c for c in task.doc_to_choice(doc)]
        if isinstance(target, int):
            if not 0 <= target < len(choices):
                raise ConfigError(f"lm-eval task {name!r}: target {target} is not a choice "
                                  f"index (it has {len(choices)}).")
            answer = choices[target]
        elif delim + str(target) in choices:
            answer = delim + str(target)
        else:
            raise ConfigError(f"lm-eval task {name!r}: target {target!r} is not one of its "
                              "choices.")
        return {"prompt": prompt, "answer": answer, "choices": choices}
    if isinstance(target, list):
        target = target[0]
    return {"prompt": prompt, "answer": delim + str(target)}
