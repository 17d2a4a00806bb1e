"""A candidate's climb up the fidelity ladder (:mod:`evomerge.search.fidelity`): which rung it
starts on, the examples each rung scores, its scores summed over nested rungs, and whether it
goes on. Warmup candidates scored in full give the anchors, stored with the study."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from evomerge.evaluators.base import ratio
from evomerge.search.fidelity import FULL, Ladder
from evomerge.search.objectives import objective_values
from evomerge.search.proposals import Flight
from evomerge.search.records import StudyRecord, T, TrialRecord
from evomerge.search.space_blocks import Objective
from evomerge.search.worker import CandidateResult

__all__ = ["Climber"]


class Climber:
    """The ladder's side of the search loop.

    Args:
        ladder: the space's rungs and promotion rule.
        record: the study (anchors are stored there).
        objectives: the space's objectives (a candidate's values from its summed scores).
    """

    def __init__(self, ladder: Ladder, record: StudyRecord,
                 objectives: Sequence[Objective]) -> None:
        self.ladder, self.record, self.objectives = ladder, record, list(objectives)
        self.partial: dict[str, list] = {}   # recipe hash -> rungs of an interrupted trial
        self.full_stats: list[dict] = []     # per-example stats of full evaluations
        self.full_started = 0

    def restore(self, trials: Sequence[Any], stale: Sequence[Any]) -> None:
        """Rung history, anchors and warmup statistics from the study; an interrupted
        candidate's finished rungs are kept, so asked again it goes on from the next rung."""
        self.ladder.restore(trials)
        if self.record.anchors is not None:
            self.ladder.load_anchors(self.record.anchors)
        for rec in sorted(map(TrialRecord, trials), key=lambda r: r.number):
            if rec.counted and (rec.fidelity or {}).get("rung") == FULL:
                self.full_started += 1
                if rec.example_stats is not None:
                    self.full_stats.append(rec.example_stats)
        if self.ladder.irt and self.ladder.anchors is not None:
            self.ladder.fit_irt(self.full_stats)
        for rec in map(TrialRecord, stale):
            if rec.rungs and rec.recipe_hash:
                self.partial[rec.recipe_hash] = rec.rungs

    def start(self, flight: Flight) -> None:
        """The rung ``flight`` starts on: after its last finished rung if it was asked again
        after an interruption, else the ladder's first (or full fidelity during warmup)."""
        done = self.partial.pop(flight.hash, None)
        if done:
            flight.rungs, flight.rung = list(done), done[-1]["rung"] + 1
            flight.examples = sum(r["examples"] for r in done)
            flight.totals = done[-1].get("totals") or {}
            flight.trial.set_user_attr(T.RUNGS, flight.rungs)
            return
        flight.rung = self.ladder.first_rung(self.full_started)
        self.full_started += flight.rung == FULL

    def job(self, flight: Flight) -> dict[str, Any]:
        """What a worker scores for ``flight``'s current rung."""
        return {"subsets": self.ladder.subsets(flight.rung),
                "per_example": (flight.rung == FULL and self.ladder.anchored)
                or self._irt_rung(flight.rung)}

    def _irt_rung(self, rung: int | None) -> bool:
        """Whether ``rung``'s scores are IRT estimates from its anchors' per-example scores."""
        return self.ladder.irt and rung not in (None, FULL) and self.ladder.fraction(rung) < 1.0

    def accumulate(self, flight: Flight, result: CandidateResult) -> CandidateResult:
        """Nested rungs score only their new examples: the candidate's scores are its
        totals over every rung so far."""
        if self._irt_rung(flight.rung) and result.values is not None:
            scores = {**result.scores, **self.ladder.estimate(flight.rung, result.example_stats)}
            try:
                values = objective_values(scores, self.objectives)
            except ValueError as exc:
                return dataclasses.replace(result, values=None, scores=scores, error=str(exc))
            return dataclasses.replace(result, values=values, scores=scores)
        if not self.ladder.incremental or result.values is None:
            return result
        flight.totals = {k: [a + b for a, b in zip(flight.totals.get(k, (0.0, 0.0)), v)]
                         for k, v in result.totals.items()}
        scores = {k: ratio(*v) for k, v in flight.totals.items()}
        try:
            values = objective_values(scores, self.objectives)
        except ValueError as exc:
            return dataclasses.replace(result, values=None, scores=scores, error=str(exc))
        return dataclasses.replace(result, values=values, scores=scores)

    def climb(self, flight: Flight, result: CandidateResult) -> bool:
        """Record a rung's result; True when the candidate goes on to the next rung (the
        caller submits it again)."""
        flight.examples += result.examples
        if result.values is None:
            return False
        flight.rungs.append({"rung": flight.rung, "fraction": self.ladder.fraction(flight.rung),
                             "examples": result.examples, "values": list(result.values),
                             "totals": flight.totals})
        flight.trial.set_user_attr(T.RUNGS, flight.rungs)
        if result.example_stats:  # a warmup candidate's, or an IRT rung's anchors'
            flight.trial.set_user_attr(T.STATS, result.example_stats)
        if result.example_stats and flight.rung == FULL:
            self.full_stats.append(result.example_stats)
            if self.ladder.anchors is None and len(self.full_stats) >= self.ladder.config.warmup:
                self.record.set_anchors(self.ladder.fit(self.full_stats))
        if not self.ladder.tell(flight.rung, result.values):
            return False
        flight.rung += 1
        return True

    def outcome(self, flight: Flight, result: CandidateResult) -> tuple[dict, int | None]:
        """A finished candidate's fidelity record, and the rung it was pruned at (None: it
        reached the last rung, or failed)."""
        fidelity = {"rung": flight.rung, "fraction": self.ladder.fraction(flight.rung),
                    "examples": flight.examples, "estimator": self.ladder.config.estimator}
        pruned = (flight.rung if result.values is not None
                  and flight.rung not in (FULL, self.ladder.last) else None)
        return fidelity, pruned
