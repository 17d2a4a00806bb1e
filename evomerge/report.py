"""Tables for the terminal (rich)."""

from __future__ import annotations

from evomerge.evaluators import Evaluator

__all__ = ["print_scores"]


def print_scores(title: str, scores: dict[str, float], evaluator: Evaluator | None = None) -> None:
    """One row per task, one column per metric (with its direction)."""
    from rich.console import Console
    from rich.table import Table

    tasks: dict[str, dict[str, float]] = {}
    for name, value in scores.items():
        task, _, metric = name.partition("/")
        tasks.setdefault(task, {})[metric] = value
    metrics = list(dict.fromkeys(m for row in tasks.values() for m in row))
    table = Table(title=title)
    table.add_column("task")
    for m in metrics:
        arrow = ""
        if evaluator is not None:
            first = next(f"{t}/{m}" for t in tasks if m in tasks[t])
            arrow = " ↑" if evaluator.direction(first) == "maximize" else " ↓"
        table.add_column(m + arrow, justify="right")
    for task, row in tasks.items():
        table.add_row(task, *(f"{row[m]:.4f}" if m in row else "" for m in metrics))
    Console().print(table)
