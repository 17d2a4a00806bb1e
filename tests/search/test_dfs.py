"""Data-flow-space search on the mini zoo: genome, search, resume, front, export, merge; and
PS+DFS, a DFS study over another study's best point."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from optuna.trial import TrialState

from evomerge.cli import main
from evomerge.engine.paths import Step, recipe_path
from evomerge.engine.recipe import load_recipe
from evomerge.errors import ConfigError
from evomerge.search.dfs import PathGenome
from evomerge.search.driver import run_search
from evomerge.search.ledger import counted, default_storage, load_study, open_storage
from evomerge.search.space import load_space

from .spaces import space_dict

NUM_LAYERS = 2  # the mini zoo's depth


def dfs_dict(zoo, **over) -> dict:
    d = space_dict(zoo, name="d", method=None, parameters={},
                   dfs={"repeats": 2, "scaling": "pair", "max_length": 6})
    d.update(over)
    return d


def _study(name, root):
    return load_study(open_storage(default_storage(name, root)), name)


def test_genome_slots_flags_and_pair_scales(mini_zoo):
    space = load_space(dfs_dict(mini_zoo))
    g = PathGenome(space, NUM_LAYERS)
    flags = [x.name for x in g.genes if x.flag]
    assert flags == [f"on.r{r}.{a}.l{i}" for r in range(2) for a in ("math", "lang")
                     for i in range(NUM_LAYERS)]  # T = M * L * r slots, model-major
    assert [x.name for x in g.genes if not x.flag] == [
        "scale.math.math", "scale.math.lang", "scale.lang.math", "scale.lang.lang"]
    # the start point decodes to the first model's own layers, unscaled
    start = g.path(g.from_unit(g.start_point()))
    assert start == [Step(space.models["math"], i, 1.0) for i in range(NUM_LAYERS)]
    x = g.start_point()
    x[flags.index("on.r0.lang.l1")] = 0.9          # lang's layer 1 joins after math's
    x[flags.index("on.r1.math.l0")] = 0.9          # math's layer 0 again, in repetition 1
    x[len(flags) + 1] = (1.5 - 0.5) / 1.5          # W[math, lang] = 1.5
    path = g.path(g.from_unit(x))
    m, lg = space.models["math"], space.models["lang"]
    assert path == [Step(m, 0), Step(m, 1), Step(lg, 1, 1.5), Step(m, 0)]
    np.testing.assert_allclose(g.to_unit(g.from_unit(x))[:len(flags)] > 0.5,
                               x[:len(flags)] > 0.5)


def test_max_length_cuts_the_path_and_empty_paths_are_refused(mini_zoo):
    space = load_space(dfs_dict(mini_zoo, dfs={"repeats": 2, "scaling": "none",
                                                "max_length": 3}))
    g = PathGenome(space, NUM_LAYERS)
    assert len(g.path({x.name: True for x in g.genes})) == 3
    with pytest.raises(ConfigError, match="empty"):
        g.recipe({x.name: False for x in g.genes})


@pytest.mark.parametrize("bad, match", [
    ({"method": "ties"}, "paths only"),
    ({"dfs": {"scale": [1.2, 2.0]}}, "must contain 1"),
    ({"dfs": {"start": "nope"}}, "dfs.start"),
    ({"models": {"ps": "study:x#worst"}}, "not a study point"),
])
def test_bad_dfs_spaces_fail_fast(mini_zoo, bad, match):
    d = dfs_dict(mini_zoo)
    d.update(bad)
    with pytest.raises(ConfigError, match=match):
        load_space(d)


def test_dfs_search_resume_front_export_merge(mini_zoo, tmp_path):
    """A DFS search stopped after 6 evaluations and resumed reaches the candidates of an
    uninterrupted 12-evaluation run; the best path exports to a passthrough recipe that
    `evomerge merge` builds at the path's depth, and that scores as the search scored it."""
    space = load_space(dfs_dict(mini_zoo, budget={"trials": 12}))
    run_search(space, results_root=tmp_path / "ref")
    run_search(space, trials=6, results_root=tmp_path / "r")
    assert run_search(space, results_root=tmp_path / "r").evaluations == 12

    def cands(root):
        return sorted((t.user_attrs["cma_gen"], t.user_attrs["cma_index"],
                       t.user_attrs.get("recipe_hash")) for t in _study("d", root).get_trials())
    assert cands(tmp_path / "r") == cands(tmp_path / "ref")
    trials = [t for t in _study("d", tmp_path / "r").get_trials() if counted(t)]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    depths = {len(recipe_path(load_recipe(t.user_attrs["recipe"]))) for t in trials}
    assert len(depths) > 1  # the search changes depth
    assert json.loads((tmp_path / "r" / "d" / "pareto.json").read_text())["front"]

    out = tmp_path / "best.yaml"
    assert main(["export", "d", "--results", str(tmp_path / "r"), "--best", "-o", str(out)]) == 0
    recipe = load_recipe(out)
    assert recipe.merge_method == "passthrough"
    assert main(["merge", str(out), str(tmp_path / "model"), "-q"]) == 0
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == len(recipe.slices) == len(recipe_path(recipe))
    _scores_as_searched(space, tmp_path / "model", out)


