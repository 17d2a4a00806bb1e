"""The ask/tell contract every optimizer meets (:class:`Optimizer`), what it proposes
(:class:`Proposal`), and the sampler through which an optimizer's own points reach Optuna
(:class:`FixedSampler`); the registry and the built-in optimizers are in
:mod:`evomerge.search.optimizers`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.samplers import BaseSampler

__all__ = ["Proposal", "Optimizer", "FixedSampler"]


@dataclass(frozen=True)
class Proposal:
    """A candidate to evaluate.

    Attributes:
        params: named gene values; ``None`` lets the study's sampler choose (Optuna).
        attrs: stored as trial user attributes (the optimizer's bookkeeping).
    """

    params: dict[str, Any] | None
    attrs: dict[str, Any] = field(default_factory=dict)


class Optimizer(ABC):
    """Ask/tell contract.

    ``ask()`` returns the next proposal, or ``None`` when nothing can be proposed until
    pending results are told (a CMA-ES generation barrier). ``tell(attrs, values)`` reports
    a finished proposal: objective values in objective order, or ``None`` if it failed.
    ``restore(trials)`` rebuilds the state from the study's finished trials.
    """

    sampler: Any
    # True: ask() returns the parameters itself and the study's sampler is a FixedSampler;
    # False: the study's sampler draws them (Proposal.params is None).
    proposes: bool = False

    @abstractmethod
    def ask(self) -> Proposal | None: ...

    @abstractmethod
    def tell(self, attrs: dict[str, Any], values: Sequence[float] | None) -> None: ...

    def restore(self, trials: Sequence[Any],  # noqa: B027 -- optional hook
                checkpoint: dict[str, Any] | None = None) -> None:
        """Rebuild state from finished trials and the last :meth:`checkpoint` stored in the
        study (default: the sampler keeps its state in the study)."""

    def checkpoint(self) -> dict[str, Any] | None:
        """JSON state to store in the study after a tell, or None (nothing new to store)."""
        return None


class FixedSampler(BaseSampler):
    """An Optuna sampler that samples exactly the parameters it was given for the next trial:
    how an optimizer that proposes its own points (CMA-ES) reaches Optuna, without enqueued
    trials that a driver killed between enqueue and ask would leave waiting."""

    def __init__(self) -> None:
        self._next: dict[str, Any] = {}

    def fix(self, params: dict[str, Any]) -> None:
        """The parameters of the next asked trial."""
        self._next = dict(params)

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: Any, trial: Any, search_space: dict) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        if name not in self._next:
            raise RuntimeError(f"FixedSampler has no value for parameter {name!r}")
        return self._next[name]
