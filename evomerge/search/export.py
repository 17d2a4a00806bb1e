"""Export a trial of a study as a mergekit-compatible recipe YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from evomerge.errors import ConfigError
from evomerge.recipe import load_recipe
from evomerge.search.front import best_trial, completed, front_trials
from evomerge.search.space import SearchSpace

__all__ = ["select_trial", "export_recipe"]


def select_trial(study: Any, space: SearchSpace, *, best: bool = False, trial: int | None = None,
                 pareto: int | None = None) -> Any:
    """The trial chosen by exactly one of ``best`` (lowest weighted loss), ``trial`` (number)
    or ``pareto`` (index into the front, sorted by the first objective)."""
    if sum([best, trial is not None, pareto is not None]) != 1:
        raise ConfigError("Choose exactly one of --best, --trial N or --pareto I.")
    if best:
        t = best_trial(study, space)
        if t is None:
            raise ConfigError(f"Study {study.study_name!r} has no completed trial yet.")
        return t
    if trial is not None:
        by_number = {t.number: t for t in completed(study)}
        if trial not in by_number:
            raise ConfigError(f"Trial {trial} of study {study.study_name!r} is not a completed "
                              f"evaluation (completed: {len(by_number)} trials).")
        return by_number[trial]
    front = front_trials(study, space)
    if not 0 <= pareto < len(front):
        raise ConfigError(f"--pareto {pareto} is out of range: the front has {len(front)} "
                          f"points (0..{len(front) - 1}).")
    return front[pareto]


def export_recipe(study: Any, space: SearchSpace, out: str | Path, **choice: Any) -> Path:
    """Write the chosen trial's recipe to ``out`` (validated again before writing), with the
    model references as written in the search space. Returns the path."""
    from evomerge.derived import load_chain
    from evomerge.search.chain import chained_docs

    t = select_trial(study, space, **choice)
    recipe = load_recipe(t.user_attrs["recipe"])
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
