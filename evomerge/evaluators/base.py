"""The evaluator interface: a scorer built once, called once per candidate model.

An evaluator's expensive setup (reading task files, building lm-eval task objects, encoding
batches) happens in ``__init__``; ``__call__(model, tokenizer)`` returns named scores. Each
score name has a direction in :attr:`Evaluator.metrics`, so nothing downstream flips signs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from evomerge.registry import Registry

__all__ = ["Direction", "Metric", "Evaluator", "SubsetEvaluator", "Subset", "ratio", "EVALUATORS",
           "register_evaluator", "make_evaluator"]

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


# Which examples of a task to score, and each one's weight: (indices, weights or None).
Subset = tuple[Any, Any]


class SubsetEvaluator(Evaluator):
    """An evaluator whose every score is a ratio of per-example sums,
    ``sum_i w_i num_i / sum_i w_i den_i`` (a mean: ``den_i = 1``; NLL per token: ``num_i`` the
    example's NLL, ``den_i`` its token count), so it can score any subset of its examples,
    weighted. Multi-fidelity scores nested random subsets (weights 1); subset estimation
    scores anchor examples weighted by the share of examples each one stands for."""

    @abstractmethod
    def sizes(self) -> dict[str, int]:
        """Number of examples per task."""

    @abstractmethod
    def example_stats(self, model: Any, tokenizer: Any, task: str,
                      indices: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per metric (the name after ``task/``): per-example ``(num, den)`` of ``indices``."""

    def score(self, model: Any, tokenizer: Any, subset: dict[str, Subset] | None = None,
              per_example: bool = False) -> tuple[dict[str, float], dict[str, list[float]],
                                                  dict[str, tuple[list[float], list[float]]]]:
        """Scores over ``subset`` (task -> (indices, weights); a task not named: all of its
        examples, weight 1); each score's weighted totals ``[sum w num, sum w den]`` (scores
        of disjoint subsets combine by adding them); with ``per_example`` each metric's
        per-example (num, den)."""
        scores: dict[str, float] = {}
        totals: dict[str, list[float]] = {}
        stats: dict[str, tuple[list[float], list[float]]] = {}
        for task, n in self.sizes().items():
            idx, w = (subset or {}).get(task, (None, None))
            idx = np.arange(n) if idx is None else np.asarray(idx, dtype=np.int64)
            w = np.ones(len(idx)) if w is None else np.asarray(w, dtype=np.float64)
            for metric, (num, den) in self.example_stats(model, tokenizer, task, idx).items():
                key = f"{task}/{metric}"
                totals[key] = [float(np.dot(w, num)), float(np.dot(w, den))]
                scores[key] = ratio(*totals[key])
                if per_example:
                    stats[key] = (np.asarray(num).tolist(), np.asarray(den).tolist())
        return scores, totals, stats

    def __call__(self, model: Any, tokenizer: Any) -> dict[str, float]:
        return self.score(model, tokenizer)[0]


def ratio(num: float, den: float) -> float:
    """A score from its totals (0 for an empty subset)."""
    return num / den if den else 0.0


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
