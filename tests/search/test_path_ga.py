"""The structured data-flow search (path_ga): paths as segments, their encoding in a dfs
space's genes, the operators, and the search on the mini zoo (run, resume, PS+DFS start)."""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.errors import ConfigError
from evomerge.search.dfs import PathGenome
from evomerge.search.driver import run_search
from evomerge.search.executors import InlineExecutor
from evomerge.search.ledger import counted, default_storage, load_study, open_storage
from evomerge.search.path_ops import OPERATORS, PathCodec, Segment, crossover, mutate, splice
from evomerge.search.space import load_space

from .spaces import space_dict

L = 6  # a pretend depth for codec tests (the genome never opens the models)


def _space(zoo, dfs=None, optimizer=None, **over):
    d = space_dict(zoo, name="g", method=None, parameters={},
                   dfs=dfs or {"repeats": 2, "scaling": "pair", "start": "math"},
                   optimizer=optimizer or {"name": "path_ga", "popsize": 4, "parents": 2,
                                           "seed": 0})
    d.update(over)
    return load_space(d)


def _codec(zoo, **dfs):
    return PathCodec(PathGenome(_space(zoo, dfs={"repeats": 2, "scaling": "pair", **dfs}), L))


def test_codec_round_trip_and_what_the_slots_hold(mini_zoo):
    c = _codec(mini_zoo)
    own = c.own("lang")
    params = c.encode(own)
    assert [k for k, v in params.items() if v is True] == [f"on.r0.lang.l{i}" for i in range(L)]
    assert c.decode(params) == own
    # math 0-2, lang 3-5, math 3-5 again: the third segment needs repetition 1
    p = (Segment("math", 0, 3), Segment("lang", 3, 6, 1.5), Segment("math", 3, 6, 0.8))
    got = c.canonical(p)
    assert got == p and c.decode(c.encode(got)) == got
    assert c.encode(got)["on.r1.math.l3"] and c.encode(got)["scale.lang.math"] == 0.8
    # four alternations need three repetitions of the model pair: not with repeats 2
    assert c.canonical(p + (Segment("lang", 0, 1), Segment("math", 0, 1))) is None
    assert _codec(mini_zoo, max_length=5).canonical(p) is None


def test_pair_scaling_shares_a_transition_scale_and_keeps_w_aa_at_one(mini_zoo):
    c = _codec(mini_zoo, repeats=3)
    p = (Segment("math", 0, 2), Segment("lang", 2, 4, 1.5), Segment("math", 4, 5, 0.7),
         Segment("lang", 5, 6, 1.9), Segment("lang", 5, 6, 1.3))
    got = c.canonical(p)
    # the second math -> lang transition takes the first one's W; lang -> lang is unscaled
    assert [s.scale for s in got] == [1.0, 1.5, 0.7, 1.5, 1.0]
    assert c.decode(c.encode(got)) == got
    slot = _codec(mini_zoo, repeats=3, scaling="slot").canonical(p)
    assert [s.scale for s in slot] == [1.0, 1.5, 0.7, 1.9, 1.3]
    assert [s.scale for s in _codec(mini_zoo, scaling="none").canonical(p[:3])] == [1.0] * 3
    assert _codec(mini_zoo, scale=[0.8, 1.2]).canonical(p[:2])[1].scale == 1.2  # clipped


@pytest.mark.parametrize("scaling", ["pair", "slot", "none"])
def test_every_operator_yields_paths_the_genes_round_trip(mini_zoo, scaling):
    c = _codec(mini_zoo, repeats=3, scaling=scaling)
    rng = np.random.default_rng(0)
    path, held = c.own("math"), 0
    for k in range(300):
        child = c.canonical(mutate(path, rng, c.aliases, L, OPERATORS[k % len(OPERATORS)]))
        if child is not None:
            held += 1
            assert c.decode(c.encode(child)) == child
            assert all(0 <= s.start < s.stop <= L for s in child)
            path = child if len(child) < 5 else c.own("lang")
    assert held > 200


