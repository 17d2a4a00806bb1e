"""Tables for the terminal (rich)."""

from __future__ import annotations

from evomerge.evaluators import Evaluator

__all__ = ["print_scores"]


def print_scores(title: str, scores: dict[str, float], evaluator: Evaluator | None = None) -> None:
    """One row per task, one column per metric (with its direction)."""
    from rich.console import Console
    from rich.table import Table

    from evomerge.scoring import nested_scores

    tasks = nested_scores(scores)
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


def print_outcome(outcome) -> None:
    """The end-of-search summary: what stopped it, where results are, how to go on."""
    from rich.console import Console

    c = Console()
    why = {"budget": "budget reached", "wall_time": "wall-time budget reached",
           "interrupted": "interrupted", "exhausted": "the optimizer only proposed duplicates"}
    c.print(f"[bold]Study {outcome.study}[/]: {outcome.evaluations} evaluations "
            f"({outcome.failed} failed); stopped: {why.get(outcome.stopped, outcome.stopped)}.")
    c.print(f"Pareto front: {outcome.results_dir}/pareto.json, pareto.csv, pareto.png, "
            "pareto.html")
    from evomerge.search.ledger import default_storages

    # a default file is found by the study's name; any other storage must be named
    storage = "" if outcome.storage in default_storages(outcome.study,
                                                        outcome.results_dir.parent) else \
        f" --storage {outcome.storage}"
    c.print(f"Resume:  evomerge resume {outcome.study}{storage}")
    c.print(f"Inspect: evomerge front {outcome.study}{storage}   |   "
            f"evomerge report {outcome.study}{storage}")
    c.print(f"Export:  evomerge export {outcome.study}{storage} --pareto 0 -o recipe.yaml   "
            "(or --best, --trial N)")


def print_status(name: str, info: dict) -> None:
    from rich.console import Console

    c = Console()
    c.print(f"[bold]{name}[/]: {info['evaluations']}/{info['budget']} evaluations "
            f"({info['complete']} complete, {info['failed']} failed"
            + (f", {info['pruned']} pruned" if info.get("pruned") else "")
            + f"), {info['running']} running, "
            f"{info['duplicates']} duplicates skipped, {info['interrupted']} interrupted")
    if "best" in info:
        scores = ", ".join(f"{k}={v:.4f}" for k, v in info["best"].items())
        c.print(f"best (weighted loss): trial {info['best_trial']}: {scores}")


def print_slurm_status(name: str, info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Slurm jobs of {name}")
    for col in ("job", "state", "reason", "run time", "restarts", "nodes"):
        table.add_column(col)
    for j in info["jobs"]:
        table.add_row(j["job_id"], j.get("JobState", "?"), j.get("Reason", ""),
                      j.get("RunTime", ""), j.get("Restarts", ""), j.get("NodeList", ""))
    Console().print(table)
    print_status(name, info)


def print_front(name: str, front: list, space) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Pareto front of {name} ({len(front)} points)")
    table.add_column("#", justify="right")
    table.add_column("trial", justify="right")
    for o in space.objectives:
        table.add_column(f"{o.key} {'↑' if o.direction == 'maximize' else '↓'}", justify="right")
    for i, t in enumerate(front):
        table.add_row(str(i), str(t.number), *(f"{v:.4f}" for v in t.values))
    Console().print(table)
