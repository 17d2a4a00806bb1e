"""Arguments shared by the commands that run a search (search, resume, slurm submit/resume)."""

from __future__ import annotations

import argparse
import math

__all__ = ["track_arg", "whole", "amount"]


def whole(low: int, high: int | None = None):
    """An argparse type: a whole number in [low, high] (an error naming the range otherwise,
    which argparse turns into one line and exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{text!r} must be {span}")
        return value
    return parse


def amount(positive: bool = False):
    """An argparse type: a finite number, >= 0 (or > 0 with ``positive``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(
                f"{text!r} must be a finite number, {'above' if positive else 'at least'} 0")
        return value
    return parse


def track_arg(p: argparse.ArgumentParser) -> None:
    """``--track``: an experiment tracker for this run (also the space's ``tracking:``)."""
    p.add_argument("--track", default=None, metavar="TRACKER",
                   help="log the search to mlflow, wandb or trackio (its defaults), or a YAML "
                        "mapping: \"{type: mlflow, tracking_uri: URL}\" (docs/trackers.md)")
