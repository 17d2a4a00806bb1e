"""A worker keeps the source models resident and turns a recipe into scores.

Set-up (once): the materializer loads every source onto the device, evaluators build their
tasks. Per candidate: materialize in place -> evaluate -> a frozen :class:`CandidateResult`.
A candidate that raises (NaN, out of memory, a crash in an evaluator) becomes a result with
``error`` set; the worker itself stays usable.
"""

from __future__ import annotations

import resource
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch

from evomerge.engine.recipe import load_recipe
from evomerge.search.objectives import objective_values
from evomerge.search.space import SearchSpace

__all__ = ["CandidateResult", "Merged", "Worker", "evaluator_options"]


def evaluator_options(space: SearchSpace, name: str) -> dict[str, Any]:
    """Options of evaluator ``name``; task-based evaluators default their ``tasks`` to the
    tasks the objectives ask of them (so the YAML names each task once)."""
    cfg = space.evaluators[name]
    opts = cfg.options()
    if cfg.type in ("zoo", "lm_eval") and "tasks" not in opts:
        opts["tasks"] = list(dict.fromkeys(o.task for o in space.objectives
                                           if o.evaluator == name))
    return opts


def build_evaluators(space: SearchSpace, evaluators: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """The space's evaluators, built (no model needed), with every objective's metric checked.

    Raises:
        ConfigError: an unknown evaluator or option, options it cannot be built with, or an
            objective naming a metric its evaluator does not return.
    """
    import inspect

    from evomerge.errors import ConfigError, EvomergeError
    from evomerge.evaluators import EVALUATORS, make_evaluator

    built = {}
    for name, cfg in space.evaluators.items():
        opts = {k: v for k, v in evaluator_options(space, name).items() if k != "test"}
        cls = EVALUATORS.get(cfg.type)
        params = inspect.signature(cls.__init__).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            unknown = sorted(set(opts) - set(params))
            if unknown:
                valid = ", ".join(p for p in params if p != "self")
                raise ConfigError(f"evaluators.{name}: unknown option {unknown[0]!r} for "
                                  f"evaluator {cfg.type!r}; valid: {valid}.")
        try:
            built[name] = make_evaluator(cfg.type, **opts)
        except EvomergeError:
            raise
        except Exception as exc:  # noqa: BLE001 -- a bad option value, in one sentence
            raise ConfigError(f"evaluators.{name}: evaluator {cfg.type!r} cannot be built with "
                              f"these options ({type(exc).__name__}: {exc}).") from None
    for i, obj in enumerate(space.objectives):
        names = {m.name for m in built[obj.evaluator].metrics}
        if obj.key not in names:
            raise ConfigError(f"objectives[{i}]: evaluator {obj.evaluator!r} has no metric "
                              f"{obj.key!r}; it has {', '.join(sorted(names))}.")
    return built


@dataclass(frozen=True)
class CandidateResult:
    """What evaluating one candidate produced.

    Attributes:
        trial: the study's trial number.
        values: objective values in objective order (None if the candidate failed).
        scores: every score the evaluators returned.
        error: why the candidate failed (None on success).
        merge_seconds, eval_seconds: time in the materializer and in the evaluators.
        peak_memory_mb: this candidate's peak: resident memory of the worker process, or CUDA
            memory allocated on a GPU.
        node: where it ran (the Ray node's address for an actor; empty in process).
        examples: examples scored by subset-capable evaluators (the cost of cheaper fitness).
        example_stats: per evaluator, each metric's per-example ``[nums, dens]`` (asked for
            by subset estimation's warmup); None otherwise.
        totals: per score of a subset-capable evaluator, ``[sum num, sum den]`` (the rungs
            of a candidate add these up).
    """

    trial: int
    values: tuple[float, ...] | None
    scores: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    merge_seconds: float = 0.0
    eval_seconds: float = 0.0
    peak_memory_mb: float = 0.0
    node: str = ""
    examples: int = 0
    example_stats: dict[str, Any] | None = None
    totals: dict[str, list[float]] = field(default_factory=dict)


def _reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window for one candidate: CUDA's allocator statistics, or on
    Linux the process's resident high-water mark (``/proc/self/clear_refs``, value 5)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # not Linux: the lifetime peak is all there is
        pass


def _peak_mb(device: torch.device) -> float:
    """Peak memory since the last :func:`_reset_peak`: CUDA memory allocated on a GPU, else
    resident memory (VmHWM; the lifetime peak where it cannot be reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _score(model: Any, tokenizer: Any, evaluators: dict[str, Any], job: dict[str, Any] | None
           ) -> tuple[dict[str, float], dict[str, list[float]], int, dict[str, Any] | None]:
    """Scores of every evaluator, the subset-capable ones' totals, the examples scored, and
    per-example stats when asked."""
    from evomerge.evaluators.base import SubsetEvaluator

    job = job or {}
    subsets, per_example = job.get("subsets") or {}, bool(job.get("per_example"))
    scores: dict[str, Any] = {}
    totals: dict[str, list[float]] = {}
    stats: dict[str, Any] = {}
    examples = 0
    for name, ev in evaluators.items():
        if not isinstance(ev, SubsetEvaluator):
            scores.update(ev(model, tokenizer))
            continue
        subset = subsets.get(name)
        got, sums, stats[name] = ev.score(model, tokenizer, subset, per_example)
        scores.update(got)
        totals.update(sums)
        sizes = ev.sizes()
        examples += sum(len(subset[t][0]) if subset and t in subset else n
                        for t, n in sizes.items())
    return scores, totals, examples, (stats if per_example else None)


class Worker:
    """Resident models + evaluators for one search space.

    Args:
        space: the search space (models, evaluators, objectives, device).
        device: overrides ``space.device``.
    """

    def __init__(self, space: SearchSpace, device: str | None = None) -> None:
        from transformers import AutoTokenizer

        from evomerge.engine.materialize import Materializer
        from evomerge.engine.sources import torch_dtype

        self.space = space
        # A data-flow search runs the models' own layers: the base is only the tokenizer.
        base = None if space.dfs is not None else space.base_model
        self.materializer = Materializer(list(space.models.values()), base_model=base,
                                         device=device or space.device,
                                         dtype=torch_dtype(space.out_dtype),
                                         offload=space.offload, recipes=space.pinned)
        self.device = self.materializer.device
        self.tokenizer = AutoTokenizer.from_pretrained(space.base_model)  # the base's own
        self.evaluators = build_evaluators(space)

    def tokenizer_for(self, recipe: Any) -> Any:
        """The tokenizer a candidate is scored with: the one export writes with its model (a
        tokenizer rule's output tokenizer, a recipe's chat template), else the base's."""
        if recipe.tokenizer_settings is None and recipe.chat_template is None:
            return self.tokenizer
        return self.materializer.tokenizer(recipe)

    def run(self, trial: int, recipe_yaml: str, evaluators: dict[str, Any] | None = None,
            job: dict[str, Any] | None = None) -> CandidateResult:
        """Materialize and score one recipe; never raises for a bad candidate.
        ``evaluators`` replaces the space's (the report scores the test split this way).
        ``job``: ``{"subsets": {evaluator: {task: (indices, weights)}} or None,
        "per_example": bool}`` (cheaper fitness, :mod:`evomerge.search.fidelity`)."""
        _reset_peak(self.device)
        return self.score(trial, self.merge(recipe_yaml), evaluators, job)

    def merge(self, recipe_yaml: str, slot: int = 0) -> Merged:
        """Materialize one recipe into output model ``slot`` (1: the second buffer, merged
        while the other is scored); a failure is returned, not raised."""
        t0 = time.perf_counter()
        try:
            recipe = load_recipe(recipe_yaml)
            model = self.materializer.materialize(recipe, slot)
            tokenizer = self.tokenizer_for(recipe)
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
            return Merged(model, time.perf_counter() - t0, tokenizer=tokenizer)
        except Exception as exc:  # noqa: BLE001 -- a failing candidate must not stop the search
            return Merged(None, time.perf_counter() - t0, _reason(exc))

    def score(self, trial: int, merged: Merged, evaluators: dict[str, Any] | None = None,
              job: dict[str, Any] | None = None) -> CandidateResult:
        """Score a merged candidate (:meth:`merge`); never raises for a bad candidate."""
        if merged.error is not None:
            return CandidateResult(trial, None, {}, merged.error, merged.seconds, 0.0,
                                   _peak_mb(self.device))
        t1 = time.perf_counter()
        try:
            tokenizer = self.tokenizer if merged.tokenizer is None else merged.tokenizer
            scores, totals, examples, stats = _score(merged.model, tokenizer,
                                                     evaluators or self.evaluators, job)
            values = objective_values(scores, self.space.objectives)
            return CandidateResult(trial, values, scores, None, merged.seconds,
                                   time.perf_counter() - t1, _peak_mb(self.device),
                                   examples=examples, example_stats=stats, totals=totals)
        except Exception as exc:  # noqa: BLE001 -- a failing candidate must not stop the search
            return CandidateResult(trial, None, {}, _reason(exc), merged.seconds,
                                   time.perf_counter() - t1, _peak_mb(self.device))


@dataclass(frozen=True)
class Merged:
    """A materialized candidate: the model to score (None if the merge failed), the seconds
    the merge took, why it failed, and the tokenizer to score it with (None: the base's)."""

    model: Any
    seconds: float
    error: str | None = None
    tokenizer: Any = None


def _reason(exc: BaseException) -> str:
    """A failed candidate's reason: the exception and where it was raised."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()
    reason = f"{type(exc).__name__}: {exc}"
    last = traceback.extract_tb(exc.__traceback__)[-1:]
    where = f" (at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})" if last else ""
    return reason + where
