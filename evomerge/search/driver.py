"""The search loop: ask the optimizer, evaluate, record in the study, until the budget ends.

    outcome = run_search(load_space("search_spaces/zoo_ties_dare.yaml"))

The study is created (or reopened) first; trials a dead driver left RUNNING are failed as
interrupted and their candidates asked again; the optimizer is rebuilt from the finished
trials. Evaluations stop exactly at the budget (no generation overshoot). Ctrl-C or SIGTERM
stops cleanly: in-flight trials are marked interrupted, the front is written, and the
message says how to resume.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError
from evomerge.evaluators.base import ratio
from evomerge.search.chain import pin_sources
from evomerge.search.executors import Executor
from evomerge.search.fidelity import ANCHORS_ATTR, FULL, RUNGS_ATTR, STATS_ATTR, ladder_for
from evomerge.search.gene import Genome, recipe_hash
from evomerge.search.genome import genome_of_models
from evomerge.search.ledger import (
    INTERRUPTED,
    counted,
    create_or_load,
    default_storage,
    fail_interrupted,
    open_storage,
    results_dir,
    told_values,
)
from evomerge.search.liveness import Liveness, StopSignal
from evomerge.search.objectives import objective_values, weighted_loss
from evomerge.search.optimizers import CmaOptimizer, make_optimizer
from evomerge.search.space import SearchSpace
from evomerge.search.worker import CandidateResult, build_evaluators

__all__ = ["SearchOutcome", "run_search"]

MAX_DUPLICATES_IN_A_ROW = 200
CHECKPOINT = "evomerge_optimizer_checkpoint"  # study user attribute: the optimizer's JSON state


@dataclass(frozen=True)
class SearchOutcome:
    study: str
    storage: str
    evaluations: int
    failed: int
    stopped: str  # "budget", "wall_time", "interrupted", "exhausted"
    results_dir: Path


@dataclass
class _Flight:
    """A candidate in flight: its trial, optimizer attributes, recipe, and rungs so far."""

    trial: Any
    attrs: dict
    hash: str
    recipe: str
    rung: int | None = None           # the rung being scored (None: no fidelity ladder)
    examples: int = 0                 # examples scored over its rungs
    rungs: list = field(default_factory=list)
    totals: dict = field(default_factory=dict)  # per score: [sum num, sum den] over its rungs


class _Loop(Liveness):
    def __init__(self, space: SearchSpace, name: str, storage: Any, genome: Genome,
                 budget: int, progress: Callable[[dict], None] | None) -> None:
        self.space, self.name, self.genome, self.budget = space, name, genome, budget
        self.optimizer = make_optimizer(space.optimizer, genome, space.objectives)
        self.study = create_or_load(storage, name, space, self.optimizer.sampler, genome.num_layers)
        self.progress = progress
        self.in_flight: dict[int, _Flight] = {}
        # recipe hash -> (trial, told values, rung where it was pruned or None)
        self.cache: dict[str, tuple[int, tuple[float, ...] | None, int | None]] = {}
        self.ladder: Any = None                   # cheaper fitness (set by run_search)
        self.partial: dict[str, list] = {}        # recipe hash -> rungs of an interrupted trial
        self.full_stats: list[dict] = []          # per-example stats of full evaluations
        self.full_started = 0
        self.done = self.failed = self.new = 0
        self.best: float | None = None
        self._beat = 0.0
        self._saved: dict | None = None

    def save_checkpoint(self) -> None:
        """Store the optimizer's state in the study when it has a new one (CMA-ES: once per
        generation), so a resume on any machine starts from it."""
        state = self.optimizer.checkpoint()
        if state is not None and state is not self._saved:
            self.study.set_user_attr(CHECKPOINT, state)
            self._saved = state

    def restore(self) -> None:
        from optuna.trial import TrialState

        stale = fail_interrupted(self.study)
        trials = self.study.get_trials(deepcopy=False)
        finished = [t for t in trials if counted(t) or (
            "duplicate_of" in t.user_attrs and t.state != TrialState.RUNNING)]
        for t in finished:
            if "recipe_hash" in t.user_attrs and "duplicate_of" not in t.user_attrs:
                pruned = t.user_attrs.get("fidelity_rung") if t.state == TrialState.PRUNED \
                    else None
                self.cache[t.user_attrs["recipe_hash"]] = (t.number, told_values(t), pruned)
            if t.state == TrialState.COMPLETE:
                loss = weighted_loss(t.values, self.space.objectives)
                self.best = loss if self.best is None else min(self.best, loss)
        self.done = sum(counted(t) for t in trials)
        self.failed = sum(counted(t) and t.state == TrialState.FAIL for t in trials)
        self.optimizer.restore(sorted(finished, key=lambda t: t.number),
                               self.study.user_attrs.get(CHECKPOINT))
        self._saved = self.optimizer.checkpoint()
        if self.ladder is not None:
            self._restore_ladder(trials, stale)
        if not isinstance(self.optimizer, CmaOptimizer):
            for t in stale:  # Optuna samplers: ask the interrupted candidates again
                if t.params:
                    self.study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})

    def _restore_ladder(self, trials: list, stale: list) -> None:
        """Rung history, anchors and warmup statistics from the study; an interrupted
        candidate's finished rungs are kept, so asked again it goes on from the next rung."""
        self.ladder.restore(trials)
        if ANCHORS_ATTR in self.study.user_attrs:
            self.ladder.load_anchors(self.study.user_attrs[ANCHORS_ATTR])
        for t in sorted(trials, key=lambda t: t.number):
            if counted(t) and (t.user_attrs.get("fidelity") or {}).get("rung") == FULL:
                self.full_started += 1
                if STATS_ATTR in t.user_attrs:
                    self.full_stats.append(t.user_attrs[STATS_ATTR])
        for t in stale:
            if t.user_attrs.get(RUNGS_ATTR) and "recipe_hash" in t.user_attrs:
                self.partial[t.user_attrs["recipe_hash"]] = t.user_attrs[RUNGS_ATTR]

    def propose(self) -> bool:
        """Start one candidate (or record a duplicate); False when nothing can be proposed."""
        from optuna.trial import TrialState

        prop = self.optimizer.ask()
        if prop is None:
            return False
        if prop.params is not None:
            self.study.enqueue_trial(prop.params, user_attrs=prop.attrs)
        trial = self.study.ask(self.genome.distributions())
        while prop.params is not None and any(
                trial.user_attrs.get(k) != prop.attrs.get(k) for k in ("cma_gen", "cma_index")):
            # Optuna pops the oldest waiting trial: one enqueued but never asked (a driver
            # killed in between) is not this proposal. Retire it, then take ours.
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("fail_reason", INTERRUPTED)
            self.study.tell(trial, state=TrialState.FAIL)
            trial = self.study.ask(self.genome.distributions())
        attrs = {**prop.attrs, **{k: v for k, v in trial.user_attrs.items()
                                  if k in ("cma_gen", "cma_index", "x")}}
        try:
            recipe = self.genome.recipe(trial.params, {"study": self.name, "trial": trial.number})
        except ConfigError as exc:  # e.g. a data-flow path with no layer on it
            self._fail(trial, attrs, str(exc))
            return True
        h = recipe_hash(recipe)
        trial.set_user_attr("recipe_hash", h)
        if h in self.cache:
            self._duplicate(trial, attrs, *self.cache[h])
            return True
        trial.set_user_attr("recipe", recipe.to_yaml())
        flight = _Flight(trial, attrs, h, recipe.to_yaml())
        if self.ladder is not None:
            self._first_rung(flight)
        self.in_flight[trial.number] = flight
        self._submit(flight)
        return True

    def _first_rung(self, flight: _Flight) -> None:
        done = self.partial.pop(flight.hash, None)
        if done:  # asked again after an interruption: go on after its last finished rung
            flight.rungs, flight.rung = list(done), done[-1]["rung"] + 1
            flight.examples = sum(r["examples"] for r in done)
            flight.totals = done[-1].get("totals") or {}
            flight.trial.set_user_attr(RUNGS_ATTR, flight.rungs)
            return
        flight.rung = self.ladder.first_rung(self.full_started)
        self.full_started += flight.rung == FULL

    def _submit(self, flight: _Flight) -> None:
        job = None
        if self.ladder is not None:
            job = {"subsets": self.ladder.subsets(flight.rung),
                   "per_example": flight.rung == FULL
                   and self.ladder.config.estimator == "anchors"}
        self.executor.submit(flight.trial.number, flight.recipe, job)

    def _fail(self, trial: Any, attrs: dict, reason: str) -> None:
        """A candidate that decodes to no model: a failed trial the optimizer hears of."""
        from optuna.trial import TrialState

        trial.set_user_attr("fail_reason", reason)
        self.study.tell(trial, state=TrialState.FAIL)
        self.optimizer.tell(attrs, None)
        self.save_checkpoint()
        self.failed, self.done, self.new = self.failed + 1, self.done + 1, self.new + 1

    def _duplicate(self, trial: Any, attrs: dict, original: int, values: Any,
                   pruned: int | None) -> None:
        from optuna.trial import TrialState

        trial.set_user_attr("duplicate_of", original)
        if values is None:
            trial.set_user_attr("fail_reason", f"same recipe as failed trial {original}")
            self.study.tell(trial, state=TrialState.FAIL)
        elif pruned is not None:
            attrs = {**attrs, "fidelity_rung": pruned}
            trial.set_user_attr("fidelity_rung", pruned)
            trial.set_user_attr(RUNGS_ATTR, [{"rung": pruned, "values": list(values)}])
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, list(values))
        self.optimizer.tell(attrs, values)
        self.save_checkpoint()
        self.duplicates_in_a_row += 1

    def _accumulate(self, flight: _Flight, result: CandidateResult) -> CandidateResult:
        """Nested rungs score only their new examples: the candidate's scores are its
        totals over every rung so far."""
        if not self.ladder.incremental or result.values is None:
            return result
        flight.totals = {k: [a + b for a, b in zip(flight.totals.get(k, (0.0, 0.0)), v)]
                         for k, v in result.totals.items()}
        scores = {k: ratio(*v) for k, v in flight.totals.items()}
        try:
            values = objective_values(scores, self.space.objectives)
        except ValueError as exc:
            return dataclasses.replace(result, values=None, scores=scores, error=str(exc))
        return dataclasses.replace(result, values=values, scores=scores)

    def _climb(self, flight: _Flight, result: CandidateResult) -> bool:
        """Record a rung's result; True when the candidate goes on to the next rung."""
        flight.examples += result.examples
        if result.values is None:
            return False
        flight.rungs.append({"rung": flight.rung, "fraction": self.ladder.fraction(flight.rung),
                             "examples": result.examples, "values": list(result.values),
                             "totals": flight.totals})
        flight.trial.set_user_attr(RUNGS_ATTR, flight.rungs)
        if result.example_stats:
            flight.trial.set_user_attr(STATS_ATTR, result.example_stats)
            self.full_stats.append(result.example_stats)
            if self.ladder.anchors is None and len(self.full_stats) >= self.ladder.config.warmup:
                self.study.set_user_attr(ANCHORS_ATTR, self.ladder.fit(self.full_stats))
        if not self.ladder.tell(flight.rung, result.values):
            return False
        flight.rung += 1
        self._submit(flight)
        return True

    def record(self, result: CandidateResult) -> None:
        from optuna.trial import TrialState

        flight = self.in_flight[result.trial]
        if self.ladder is not None:
            result = self._accumulate(flight, result)
            if self._climb(flight, result):
                return
        del self.in_flight[result.trial]
        trial, attrs = flight.trial, flight.attrs
        trial.set_user_attr("scores", result.scores)
        trial.set_user_attr("merge_seconds", round(result.merge_seconds, 4))
        trial.set_user_attr("eval_seconds", round(result.eval_seconds, 4))
        trial.set_user_attr("peak_memory_mb", round(result.peak_memory_mb, 1))
        if result.node:
            trial.set_user_attr("worker_node", result.node)
        pruned = None
        if self.ladder is not None:
            trial.set_user_attr("fidelity", {
                "rung": flight.rung, "fraction": self.ladder.fraction(flight.rung),
                "examples": flight.examples, "estimator": self.ladder.config.estimator})
            if result.values is not None and flight.rung not in (FULL, self.ladder.last):
                pruned = flight.rung
        if result.values is None:
            trial.set_user_attr("fail_reason", result.error)
            self.study.tell(trial, state=TrialState.FAIL)
            self.failed += 1
        elif pruned is not None:
            attrs = {**attrs, "fidelity_rung": pruned}
            trial.set_user_attr("fidelity_rung", pruned)
            if len(self.space.objectives) == 1:  # Optuna keeps intermediate values of one
                trial.report(result.values[0], step=pruned)
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self.study.tell(trial, list(result.values))
        self.cache[flight.hash] = (trial.number, result.values, pruned)
        self.optimizer.tell(attrs, result.values)
        self.save_checkpoint()
        self.done += 1
        self.new += 1
        if result.values is not None and pruned is None:
            loss = weighted_loss(result.values, self.space.objectives)
            self.best = loss if self.best is None else min(self.best, loss)
        self.duplicates_in_a_row = 0

    def interrupt_in_flight(self) -> None:
        from optuna.trial import TrialState

        for flight in self.in_flight.values():
            trial = flight.trial
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("fail_reason", INTERRUPTED)
            self.study.tell(trial, state=TrialState.FAIL)
        self.in_flight.clear()

    def run(self, executor: Executor, wall_time: float | None, stop: StopSignal,
            on_generation: Callable[[], None]) -> str:
        self.executor = executor
        self.duplicates_in_a_row = 0
        start = time.monotonic()
        every = getattr(self.optimizer, "popsize", None) or 10
        written = self.done
        while True:
            over_time = wall_time is not None and time.monotonic() - start > wall_time
            if stop.requested or over_time or self.done >= self.budget:
                if not self.in_flight:
                    return ("interrupted" if stop.requested else
                            "wall_time" if over_time else "budget")
            elif self.duplicates_in_a_row > MAX_DUPLICATES_IN_A_ROW:
                if not self.in_flight:
                    return "exhausted"
            else:
                while (len(self.in_flight) < executor.capacity
                       and self.done + len(self.in_flight) < self.budget
                       and self.duplicates_in_a_row <= MAX_DUPLICATES_IN_A_ROW
                       and self.propose()):
                    pass
            if not self.in_flight:
                continue
            self.record(executor.next_result())
            self.heartbeat()
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
               launch: dict[str, Any] | None = None) -> SearchOutcome:
    """Run (or continue) the search described by ``space``.

    Args:
        space: validated search space.
        study: study name (default: the space's name).
        storage: Optuna storage URL (default: SQLite under ``results/<study>/``).
        trials: evaluation budget overriding ``space.budget.trials`` (counts finished
            evaluations across resumes, duplicates excluded).
        executor_factory: builds the executor (default: in-process, ``--workers 0``).
        results_root: where ``<study>/pareto.*`` are written.
        progress: called after every result with ``{"done", "budget", "failed", "elapsed"}``.
        launch: how to start this study again (kept in the study for the dashboard's resume
            button); a Slurm launch already recorded there is kept.

    Raises:
        ConfigError, ModelError: bad space, storage, or models; nothing is created.
    """
    import optuna

    from evomerge.search.front import write_front

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar reports trials
    name = study or space.name
    url = storage or default_storage(name, results_root)
    space = pin_sources(space, url, name, results_root)  # study:NAME#best -> its recipe
    genome = genome_of_models(space)
    evaluators = build_evaluators(space)  # a bad evaluator, objective or fidelity fails here,
    ladder = ladder_for(space, evaluators,  # before the study exists
                        space.optimizer.name == "cma" or len(space.objectives) == 1)
    store = open_storage(url)
    budget = trials or space.budget.trials
    loop = _Loop(space, name, store, genome, budget, progress)
    loop.ladder = ladder
    loop.study.set_user_attr("evomerge_trials", budget)  # what `evomerge resume` continues to
    recorded = loop.study.user_attrs.get("evomerge_launch") or {}
    if launch is not None and recorded.get("via") != "slurm":
        loop.study.set_user_attr("evomerge_launch", {**launch, "storage": url})
    loop.refuse_second_driver()
    loop.restore()
    loop.heartbeat(force=True)
    out_dir = results_dir(name, results_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    if executor_factory is None:
        from evomerge.search.executors import InlineExecutor
        executor_factory = InlineExecutor
    stopped, executor = "interrupted", None
    beat = loop.beat_in_background()
    try:
        with StopSignal() as stop:
            executor = executor_factory(space)
            stop.reinstall()
            stopped = loop.run(executor, space.budget.wall_time, stop,
                               lambda: write_front(loop.study, space, out_dir))
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM while Ray was starting
        loop.interrupt_in_flight()
        stopped = "interrupted"
    finally:
        beat.set()
        if executor is not None:
            executor.close()
        loop.heartbeat(state=stopped, force=True)
        write_front(loop.study, space, out_dir)
    return SearchOutcome(name, url, loop.done, loop.failed, stopped, out_dir)
