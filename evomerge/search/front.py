"""The study's Pareto front as files: ``pareto.json``, ``pareto.csv``, ``pareto.png`` and
``pareto.html`` under ``results/<study>/``. With one objective the plots show the best value
so far against evaluations instead."""

from __future__ import annotations

import csv
import json
from html import escape
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError
from evomerge.search.archive import archive_cells, archive_trial
from evomerge.search.ledger import counted
from evomerge.search.pareto import pareto_front
from evomerge.search.records import StudyRecord
from evomerge.search.space import SearchSpace

__all__ = ["front_trials", "write_front", "best_trial", "front_figure", "best_so_far", "completed",
           "select_trial", "archive_rows", "archive_html"]


def completed(study: Any) -> list[Any]:
    """Completed, counted trials (duplicates and failures excluded), by trial number."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if counted(t)]


def front_trials(study: Any, space: SearchSpace) -> list[Any]:
    """Non-dominated completed trials, sorted by the first objective (best first)."""
    trials = completed(study)
    directions = [o.direction for o in space.objectives]
    idx = pareto_front([t.values for t in trials], directions)
    front = [trials[i] for i in idx]
    sign = 1 if directions[0] == "minimize" else -1
    return sorted(front, key=lambda t: (sign * t.values[0], t.number))


def best_trial(study: Any, space: SearchSpace) -> Any:
    """The completed trial with the lowest weighted loss (the single-objective view)."""
    from evomerge.search.objectives import weighted_loss

    trials = completed(study)
    if not trials:
        return None
    return min(trials, key=lambda t: (weighted_loss(t.values, space.objectives), t.number))


def _row(t: Any, space: SearchSpace, index: int) -> dict[str, Any]:
    row: dict[str, Any] = {"pareto_index": index, "trial": t.number}
    row.update({o.key: v for o, v in zip(space.objectives, t.values)})
    row["params"] = t.params
    return row


def write_front(study: Any, space: SearchSpace, out_dir: Path) -> list[Any]:
    """Write the front files; returns the front trials."""
    out_dir.mkdir(parents=True, exist_ok=True)
    front = front_trials(study, space)
    rows = [_row(t, space, i) for i, t in enumerate(front)]
    doc = {"study": study.study_name,
           "objectives": [o.model_dump() for o in space.objectives],
           "evaluations": len(completed(study)), "front": rows}
    if space.optimizer.name == "map_elites":
        doc["archive"] = archive_rows(study, space)
    (out_dir / "pareto.json").write_text(json.dumps(doc, indent=2))
    keys = ["pareto_index", "trial", *(o.key for o in space.objectives)]
    with open(out_dir / "pareto.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*keys, "params"])
        for r in rows:
            w.writerow([*(r[k] for k in keys), json.dumps(r["params"], sort_keys=True)])
    _plots(study, space, front, out_dir)
    return front


def best_so_far(study: Any, space: SearchSpace) -> tuple[list[int], list[Any]]:
    """The best completed trial so far (lowest weighted loss; with one objective, its best
    value) after each evaluation: ``(evaluation counts, trials)``."""
    from evomerge.search.objectives import weighted_loss

    xs, best, current = [], [], None
    for n, t in enumerate(completed(study), start=1):
        loss = weighted_loss(t.values, space.objectives)
        if current is None or loss < current[0]:
            current = (loss, t)
        xs.append(n)
        best.append(current[1])
    return xs, best


def front_figure(study: Any, space: SearchSpace, front: list[Any],
                 hover: Any = None) -> Any:
    """The interactive (plotly) plot: the front over all evaluated points (the first two
    objectives; colour is the third), or best-so-far vs evaluations for one objective.
    ``hover(trial)`` adds lines to a front point's hover text; points carry the trial number
    as ``customdata``."""
    import plotly.graph_objects as go

    objs = space.objectives
    if len(objs) == 1:
        xs, best = best_so_far(study, space)
        ys = [t.values[0] for t in best]
        fig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines", line_shape="hv", name="best so far"))
        fig.update_layout(xaxis_title="evaluations", yaxis_title=f"best {objs[0].key}")
        return fig
    on_front = {t.number for t in front}
    trials = [t for t in completed(study) if t.number not in on_front]  # one hover per point

    def text(t: Any) -> str:
        lines = [f"trial {t.number}", *(f"{o.key}={v:.4g}" for o, v in zip(objs, t.values))]
        return "<br>".join(lines + (hover(t) if hover else []))

    marker: dict[str, Any] = {"color": "crimson", "size": 9}
    if len(objs) > 2:
        marker = {"color": [t.values[2] for t in front], "colorscale": "Viridis", "size": 10,
                  "reversescale": objs[2].direction == "minimize",
                  "colorbar": {"title": objs[2].key}, "showscale": True}
    fig = go.Figure([
        go.Scatter(x=[t.values[0] for t in trials], y=[t.values[1] for t in trials],
                   mode="markers", name="evaluated", marker={"color": "lightgray"},
                   customdata=[t.number for t in trials], text=[f"trial {t.number}" for t in trials],
                   hoverinfo="text"),
        go.Scatter(x=[t.values[0] for t in front], y=[t.values[1] for t in front],
                   mode="markers", name="Pareto front", text=[text(t) for t in front],
                   customdata=[t.number for t in front], hoverinfo="text", marker=marker)])
    fig.update_layout(xaxis_title=f"{objs[0].key} ({objs[0].direction})",
                      yaxis_title=f"{objs[1].key} ({objs[1].direction})")
    return fig


def _plots(study: Any, space: SearchSpace, front: list[Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objs = space.objectives
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    if len(objs) == 1:
        xs, best = best_so_far(study, space)
        ax.plot(xs, [t.values[0] for t in best], drawstyle="steps-post")
        ax.set_xlabel("evaluations")
        ax.set_ylabel(f"best {objs[0].key} ({objs[0].direction})")
        html = front_figure(study, space, front)
    else:
        trials = completed(study)
        ax.scatter([t.values[0] for t in trials], [t.values[1] for t in trials], s=8,
                   c="lightgray", label="evaluated")
        if len(objs) > 2:  # a 3-objective front seen from above: colour is the third objective
            dots = ax.scatter([t.values[0] for t in front], [t.values[1] for t in front], s=18,
                              c=[t.values[2] for t in front], cmap="viridis_r",
                              label="Pareto front (3 objectives)")
            fig.colorbar(dots, ax=ax, label=f"{objs[2].key} ({objs[2].direction})")
        else:
            ax.scatter([t.values[0] for t in front], [t.values[1] for t in front], s=18, c="C3",
                       label="Pareto front")
        ax.set_xlabel(f"{objs[0].key} ({objs[0].direction})")
        ax.set_ylabel(f"{objs[1].key} ({objs[1].direction})")
        ax.legend()
        html = front_figure(study, space, front)
    ax.set_title(study.study_name)
    fig.tight_layout()
    fig.savefig(out_dir / "pareto.png")
    plt.close(fig)
    html.update_layout(title=study.study_name)
    _write_html(study, space, front, html, out_dir / "pareto.html")


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body {{ font-family: system-ui, sans-serif; margin: 1rem; }}
.hint {{ color: #6b7280; font-size: .85rem; }}</style></head><body>
{front}
<p class="hint">Click a Pareto-front point to show its per-layer recipe below (top strip: where
each layer comes from; below: the searched coefficients, blank where a layer is copied).</p>
<div id="heatmap"></div>
{archive}
<script type="application/json" id="layers">{layers}</script>
<script>
const views = JSON.parse(document.getElementById("layers").textContent);
function show(n) {{
  const v = views[String(n)];
  if (v) Plotly.react("heatmap", v.data, v.layout);
}}
show({first});
document.getElementById("front").on("plotly_click", (ev) => show(ev.points[0].customdata));
</script></body></html>
"""