def test_operators_do_what_they_say():
    rng = np.random.default_rng(1)
    own = (Segment("math", 0, 6),)
    re = mutate(own, rng, ["math", "lang"], 6, "resource")
    assert {s.alias for s in re} == {"math", "lang"} and sum(map(len, re)) == 6
    dup = mutate(own, np.random.default_rng(2), ["math", "lang"], 6, "duplicate")
    assert sum(map(len, dup)) > 6 and {s.alias for s in dup} == {"math"}
    assert mutate(own, rng, ["math", "lang"], 6, "delete") == own  # never empties a path
    two = (Segment("math", 0, 3), Segment("lang", 3, 6))
    shifted = {mutate(two, np.random.default_rng(k), ["math", "lang"], 6, "shift")
               for k in range(10)}
    moved = [p for p in shifted if len(p) == 2 and p[0].stop == p[1].start != 3]
    assert moved and all(sum(map(len, p)) == 6 for p in moved)  # the boundary moved
    assert all(0 <= s.start < s.stop <= 6 for p in shifted for s in p)
    scaled = mutate(two, rng, ["math", "lang"], 6, "scale")
    assert scaled[0] == two[0] and scaled[1].scale != 1.0
    with pytest.raises(ValueError, match="unknown path operator 'x'"):
        mutate(two, rng, ["math"], 6, "x")


@pytest.mark.parametrize("reach", [1, 2])
def test_reach_bounds_the_layers_one_mutation_touches(reach):
    """A local search near a good start: a re-source changes at most ``reach`` layers, a
    delete / duplicate / insert changes the depth by at most ``reach``; without a reach a
    re-source takes the whole segment half the time."""
    aliases, own = ["ps", "math", "lang"], (Segment("ps", 0, 30),)
    for k in range(200):
        re = mutate(own, np.random.default_rng(k), aliases, 30, "resource", reach=reach)
        steps = [(s.alias, i) for s in re for i in range(s.start, s.stop)]
        assert len(steps) == 30 and 1 <= sum(a != "ps" for a, _ in steps) <= reach
        assert [i for _, i in steps] == list(range(30))  # same layers, some from an expert
        for op in ("delete", "duplicate", "insert"):
            got = sum(map(len, mutate(own, np.random.default_rng(k), aliases, 30, op,
                                      reach=reach)))
            assert 1 <= abs(got - 30) <= reach, (op, got)
    drawn = [mutate(own, np.random.default_rng(k), aliases, 30, "resource") for k in range(200)]
    whole = sum(len(p) == 1 and p[0].alias != "ps" for p in drawn)
    assert 60 < whole < 140


@pytest.mark.parametrize("reach,max_shift", [(1, 1), (2, 3)])
def test_a_local_insert_goes_anywhere_and_stays_near_its_depth(reach, max_shift):
    """With a reach, an insert lands before any layer of a one-segment path (not only at its
    ends) and its layers lie within d - max_shift .. d + max_shift + reach - 2 of the depth
    d there: no layer 21 before layer 0."""
    aliases, own = ["ps", "math", "lang"], (Segment("ps", 0, 30),)
    where = set()
    for k in range(300):
        got = mutate(own, np.random.default_rng(k), aliases, 30, "insert", max_shift=max_shift,
                     reach=reach)
        steps = [(s.alias, i) for s in got for i in range(s.start, s.stop)]
        n = len(steps) - 30
        assert 1 <= n <= min(reach, max_shift + 1)
        # the original layers, in order, around the n inserted ones at position p
        p = next(j for j in range(31) if steps[:j] + steps[j + n:] == [("ps", i) for i in
                                                                        range(30)])
        where.add(p)
        for _, layer in steps[p:p + n]:
            assert p - max_shift <= layer <= p + max_shift + reach - 2, (p, steps[p:p + n])
    assert len(where) > 20  # before most layers, not only at the ends


def test_crossover_joins_two_paths_at_the_same_depth():
    a, b = (Segment("math", 0, 6),), (Segment("lang", 0, 6),)
    for seed in range(5):
        child = crossover(a, b, np.random.default_rng(seed))
        assert child[0].alias == "math" and child[-1].alias == "lang"
        assert [s.start for s in child] == [0, child[0].stop] and child[-1].stop == 6


def test_splice_puts_a_run_of_the_other_path_in_at_its_own_depth():
    a, b = (Segment("math", 0, 6),), (Segment("lang", 0, 4, 1.5), Segment("lang", 4, 6))
    seen = set()
    for seed in range(20):
        child = splice(a, b, np.random.default_rng(seed))
        assert [s.alias for s in child] == ["math", "lang", "math"], child
        assert [(s.start, s.stop) for s in child] == [(0, child[1].start), (child[1].start,
                                                       child[2].start), (child[2].start, 6)]
        # b's scale enters only where the run begins at b's own segment start, layer 0: never
        assert all(s.scale == 1.0 for s in child)
        seen.add((child[1].start, child[2].start))
    assert len(seen) > 5  # the cuts vary
    assert splice((Segment("math", 0, 2),), b, np.random.default_rng(0))[0].alias == "math"
    # a path that goes back in depth: where no layer of b lies between the cuts' depths, a
    # one-point crossover (never a path with a's layers only dropped)
    back = (Segment("math", 0, 4), Segment("math", 1, 3))
    for seed in range(20):
        child = splice(back, b, np.random.default_rng(seed))
        assert any(s.alias == "lang" for s in child), child


