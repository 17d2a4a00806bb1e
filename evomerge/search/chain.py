"""Chained studies (Sakana's PS+DFS: evolve in parameter space, then search data-flow space
over the PS merge and a source): a space names another study's point as a model::

    models: {ps: "study:zoo_ties_dare#best", math: zoo/math}

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

from evomerge.engine.config_io import yaml_mapping
from evomerge.engine.derived import STUDY_REF, rename_models
from evomerge.engine.recipe import load_recipe
from evomerge.errors import ConfigError
from evomerge.search.records import StudyRecord, TrialRecord
from evomerge.search.space import SearchSpace

__all__ = ["pin_sources", "stage_name", "chained_docs"]


def _point(ref: str, store: Any, results_root: str | Path) -> str:
    """The recipe YAML of study point ``ref``, looked up in ``store`` first, then in the
    referenced study's default storage under ``results_root``."""
    import optuna

    from evomerge.search.front import select_trial
    from evomerge.search.ledger import default_storage, open_storage, space_of

    m = STUDY_REF.match(ref)
    name, sel = m["name"], m["sel"]
    study = None
    for storage in (store, None):
        try:
            storage = storage or open_storage(default_storage(name, results_root))
            study = optuna.load_study(study_name=name, storage=storage)
            break
        except (KeyError, ConfigError):
            continue
    if study is None:
        raise ConfigError(f"Model {ref!r}: no study {name!r} in this storage or in "
                          f"{default_storage(name, results_root)}; run that search first.")
    key, _, value = sel.partition("=")
    choice = {"best": True} if key == "best" else {key: int(value)}
    trial = select_trial(study, space_of(study), **choice)
    recipe = yaml_mapping(TrialRecord(trial).recipe, f"The recipe of trial {trial.number} of "
                          f"study {name!r}")
    recipe.setdefault("evomerge", {}).update(study=name, trial=trial.number, pinned_as=ref)
    return yaml.safe_dump(recipe, sort_keys=False)


def pin_sources(space: SearchSpace, storage: str, study: str,
                results_root: str | Path = "results") -> SearchSpace:
    """``space`` with every ``study:`` model reference pinned: the pins stored with study
    ``study`` in ``storage`` (a URL) when it exists (a resume), else resolved now. A space
    without such references is returned as is (the storage is not opened). Raises
    ConfigError when a point cannot be found."""
    import optuna

    from evomerge.search.ledger import open_storage

    refs = [r for r in space.models.values() if r.startswith("study:")]
    if not refs:
        return space
    store = open_storage(storage)
    pinned = dict(space.pinned)
    try:
        stored = StudyRecord(optuna.load_study(study_name=study, storage=store))
        pinned = {**(stored.space.pinned if stored.is_evomerge else {}), **pinned}
    except KeyError:
        pass
    for ref in refs:
        if ref not in pinned:
            pinned[ref] = _point(ref, store, results_root)
    return space.model_copy(update={"pinned": {r: pinned[r] for r in refs}})


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
