"""Arguments shared by the commands that run a search (search, resume, slurm submit/resume)."""

from __future__ import annotations

import argparse

__all__ = ["track_arg"]


def track_arg(p: argparse.ArgumentParser) -> None:
    """``--track``: an experiment tracker for this run (also the space's ``tracking:``)."""
    p.add_argument("--track", default=None, metavar="TRACKER",
                   help="log the search to mlflow, wandb or trackio (its defaults), or a YAML "
                        "mapping: \"{type: mlflow, tracking_uri: URL}\" (docs/trackers.md)")