def test_path_ga_needs_a_dfs_space_and_known_starts(mini_zoo):
    with pytest.raises(ConfigError, match="optimizer 'path_ga' searches data-flow paths"):
        load_space(space_dict(mini_zoo, optimizer={"name": "path_ga"}))
    with pytest.raises(ConfigError, match="optimizer.starts 'x' is not a model alias"):
        _space(mini_zoo, optimizer={"name": "path_ga", "starts": ["x"]})
    with pytest.raises(ConfigError, match="crossover"):
        _space(mini_zoo, optimizer={"name": "path_ga", "crossover": 2})
    with pytest.raises(ConfigError, match=r"optimizer.path_ga.operators.0' input should be .*got 'swap'"):
        _space(mini_zoo, optimizer={"name": "path_ga", "operators": ["swap"]})  # one sentence
    with pytest.raises(ConfigError, match=r"optimizer.operators \['scale'\] has nothing"):
        _space(mini_zoo, dfs={"repeats": 2, "scaling": "none", "start": "math"},
               optimizer={"name": "path_ga", "operators": ["scale"]})


def test_operators_and_reach_narrow_what_a_generation_draws(mini_zoo):
    """Generation 0 from math's own path with only re-sources of one layer: every other
    candidate is math's path with exactly one layer taken from lang, in place."""
    from evomerge.search.optimizers import make_optimizer

    space = _space(mini_zoo, optimizer={"name": "path_ga", "popsize": 6, "seed": 3,
                                        "operators": ["resource"], "reach": 1})
    genome = PathGenome(space, L)
    opt = make_optimizer(space.optimizer, genome, space.objectives)
    paths = [PathCodec(genome).decode(opt.ask().params) for _ in range(6)]
    assert paths[0] == (Segment("math", 0, L),)
    for p in paths[1:]:  # one or two single-layer re-sources (a second one 30% of the time)
        steps = [(s.alias, i) for s in p for i in range(s.start, s.stop)]
        assert [i for _, i in steps] == list(range(L)) and 1 <= sum(a == "lang" for a, _ in
                                                                     steps) <= 2


def test_init_mutations_spread_generation_0(mini_zoo):
    """``init_mutations: 3`` with single-layer re-sources between two models: each mutant of
    math's path is three flips of one layer, so it takes 1 or 3 layers from lang (never 2, as
    one or two flips would give), and the first generation holds both."""
    from evomerge.search.optimizers import make_optimizer

    space = _space(mini_zoo, optimizer={"name": "path_ga", "popsize": 8, "seed": 3,
                                        "operators": ["resource"], "reach": 1,
                                        "init_mutations": 3})
    assert list(space.models) == ["math", "lang"]
    genome = PathGenome(space, L)
    opt = make_optimizer(space.optimizer, genome, space.objectives)
    paths = [PathCodec(genome).decode(opt.ask().params) for _ in range(8)]
    assert paths[0] == (Segment("math", 0, L),)
    counts = [sum(s.alias == "lang" for s in p for _ in range(s.start, s.stop)) for p in paths[1:]]
    assert set(counts) == {1, 3}, counts
    assert all(sum(map(len, p)) == L for p in paths)  # re-sources keep the depth
    with pytest.raises(ConfigError, match="init_mutations"):
        _space(mini_zoo, optimizer={"name": "path_ga", "init_mutations": 0})


