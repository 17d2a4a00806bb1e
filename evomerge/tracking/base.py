"""The tracker interface: a sink for one study's run (start or continue, metrics, files,
finish)."""

from __future__ import annotations

import contextlib
import io
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["Tracker", "flatten", "quiet"]


class Tracker(ABC):
    """One study's run in an experiment tracker.

    Contract: :meth:`start` is called once, first; it continues the run ``run_id`` when given
    (a resumed study) and returns the run's id, which the study keeps. The other methods may
    raise: the caller (:class:`evomerge.search.tracking.StudyTracking`) turns any failure into
    one warning and stops calling the tracker, so no tracker can stop a search.
    """

    kind = "tracker"

    @abstractmethod
    def start(self, name: str, config: dict[str, Any], run_id: str | None) -> str:
        """Start run ``name`` with ``config`` (the space and its genome), or continue
        ``run_id``; returns the run's id."""

    @abstractmethod
    def log(self, metrics: dict[str, float], step: int) -> None:
        """Numbers at ``step`` (the study's count of finished trials, never decreasing)."""

    @abstractmethod
    def log_files(self, files: list[Path]) -> None:
        """Attach files to the run (recipes, front, trials table); a newer copy replaces."""

    @abstractmethod
    def finish(self) -> None:
        """End the run (a resumed study continues it later)."""


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keep a tracker library's own prints ("View run at ...") off the search's output."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}`` (a tracker's flat parameter table)."""
    if isinstance(data, dict):
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): str(data)}