def _write_html(study: Any, space: SearchSpace, front: list[Any], fig: Any, path: Path) -> None:
    """``pareto.html``: the interactive front and, below it, the per-layer heatmap of the
    front point clicked (the first one at load). Self-contained (plotly.js inlined)."""
    from evomerge.search.layers import heatmap_figure, layer_table

    shown = front if len(space.objectives) > 1 else [t for t in [best_trial(study, space)] if t]
    n_layers = StudyRecord(study).num_layers
    views = {}
    for t in shown if n_layers else []:
        table = layer_table(space, n_layers, t.params)
        views[str(t.number)] = json.loads(heatmap_figure(
            table, title=f"trial {t.number}: per-layer recipe ({table['method']})").to_json())
    body = fig.to_html(full_html=False, include_plotlyjs=True, div_id="front")
    layers = json.dumps(views).replace("</", "<\\/")  # never closes the script element
    path.write_text(_PAGE.format(title=escape(study.study_name), front=body, layers=layers,
                                 archive=archive_html(study, space),
                                 first=json.dumps(shown[0].number if shown else None)))


def archive_rows(study: Any, space: SearchSpace) -> list[dict[str, Any]]:
    """A ``map_elites`` study's archive, one row per filled cell (empty otherwise)."""
    if space.optimizer.name != "map_elites":
        return []
    return [{"cell": c.name, "trial": c.trial, "weighted_loss": c.loss,
             "descriptors": dict(zip(space.optimizer.descriptors or
                                     [o.key for o in space.objectives][:2], c.measures)),
             **{o.key: v for o, v in zip(space.objectives, c.values)}}
            for c in archive_cells(completed(study), space)]


