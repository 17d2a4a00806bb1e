"""A search watched in an experiment tracker (the space's ``tracking:`` block or ``--track``).

:class:`StudyTracking` is an observer of the search loop: it opens the study's run (a
resumed study continues the run whose id the study keeps), hears every finished trial from
the :class:`~evomerge.search.ledger_writer.LedgerWriter`, logs a summary per generation, and
at the end attaches the best recipe, the front files and a table of every trial. Steps count
finished trials, so they never go back (a resumed study goes on from its count).

Logged per trial (step = finished trials so far): ``objective/<task>/<metric>``,
``gene/<name>`` (numeric genes), ``trial/number``, ``trial/failed``, ``trial/pruned``,
``trial/fidelity`` (fraction of the examples scored), ``trial/merge_s``, ``trial/eval_s``,
``trial/duration_s``; per generation: ``generation/best/<task>/<metric>``,
``generation/front_size``, ``generation/hypervolume`` (reference: each objective's worst
completed value), ``generation/evaluations``, ``generation/failed``. The files:
``trials.jsonl`` (every trial: genes, values, state, fidelity, duration, worker, reason),
``space.yaml``, ``best_recipe.yaml``, ``pareto.{json,csv,png,html}``.

A tracker that fails (not installed, unreachable, a bad answer) logs one warning and is not
called again: the search never stops for it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evomerge.search.front import completed, front_trials
from evomerge.search.gene import Genome
from evomerge.search.pareto import hypervolume
from evomerge.search.records import StudyRecord, TrialRecord
from evomerge.search.space import SearchSpace
from evomerge.tracking import Tracker, make_tracker

__all__ = ["StudyTracking", "trial_row"]

log = logging.getLogger(__name__)


def trial_row(rec: TrialRecord, space: SearchSpace) -> dict[str, Any]:
    """One trial as the tracker's table holds it."""
    values = rec.told_values
    merge_s, eval_s = rec.merge_seconds or 0.0, rec.eval_seconds or 0.0
    return {"trial": rec.number, "state": "DUPLICATE" if rec.is_duplicate else rec.state,
            "values": dict(zip((o.key for o in space.objectives), values)) if values else None,
            "genes": rec.params, "fidelity": (rec.fidelity or {}).get("fraction", 1.0),
            "merge_s": merge_s, "eval_s": eval_s, "duration_s": round(merge_s + eval_s, 4),
            "worker": rec.worker_node or "in-process", "fail_reason": rec.fail_reason}


def _metrics(row: dict[str, Any]) -> dict[str, float]:
    out = {f"objective/{k}": v for k, v in (row["values"] or {}).items()}
    out.update({f"gene/{k}": float(v) for k, v in row["genes"].items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)})
    out.update({"trial/number": row["trial"], "trial/failed": float(row["state"] == "FAIL"),
                "trial/pruned": float(row["state"] == "PRUNED"), "trial/fidelity": row["fidelity"],
                "trial/merge_s": row["merge_s"], "trial/eval_s": row["eval_s"],
                "trial/duration_s": row["duration_s"]})
    return out


