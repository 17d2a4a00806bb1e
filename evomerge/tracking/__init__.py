"""Experiment trackers (MLflow, Weights & Biases, trackio): each tracker's options
(:mod:`.config`), the sink interface (:mod:`.base`) and one module per tracker. The search
feeds them through :class:`evomerge.search.tracking.StudyTracking`."""

from evomerge.tracking.base import Tracker
from evomerge.tracking.config import TRACKERS, TrackingConfig, parse_track
from evomerge.tracking.registry import make_tracker

__all__ = ["Tracker", "make_tracker", "TrackingConfig", "TRACKERS", "parse_track"]
