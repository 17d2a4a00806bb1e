"""Build a tracker from its options (the ``type`` of a ``tracking:`` block)."""

from __future__ import annotations

from typing import Any

from evomerge.tracking.base import Tracker
from evomerge.tracking.mlflow_tracker import MlflowTracker
from evomerge.tracking.trackio_tracker import TrackioTracker
from evomerge.tracking.wandb_tracker import WandbTracker

__all__ = ["make_tracker", "TRACKER_CLASSES"]

TRACKER_CLASSES: dict[str, type[Tracker]] = {
    "mlflow": MlflowTracker, "wandb": WandbTracker, "trackio": TrackioTracker}


def make_tracker(config: Any) -> Tracker:
    """The tracker of ``config`` (a :data:`~evomerge.tracking.config.TrackingConfig`); its
    library is imported when the run starts, so a missing extra fails there (one warning)."""
    return TRACKER_CLASSES[config.type](config)