class StudyTracking:
    """Feeds one study's search into a tracker (see the module docstring).

    Args:
        config: the tracker's options (:data:`~evomerge.tracking.config.TrackingConfig`).
        study: the Optuna study.
        space: its search space.
        genome: its genome (gene names and bounds go into the run's config).
        tracker: the sink (default: built from ``config``; tests pass their own).
    """

    def __init__(self, config: Any, study: Any, space: SearchSpace, genome: Genome,
                 tracker: Tracker | None = None) -> None:
        self.config, self.study, self.space, self.genome = config, study, space, genome
        self.record = StudyRecord(study)
        self.tracker: Tracker | None = None
        self._make = (lambda: tracker) if tracker is not None else (lambda: make_tracker(config))
        finished = [TrialRecord(t) for t in study.get_trials(deepcopy=False)]
        self.rows = [trial_row(r, space) for r in finished
                     if r.state not in ("RUNNING", "WAITING") and not r.interrupted]
        self.step = len(self.rows)

    def _guard(self, what: str, call: Callable[[], Any]) -> Any:
        """Run a tracker call; the first failure is one warning and the tracker is dropped."""
        if self.tracker is None:
            return None
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 -- no tracker may stop the search
            log.warning("Tracking with %s failed while %s (%s: %s); the search goes on "
                        "without it.", self.config.type, what, type(exc).__name__,
                        str(exc).splitlines()[0][:200] if str(exc) else "")
            self.tracker = None
            return None

    def open(self) -> StudyTracking:
        """Start the study's run, or continue the one it already has."""
        try:
            self.tracker = self._make()
        except Exception as exc:  # noqa: BLE001 -- e.g. the tracker's library is missing
            log.warning("Tracking with %s is off (%s: %s).", self.config.type,
                        type(exc).__name__, exc)
            return self
        kept = self.record.tracking
        run_id = kept.get("run_id") if kept.get("type") == self.config.type else None
        config = {"study": self.study.study_name,
                  "space": self.space.model_dump(mode="json", exclude={"pinned"}),
                  "genome": {"dim": self.genome.dim, "genes": {
                      g.name: list(g.choices) if g.choices else [g.low, g.high]
                      for g in self.genome.genes}}}
        got = self._guard("starting its run", lambda: self.tracker.start(
            self.study.study_name, config, run_id))
        if got is not None and got != run_id:
            self.record.set_tracking(self.config.type, str(got))
        return self

    def trial(self, rec: TrialRecord) -> None:
        """A finished trial (an observer of the ledger writer)."""
        row = trial_row(rec, self.space)
        self.rows.append(row)
        self.step += 1
        self._guard("logging a trial", lambda: self.tracker.log(_metrics(row), self.step))

    def generation(self) -> None:
        """A summary of the study so far: best value per objective, front, hypervolume."""
        self._guard("logging a generation", lambda: self.tracker.log(self.summary(),
                                                                     self.step))

    def summary(self) -> dict[str, float]:
        objs, done = self.space.objectives, completed(self.study)
        out = {"generation/evaluations": float(sum(r["state"] != "DUPLICATE"
                                                   for r in self.rows)),
               "generation/failed": float(sum(r["state"] == "FAIL" for r in self.rows))}
        if not done:
            return out
        points = [t.values for t in done]
        for i, o in enumerate(objs):
            pick = min if o.direction == "minimize" else max
            out[f"generation/best/{o.key}"] = pick(p[i] for p in points)
        worst = [max(p[i] for p in points) if o.direction == "minimize"
                 else min(p[i] for p in points) for i, o in enumerate(objs)]
        front = front_trials(self.study, self.space)
        out["generation/front_size"] = float(len(front))
        out["generation/hypervolume"] = hypervolume([t.values for t in front], worst,
                                                    [o.direction for o in objs])
        return out

    def close(self, out_dir: Path) -> None:
        """The last summary, the files (best recipe, front, trials, space), and the end of
        the run."""
        if self.tracker is None:
            return
        self.generation()
        files = self._guard("writing its files", lambda: self._files(out_dir)) or []
        self._guard("attaching files", lambda: self.tracker.log_files(files))
        self._guard("finishing its run", lambda: self.tracker.finish())

    def _files(self, out_dir: Path) -> list[Path]:
        from evomerge.search.export import export_recipe

        side = out_dir / "tracking"
        side.mkdir(parents=True, exist_ok=True)
        (side / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        (side / "space.yaml").write_text(self.space.to_yaml())
        files = [side / "trials.jsonl", side / "space.yaml"]
        if completed(self.study):
            files.append(export_recipe(self.study, self.space, side / "best_recipe.yaml",
                                       overwrite=True, best=True))  # ours, rewritten per run
        return files + [out_dir / f"pareto.{ext}" for ext in ("json", "csv", "png", "html")
                        if (out_dir / f"pareto.{ext}").is_file()]
