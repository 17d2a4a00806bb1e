"""CMA-ES from a given point (``optimizer.x0``: gene values, or another study's point)."""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.errors import ConfigError
from evomerge.search.driver import run_search
from evomerge.search.front import completed
from evomerge.search.genome import genome_of_models
from evomerge.search.ledger import default_journal, default_storage, load_study, open_storage
from evomerge.search.objectives import weighted_loss
from evomerge.search.optimizers import make_optimizer
from evomerge.search.space import load_space

from .spaces import space_dict


def _study(name, root):
    return load_study(open_storage(default_storage(name, root)), name)


def _first(mini_zoo, root, trials=4):
    """Study ``first`` run to ``trials`` evaluations; the params of its best trial."""
    space = load_space(space_dict(mini_zoo, name="first", budget={"trials": 4}))
    run_search(space, trials=trials, results_root=root)
    best = min(completed(_study("first", root)),
               key=lambda t: weighted_loss(t.values, space.objectives))
    return best.params


def _next(mini_zoo, x0):
    opt = {"name": "cma", "popsize": 4, "seed": 0, "x0": x0, "sigma0": 0.05}
    return load_space(space_dict(mini_zoo, name="next", optimizer=opt, budget={"trials": 10}))


def _cands(root):
    return [(t.user_attrs["cma_gen"], t.user_attrs["cma_index"], t.user_attrs["recipe_hash"])
            for t in _study("next", root).get_trials()]


def test_search_starts_at_the_given_gene_values(mini_zoo, tmp_path):
    """CMA-ES is centred on the given point and its generation 0 spreads around it."""
    params = _first(mini_zoo, tmp_path)
    s = _next(mini_zoo, params)
    genome = genome_of_models(s)
    start = genome.to_unit(params)
    assert np.allclose(make_optimizer(s.optimizer, genome, s.objectives)._es.mean, start,
                       atol=1e-12)
    assert not np.allclose(start, genome.start_point())  # not the default start in disguise
    run_search(s, results_root=tmp_path)
    xs = np.array([t.user_attrs["x"] for t in _study("next", tmp_path).get_trials()
                   if t.user_attrs["cma_gen"] == 0])
    assert xs.shape == (4, genome.dim)
    assert 0 < np.abs(xs - start).max() < 0.25  # sigma 0.05 around the start, not 0.5


def test_a_study_point_as_start_is_pinned_and_kept_on_resume(mini_zoo, tmp_path):
    """``x0: study:first#best`` is stored as that trial's gene values (the search is the one
    those values give), and a resume keeps them after study ``first`` has found a better
    point."""
    params = _first(mini_zoo, tmp_path)
    run_search(_next(mini_zoo, params), results_root=tmp_path / "given")
    run_search(_next(mini_zoo, "study:first#best"), trials=6, results_root=tmp_path)
    assert _study("next", tmp_path).user_attrs["evomerge_space"]["optimizer"]["x0"] == params
    assert _first(mini_zoo, tmp_path, trials=12) != params  # first has moved on
    assert run_search(_next(mini_zoo, "study:first#best"), results_root=tmp_path).evaluations == 10
    assert _cands(tmp_path) == _cands(tmp_path / "given")
    # another point under the same study name is another search: refused, not continued
    with pytest.raises(ConfigError, match=r"Study 'next' exists with a different search space"):
        run_search(_next(mini_zoo, "study:first#trial=0"), results_root=tmp_path)
    with pytest.raises(ConfigError, match=r"optimizer\.x0 'study:first#trial=99': "):
        run_search(_next(mini_zoo, "study:first#trial=99"), results_root=tmp_path)


def test_a_slurm_study_in_its_journal_is_found(mini_zoo, tmp_path):
    """A study a Slurm job ran lives in ``results/NAME/journal.log``, not ``study.db``: a
    ``study:`` start finds it there."""
    space = load_space(space_dict(mini_zoo, name="first", budget={"trials": 4}))
    journal = default_journal("first", tmp_path)
    run_search(space, storage=journal, results_root=tmp_path)
    study = load_study(open_storage(journal), "first")
    best = min(completed(study), key=lambda t: weighted_loss(t.values, space.objectives))
    assert not (tmp_path / "first" / "study.db").exists()
    run_search(_next(mini_zoo, "study:first#best"), trials=1, results_root=tmp_path)
    assert _study("next", tmp_path).user_attrs["evomerge_space"]["optimizer"]["x0"] == best.params


