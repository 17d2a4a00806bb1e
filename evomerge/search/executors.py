"""Executors run candidates: ``submit`` a recipe, collect results with ``next_result``.

:class:`InlineExecutor` (``--workers 0``) evaluates in this process, one at a time; it is the
reference the Ray executor (resident-model actors on a cluster) must agree with.
"""

from __future__ import annotations

from collections import deque

from evomerge.search.space import SearchSpace
from evomerge.search.worker import CandidateResult, Worker

__all__ = ["InlineExecutor"]


class InlineExecutor:
    """In-process execution.

    >>> # ex = InlineExecutor(space); ex.submit(0, recipe_yaml); ex.next_result().values
    """

    capacity = 1

    def __init__(self, space: SearchSpace, device: str | None = None) -> None:
        self.worker = Worker(space, device)
        self._done: deque[CandidateResult] = deque()

    def submit(self, trial: int, recipe_yaml: str) -> None:
        self._done.append(self.worker.run(trial, recipe_yaml))

    def next_result(self) -> CandidateResult:
        if not self._done:
            raise RuntimeError("next_result() called with nothing submitted")
        return self._done.popleft()

    def close(self) -> None:
        self._done.clear()
