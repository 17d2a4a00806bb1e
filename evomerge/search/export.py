"""Export a trial of a study as a mergekit-compatible recipe YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from evomerge.engine.derived import load_chain
from evomerge.engine.recipe import load_recipe
from evomerge.search.chain import chained_docs
from evomerge.search.front import select_trial
from evomerge.search.records import TrialRecord
from evomerge.search.space import SearchSpace

__all__ = ["export_recipe"]


def export_recipe(study: Any, space: SearchSpace, out: str | Path, **choice: Any) -> Path:
    """Write the chosen trial's recipe to ``out`` (validated again before writing), with the
    model references as written in the search space. Returns the path."""
    t = select_trial(study, space, **choice)
    recipe = load_recipe(TrialRecord(t).recipe)
    docs = chained_docs(recipe.to_yaml(), space.pinned)
    docs[-1].setdefault("evomerge", {})["scores"] = {
        o.key: v for o, v in zip(space.objectives, t.values)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    build = (f"mergekit-multi {out.name} -I STAGES_DIR --out-path OUT_DIR"
             if len(docs) > 1 else "mergekit-yaml")
    out.write_text(f"# Exported from study {study.study_name!r}, trial {t.number}.\n"
                   f"# Build it: evomerge merge {out.name} OUT_DIR   (or {build})\n"
                   + yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=None))
    for _, text in load_chain(out.read_text()):
        load_recipe(text)
    return out
