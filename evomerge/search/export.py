"""Export a trial of a study: as a mergekit-compatible recipe YAML, or built into a model
directory whose model card says which study and trial it came from (``--model-dir``)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from evomerge.engine.card import ObjectiveValue, Provenance
from evomerge.engine.config_io import yaml_mapping
from evomerge.engine.derived import load_chain
from evomerge.engine.outputs import write_text_atomic
from evomerge.engine.recipe import load_recipe
from evomerge.errors import ConfigError
from evomerge.search.chain import chained_docs
from evomerge.search.front import completed, front_trials, marked_front_png, select_trial
from evomerge.search.records import TrialRecord
from evomerge.search.space import SearchSpace

__all__ = ["export_recipe", "export_model", "provenance"]


def export_recipe(study: Any, space: SearchSpace, out: str | Path, overwrite: bool = False,
                  **choice: Any) -> Path:
    """Write the chosen trial's recipe to ``out`` (validated again before writing), with the
    model references as written in the search space. Returns the path.

    The file is written whole or not at all (a temporary file renamed into place). An
    existing ``out`` is replaced only with ``overwrite`` (``--force``), and only if it is a
    file; a directory is never a recipe path.

    Raises:
        ConfigError: no such trial, ``out`` is a directory or exists (without ``overwrite``).
        OutputError: the disk is full; nothing was written.
    """
    out = _recipe_path(out, overwrite)
    t = select_trial(study, space, **choice)
    recipe = load_recipe(yaml_mapping(TrialRecord(t).recipe, f"The recipe of trial {t.number}"))
    docs = chained_docs(recipe.to_yaml(), space.pinned)
    docs[-1].setdefault("evomerge", {})["scores"] = {
        o.key: v for o, v in zip(space.objectives, t.values)}
    build = (f"mergekit-multi {out.name} -I STAGES_DIR --out-path OUT_DIR"
             if len(docs) > 1 else "mergekit-yaml")
    text = (f"# Exported from study {study.study_name!r}, trial {t.number}.\n"
            f"# Build it: evomerge merge {out.name} OUT_DIR   (or {build})\n"
            + yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=None))
    for _, doc in load_chain(text, str(out)):
        load_recipe(doc)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)
    return out


def _recipe_path(out: str | Path, overwrite: bool) -> Path:
    """``out`` as a recipe file that may be written (ConfigError otherwise)."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"Output {str(out)!r} is a directory; give the recipe file to write, "
                          f"e.g. {str(out / 'recipe.yaml')!r}.")
    if out.exists() and not overwrite:
        raise ConfigError(f"Output {str(out)!r} exists; choose another path, or add --force to "
                          "replace it.")
    return out


def provenance(study: Any, space: SearchSpace, trial: Any, results_dir: Path | None
               ) -> Provenance:
    """The model card's account of ``trial``: its objective values on validation, and on
    test where the study's report (``results_dir/report.json``) re-scored it; the front plot
    with the trial marked."""
    tests: dict[str, float] = {}
    report = results_dir / "report.json" if results_dir is not None else None
    if report is not None and report.is_file():
        rows = json.loads(report.read_text()).get("rows", [])
        tests = next((r.get("test", {}) for r in rows if r.get("kind") == "search front"
                      and r.get("name") == f"trial {trial.number}"), {})
    values = tuple(ObjectiveValue(o.key, o.direction, v, tests.get(o.key))
                   for o, v in zip(space.objectives, trial.values))
    return Provenance(study.study_name, trial.number, values, len(completed(study)),
                      space.optimizer.name, len(front_trials(study, space)),
                      marked_front_png(study, space, trial))


def export_model(study: Any, space: SearchSpace, model_dir: str | Path,
                 recipe_out: str | Path | None = None, results_dir: Path | None = None,
                 base_model_ids: Sequence[str] | None = None, device: str = "cpu",
                 overwrite: bool = False, **choice: Any) -> Path:
    """Build the chosen trial into ``model_dir`` (as ``evomerge merge`` does), its model card
    naming the study, the trial, its objective values and the front plot; the recipe is also
    written to ``recipe_out`` when given (replaced only with ``overwrite``), once the model
    is built: a refused or failed build writes no recipe either. Returns ``model_dir``."""
    from evomerge.engine.merge import merge_stages

    if recipe_out is not None:
        recipe_out = _recipe_path(recipe_out, overwrite)
    trial = select_trial(study, space, **choice)
    card = provenance(study, space, trial, results_dir)
    with tempfile.TemporaryDirectory() as tmp:
        name = recipe_out.name if recipe_out is not None else "recipe.yaml"
        recipe = export_recipe(study, space, Path(tmp) / name, trial=trial.number)
        merge_stages(recipe, model_dir, provenance=card, base_model_ids=base_model_ids,
                     device=device)
        if recipe_out is not None:
            recipe_out.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(recipe_out, recipe.read_text())
    return Path(model_dir)
