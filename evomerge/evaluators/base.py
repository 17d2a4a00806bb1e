"""The evaluator interface: a scorer built once, called once per candidate model.

An evaluator's expensive setup (reading task files, building lm-eval task objects, encoding
batches) happens in ``__init__``; ``__call__(model, tokenizer)`` returns named scores. Each
score name has a direction in :attr:`Evaluator.metrics`, so nothing downstream flips signs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

from evomerge.registry import Registry

__all__ = ["Direction", "Metric", "Evaluator", "EVALUATORS", "register_evaluator",
           "make_evaluator"]

Direction = Literal["maximize", "minimize"]


@dataclass(frozen=True)
class Metric:
    """A score an evaluator returns: its name (``task/metric``) and which way is better."""

    name: str
    direction: Direction


class Evaluator(ABC):
    """Scores a model. Subclasses set up once in ``__init__`` and are called per candidate."""

    @property
    @abstractmethod
    def metrics(self) -> tuple[Metric, ...]:
        """Every score ``__call__`` returns, with its direction."""

    @abstractmethod
    def __call__(self, model: Any, tokenizer: Any) -> dict[str, float]:
        """Score ``model`` (a ``PreTrainedModel`` in eval mode); keys are metric names."""

    def direction(self, name: str) -> Direction:
        for m in self.metrics:
            if m.name == name:
                return m.direction
        raise KeyError(name)


EVALUATORS: Registry[type[Evaluator]] = Registry("evaluator")


def register_evaluator(name: str):
    """Class decorator adding an evaluator to :data:`EVALUATORS` under ``name``."""

    def deco(cls: type[Evaluator]) -> type[Evaluator]:
        EVALUATORS.add(name, cls)
        return cls

    return deco


def make_evaluator(kind: str, /, **options: Any) -> Evaluator:
    """Build the evaluator registered as ``kind`` (an unknown name lists the valid ones);
    ``options`` may include one called ``name``."""
    return EVALUATORS.get(kind)(**options)
