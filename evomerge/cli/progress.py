"""Terminal progress bars (rich), kept out of the library code paths."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["progress_bar"]


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """Yield ``update(done, total)``; draws a rich bar on stderr when enabled."""
    if not enabled:
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@contextmanager
def stage_bar(enabled: bool = True, verb: str = "training"
              ) -> Iterator[Callable[[str, int, int], None]]:
    """Yield ``update(stage, done, total)``: one bar per named stage (e.g. training runs)."""
    if not enabled:
        yield lambda stage, done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True)) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(f"{verb} {stage}", total=total)
            bar.update(tasks[stage], completed=done)

        yield update


@contextmanager
def search_bar(enabled: bool = True) -> Iterator[Callable[[dict], None]]:
    """Yield ``update(info)`` for the search loop: trials done / budget, failures, best
    weighted loss, evaluations per minute."""
    if not enabled:
        yield lambda info: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  "{task.fields[stats]}", TimeElapsedColumn(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task("search", total=None, stats="")

        def update(info: dict) -> None:
            rate = 60 * info.get("new", info["done"]) / max(info["elapsed"], 1e-9)
            best = info.get("best")
            stats = (f"failed {info['failed']}  best loss "
                     f"{best:.4f}  {rate:.1f} eval/min" if best is not None else
                     f"failed {info['failed']}  {rate:.1f} eval/min")
            bar.update(task, completed=info["done"], total=info["budget"], stats=stats)

        yield update
