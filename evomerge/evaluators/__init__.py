"""Evaluators: score a candidate model; each score carries its direction."""

from evomerge.evaluators import answers, harness, python, text, zoo  # noqa: F401  (registers)
from evomerge.evaluators.base import (
    EVALUATORS,
    Direction,
    Evaluator,
    Metric,
    make_evaluator,
    register_evaluator,
)

__all__ = ["EVALUATORS", "Direction", "Evaluator", "Metric", "make_evaluator",
           "register_evaluator"]
