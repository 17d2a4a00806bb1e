"""The ask/tell contract every optimizer meets (:class:`Optimizer`) and what it proposes
(:class:`Proposal`); the registry and the built-in optimizers are in
:mod:`evomerge.search.optimizers`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Proposal", "Optimizer"]


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
