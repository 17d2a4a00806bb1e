"""Library entry points behind the study commands (search, resume, status, front, export,
report, quickstart), so the CLI only parses arguments."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from evomerge.cluster.slurm_info import refuse_active_jobs
from evomerge.errors import ConfigError
from evomerge.names import check_name
from evomerge.search.driver import SearchOutcome, run_search
from evomerge.search.executors import Executor
from evomerge.search.ledger import (
    default_files,
    existing_default,
    load_study,
    open_existing,
    space_of,
    storage_file,
    summary,
)
from evomerge.search.records import StudyRecord
from evomerge.search.space import SearchSpace, load_space

__all__ = ["open_study", "found_storage", "local_launch", "search", "resume", "status",
           "executor_factory", "check_trials"]


def open_study(name: str, storage: str | None = None, results: str = "results") -> tuple[Any, SearchSpace]:
    """An existing study and its search space."""
    check_name(name, "study name")
    url = storage or found_storage(name, results)
    store = open_existing(url)
    if store is None:  # opening it would create an empty file for nothing
        raise ConfigError(f"No study file at {storage_file(url)} (--storage {url}).")
    study = load_study(store, name)
    return study, space_of(study)


def found_storage(name: str, results: str = "results") -> str:
    """The storage of a study in the default layout: ``results/<name>/study.db`` (local
    searches) or ``results/<name>/journal.log`` (Slurm jobs); both is refused
    (:func:`~evomerge.search.ledger.existing_default`)."""
    check_name(name, "study name")
    url = existing_default(name, results)
    if url is not None:
        return url
    raise ConfigError(f"No study {name!r} under {results}/ (looked for "
                      f"{default_files(name, results)}); pass --storage if it lives elsewhere.")


def executor_factory(workers: int, overlap: bool = False, **ray_options: Any
                     ) -> Callable[[SearchSpace], Executor] | None:
    """``None`` (in-process) for 0 workers; the Ray executor otherwise; with ``overlap``, the
    in-process executor that merges the next candidate while one is scored. Ray options with
    0 workers would do nothing, so they are refused rather than ignored."""
    if overlap and workers:
        raise ConfigError("--overlap runs in this process (two output models, the next "
                          "candidate merged while one is scored); use it with --workers 0.")
    if workers == 0:
        given = [f"--{k.replace('_', '-')}" for k, v in ray_options.items() if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} "
                              "to Ray workers; add --workers N (N >= 1), or drop "
                              f"{'it' if len(given) == 1 else 'them'}: with --workers 0 "
                              "candidates run in this process.")
        if overlap:
            from evomerge.search.executors import OverlapExecutor

            return OverlapExecutor
        return None
    from evomerge.search.ray_executor import (
        RayExecutor,
        check_capacity,
        join_cluster,
        local_capacity,
    )

    # Refused before the study exists: a cluster that cannot be joined, workers that cannot
    # all start on this machine.
    if ray_options.get("ray_address"):
        join_cluster(ray_options["ray_address"])
    else:
        check_capacity(workers, ray_options.get("num_cpus"), ray_options.get("num_gpus"),
                       *local_capacity(workers), "this machine")
    return lambda space: RayExecutor(space, workers=workers, **ray_options)


def search(space_path: str, study: str | None = None, storage: str | None = None,
           trials: int | None = None, workers: int = 0, results: str = "results",
           progress: Callable[[dict], None] | None = None, offload: bool = False,
           track: str | None = None, overlap: bool = False,
           **ray_options: Any) -> SearchOutcome:
    space = _with_run_options(load_space(space_path), offload)
    name = check_name(space.name if study is None else study, "study name")
    tracker = run_tracker(space, track, Path(results) / name)
    check_trials(trials)
    _check_overlap(space, overlap)
    return run_search(space, study=study, storage=storage, trials=trials,
                      executor_factory=executor_factory(workers, overlap, **ray_options),
                      results_root=results, progress=progress,
                      launch=local_launch(results, workers, ray_options),
                      admit=refuse_active_jobs, tracking=tracker)


def resume(name: str, storage: str | None = None, trials: int | None = None, workers: int = 0,
           results: str = "results", progress: Callable[[dict], None] | None = None,
           offload: bool = False, track: str | None = None, overlap: bool = False,
           **ray_options: Any) -> SearchOutcome:
    check_trials(trials)
    study, space = open_study(name, storage, results)
    space = _with_run_options(space, offload)
    tracker = run_tracker(space, track, Path(results) / name)
    _check_overlap(space, overlap)
    return run_search(space, study=name, storage=storage or found_storage(name, results),
                      trials=trials or StudyRecord(study).budget,
                      executor_factory=executor_factory(workers, overlap, **ray_options),
                      results_root=results, progress=progress,
                      launch=local_launch(results, workers, ray_options),
                      admit=refuse_active_jobs, tracking=tracker)


def _check_overlap(space: SearchSpace, overlap: bool) -> None:
    """``--overlap`` on a space it cannot serve is refused before the study is touched (a
    refused command changes nothing)."""
    if overlap:
        from evomerge.search.executors import check_overlap

        check_overlap(space)


def check_trials(trials: int | None) -> None:
    """A budget given on the command line is a positive number of evaluations."""
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int)
                               or trials < 1):
        raise ConfigError(f"--trials {trials!r} must be a whole number of evaluations, at "
                          "least 1 (or leave it out to keep the space's budget).")


def _with_run_options(space: SearchSpace, offload: bool) -> SearchSpace:
    """``--offload`` turns the space's ``offload`` on for this run (no result changes)."""
    return space.model_copy(update={"offload": True}) if offload else space


