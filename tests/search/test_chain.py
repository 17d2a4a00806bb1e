"""Chained studies: stage names and the multi-document export of a pinned point."""

from __future__ import annotations

import yaml

from evomerge.search.chain import chained_docs, stage_name


def test_stage_names_are_plain():
    assert stage_name("study:zoo_ps#best") == "zoo_ps-best"
    assert stage_name("study:a.b#trial=12") == "a.b-trial-12"


def test_chained_docs_name_the_pinned_stage_everywhere_it_is_used():
    pinned = {"study:ps#best": yaml.safe_dump({"merge_method": "linear", "models": [
        {"model": "m/a", "parameters": {"weight": 1.0}}]})}
    recipe = yaml.safe_dump({
        "merge_method": "passthrough",
        "slices": [{"sources": [{"model": "study:ps#best", "layer_range": [0, 1]}]},
                   {"sources": [{"model": "m/b", "layer_range": [0, 1]}]}],
        "evomerge": {"path": [["study:ps#best", 0, 1.0], ["m/b", 0, 1.2]]}})
    stage, final = chained_docs(recipe, pinned)
    assert stage == {"name": "ps-best", "merge_method": "linear",
                     "models": [{"model": "m/a", "parameters": {"weight": 1.0}}]}
    assert [s["sources"][0]["model"] for s in final["slices"]] == ["ps-best", "m/b"]
    assert final["evomerge"]["path"][0][0] == "ps-best"
    assert chained_docs(recipe.replace("study:ps#best", "m/c"), pinned) == [
        yaml.safe_load(recipe.replace("study:ps#best", "m/c"))]
