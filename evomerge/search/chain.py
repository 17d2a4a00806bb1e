"""Chained studies (Sakana's PS+DFS: evolve in parameter space, then search data-flow space
over the PS merge and a source): a space names another study's point as a model::

    models: {ps: "study:zoo_ties_dare#best", math: zoo/math}

or, searching the same genome on (another objective, a finer step), as CMA-ES's start::

    optimizer: {name: cma, x0: "study:zoo_ties_dare#best", sigma0: 0.06}

At the study's start the point is *pinned*: its recipe is copied into the space
(``SearchSpace.pinned``) and stored with the study, so every worker builds the same model
once at start-up (:mod:`evomerge.engine.derived`) and a resumed study keeps it even if the other
study has moved on. An export of such a study is a multi-document recipe: the pinned recipe
as a named stage, then the study's own recipe naming it -- what ``mergekit-multi`` and
``evomerge merge`` build.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from evomerge.engine.config_io import brief, yaml_mapping
from evomerge.engine.derived import STUDY_REF, rename_models
from evomerge.engine.recipe import load_recipe
from evomerge.errors import ConfigError
from evomerge.search.records import StudyRecord, TrialRecord
from evomerge.search.space import SearchSpace

__all__ = ["pin_sources", "stage_name", "chained_docs"]


def _trial(ref: str, store: Any, results_root: str | Path, what: str) -> tuple[str, Any]:
    """(study name, trial) of study point ``ref``, looked up in ``store`` first, then in the
    referenced study's default storages under ``results_root`` (a local search's SQLite
    file, a Slurm job's journal); ``what`` names the field in the error."""
    import optuna

    from evomerge.search.front import select_trial
    from evomerge.search.ledger import default_files, existing_default, open_existing, space_of

    m = STUDY_REF.match(ref)
    name, sel = m["name"], m["sel"]
    def load(storage: Any) -> Any:
        storage = open_existing(storage) if isinstance(storage, str) else storage
        try:
            return None if storage is None else optuna.load_study(study_name=name,
                                                                  storage=storage)
        except KeyError:
            return None

    try:  # a file that exists but cannot be read is named, not taken for a missing study
        study = load(store)
        if study is None:  # --storage names the new study's storage: no --storage hint here
            study = load(existing_default(name, results_root, False))
    except ConfigError as exc:
        raise ConfigError(f"{what} {ref!r}: {exc}") from None
    if study is None:
        raise ConfigError(f"{what} {ref!r}: no study {name!r} in this storage or in "
                          f"{default_files(name, results_root)}; run that search first.")
    key, _, value = sel.partition("=")
    choice = {"best": True} if key == "best" else {key: int(value)}
    try:
        return name, select_trial(study, space_of(study), **choice)
    except ConfigError as exc:
        raise ConfigError(f"{what} {ref!r}: {exc}") from None


def _point(ref: str, store: Any, results_root: str | Path) -> str:
    """The recipe YAML of study point ``ref`` (see :func:`_trial`)."""
    name, trial = _trial(ref, store, results_root, "Model")
    recipe = yaml_mapping(TrialRecord(trial).recipe, f"The recipe of trial {trial.number} of "
                          f"study {name!r}")
    recipe.setdefault("evomerge", {}).update(study=name, trial=trial.number, pinned_as=ref)
    return yaml.safe_dump(recipe, sort_keys=False)


def _stored(store: Any, study: str) -> SearchSpace | None:
    """The space stored with ``study`` in ``store``, None when there is no such study yet."""
    import optuna

    if store is None:
        return None
    try:
        stored = StudyRecord(optuna.load_study(study_name=study, storage=store))
    except KeyError:
        return None
    return stored.space if stored.is_evomerge else None


def pin_sources(space: SearchSpace, storage: str, study: str,
                results_root: str | Path = "results") -> SearchSpace:
    """``space`` with every ``study:`` reference pinned: each model's recipe, and CMA-ES's
    start (``optimizer.x0: study:NAME#best``) as that trial's gene values. The pins stored
    with study ``study`` in ``storage`` (a URL) are used when it exists (a resume), else they
    are resolved now. A space without such references is returned as is (the storage is not
    opened). Raises ConfigError when a point cannot be found."""
    refs = [r for r in space.models.values() if r.startswith("study:")]
    x0 = getattr(space.optimizer, "x0", None)
    start = x0 if isinstance(x0, str) and x0.startswith("study:") else None
    if not refs and start is None:
        return space
    if start is not None and not STUDY_REF.match(start):
        raise ConfigError(f"optimizer.x0 {brief(start)} must name a study's point: "
                          f"study:NAME#best, #trial=N or #pareto=I.")
    from evomerge.search.ledger import open_existing

    store = open_existing(storage)
    stored = _stored(store, study)
    update: dict[str, Any] = {}
    if refs:
        pinned = {**(stored.pinned if stored is not None else {}), **space.pinned}
        for ref in refs:
            if ref not in pinned:
                pinned[ref] = _point(ref, store, results_root)
        update["pinned"] = {r: pinned[r] for r in refs}
    if start is not None:  # the stored point if this reference made it, else resolved now
        old = stored.optimizer if stored is not None else None
        params = (old.x0 if getattr(old, "x0_from", None) == start
                  else _trial(start, store, results_root, "optimizer.x0")[1].params)
        update["optimizer"] = space.optimizer.model_copy(update={"x0": params, "x0_from": start})
    return space.model_copy(update=update)


def stage_name(ref: str) -> str:
    """A stage name for a pinned reference: ``study:zoo_ps#best`` -> ``zoo_ps-best``."""
    return re.sub(r"[^\w.-]+", "-", ref.removeprefix("study:")).strip("-")


def chained_docs(recipe_yaml: str, pinned: dict[str, str]) -> list[dict[str, Any]]:
    """The stages that build ``recipe_yaml``: one named document per pinned reference it
    uses, then the recipe with those references replaced by the stage names."""
    doc = yaml_mapping(recipe_yaml, "The recipe")
    used = [r for r in load_recipe(doc).referenced_models() if r in pinned]
    stages = [{"name": stage_name(r), **yaml_mapping(pinned[r], f"The pinned recipe of {r!r}")}
              for r in used]
    return [*stages, rename_models(doc, {r: stage_name(r) for r in used})]