def run_tracker(space: SearchSpace, track: str | None, place: Path) -> Any:
    """The experiment tracker of a run: ``--track`` (:func:`evomerge.tracking.parse_track`;
    the command line may name any place), else the space's (or the study's: data) with the
    files it writes kept in ``place``, the study's results folder
    (:func:`evomerge.tracking.config.confine`). Neither is stored in the study: a tracker
    changes no result."""
    from evomerge.tracking import parse_track
    from evomerge.tracking.config import confine

    if track is not None:
        return parse_track(track)
    return None if space.tracking is None else confine(space.tracking, place)


def local_launch(results: str, workers: int, ray_options: dict[str, Any]) -> dict[str, Any]:
    """How `evomerge resume` should start this study again on this machine."""
    import os

    return {"via": "local", "results": str(Path(results).resolve()), "cwd": os.getcwd(),
            "workers": workers, "ray_options": {k: v for k, v in ray_options.items()
                                                 if k != "ray_address"}}


def status(name: str, storage: str | None = None, results: str = "results") -> dict[str, Any]:
    from evomerge.search.front import best_trial

    study, space = open_study(name, storage, results)
    info = summary(study)
    record = StudyRecord(study)
    info["budget"] = record.budget or space.budget.trials
    info["launch"] = record.launch
    best = best_trial(study, space)
    if best is not None:
        info["best_trial"] = best.number
        info["best"] = {o.key: v for o, v in zip(space.objectives, best.values)}
    return info


def eval_evaluator(kind: str, tasks: list[str], zoo: str | None = None,
                   include: str | None = None, split: str = "test", limit: int | None = None,
                   batch_size: int = 32) -> Any:
    """The evaluator ``evomerge eval`` runs. ``zoo``: the zoo's fast scorer (tasks read from
    ``ZOO/tasks``, default ``./zoo``). ``lm_eval``: lm-eval's built-in tasks, plus the local
    YAMLs under ``include``, plus the zoo's lm-eval tasks when a task is named ``zoo_*``."""
    from evomerge.evaluators import make_evaluator

    if kind == "zoo":
        return make_evaluator("zoo", tasks=tasks, zoo=_zoo_dir(zoo), split=split, limit=limit)
    paths = [str(Path(include).resolve())] if include else []
    if include and not Path(include).is_dir():
        raise ConfigError(f"--include {include!r} is not a directory of lm-eval task YAMLs.")
    if any(t.startswith("zoo_") for t in tasks):
        from evomerge.zoo.build import write_lm_eval_yamls

        paths.append(str(write_lm_eval_yamls(Path(_zoo_dir(zoo)))))
    builtin = not all(t.startswith("zoo_") for t in tasks) or bool(include)
    return make_evaluator("lm_eval", tasks=tasks, include_path=paths or None,
                          include_defaults=builtin, limit=limit, batch_size=batch_size)


def _zoo_dir(zoo: str | None) -> str:
    path = Path(zoo or "zoo")
    if not (path / "tasks").is_dir():
        raise ConfigError(f"No zoo at {str(path)!r} (its tasks/ directory is missing): build it "
                          "with `evomerge zoo build`, or pass --zoo DIR.")
    return str(path)