def test_init_splices_fill_generation_0_with_splices_of_the_starts(mini_zoo):
    """``init_splices: 1`` with two starts: after the two own paths, every candidate of
    generation 0 is one start's path with one run of the other's layers at their own depth;
    both directions come up. The share is a number in [0, 1]."""
    from evomerge.search.optimizers import make_optimizer

    space = _space(mini_zoo, optimizer={"name": "path_ga", "popsize": 8, "seed": 1,
                                        "starts": ["math", "lang"], "init_splices": 1.0})
    genome = PathGenome(space, L)
    opt = make_optimizer(space.optimizer, genome, space.objectives)
    paths = [PathCodec(genome).decode(opt.ask().params) for _ in range(8)]
    assert paths[:2] == [(Segment("math", 0, L),), (Segment("lang", 0, L),)]
    for p in paths[2:]:
        assert [(s.start, s.stop) for s in p] == [(0, p[0].stop), (p[0].stop, p[1].stop),
                                                  (p[1].stop, L)], p
        assert p[0].alias == p[2].alias != p[1].alias
    assert {p[0].alias for p in paths[2:]} == {"math", "lang"}
    with pytest.raises(ConfigError, match="init_splices"):
        _space(mini_zoo, optimizer={"name": "path_ga", "init_splices": 1.5})
    one = _space(mini_zoo, optimizer={"name": "path_ga", "init_splices": 0.5})  # start: math
    with pytest.raises(ConfigError, match=r"optimizer.init_splices 0.5 splices two starts"):
        make_optimizer(one.optimizer, PathGenome(one, L), one.objectives)
    twice = _space(mini_zoo, optimizer={"name": "path_ga", "init_splices": 0.5,
                                        "starts": ["math", "math"]})
    with pytest.raises(ConfigError, match=r"optimizer.init_splices 0.5 splices two starts"):
        make_optimizer(twice.optimizer, PathGenome(twice, L), twice.objectives)


def _trials(root, name="g"):
    study = load_study(open_storage(default_storage(name, root)), name)
    return sorted((t for t in study.get_trials() if counted(t) or "duplicate_of" in t.user_attrs),
                  key=lambda t: t.number)


@pytest.mark.slow
def test_search_starts_from_the_start_model_and_improves(mini_zoo, tmp_path):
    space = _space(mini_zoo, budget={"trials": 12})
    out = run_search(space, results_root=tmp_path)
    assert out.evaluations == 12 and out.failed == 0
    trials = _trials(tmp_path)
    assert trials[0].user_attrs["path"] == "math[0:2]"  # dfs.start's own path comes first
    assert [t.user_attrs["cma_gen"] for t in trials[:4]] == [0] * 4
    assert len({t.user_attrs["recipe_hash"] for t in trials}) == len(trials)
    losses = [sum(t.values) for t in trials if t.values]
    assert min(losses[4:]) <= min(losses[:4])  # elitist: later generations keep the best


class _StopAt(InlineExecutor):
    calls, at = 0, 0

    def submit(self, trial, recipe_yaml, job=None):
        type(self).calls += 1
        if type(self).calls == type(self).at:
            raise KeyboardInterrupt
        super().submit(trial, recipe_yaml, job)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", [None, {"name": "path_ga", "popsize": 4, "parents": 2,
                                               "seed": 0, "starts": ["math", "lang"],
                                               "init_splices": 0.5}],
                         ids=["default", "init_splices"])
def test_resume_mid_generation_proposes_what_an_uninterrupted_search_does(mini_zoo, tmp_path,
                                                                          optimizer):
    """Stopped in generation 2 (and again at the budget), then resumed: the same paths,
    in the same generations, with the same values."""
    space = _space(mini_zoo, optimizer=optimizer, budget={"trials": 14})
    run_search(space, results_root=tmp_path / "ref")
    _StopAt.calls, _StopAt.at = 0, 7
    out = run_search(space, results_root=tmp_path / "r", executor_factory=_StopAt)
    assert out.stopped == "interrupted"
    run_search(space, results_root=tmp_path / "r", trials=10)
    run_search(space, results_root=tmp_path / "r")

    def outcome(trials):
        return sorted((t.user_attrs["cma_gen"], t.user_attrs["cma_index"],
                       t.user_attrs["recipe_hash"], t.values and tuple(t.values))
                      for t in trials if counted(t))

    assert outcome(_trials(tmp_path / "r")) == outcome(_trials(tmp_path / "ref"))


@pytest.mark.slow
def test_ps_dfs_start_is_the_merge_named_as_a_model(mini_zoo, tmp_path):
    """PS+DFS: a parameter-space study's best point as a model, its own path first."""
    ps = load_space(space_dict(mini_zoo, name="ps", budget={"trials": 4}))
    run_search(ps, results_root=tmp_path)
    models = {"ps": "study:ps#best", "math": str(mini_zoo / "math")}
    space = _space(mini_zoo, name="g2", models=models, budget={"trials": 4},
                   dfs={"repeats": 2, "scaling": "pair", "start": "ps"})
    run_search(space, results_root=tmp_path)
    trials = _trials(tmp_path, "g2")
    assert trials[0].user_attrs["path"] == "ps[0:2]"
    assert all(t.state.name == "COMPLETE" for t in trials)
