"""The per-layer view of a candidate recipe: a table (layer → source, coefficients per
parameter, model and part) and the heatmap drawn from it, shared by the dashboard and
``pareto.html``.

A data-flow candidate's view is its path instead: one column per step, the strip naming
the source model, the cells its layer index and scale.

The heatmap has one column per layer (and one for the embeddings / final norm / head, which
share one set of coefficients) and one row per searched coefficient, e.g. ``weight[math].attn``;
a strip on top shows where each layer comes from: ``merge`` or a whole layer copied from one
source (layer swap). A swapped layer has no coefficients: its cells are blank.
"""

from __future__ import annotations

from typing import Any

from evomerge.search.dfs import PathGenome
from evomerge.search.param_genome import ParamGenome
from evomerge.search.space import SWAP_BASE, SWAP_MERGE, SearchSpace

__all__ = ["layer_table", "heatmap_figure"]

IO = "embed/head"


def _columns(space: SearchSpace, genome: ParamGenome, params: dict[str, Any]) -> list[tuple]:
    """(parameter, model alias or None for a global parameter, part) per coefficient."""
    first = next(iter(space.models))
    return [(p, alias, part) for p in space.searched
            for alias in ([*space.models] if f"{p}.{first}.g0.{genome.parts[0]}" in params
                          else [None])
            for part in genome.parts]


def layer_table(space: SearchSpace, num_layers: int, params: dict[str, Any]) -> dict[str, Any]:
    """Per-layer coefficients of one candidate (its genome ``params``): ``header`` names the
    coefficient columns; each row has ``layer`` (an index, or ``"embed/head"``), ``group``,
    ``source`` (``"merge"`` or the alias of the model the layer is copied from) and ``values``
    (one per header column; None where the layer is copied whole)."""
    if space.dfs is not None:
        return _path_table(space, num_layers, params)
    genome = ParamGenome(space, num_layers)
    columns = _columns(space, genome, params)
    header = [f"{p}[{alias}].{part}" if alias else f"{p}.{part}" for p, alias, part in columns]
    rows = []
    for g, (lo, hi) in enumerate(genome.groups):
        source = params.get(f"swap.g{g}", SWAP_MERGE)
        values = [params.get(f"{p}.{alias}.g{g}.{part}" if alias else f"{p}.g{g}.{part}")
                  if source == SWAP_MERGE else None for p, alias, part in columns]
        rows += [{"layer": i, "group": g, "source": source, "values": values}
                 for i in range(lo, hi)]
    if space.granularity.smooth:  # each layer's own value, between its group anchors
        for row in rows:
            row["values"] = [_smoothed(params, p, alias, part, row["layer"], num_layers,
                                       len(genome.groups)) for p, alias, part in columns]
    io = [params.get(f"{p}.{alias}.io.all" if alias else f"{p}.io.all")
          for p, alias, _ in columns]
    if any(v is not None for v in io):  # embeddings, final norm and lm_head share one set
        rows.append({"layer": IO, "group": "io", "source": SWAP_MERGE, "values": io})
    return {"method": space.method_name(params), "header": header, "rows": rows,
            "sources": [SWAP_MERGE, SWAP_BASE, *space.models]}


def _smoothed(params: dict[str, Any], p: str, alias: str | None, part: str, layer: int,
              num_layers: int, groups: int) -> float | None:
    """Layer ``layer``'s value of a smooth space: the group anchors interpolated at
    t = layer / (L - 1), as the recipe's gradient gives it (mergekit's rule)."""
    anchors = [params.get(f"{p}.{alias}.g{g}.{part}" if alias else f"{p}.g{g}.{part}")
               for g in range(groups)]
    if any(a is None for a in anchors):
        return None
    scaled = (layer / (num_layers - 1) if num_layers > 1 else 1.0) * (groups - 1)
    i0 = int(scaled)
    i1 = min(groups - 1, i0 + 1)
    return (1 - (scaled - i0)) * anchors[i0] + (scaled - i0) * anchors[i1]


def _path_table(space: SearchSpace, num_layers: int, params: dict[str, Any]) -> dict[str, Any]:
    """A data-flow candidate's path: one row per step (``layer`` = position on the path),
    ``source`` = the model alias its layer comes from, values = that layer's index in the
    source and the scale of the hidden state entering it."""
    alias = {path: a for a, path in space.models.items()}
    try:
        path = PathGenome(space, num_layers).path(params)
    except KeyError:  # a trial without parameters (e.g. interrupted before it was asked)
        path = []
    rows = [{"layer": k, "group": k, "source": alias[s.model],
             "label": f"{alias[s.model]} layer {s.layer}", "values": [s.layer, s.scale]}
            for k, s in enumerate(path)]
    return {"method": "path", "header": ["source layer", "scale"], "rows": rows,
            "sources": list(space.models)}


def heatmap_figure(table: dict[str, Any], title: str = "") -> Any:
    """The plotly heatmap of a :func:`layer_table`: source strip on top, coefficients below
    (layers on x, coefficients on y; blank cells for swapped layers)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    x = [str(r["layer"]) for r in table["rows"]]
    header = table["header"]
    z = [[r["values"][j] for r in table["rows"]] for j in range(len(header))]
    sources = table["sources"]
    strip = [[sources.index(r["source"]) for r in table["rows"]]]
    palette = ["#cfd8dc", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    n = len(sources)
    scale = []  # discrete colours: source k fills [k/n, (k+1)/n]
    for k in range(n):
        c = palette[k % len(palette)]
        scale += [[k / n, c], [(k + 1) / n, c]]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        row_heights=[0.12, 0.88])
    fig.add_trace(go.Heatmap(
        z=strip, x=x, y=["source"], zmin=-0.5, zmax=n - 0.5, colorscale=scale, showscale=False,
        text=[[r["source"] for r in table["rows"]]], texttemplate="%{text}",
        hovertemplate="layer %{x}: %{text}<extra></extra>", xgap=1), row=1, col=1)
    if header:
        fig.add_trace(go.Heatmap(
            z=z, x=x, y=header, colorscale="Viridis", xgap=1, ygap=1,
            colorbar={"title": {"text": "value"}, "len": 0.85, "y": 0.44},
            texttemplate="%{z:.2f}", hovertemplate="layer %{x}<br>%{y} = %{z:.3f}<extra></extra>"),
            row=2, col=1)
    fig.update_xaxes(title_text="layer", type="category", row=2, col=1)
    fig.update_yaxes(autorange="reversed", row=2, col=1)
    fig.update_layout(title=title or f"per-layer recipe ({table['method']})",
                      height=max(260, 120 + 28 * len(header)), margin={"t": 40, "l": 140})
    return fig
