"""Export a trial of a study as a mergekit-compatible recipe YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from evomerge.engine.derived import load_chain
from evomerge.engine.outputs import write_text_atomic
from evomerge.engine.recipe import load_recipe, yaml_mapping
from evomerge.errors import ConfigError
from evomerge.search.chain import chained_docs
from evomerge.search.front import select_trial
from evomerge.search.records import TrialRecord
from evomerge.search.space import SearchSpace

__all__ = ["export_recipe"]


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
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"Output {str(out)!r} is a directory; give the recipe file to write, "
                          f"e.g. {str(out / 'recipe.yaml')!r}.")
    if out.exists() and not overwrite:
        raise ConfigError(f"Output {str(out)!r} exists; choose another path, or add --force to "
                          "replace it.")
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
