"""CMA-ES from a given point (``optimizer.x0`` as gene values): a study's best searched on."""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.errors import ConfigError
from evomerge.search.driver import run_search
from evomerge.search.front import completed
from evomerge.search.genome import genome_of_models
from evomerge.search.ledger import default_storage, load_study, open_storage
from evomerge.search.objectives import weighted_loss
from evomerge.search.optimizers import make_optimizer
from evomerge.search.space import load_space

from .spaces import space_dict


def _study(name, root):
    return load_study(open_storage(default_storage(name, root)), name)


def _best_params(mini_zoo, root):
    """The params of the best trial of a 4-evaluation search (study ``first``)."""
    space = load_space(space_dict(mini_zoo, name="first", budget={"trials": 4}))
    run_search(space, results_root=root)
    best = min(completed(_study("first", root)),
               key=lambda t: weighted_loss(t.values, space.objectives))
    return best.params


def test_search_continues_from_another_studys_best_and_resumes(mini_zoo, tmp_path):
    """The second study's CMA-ES is centred on the first study's best, its generation 0
    spreads around it, and stopped after 6 evaluations it resumes to the candidates of a
    whole 10-evaluation run."""
    params = _best_params(mini_zoo, tmp_path)

    def space(name):
        opt = {"name": "cma", "popsize": 4, "seed": 0, "x0": params, "sigma0": 0.05}
        return load_space(space_dict(mini_zoo, name=name, optimizer=opt,
                                     budget={"trials": 10}))

    s = space("next")
    genome = genome_of_models(s)
    start = genome.to_unit(params)
    opt = make_optimizer(s.optimizer, genome, s.objectives)
    assert np.allclose(opt._es.mean, start, atol=1e-12)
    assert not np.allclose(start, genome.start_point())  # not the default start in disguise
    run_search(s, results_root=tmp_path / "ref")
    xs = np.array([t.user_attrs["x"] for t in _study("next", tmp_path / "ref").get_trials()
                   if t.user_attrs["cma_gen"] == 0])
    assert xs.shape == (4, genome.dim)
    assert 0 < np.abs(xs - start).max() < 0.25  # sigma 0.05 around the start, not 0.5

    def cands(root):
        return [(t.user_attrs["cma_gen"], t.user_attrs["cma_index"], t.user_attrs["recipe_hash"])
                for t in _study("next", root).get_trials()]

    run_search(space("next"), trials=6, results_root=tmp_path / "r")
    assert run_search(space("next"), results_root=tmp_path / "r").evaluations == 10
    assert cands(tmp_path / "r") == cands(tmp_path / "ref")


@pytest.mark.parametrize("change, message", [
    (lambda p: p.pop(next(iter(p))), r"optimizer\.x0 lacks gene '[^']+': a given start names "
                                     r"each of the \d+ genes once"),
    (lambda p: p.update({"nope": 0.5}), r"optimizer\.x0 names gene 'nope', which this space's "
                                        r"genome lacks"),
    (lambda p: p.update({next(iter(p)): 7.0}), r"optimizer\.x0\.\S+ 7\.0 must be a number in "
                                               r"\[0, 1\]\."),
    (lambda p: p.update({next(iter(p)): "big"}), r"optimizer\.x0\.\S+ 'big' must be a number"),
])
def test_a_bad_start_is_refused_before_the_study_exists(mini_zoo, tmp_path, change, message):
    params = _best_params(mini_zoo, tmp_path / "a")
    change(params)
    opt = {"name": "cma", "popsize": 4, "seed": 0, "x0": params}
    space = load_space(space_dict(mini_zoo, optimizer=opt))
    with pytest.raises(ConfigError, match=message):
        run_search(space, results_root=tmp_path / "b")
    assert not (tmp_path / "b" / "t").exists()
    assert not list((tmp_path / "b").glob("*.db"))


def test_a_start_that_is_no_mapping_is_one_sentence(mini_zoo):
    with pytest.raises(ConfigError, match=r"field 'optimizer\.x0' must be center, uniform, "
                                          r"random or each gene's value by name \(got \[0\.5, "
                                          r"0\.5\]\)\.$"):
        load_space(space_dict(mini_zoo, optimizer={"name": "cma", "x0": [0.5, 0.5]}))
