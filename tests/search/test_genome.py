from __future__ import annotations

import numpy as np
import pytest
import torch

from evomerge.engine.materialize import Materializer
from evomerge.search.gene import genome_hash, recipe_hash
from evomerge.search.param_genome import ParamGenome
from evomerge.search.space import load_space

from .spaces import space_dict


def _genome(zoo, **over):
    return ParamGenome(load_space(space_dict(zoo, **over)), num_layers=2)


def test_genes_follow_the_method_spec(mini_zoo):
    g = _genome(mini_zoo)
    names = [x.name for x in g.genes]
    # 2 layer groups + io, per expert, for each searched per-model parameter
    assert len(names) == 2 * 3 * 2 and "weight.math.g0.all" in names and "density.lang.io.all" in names
    g2 = _genome(mini_zoo, method=["ties", "task_arithmetic"], layer_swap=True,
                 granularity={"split_attn_mlp": True, "embeddings": False})
    names2 = [x.name for x in g2.genes]
    assert names2[0] == "method" and "weight.math.g1.mlp" in names2 and "swap.g1" in names2
    assert g2.dim == sum(x.width for x in g2.genes)


def test_unit_round_trip_and_argmax(mini_zoo):
    g = _genome(mini_zoo, method=["ties", "task_arithmetic"], layer_swap=True)
    rng = np.random.default_rng(0)
    for _ in range(20):
        params = g.from_unit(rng.random(g.dim))
        assert g.from_unit(g.to_unit(params)) == pytest.approx(params)
    x = np.full(g.dim, 0.5)
    x[1] = 0.9  # method: second choice wins the argmax
    assert g.from_unit(x)["method"] == "task_arithmetic"
    x[0:2] = 0.7  # a tie goes to the first choice
    assert g.from_unit(x)["method"] == "ties"


def test_decoded_recipe_has_the_per_layer_values(mini_zoo):
    g = _genome(mini_zoo)
    params = g.from_unit(np.linspace(0, 1, g.dim))
    recipe = g.recipe(params)
    mat = Materializer([str(mini_zoo / "math"), str(mini_zoo / "lang")], str(mini_zoo / "base"))
    plan = mat.plan(recipe)
    task = next(t for t in plan.tasks if t.out_name == "model.layers.1.mlp.up_proj.weight")
    assert task.per_model["weight"] == pytest.approx((params["weight.math.g1.all"],
                                                      params["weight.lang.g1.all"]))
    emb = next(t for t in plan.tasks if t.out_name == "model.embed_tokens.weight")
    assert emb.per_model["density"] == pytest.approx((params["density.math.io.all"],
                                                      params["density.lang.io.all"]))


def test_layer_swap_choice_copies_that_model(mini_zoo):
    from oracle import load_dir

    g = _genome(mini_zoo, layer_swap=True)
    params = g.from_unit(np.full(g.dim, 0.3))
    params.update({"swap.g0": "lang", "swap.g1": "math"})
    mat = Materializer([str(mini_zoo / "math"), str(mini_zoo / "lang")], str(mini_zoo / "base"))
    state = mat.materialize(g.recipe(params)).state_dict()
    lang, math = load_dir(mini_zoo / "lang"), load_dir(mini_zoo / "math")
    k0, k1 = "model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight"
    assert torch.allclose(state[k0], lang[k0], atol=1e-6)
    assert torch.allclose(state[k1], math[k1], atol=1e-6)


def test_pure_layer_swap_is_passthrough(mini_zoo):
    g = _genome(mini_zoo, method=None, parameters={}, layer_swap=True)
    recipe = g.recipe({"swap.g0": "base", "swap.g1": "lang"})
    assert recipe.merge_method == "passthrough"
    assert [s.sources[0].model for s in recipe.slices] == [str(mini_zoo / "base"),
                                                           str(mini_zoo / "lang")]


def test_genome_hash():
    assert genome_hash({"a": 0.1 + 0.2, "b": "x"}) == genome_hash({"b": "x", "a": 0.3})
    assert genome_hash({"a": 0.3}) != genome_hash({"a": 0.31})


def test_recipe_hash_ignores_moot_genes_and_provenance(mini_zoo):
    g = _genome(mini_zoo, layer_swap=True)
    a = g.from_unit(np.full(g.dim, 0.3))
    a.update({"swap.g0": "lang", "swap.g1": "merge"})
    b = dict(a, **{"weight.math.g0.all": 0.9})  # group 0 is copied from lang: moot
    c = dict(a, **{"weight.math.g1.all": 0.9})  # group 1 is merged: matters
    assert recipe_hash(g.recipe(a, {"trial": 1})) == recipe_hash(g.recipe(b, {"trial": 2}))
    assert recipe_hash(g.recipe(a)) != recipe_hash(g.recipe(c))


def test_start_point_is_the_uniform_soup(mini_zoo):
    g = _genome(mini_zoo, parameters={"weight": [0.0, 1.5], "density": [0.1, 1.0]},
                layer_swap=True)
    params = g.from_unit(g.start_point())
    assert params["weight.math.g0.all"] == pytest.approx(0.5)   # 1/n with two experts
    assert params["density.lang.io.all"] == pytest.approx(0.1 + 0.9 * 0.9)  # default 1.0, kept inside
    assert params["swap.g1"] == "merge"
