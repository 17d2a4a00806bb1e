"""The study's schema: every key evomerge stores in an Optuna study, and small typed views to
read them. No other module spells a key.

A study (Optuna user attributes of the study) holds:

==============================  ==========================================================
``evomerge_space``              the search space (JSON of :class:`SearchSpace`)
``evomerge_num_layers``         layers of the source models
``evomerge_trials``             the evaluation budget ``resume`` continues to
``evomerge_launch``             how the study was started (local / Slurm), for Resume
``evomerge_driver``             the driver's heartbeat: host, pid, state, time, progress
``evomerge_optimizer_checkpoint`` the optimizer's JSON state (CMA-ES: per generation)
``evomerge_anchors``            anchor examples of the ``anchors`` fidelity estimator
``evomerge_tracking``           the experiment tracker's run: ``{"type", "run_id"}``
``evomerge_description``        what the study is, in words (optuna-dashboard shows it)
==============================  ==========================================================

A trial (Optuna user attributes of the trial) holds the decoded ``recipe`` (YAML) and its
``recipe_hash``, every evaluator's ``scores``, ``merge_seconds`` / ``eval_seconds`` /
``peak_memory_mb`` / ``worker_node``, the optimizer's bookkeeping (CMA-ES: ``cma_gen``,
``cma_index``, ``x``), ``fail_reason`` of a failed candidate, ``interrupted`` for a trial
whose driver stopped before it finished (it does not count), ``duplicate_of`` for a recipe
already evaluated (it does not count), ``retry_of`` for a candidate asked again, and with a
fidelity ladder ``fidelity`` (rung, fraction, examples, estimator), ``fidelity_rung`` of a
pruned trial, ``rungs`` (per-rung values) and ``example_stats``.
"""

from __future__ import annotations

from typing import Any

from evomerge.engine.arch import MAX_LAYERS
from evomerge.errors import ConfigError
from evomerge.search.space import SearchSpace, load_space

__all__ = ["S", "T", "TrialRecord", "StudyRecord", "INTERRUPTED", "counted", "told_values",
           "migrate_space"]

INTERRUPTED = "interrupted: the search stopped before this trial finished"


class S:
    """Study attribute keys."""

    SPACE = "evomerge_space"
    NUM_LAYERS = "evomerge_num_layers"
    TRIALS = "evomerge_trials"
    LAUNCH = "evomerge_launch"
    DRIVER = "evomerge_driver"
    CHECKPOINT = "evomerge_optimizer_checkpoint"
    ANCHORS = "evomerge_anchors"     # {rung: {evaluator: {task: [indices, weights]}}}
    TRACKING = "evomerge_tracking"   # {"type": "mlflow", "run_id": "..."}
    DESCRIPTION = "evomerge_description"


class T:
    """Trial attribute keys."""

    RECIPE = "recipe"
    RECIPE_HASH = "recipe_hash"
    SCORES = "scores"
    MERGE_SECONDS = "merge_seconds"
    EVAL_SECONDS = "eval_seconds"
    PEAK_MEMORY_MB = "peak_memory_mb"
    WORKER_NODE = "worker_node"
    FAIL_REASON = "fail_reason"
    INTERRUPTED = "interrupted"
    DUPLICATE_OF = "duplicate_of"
    RETRY_OF = "retry_of"
    FIDELITY = "fidelity"            # {"rung", "fraction", "examples", "estimator"}
    FIDELITY_RUNG = "fidelity_rung"  # the rung a pruned trial stopped at
    RUNGS = "rungs"                  # [{"rung", "fraction", "examples", "values", "totals"}]
    STATS = "example_stats"          # {evaluator: {task/metric: [nums, dens]}}
    CMA_GEN = "cma_gen"
    CMA_INDEX = "cma_index"
    X = "x"                          # the unit-cube point CMA-ES (or map_elites) asked
    PATH = "path"                    # path_ga / map_elites on dfs: the path in one line


def _state(trial: Any) -> str:
    return getattr(trial.state, "name", str(trial.state))


