"""What a study says about itself to tools that open Optuna studies (optuna-dashboard):
the objectives' names (``study.set_metric_names``), a description in words (a study user
attribute every viewer lists), and optuna-dashboard's note (Markdown on the study's page)
when optuna-dashboard is installed (``pip install 'evomerge[dashboard]'``)."""

from __future__ import annotations

import logging
import warnings
from typing import Any

from evomerge.search.gene import Genome
from evomerge.search.records import StudyRecord
from evomerge.search.space import SearchSpace

__all__ = ["describe", "annotate_study"]

log = logging.getLogger(__name__)


def describe(name: str, space: SearchSpace, genome: Genome, budget: int | None = None) -> str:
    """The study in words (Markdown): what is merged, searched and scored, how to use it."""
    what = (f"data-flow paths (DFS) over {', '.join(space.models)}" if space.dfs is not None
            else f"{', '.join(m.name for m in space.methods) or 'layer swaps'} merges of "
                 f"{', '.join(space.models)} on base `{space.base_model}`")
    objectives = "\n".join(f"- `{o.key}` ({o.direction}, evaluator `{o.evaluator}`)"
                           for o in space.objectives)
    return (f"evomerge study **{name}**: {what}; {genome.dim} genes, optimizer "
            f"`{space.optimizer.name}`, budget {budget or space.budget.trials} evaluations.\n\n"
            f"Objectives (values 0, 1, ... in this order):\n{objectives}\n\n"
            "Each trial's user attributes hold its merge recipe as YAML text (`recipe`, "
            "mergekit-compatible), every evaluator score (`scores`) and its timings. Export a "
            f"trial: `evomerge export {name} --trial N -o recipe.yaml` (or `--model-dir DIR`).")


def annotate_study(study: Any, space: SearchSpace, genome: Genome) -> None:
    """Name the objectives and describe the study (idempotent; cheap on resume)."""
    names = [o.key for o in space.objectives]
    if study.metric_names != names:
        with warnings.catch_warnings():  # Optuna marks set_metric_names experimental
            warnings.simplefilter("ignore")
            study.set_metric_names(names)
    record = StudyRecord(study)
    text = describe(study.study_name, space, genome, record.budget)
    if record.description != text:
        record.set_description(text)
        _dashboard_note(study, text)


def _dashboard_note(study: Any, text: str) -> None:
    try:
        from optuna_dashboard import save_note
    except ImportError:  # optional: the description attribute says the same
        return
    try:
        save_note(study, text)
    except Exception as exc:  # noqa: BLE001 -- a note is never worth stopping a search
        log.warning("Could not write the study's optuna-dashboard note (%s).", exc)
