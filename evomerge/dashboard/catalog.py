"""What the dashboard shows, as plain data: the studies of some storages, and one study's
front, best-so-far curve, trial table and per-layer view of a recipe.

Everything here reads through Optuna's storage API (SQLite, JournalFileStorage, PostgreSQL
alike); no pickle is ever loaded (trial values and attributes are JSON in every storage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError
from evomerge.search.ledger import counted, driver_state, open_storage, space_of, summary
from evomerge.search.objectives import weighted_loss
from evomerge.search.records import StudyRecord, TrialRecord

__all__ = ["Catalog", "driver_state", "study_overview", "trial_rows", "layer_view"]



class Catalog:
    """The storages the dashboard reads: the URLs given, or every study file under
    ``results/`` (``<study>/study.db`` of local searches, ``<study>/journal.log`` of Slurm
    jobs), found again on every request so new studies appear."""

    def __init__(self, storages: list[str] | None = None, results: str | Path = "results"):
        self.explicit = list(storages or [])
        self.results = Path(results).resolve()
        self._open: dict[str, Any] = {}

    def urls(self) -> list[str]:
        if self.explicit:
            return self.explicit
        found = [f"sqlite:///{p}" for p in sorted(self.results.glob("*/study.db"))]
        found += [f"journal://{p}" for p in sorted(self.results.glob("*/journal.log"))]
        return found

    def storage(self, url: str) -> Any:
        if url not in self._open:
            self._open[url] = open_storage(url)
        return self._open[url]

    def studies(self) -> list[tuple[str, Any]]:
        """(storage URL, study) for every evomerge study in every storage."""
        import optuna

        out = []
        for url in self.urls():
            storage = self.storage(url)
            for s in storage.get_all_studies():
                study = optuna.load_study(study_name=s.study_name, storage=storage)
                if StudyRecord(study).is_evomerge:
                    out.append((url, study))
        return out

    def find(self, name: str, url: str | None = None) -> tuple[str, Any]:
        """(storage URL, study) of the evomerge study ``name``, in ``url`` (which must be one
        of the catalog's) or in any of them."""
        from evomerge.search.ledger import load_study

        urls = self.urls()
        for u in [url] if url is not None else urls:
            if u not in urls:
                break
            try:
                study = load_study(self.storage(u), name)
            except ConfigError:
                continue
            if StudyRecord(study).is_evomerge:
                return u, study
        raise ConfigError(f"No study {name!r} in the dashboard's storages.")


def _last_activity(trials: list[Any]) -> float | None:
    stamps = [t.datetime_complete or t.datetime_start for t in trials]
    stamps = [s.timestamp() for s in stamps if s is not None]
    return max(stamps) if stamps else None


def study_overview(url: str, study: Any) -> dict[str, Any]:
    """One row of the study list."""
    space = space_of(study)
    trials = study.get_trials(deepcopy=False)
    info = summary(study, trials)
    losses = [weighted_loss(t.values, space.objectives) for t in trials
              if t.values is not None and counted(t)]
    record = StudyRecord(study)
    launch = record.launch
    return {
        "name": study.study_name, "storage": url,
        "objectives": [f"{o.key} ({o.direction})" for o in space.objectives],
        "budget": record.budget or space.budget.trials,
        "done": info["evaluations"], "failed": info["failed"], "running": info["running"],
        "best": min(losses) if losses else None, "last_activity": _last_activity(trials),
        "driver": driver_state(study), "launched_via": launch.get("via", "unknown"),
    }


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """The trial table: every trial with its state, objective values, loss and reasons."""
    space = space_of(study)
    rows = []
    for t in study.get_trials(deepcopy=False):
        r = TrialRecord(t)
        rows.append({
            "number": t.number, "state": t.state.name,
            "values": list(t.values) if t.values is not None else None,
            "loss": weighted_loss(t.values, space.objectives) if t.values is not None else None,
            "method": space.method_name(t.params),
            "merge_s": r.merge_seconds, "eval_s": r.eval_seconds,
            "note": r.fail_reason or (f"same recipe as trial {r.duplicate_of}"
                                      if r.is_duplicate else "") or _fidelity_note(r),
        })
    return rows


def _fidelity_note(r: TrialRecord) -> str:
    """What a candidate scored under cheaper fitness: where it was pruned, and its examples."""
    fid = r.fidelity
    if not fid:
        return ""
    where = "in full" if fid["rung"] < 0 else f"up to rung {fid['rung']}"
    pruned = f"pruned at rung {r.fidelity_rung}; " if r.fidelity_rung is not None else ""
    return f"{pruned}scored {where}: {fid['examples']} examples ({fid['estimator']})"


def layer_view(study: Any, number: int) -> dict[str, Any]:
    """Per-layer view of trial ``number`` (:func:`evomerge.search.layers.layer_table`) with
    its heatmap (plotly JSON), recipe YAML and objective values."""
    import json

    from evomerge.search.layers import heatmap_figure, layer_table

    space = space_of(study)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise ConfigError(f"Study {study.study_name!r} has no trial {number}.")
    t = trials[number]
    table = layer_table(space, StudyRecord(study).num_layers, t.params)
    fig = heatmap_figure(table, title=f"trial {number}: per-layer recipe ({table['method']})")
    return {**table, "trial": number, "heatmap": json.loads(fig.to_json()),
            "recipe": TrialRecord(t).recipe or "",
            "values": list(t.values) if t.values is not None else None}
