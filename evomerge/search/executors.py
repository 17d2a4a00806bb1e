"""Executors run candidates: ``submit`` a recipe, collect results with ``next_result``.

:class:`InlineExecutor` (``--workers 0``) evaluates in this process, one at a time; it is the
reference the Ray executor (resident-model actors on a cluster) must agree with.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol, runtime_checkable

from evomerge.search.space import SearchSpace
from evomerge.search.worker import CandidateResult, Worker

__all__ = ["Executor", "InlineExecutor"]


@runtime_checkable
class Executor(Protocol):
    """What the search loop needs from an executor.

    Contract: at most ``capacity`` candidates are in flight; every ``submit`` is answered by
    exactly one :class:`CandidateResult` from ``next_result`` (a failing candidate is a result
    with its error, never an exception); ``close`` stops all work and leaves nothing running.
    """

    capacity: int

    def submit(self, trial: int, recipe_yaml: str, job: dict | None = None) -> None:
        """Start evaluating one candidate recipe (YAML) for ``trial``; ``job`` says which
        examples to score (:meth:`Worker.run`)."""

    def next_result(self) -> CandidateResult:
        """Block until a submitted candidate finishes; results come in completion order."""

    def close(self) -> None:
        """Release workers; safe to call twice."""


class InlineExecutor:
    """In-process execution.

    >>> # ex = InlineExecutor(space); ex.submit(0, recipe_yaml); ex.next_result().values
    """

    capacity = 1

    def __init__(self, space: SearchSpace, device: str | None = None) -> None:
        self.worker = Worker(space, device)
        self._done: deque[CandidateResult] = deque()

    def submit(self, trial: int, recipe_yaml: str, job: dict | None = None) -> None:
        self._done.append(self.worker.run(trial, recipe_yaml, job=job))

    def next_result(self) -> CandidateResult:
        if not self._done:
            raise RuntimeError("next_result() called with nothing submitted")
        return self._done.popleft()

    def close(self) -> None:
        self._done.clear()
