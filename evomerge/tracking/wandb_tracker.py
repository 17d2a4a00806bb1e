"""Weights & Biases: one run per study (its id kept in the study, so a resumed study
continues it with ``resume="allow"``). ``mode: offline`` writes everything under ``dir``
(``wandb sync`` uploads it later)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evomerge.tracking.base import Tracker
from evomerge.tracking.config import WandbTracking

__all__ = ["WandbTracker"]


class WandbTracker(Tracker):
    kind = "wandb"

    def __init__(self, config: WandbTracking) -> None:
        self.config = config
        self.run: Any = None

    def start(self, name: str, config: dict[str, Any], run_id: str | None) -> str:
        import wandb

        c = self.config
        if c.dir:
            Path(c.dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=c.project, entity=c.entity, mode=c.mode, dir=c.dir,
                              group=c.group, tags=c.tags or None, name=name, id=run_id,
                              resume="allow" if run_id else None, config=config,
                              reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off"))
        return self.run.id

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_files(self, files: list[Path]) -> None:
        for f in files:
            self.run.save(str(f), base_path=str(f.parent), policy="now")

    def finish(self) -> None:
        self.run.finish()
