"""Executors run candidates: ``submit`` a recipe, collect results with ``next_result``.

:class:`InlineExecutor` (``--workers 0``) evaluates in this process, one at a time; it is the
reference the Ray executor (resident-model actors on a cluster) must agree with.
"""

from __future__ import annotations

import contextlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import torch

from evomerge.errors import ConfigError
from evomerge.search.space import SearchSpace
from evomerge.search.worker import CandidateResult, Merged, Worker

__all__ = ["Executor", "InlineExecutor", "OverlapExecutor", "check_overlap"]


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


def check_overlap(space: SearchSpace) -> None:
    """Overlapped merging needs merged candidates (checked before the study is touched).

    Raises:
        ConfigError: a data-flow space (its candidates are path models, never merged).
    """
    if space.dfs is not None:
        raise ConfigError("Overlapped merging applies to merged candidates; a data-flow "
                          "space scores path models, which are not merged: drop --overlap.")


class OverlapExecutor:
    """In-process execution with two output models: while the driver's oldest candidate is
    scored here, the next one is merged into the other model by a background thread (on a
    CUDA stream of its own), so the device does not wait for the merge between candidates.
    It costs one more model copy in memory; scores are the same as :class:`InlineExecutor`'s.

    >>> # ex = OverlapExecutor(space); ex.submit(0, a); ex.submit(1, b); ex.next_result()

    Raises:
        ConfigError: a data-flow space (its candidates are not merged, nothing to overlap).
    """

    capacity = 2

    def __init__(self, space: SearchSpace, device: str | None = None) -> None:
        check_overlap(space)
        self.worker = Worker(space, device)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="evomerge-merge")
        dev = self.worker.device
        self._stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None
        self._free = [0, 1]
        self._pending: deque[tuple[int, Future, dict | None, int]] = deque()

    def _merge(self, recipe_yaml: str, slot: int) -> Merged:
        ctx = torch.cuda.stream(self._stream) if self._stream else contextlib.nullcontext()
        with ctx:  # Worker.merge waits for this stream before it returns
            return self.worker.merge(recipe_yaml, slot)

    def submit(self, trial: int, recipe_yaml: str, job: dict | None = None) -> None:
        if not self._free:
            raise RuntimeError("submit() with two candidates in flight (capacity is 2)")
        slot = self._free.pop(0)
        self._pending.append((trial, self._pool.submit(self._merge, recipe_yaml, slot), job,
                              slot))

    def next_result(self) -> CandidateResult:
        if not self._pending:
            raise RuntimeError("next_result() called with nothing submitted")
        trial, future, job, slot = self._pending.popleft()
        result = self.worker.score(trial, future.result(), job=job)
        if self.worker.device.type == "cuda":  # scoring done on the device: slot reusable
            torch.cuda.current_stream(self.worker.device).synchronize()
        self._free.append(slot)
        return result

    def close(self) -> None:
        for pending in self._pending:
            pending[1].cancel()
        self._pending.clear()
        self._free = [0, 1]
        self._pool.shutdown(wait=True)
