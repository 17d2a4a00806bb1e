"""Every write the search loop makes to its study, in one place: trials opened with the
optimizer's proposal, results, failures, duplicates, prunes and interruptions, and the
optimizer's checkpoint. Observers (experiment trackers) hear of each finished trial here.

Keys are :mod:`evomerge.search.records`'; what a trial holds is described there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from evomerge.search.records import INTERRUPTED, StudyRecord, T, TrialRecord

__all__ = ["LedgerWriter"]


class LedgerWriter:
    """Writes the search's trials into ``study``.

    Args:
        study: the Optuna study.
        distributions: the genome's Optuna distributions (every trial has all its genes).
    """

    def __init__(self, study: Any, distributions: dict[str, Any]) -> None:
        self.study, self.distributions = study, distributions
        self.record = StudyRecord(study)
        self.observers: list[Callable[[TrialRecord], None]] = []
        self._saved: dict | None = None

    def open(self, params: dict[str, Any] | None, attrs: dict[str, Any]) -> Any:
        """A new RUNNING trial: ``params`` as given (an optimizer's own proposal, through the
        study's :class:`~evomerge.search.optimizers.FixedSampler`), or drawn by the study's
        sampler when None; ``attrs`` (the optimizer's bookkeeping) stored with it."""
        if params is not None:
            self.study.sampler.fix(params)
        trial = self.study.ask(self.distributions)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return trial

    def retire_waiting(self) -> None:
        """Fail trials left WAITING (enqueued by an older evomerge and never asked) as
        interrupted, so no later ask pops them instead of the optimizer's proposal."""
        from optuna.trial import TrialState

        while self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            self.interrupt(self.study.ask())

    def fail(self, trial: Any, reason: str) -> None:
        """A candidate that failed (or decodes to no model), with its reason."""
        from optuna.trial import TrialState

        trial.set_user_attr(T.FAIL_REASON, reason)
        self._told(self.study.tell(trial, state=TrialState.FAIL))

    def duplicate(self, trial: Any, original: int, values: Sequence[float] | None,
                  pruned: int | None) -> None:
        """A recipe already evaluated as trial ``original``: told its values, not counted."""
        from optuna.trial import TrialState

        trial.set_user_attr(T.DUPLICATE_OF, original)
        if values is None:
            trial.set_user_attr(T.FAIL_REASON, f"same recipe as failed trial {original}")
            self._told(self.study.tell(trial, state=TrialState.FAIL))
        elif pruned is not None:
            trial.set_user_attr(T.FIDELITY_RUNG, pruned)
            trial.set_user_attr(T.RUNGS, [{"rung": pruned, "values": list(values)}])
            self._told(self.study.tell(trial, state=TrialState.PRUNED))
        else:
            self._told(self.study.tell(trial, list(values)))

    def finish(self, trial: Any, result: Any, fidelity: dict[str, Any] | None,
               pruned: int | None, single_objective: bool) -> None:
        """Store a candidate's result (a :class:`~evomerge.search.worker.CandidateResult`):
        failed, pruned at rung ``pruned``, or complete."""
        from optuna.trial import TrialState

        trial.set_user_attr(T.SCORES, result.scores)
        trial.set_user_attr(T.MERGE_SECONDS, round(result.merge_seconds, 4))
        trial.set_user_attr(T.EVAL_SECONDS, round(result.eval_seconds, 4))
        trial.set_user_attr(T.PEAK_MEMORY_MB, round(result.peak_memory_mb, 1))
        if result.node:
            trial.set_user_attr(T.WORKER_NODE, result.node)
        if fidelity is not None:
            trial.set_user_attr(T.FIDELITY, fidelity)
        if result.values is None:
            self.fail(trial, result.error)
        elif pruned is not None:
            trial.set_user_attr(T.FIDELITY_RUNG, pruned)
            if single_objective:  # Optuna keeps intermediate values of one objective
                trial.report(result.values[0], step=pruned)
            self._told(self.study.tell(trial, state=TrialState.PRUNED))
        else:
            self._told(self.study.tell(trial, list(result.values)))

    def interrupt(self, trial: Any) -> None:
        """A trial its driver stopped before it finished: failed, and not counted."""
        from optuna.trial import TrialState

        trial.set_user_attr(T.INTERRUPTED, True)
        trial.set_user_attr(T.FAIL_REASON, INTERRUPTED)
        self.study.tell(trial, state=TrialState.FAIL)

    def checkpoint(self, state: dict[str, Any] | None) -> None:
        """Store the optimizer's state when it has a new one (CMA-ES: once per generation),
        so a resume on any machine starts from it."""
        if state is not None and state is not self._saved:
            self.record.set_checkpoint(state)
            self._saved = state

    def saved(self, state: dict[str, Any] | None) -> None:
        """``state`` is already stored (restored from the study)."""
        self._saved = state

    def _told(self, frozen: Any) -> None:
        rec = TrialRecord(frozen)
        for observe in self.observers:
            observe(rec)
