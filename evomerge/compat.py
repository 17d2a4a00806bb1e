"""The few private APIs of other libraries evomerge relies on, each behind one helper that
checks the installed version against the range it was tested with (the same ranges are pinned
in ``pyproject.toml``), so an upgrade fails with a sentence, not an AttributeError mid-search.

* Optuna: setting user attributes on a trial the study only hands out frozen (a RUNNING trial
  left by a killed driver) goes through ``Study._storage``.
* lm-eval: reusing a task's built requests (``Task._instances``) and caching ``HFLM``'s
  tokenization (``HFLM._encode_pair``) between candidates; a task's filter pipelines
  (``Task._filters``) applied to generations made outside lm-eval.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

from evomerge.errors import EvomergeError

__all__ = ["SUPPORTED", "require", "set_trial_attr", "reuse_task_requests", "wrap_encode_pair",
           "task_filters", "task_context"]

# distribution -> [lowest tested, first untested) ; keep in step with pyproject.toml
SUPPORTED = {"optuna": ("4.0", "6"), "lm_eval": ("0.4.3", "0.5")}


def require(dist: str, what: str) -> None:
    """Raise unless the installed ``dist`` is within :data:`SUPPORTED`."""
    from packaging.version import Version

    lo, hi = SUPPORTED[dist]
    installed = metadata.version(dist)
    if not Version(lo) <= Version(installed) < Version(hi):
        raise EvomergeError(f"{what} relies on {dist} internals tested with {lo} <= version < "
                            f"{hi}, and {dist} {installed} is installed: pip install "
                            f"'{dist}>={lo},<{hi}'.")


def set_trial_attr(study: Any, trial: Any, key: str, value: Any) -> None:
    """``trial.set_user_attr`` for a frozen trial of ``study`` (what ``Trial.set_user_attr``
    does, through the study's storage)."""
    require("optuna", "Marking interrupted trials")
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def reuse_task_requests(task: Any) -> None:
    """Make ``task`` hand back the requests it built last time, responses cleared, instead of
    building them again from its documents (the requests do not depend on the model)."""
    require("lm_eval", "Reusing lm-eval requests between candidates")
    instances = list(task.instances)

    def build_all_requests(*_args: Any, **_kwargs: Any) -> None:
        for inst in instances:
            inst.resps = []
            inst.filtered_resps = {}
        task._instances = instances

    task.build_all_requests = build_all_requests


def wrap_encode_pair(lm: Any, wrap: Callable[[Callable], Callable]) -> None:
    """Replace ``HFLM._encode_pair`` (context/continuation tokenization) by ``wrap(it)``."""
    require("lm_eval", "Caching lm-eval tokenization between candidates")
    lm._encode_pair = wrap(lm._encode_pair)


def task_filters(task: Any) -> list[tuple[str, list[Callable[[], Any]]]]:
    """A task's filter pipelines: (name, filter factories applied in order), as its
    ``FilterEnsemble`` objects hold them (``none`` with ``take_first`` when it sets none)."""
    require("lm_eval", "Scoring generations with an lm-eval task's filters")
    return [(ens.name, list(ens.filters)) for ens in task._filters]


def task_context(task: Any, doc: dict, num_fewshot: int) -> str:
    """The prompt lm-eval builds for ``doc`` (description, few-shot examples, the document,
    a generation prefix where the task has one), without a chat template."""
    import inspect

    require("lm_eval", "Building lm-eval prompts")
    kwargs = {}
    if "gen_prefix" in inspect.signature(task.fewshot_context).parameters and hasattr(
            task, "doc_to_prefix"):
        kwargs["gen_prefix"] = task.doc_to_prefix(doc)
    return task.fewshot_context(doc, num_fewshot, **kwargs)