class TrialRecord:
    """A typed, read-only view of one stored trial (an Optuna ``FrozenTrial``)."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.attrs: dict[str, Any] = trial.user_attrs

    number = property(lambda self: self.trial.number)
    params = property(lambda self: self.trial.params)
    values = property(lambda self: self.trial.values)
    state = property(lambda self: _state(self.trial))  # "COMPLETE", "FAIL", "PRUNED", ...
    recipe = property(lambda self: self.attrs.get(T.RECIPE))
    recipe_hash = property(lambda self: self.attrs.get(T.RECIPE_HASH))
    scores = property(lambda self: self.attrs.get(T.SCORES) or {})
    fail_reason = property(lambda self: self.attrs.get(T.FAIL_REASON))
    interrupted = property(lambda self: bool(self.attrs.get(T.INTERRUPTED)))
    duplicate_of = property(lambda self: self.attrs.get(T.DUPLICATE_OF))
    is_duplicate = property(lambda self: T.DUPLICATE_OF in self.attrs)
    retry_of = property(lambda self: self.attrs.get(T.RETRY_OF))
    fidelity = property(lambda self: self.attrs.get(T.FIDELITY))
    fidelity_rung = property(lambda self: self.attrs.get(T.FIDELITY_RUNG))
    rungs = property(lambda self: self.attrs.get(T.RUNGS) or [])
    example_stats = property(lambda self: self.attrs.get(T.STATS))
    merge_seconds = property(lambda self: self.attrs.get(T.MERGE_SECONDS))
    eval_seconds = property(lambda self: self.attrs.get(T.EVAL_SECONDS))
    peak_memory_mb = property(lambda self: self.attrs.get(T.PEAK_MEMORY_MB))
    worker_node = property(lambda self: self.attrs.get(T.WORKER_NODE))

    @property
    def counted(self) -> bool:
        """A finished evaluation that counts toward the budget (not interrupted, not a
        duplicate)."""
        return (self.state in ("COMPLETE", "FAIL", "PRUNED") and not self.interrupted
                and not self.is_duplicate)

    @property
    def told_values(self) -> tuple[float, ...] | None:
        """What the optimizer was told: a complete trial's values, a pruned one's at the last
        rung it reached, None for a failure."""
        if self.state == "COMPLETE":
            return tuple(self.trial.values)
        if self.state == "PRUNED" and self.rungs:
            return tuple(self.rungs[-1]["values"])
        return None


def counted(trial: Any) -> bool:
    """Whether a trial is a finished evaluation that counts toward the budget."""
    return TrialRecord(trial).counted


def told_values(trial: Any) -> tuple[float, ...] | None:
    """The objective values an optimizer was told for a finished trial (:class:`TrialRecord`)."""
    return TrialRecord(trial).told_values


# Settings the optimizer block of studies written before optimizers had their own settings
# carried for every optimizer (defaults included); those that do not apply are dropped.
_SHARED_OPTIMIZER_KEYS = {"popsize", "sigma0", "x0", "diagonal"}
_KEPT = {"cma": _SHARED_OPTIMIZER_KEYS, "cmaes": {"popsize", "sigma0"}, "nsga2": {"popsize"},
         "path_ga": {"popsize"}, "map_elites": {"popsize"}}  # (newer than the migration)


def migrate_space(data: dict[str, Any]) -> dict[str, Any]:
    """A stored space in today's form. Studies written before per-optimizer settings
    store every optimizer's block with all four shared keys; keep the ones its optimizer
    takes (an NSGA-II ``popsize: null`` meant its default, 16)."""
    opt = dict(data.get("optimizer") or {})
    name = opt.get("name", "cma")
    keep = _KEPT.get(name, set())
    for key in _SHARED_OPTIMIZER_KEYS - keep:
        opt.pop(key, None)
    if name == "nsga2" and opt.get("popsize") is None:
        opt.pop("popsize", None)
    return {**data, "optimizer": opt} if "optimizer" in data else data


class StudyRecord:
    """Typed access to an evomerge study's own attributes (see the module docstring)."""

    def __init__(self, study: Any) -> None:
        self.study = study

    def _get(self, key: str, default: Any = None) -> Any:
        return self.study.user_attrs.get(key, default)

    @property
    def is_evomerge(self) -> bool:
        return self._get(S.SPACE) is not None

    @property
    def space(self) -> SearchSpace:
        data = self._get(S.SPACE)
        if data is None:
            raise ConfigError(f"Study {self.study.study_name!r} was not created by evomerge.")
        return load_space(migrate_space(data))

    @property
    def num_layers(self) -> int:
        """The sources' layer count the study recorded: data, so a count that is not a whole
        number up to :data:`MAX_LAYERS` is refused (10**8 made a page allocate per layer)."""
        raw = self._get(S.NUM_LAYERS, 0)
        if type(raw) is not int or not 0 <= raw <= MAX_LAYERS:
            raise ConfigError(f"Study {self.study.study_name!r} records {str(raw)[:40]!r} "
                              f"source layers, not a whole number from 0 to {MAX_LAYERS}.")
        return raw

    budget = property(lambda self: self._get(S.TRIALS))
    launch = property(lambda self: self._get(S.LAUNCH) or {})
    driver = property(lambda self: self._get(S.DRIVER) or {})
    checkpoint = property(lambda self: self._get(S.CHECKPOINT))
    anchors = property(lambda self: self._get(S.ANCHORS))
    tracking = property(lambda self: self._get(S.TRACKING) or {})
    description = property(lambda self: self._get(S.DESCRIPTION))

    def set_space(self, space: SearchSpace, num_layers: int) -> None:
        self.study.set_user_attr(S.SPACE, space.model_dump(mode="json"))
        self.study.set_user_attr(S.NUM_LAYERS, num_layers)

    def set_budget(self, trials: int) -> None:
        self.study.set_user_attr(S.TRIALS, trials)

    def set_launch(self, launch: dict[str, Any]) -> None:
        self.study.set_user_attr(S.LAUNCH, launch)

    def set_driver(self, info: dict[str, Any]) -> None:
        self.study.set_user_attr(S.DRIVER, info)

    def set_checkpoint(self, state: dict[str, Any]) -> None:
        self.study.set_user_attr(S.CHECKPOINT, state)

    def set_anchors(self, anchors: dict[str, Any]) -> None:
        self.study.set_user_attr(S.ANCHORS, anchors)

    def set_tracking(self, kind: str, run_id: str) -> None:
        self.study.set_user_attr(S.TRACKING, {"type": kind, "run_id": run_id})

    def set_description(self, text: str) -> None:
        self.study.set_user_attr(S.DESCRIPTION, text)