def archive_html(study: Any, space: SearchSpace) -> str:
    """The archive as an HTML table (cell, elite, loss, descriptors, objectives); ''
    for other optimizers."""
    from html import escape

    rows = archive_rows(study, space)
    if not rows:
        return ""
    keys = list(rows[0]["descriptors"])
    head = "".join(f"<th>{escape(h)}</th>" for h in
                   ["cell", "trial", "weighted loss", *(f"descriptor {k}" for k in keys),
                    *(o.key for o in space.objectives)])
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in
                         [r["cell"], r["trial"], f"{r['weighted_loss']:.4g}",
                          *(f"{r['descriptors'][k]:.3f}" for k in keys),
                          *(f"{r[o.key]:.4g}" for o in space.objectives)]) + "</tr>"
        for r in rows)
    return (f"<h3>Quality-diversity archive ({len(rows)} cells)</h3>"
            f'<p class="hint">Export a cell\'s elite: evomerge export {escape(study.study_name)} '
            f"--archive CELL -o recipe.yaml</p><table id=\"archive\"><tr>{head}</tr>{body}</table>")


def select_trial(study: Any, space: SearchSpace, *, best: bool = False, trial: int | None = None,
                 pareto: int | None = None, archive: str | None = None) -> Any:
    """The trial chosen by exactly one of ``best`` (lowest weighted loss), ``trial`` (number),
    ``pareto`` (index into the front, sorted by the first objective) or ``archive`` (a
    ``map_elites`` archive cell, ``"i,j"``: its elite)."""
    if sum([best, trial is not None, pareto is not None, archive is not None]) != 1:
        raise ConfigError("Choose exactly one of --best, --trial N, --pareto I or "
                          "--archive CELL.")
    if best:
        t = best_trial(study, space)
        if t is None:
            raise ConfigError(f"Study {study.study_name!r} has no completed trial yet.")
        return t
    if archive is not None:
        if space.optimizer.name != "map_elites":
            raise ConfigError(f"--archive needs a study searched by 'map_elites'; "
                              f"{study.study_name!r} was searched by {space.optimizer.name!r}.")
        trial = archive_trial(completed(study), space, archive)
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