def test_a_missing_study_point_is_refused(mini_zoo, tmp_path):
    with pytest.raises(ConfigError, match=r"optimizer\.x0 'study:gone#best': no study 'gone'"):
        run_search(_next(mini_zoo, "study:gone#best"), results_root=tmp_path)
    with pytest.raises(ConfigError, match=r"optimizer\.x0 'study:gone#worst' must name a "
                                          r"study's point: study:NAME#best, #trial=N or "
                                          r"#pareto=I\.$"):
        run_search(_next(mini_zoo, "study:gone#worst"), results_root=tmp_path)
    assert not list(tmp_path.rglob("*.db")) and not list(tmp_path.rglob("journal.log*"))


@pytest.mark.parametrize("change, message", [
    (lambda p: p.pop(next(iter(p))), r"optimizer\.x0 lacks gene '[^']+': a given start names "
                                     r"each of the \d+ genes once"),
    (lambda p: p.update({"nope": 0.5}), r"optimizer\.x0 names gene 'nope', which this space's "
                                        r"genome lacks"),
    (lambda p: p.update({next(iter(p)): 7.0}), r"optimizer\.x0\.\S+ 7\.0 must be a number in "
                                               r"\[0, 1\]\."),
    (lambda p: p.update({next(iter(p)): "big"}), r"optimizer\.x0\.\S+ 'big' must be a number"),
    (lambda p: p.update({next(iter(p)): float("nan")}), r"optimizer\.x0\.\S+ nan must be a "
                                                        r"number in \[0, 1\]\."),
    (lambda p: p.update({next(iter(p)): float("-inf")}), r"optimizer\.x0\.\S+ -inf must be a "
                                                         r"number in \[0, 1\]\."),
])
def test_a_bad_start_is_refused_before_the_study_exists(mini_zoo, tmp_path, change, message):
    params = _first(mini_zoo, tmp_path / "a")
    change(params)
    opt = {"name": "cma", "popsize": 4, "seed": 0, "x0": params}
    space = load_space(space_dict(mini_zoo, optimizer=opt))
    with pytest.raises(ConfigError, match=message):
        run_search(space, results_root=tmp_path / "b")
    assert not (tmp_path / "b" / "t").exists()
    assert not list((tmp_path / "b").glob("*.db"))


def test_a_start_that_is_no_mapping_is_one_sentence(mini_zoo):
    with pytest.raises(ConfigError, match=r"field 'optimizer\.x0' must be center, uniform, "
                                          r"random, each gene's value by name or a study's "
                                          r"point, study:NAME#best \(got \[0\.5, 0\.5\]\)\.$"):
        load_space(space_dict(mini_zoo, optimizer={"name": "cma", "x0": [0.5, 0.5]}))


def test_a_study_in_both_default_files_or_an_unreadable_one_is_named(mini_zoo, tmp_path):
    """``study:first#best`` where ``first`` has both a local SQLite file and a Slurm journal is
    refused naming both (which one is meant is the user's to say); a study file that exists
    but cannot be read is named with its reason, not reported as a search never run."""
    space = load_space(space_dict(mini_zoo, name="first", budget={"trials": 2}))
    run_search(space, results_root=tmp_path)
    run_search(space, storage=default_journal("first", tmp_path), results_root=tmp_path)
    with pytest.raises(ConfigError, match=(
            rf"^optimizer\.x0 'study:first#best': Study 'first' has two files, "
            rf"{tmp_path}/first/study\.db \(a local search\) and {tmp_path}/first/journal\.log "
            rf"\(a Slurm job\); move one of them aside\.$")):
        run_search(_next(mini_zoo, "study:first#best"), results_root=tmp_path)
    assert not (tmp_path / "next").exists()
    other = tmp_path / "other"
    (other / "first").mkdir(parents=True)
    (other / "first" / "study.db").write_bytes(b"not a database")
    with pytest.raises(ConfigError, match=r"^optimizer\.x0 'study:first#best': Cannot open "
                                          r"storage 'sqlite:///.*other/first/study\.db': "
                                          r"DatabaseError"):
        run_search(_next(mini_zoo, "study:first#best"), results_root=other)
    assert sorted(p.name for p in other.rglob("*")) == ["first", "study.db"]
