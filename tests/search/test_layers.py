"""The per-layer view of a recipe (table and heatmap), over every layer-swap outcome."""

from __future__ import annotations

import pytest

from evomerge.search.layers import heatmap_figure, layer_table
from evomerge.search.param_genome import ParamGenome
from evomerge.search.space import SearchSpace
from search.spaces import space_dict


@pytest.fixture()
def space(tmp_path) -> SearchSpace:
    doc = space_dict(tmp_path, layer_swap={"choices": ["merge", "base", "math", "lang"]},
                     granularity={"layers_per_group": 1, "split_attn_mlp": True})
    return SearchSpace.model_validate(doc)


@pytest.mark.parametrize("swapped", ["base", "math", "lang"])
def test_table_and_heatmap_follow_the_genome(space, swapped):
    genome = ParamGenome(space, 4)
    params = {g.name: (g.choices[0] if g.choices else round(0.1 + 0.01 * i, 2))
              for i, g in enumerate(genome.genes)}
    params["swap.g2"] = swapped
    table = layer_table(space, 4, params)
    layers = [r for r in table["rows"] if r["layer"] != "embed/head"]
    assert [r["source"] for r in layers] == ["merge", "merge", swapped, "merge"]
    col = table["header"].index("weight[math].attn")
    assert [r["values"][col] for r in layers] == [
        params["weight.math.g0.attn"], params["weight.math.g1.attn"], None,
        params["weight.math.g3.attn"]]
    fig = heatmap_figure(table)
    strip, cells = fig.data
    assert list(strip.text[0][:4]) == ["merge", "merge", swapped, "merge"]
    assert strip.z[0][2] == table["sources"].index(swapped)
    assert list(cells.y) == table["header"]
    assert cells.z[col][2] is None and cells.z[col][0] == params["weight.math.g0.attn"]


def test_path_view_lists_each_step(tmp_path):
    """A data-flow candidate's view is its path: source model, its layer, the scale."""
    doc = space_dict(tmp_path, method=None, parameters={},
                     dfs={"repeats": 2, "scaling": "pair"})
    space = SearchSpace.model_validate(doc)
    params = {"on.r0.math.l0": True, "on.r0.math.l1": False, "on.r0.lang.l0": False,
              "on.r0.lang.l1": True, "on.r1.math.l0": True, "on.r1.math.l1": False,
              "on.r1.lang.l0": False, "on.r1.lang.l1": False, "scale.math.math": 1.0,
              "scale.math.lang": 1.5, "scale.lang.math": 0.7, "scale.lang.lang": 1.0}
    table = layer_table(space, 2, params)
    assert [(r["layer"], r["source"], r["values"]) for r in table["rows"]] == [
        (0, "math", [0, 1.0]), (1, "lang", [1, 1.5]), (2, "math", [0, 0.7])]
    assert table["rows"][1]["label"] == "lang layer 1"
    strip, cells = heatmap_figure(table).data
    assert list(strip.text[0]) == ["math", "lang", "math"]
    assert list(cells.y) == ["source layer", "scale"]