def _scores_as_searched(space, model_dir, recipe_file):
    """The built model scored by the space's evaluators matches the exported scores."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.search.worker import build_evaluators

    want = yaml.safe_load(recipe_file.read_text().split("\n---")[-1])["evomerge"]["scores"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(space.base_model)
    got = {}
    for ev in build_evaluators(space).values():
        got.update(ev(model, tok))
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-4), key


def test_ps_plus_dfs_chains_a_study_and_exports_stages(mini_zoo, tmp_path):
    """PS first; then DFS over the PS study's best point and the math expert. The point is
    pinned at the start (a resumed study keeps it after the PS study moves on), built once per
    worker, and the export is a two-stage recipe that `evomerge merge` builds."""
    root = tmp_path / "res"
    ps = load_space(space_dict(mini_zoo, name="ps", budget={"trials": 12}))
    run_search(ps, trials=4, results_root=root)
    models = {"ps": "study:ps#best", "math": str(mini_zoo / "math")}
    space = load_space(dfs_dict(mini_zoo, name="psdfs", models=models, budget={"trials": 6},
                                dfs={"repeats": 1, "scaling": "slot", "start": "ps"}))
    run_search(space, trials=3, results_root=root)
    pinned = _study("psdfs", root).user_attrs["evomerge_space"]["pinned"]["study:ps#best"]
    first_pin = yaml.safe_load(pinned)["evomerge"]["trial"]
    run_search(ps, results_root=root)  # the PS study moves on: a new best
    from evomerge.search.front import best_trial

    assert best_trial(_study("ps", root), ps).number != first_pin
    assert run_search(space, results_root=root).evaluations == 6
    study = _study("psdfs", root)
    again = study.user_attrs["evomerge_space"]["pinned"]["study:ps#best"]
    assert yaml.safe_load(again)["evomerge"]["trial"] == first_pin
    steps = [recipe_path(load_recipe(t.user_attrs["recipe"])) for t in study.get_trials()
             if counted(t)]
    assert any(s.model == "study:ps#best" for p in steps for s in p)
    assert all(t.state == TrialState.COMPLETE for t in study.get_trials() if counted(t))

    out = tmp_path / "chain.yaml"
    assert main(["export", "psdfs", "--results", str(root), "--best", "-o", str(out)]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    assert docs[0]["name"] == "ps-best" and docs[0]["merge_method"] == "ties"
    assert "name" not in docs[-1]
    assert main(["merge", str(out), str(tmp_path / "model"), "-q"]) == 0
    assert (tmp_path / "model-stages" / "ps-best" / "config.json").is_file()
    _scores_as_searched(space, tmp_path / "model", out)
