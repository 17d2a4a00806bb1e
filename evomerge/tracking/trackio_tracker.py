"""trackio: one run per study in trackio's local store (``trackio show`` opens its
dashboard); the run is named by the study and continued by that name on resume; files are
trackio artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evomerge.tracking.base import Tracker, quiet
from evomerge.tracking.config import TrackioTracking

__all__ = ["TrackioTracker"]


class TrackioTracker(Tracker):
    kind = "trackio"

    def __init__(self, config: TrackioTracking) -> None:
        self.config = config
        self.run: Any = None

    def start(self, name: str, config: dict[str, Any], run_id: str | None) -> str:
        import trackio

        with quiet():
            self.run = trackio.init(project=self.config.project, name=run_id or name,
                                    config=config, space_id=self.config.space_id,
                                    resume="allow")
        return self.run.name

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_files(self, files: list[Path]) -> None:
        for f in files:  # an artifact per file, named after the run; a newer one replaces it
            self.run.log_artifact(f, overwrite=True)

    def finish(self) -> None:
        with quiet():
            self.run.finish()
