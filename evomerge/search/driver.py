"""The search loop: ask the optimizer, evaluate, record in the study, until the budget ends.

    outcome = run_search(load_space("search_spaces/zoo_ties_dare.yaml"))

The study is created (or reopened) first; trials a dead driver left RUNNING are failed as
interrupted and their candidates asked again; the optimizer is rebuilt from the finished
trials. Evaluations stop exactly at the budget (no generation overshoot). Ctrl-C or SIGTERM
stops cleanly: in-flight trials are marked interrupted, the front is written, and the
message says how to resume.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError
from evomerge.names import check_name
from evomerge.search.chain import pin_sources
from evomerge.search.climb import Climber
from evomerge.search.executors import Executor
from evomerge.search.fidelity import ladder_for
from evomerge.search.gene import Genome
from evomerge.search.genome import genome_of_models
from evomerge.search.lease import Lease, take_lease
from evomerge.search.ledger import (
    create_or_load,
    default_storage,
    existing_default,
    fail_interrupted,
    last_heartbeat,
    open_storage,
    refuse_other_space,
    results_dir,
)
from evomerge.search.ledger_writer import LedgerWriter
from evomerge.search.liveness import Heartbeat, StopSignal
from evomerge.search.objectives import weighted_loss
from evomerge.search.optimizers import Optimizer, make_optimizer
from evomerge.search.proposals import Flight, Proposals
from evomerge.search.records import StudyRecord, T, TrialRecord
from evomerge.search.space import SearchSpace
from evomerge.search.study_note import annotate_study
from evomerge.search.tracking import StudyTracking
from evomerge.search.worker import CandidateResult, build_evaluators

__all__ = ["SearchOutcome", "run_search"]


@dataclass(frozen=True)
class SearchOutcome:
    study: str
    storage: str
    evaluations: int
    failed: int
    stopped: str  # "budget", "wall_time", "interrupted", "exhausted", "taken over"
    results_dir: Path


class _Loop:
    """ask -> evaluate -> record until the budget, the wall time or a stop ends it; the
    parts: :class:`Proposals` (the optimizer's candidates and duplicates), :class:`Climber`
    (the fidelity ladder, when the space has one), :class:`LedgerWriter` (the study) and
    :class:`Heartbeat`."""

    def __init__(self, space: SearchSpace, name: str, storage: Any, genome: Genome,
                 optimizer: Optimizer, budget: int, ladder: Any,
                 progress: Callable[[dict], None] | None) -> None:
        self.space, self.budget, self.progress = space, budget, progress
        self.optimizer = optimizer
        self.study = create_or_load(storage, name, space, self.optimizer.sampler, genome.num_layers)
        self.record = StudyRecord(self.study)
        self.writer = LedgerWriter(self.study, genome.distributions())
        self.proposals = Proposals(self.optimizer, genome, self.writer, name)
        self.climber = Climber(ladder, self.record, space.objectives) if ladder is not None else None
        self.heart = Heartbeat(self.record, name, lambda: (self.done, self.budget))
        self.in_flight: dict[int, Flight] = {}
        self.done = self.failed = self.new = 0
        self.best: float | None = None

    def restore(self) -> None:
        """Fail trials a dead driver left running, then rebuild the duplicate cache, the
        counters, the optimizer and the ladder from the study."""
        stale = fail_interrupted(self.study)
        if self.optimizer.proposes:
            self.writer.retire_waiting()
        trials = self.study.get_trials(deepcopy=False)
        recs = [TrialRecord(t) for t in trials]
        finished = [r for r in recs if r.counted or (r.is_duplicate and r.state != "RUNNING")]
        for rec in finished:
            self.proposals.remember(rec)
            if rec.state == "COMPLETE":
                self._best(rec.values)
        self.done = sum(r.counted for r in recs)
        self.failed = sum(r.counted and r.state == "FAIL" for r in recs)
        self.optimizer.restore(sorted((r.trial for r in finished), key=lambda t: t.number),
                               self.record.checkpoint)
        self.writer.saved(self.optimizer.checkpoint())
        if self.climber is not None:
            self.climber.restore(trials, stale)
        if not self.optimizer.proposes:
            for t in stale:  # Optuna samplers: ask the interrupted candidates again
                if t.params:
                    self.study.enqueue_trial(t.params, user_attrs={T.RETRY_OF: t.number})

    def _best(self, values: Any) -> None:
        loss = weighted_loss(values, self.space.objectives)
        self.best = loss if self.best is None else min(self.best, loss)

    def _propose(self, executor: Executor) -> bool:
        """Start one candidate (or record one that needs no evaluation); False when the
        optimizer has nothing to propose."""
        got = self.proposals.next()
        if got is None:
            return False
        if got == "failed":
            self.failed, self.done, self.new = self.failed + 1, self.done + 1, self.new + 1
        elif isinstance(got, Flight):
            if self.climber is not None:
                self.climber.start(got)
            self.in_flight[got.trial.number] = got
            self._submit(executor, got)
        return True

    def _submit(self, executor: Executor, flight: Flight) -> None:
        job = self.climber.job(flight) if self.climber is not None else None
        executor.submit(flight.trial.number, flight.recipe, job)

    def record_result(self, executor: Executor, result: CandidateResult) -> None:
        """Store a result; a candidate that goes on to its next rung is submitted again."""
        flight = self.in_flight[result.trial]
        fidelity = pruned = None
        if self.climber is not None:
            result = self.climber.accumulate(flight, result)
            if self.climber.climb(flight, result):
                self._submit(executor, flight)
                return
            fidelity, pruned = self.climber.outcome(flight, result)
        del self.in_flight[result.trial]
        self.writer.finish(flight.trial, result, fidelity, pruned, len(self.space.objectives) == 1)
        self.failed += result.values is None
        attrs = flight.attrs if pruned is None else {**flight.attrs, T.FIDELITY_RUNG: pruned}
        self.proposals.evaluated(flight, result.values, pruned)
        self.optimizer.tell(attrs, result.values)
        self.writer.checkpoint(self.optimizer.checkpoint())
        self.done += 1
        self.new += 1
        if result.values is not None and pruned is None:
            self._best(result.values)

    def interrupt_in_flight(self) -> None:
        for flight in self.in_flight.values():
            self.writer.interrupt(flight.trial)
        self.in_flight.clear()

    def _fill(self, executor: Executor) -> None:
        while (len(self.in_flight) < executor.capacity
               and self.done + len(self.in_flight) < self.budget
               and not self.proposals.exhausted and self._propose(executor)):
            pass

    def run(self, executor: Executor, wall_time: float | None, stop: StopSignal,
            on_generation: Callable[[], None]) -> str:
        start = time.monotonic()
        every = getattr(self.optimizer, "popsize", None) or 10
        written = self.done
        while True:
            over_time = wall_time is not None and time.monotonic() - start > wall_time
            lost = self.heart.lost  # another driver took the study over, presuming us dead
            ending = stop.requested or lost or over_time or self.done >= self.budget
            if ending or self.proposals.exhausted:
                if not self.in_flight:
                    return ("interrupted" if stop.requested else "taken over" if lost
                            else "wall_time" if over_time
                            else "budget" if ending else "exhausted")
            else:
                self._fill(executor)
            if not self.in_flight:
                continue
            self.record_result(executor, executor.next_result())
            self.heart.beat()
            if self.progress:
                self.progress({"done": self.done, "budget": self.budget, "failed": self.failed,
                               "new": self.new, "best": self.best,
                               "elapsed": time.monotonic() - start})
            if self.done % every == 0 and self.done != written:  # not again for a rung result
                on_generation()
                written = self.done


def run_search(space: SearchSpace, study: str | None = None, storage: str | None = None,
               trials: int | None = None,
               executor_factory: Callable[[SearchSpace], Executor] | None = None,
               results_root: str | Path = "results",
               progress: Callable[[dict], None] | None = None,
               launch: dict[str, Any] | None = None,
               admit: Callable[[str, dict[str, Any]], None] | None = None,
               tracking: Any = None) -> SearchOutcome:
    """Run (or continue) the search described by ``space``.

    Args:
        space: validated search space.
        study: study name (default: the space's name).
        storage: Optuna storage URL (default: the study's existing file under
            ``results/<study>/``, SQLite or a Slurm job's journal; SQLite for a new study).
        trials: evaluation budget overriding ``space.budget.trials`` (counts finished
            evaluations across resumes, duplicates excluded).
        executor_factory: builds the executor (default: in-process, ``--workers 0``).
        results_root: where ``<study>/pareto.*`` are written.
        progress: called after every result with ``{"done", "budget", "failed", "elapsed"}``.
        launch: how to start this study again (kept in the study for the dashboard's resume
            button); a Slurm launch already recorded there is kept.
        admit: called with an existing study's name and recorded launch before the lease is
            taken or anything written; what it raises refuses the run (the commands refuse a
            study whose Slurm job is queued or running).
        tracking: the experiment tracker of this run (the commands' ``--track``, or the
            space's confined to the study's folder); not stored in the study. Default: the
            space's ``tracking`` as it is.

    Raises:
        ConfigError, ModelError: bad space, storage, or models; nothing is created.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar reports trials
    name = check_name(space.name if study is None else study, "study name")
    if trials is not None and (isinstance(trials, bool) or trials < 1):
        raise ConfigError(f"The budget {trials!r} must be at least 1 evaluation.")
    # The study's existing file (a Slurm job's journal included), so that a search under a
    # name continues that study rather than starting a second one beside it.
    url = storage or existing_default(name, results_root) or default_storage(name, results_root)
    space = pin_sources(space, url, name, results_root)  # study:NAME#best -> its recipe
    genome = genome_of_models(space)
    evaluators = build_evaluators(space)  # a bad evaluator, objective or fidelity fails here,
    ladder = ladder_for(space, evaluators,  # before the study exists
                        space.optimizer.name == "cma" or len(space.objectives) == 1)
    # and a setting the genome refuses (path_ga's starts, cma's x0), before any file is opened
    optimizer = make_optimizer(space.optimizer, genome, space.objectives)
    store = open_storage(url)
    existing = refuse_other_space(store, name, space)  # read only, before the lease is taken
    if admit is not None and existing is not None:
        admit(name, StudyRecord(existing).launch)
    # One driver per study, decided before anything is written: a refused command changes
    # nothing (its budget and launch never reach the study).
    lease = take_lease(url, name, heartbeat=lambda: last_heartbeat(store, name))
    try:
        return _run(space, name, url, store, genome, optimizer, ladder, trials,
                    executor_factory, results_root, progress, launch, lease,
                    tracking if tracking is not None else space.tracking)
    finally:
        lease.release()


def _run(space: SearchSpace, name: str, url: str, store: Any, genome: Genome,
         optimizer: Optimizer, ladder: Any,
         trials: int | None, executor_factory: Callable[[SearchSpace], Executor] | None,
         results_root: str | Path, progress: Callable[[dict], None] | None,
         launch: dict[str, Any] | None, lease: Lease, tracker: Any) -> SearchOutcome:
    """:func:`run_search` once this driver holds the study's lease."""
    from evomerge.search.front import write_front

    budget = trials or space.budget.trials
    loop = _Loop(space, name, store, genome, optimizer, budget, ladder, progress)
    loop.heart.lease = lease
    try:  # the study is data: a damaged record refuses the resume before budget or launch change
        loop.restore()
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        why = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise ConfigError(f"Study {name!r} could not be restored from its stored search state "
                          f"({why}); if its file was not edited, report this with the "
                          f"traceback that -v prints.") from exc
    loop.record.set_budget(budget)  # what `evomerge resume` continues to
    if launch is not None and loop.record.launch.get("via") != "slurm":
        loop.record.set_launch({**launch, "storage": url})
    annotate_study(loop.study, space, genome)
    loop.heart.beat(force=True)
    out_dir = results_dir(name, results_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    tracking = None
    if tracker is not None:  # observes the ledger; a failing tracker only warns
        tracking = StudyTracking(tracker, loop.study, space, genome).open()
        loop.writer.observers.append(tracking.trial)

    def on_generation() -> None:
        write_front(loop.study, space, out_dir)
        if tracking is not None:
            tracking.generation()
    if executor_factory is None:
        from evomerge.search.executors import InlineExecutor
        executor_factory = InlineExecutor
    stopped, executor = "interrupted", None
    beat = loop.heart.in_background()
    try:
        with StopSignal() as stop:
            executor = executor_factory(space)
            stop.reinstall()
            stopped = loop.run(executor, space.budget.wall_time, stop, on_generation)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM while Ray was starting
        loop.interrupt_in_flight()
        stopped = "interrupted"
    finally:
        beat.set()
        if executor is not None:
            executor.close()
        loop.heart.beat(state=stopped, force=True)
        write_front(loop.study, space, out_dir)
        if tracking is not None:
            tracking.close(out_dir)
    return SearchOutcome(name, url, loop.done, loop.failed, stopped, out_dir)
