"""Proposals: the optimizer's next candidate, opened as a trial, decoded to a recipe, and
checked against every recipe already evaluated (the same model is never evaluated twice:
a duplicate is told the original's values and does not count)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from evomerge.errors import ConfigError
from evomerge.search.gene import Genome, recipe_hash
from evomerge.search.ledger_writer import LedgerWriter
from evomerge.search.optimizers import Optimizer
from evomerge.search.records import T, TrialRecord

__all__ = ["Flight", "Proposals", "MAX_DUPLICATES_IN_A_ROW"]

MAX_DUPLICATES_IN_A_ROW = 200  # the optimizer has converged onto evaluated recipes: stop


@dataclass
class Flight:
    """A candidate in flight: its trial, optimizer attributes, recipe, and rungs so far."""

    trial: Any
    attrs: dict
    hash: str
    recipe: str
    rung: int | None = None           # the rung being scored (None: no fidelity ladder)
    examples: int = 0                 # examples scored over its rungs
    rungs: list = field(default_factory=list)
    totals: dict = field(default_factory=dict)  # per score: [sum num, sum den] over its rungs


class Proposals:
    """Asks ``optimizer`` for candidates and opens them in the study through ``writer``.

    Args:
        study_name: written into each recipe's provenance.
    """

    def __init__(self, optimizer: Optimizer, genome: Genome, writer: LedgerWriter,
                 study_name: str) -> None:
        self.optimizer, self.genome, self.writer = optimizer, genome, writer
        self.study_name = study_name
        # recipe hash -> (trial, told values, rung where it was pruned or None)
        self.cache: dict[str, tuple[int, tuple[float, ...] | None, int | None]] = {}
        self.duplicates_in_a_row = 0

    @property
    def exhausted(self) -> bool:
        return self.duplicates_in_a_row > MAX_DUPLICATES_IN_A_ROW

    def remember(self, rec: TrialRecord) -> None:
        """Add a finished, evaluated (not duplicate) trial to the duplicate cache."""
        if rec.recipe_hash and not rec.is_duplicate:
            pruned = rec.fidelity_rung if rec.state == "PRUNED" else None
            self.cache[rec.recipe_hash] = (rec.number, rec.told_values, pruned)

    def evaluated(self, flight: Flight, values: tuple[float, ...] | None,
                  pruned: int | None) -> None:
        """A candidate's final result: cached, and the duplicate streak broken."""
        self.cache[flight.hash] = (flight.trial.number, values, pruned)
        self.duplicates_in_a_row = 0

    def next(self) -> Flight | str | None:
        """The next candidate to evaluate, or what became of one recorded without an
        evaluation: ``"failed"`` (it decodes to no model; a failed evaluation) or
        ``"duplicate"``; None when the optimizer has nothing to propose until pending results
        are told."""
        prop = self.optimizer.ask()
        if prop is None:
            return None
        trial = self.writer.open(prop.params, prop.attrs)
        attrs = dict(prop.attrs)
        try:
            recipe = self.genome.recipe(trial.params, {"study": self.study_name,
                                                       "trial": trial.number})
        except ConfigError as exc:  # e.g. a data-flow path with no layer on it
            self.writer.fail(trial, str(exc))
            self._tell(attrs, None)
            return "failed"
        h = recipe_hash(recipe)
        trial.set_user_attr(T.RECIPE_HASH, h)
        if h in self.cache:
            original, values, pruned = self.cache[h]
            self.writer.duplicate(trial, original, values, pruned)
            self._tell({**attrs, T.FIDELITY_RUNG: pruned} if pruned is not None else attrs,
                       values)
            self.duplicates_in_a_row += 1
            return "duplicate"
        text = recipe.to_yaml()
        trial.set_user_attr(T.RECIPE, text)
        return Flight(trial, attrs, h, text)

    def _tell(self, attrs: dict, values: tuple[float, ...] | None) -> None:
        self.optimizer.tell(attrs, values)
        self.writer.checkpoint(self.optimizer.checkpoint())
