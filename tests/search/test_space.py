"""Malformed search spaces fail with one sentence naming the field, before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.errors import ConfigError
from evomerge.search.space import load_space

from .spaces import space_dict


def test_valid(mini_zoo):
    space = load_space(space_dict(mini_zoo))
    assert space.searched == {"weight": (0.0, 1.0), "density": (0.2, 1.0)}
    assert load_space(space.to_yaml()) == space


@pytest.mark.parametrize("over, message", [
    ({"method": "tiez"}, r"Unknown merge method 'tiez'\. Available: "),
    ({"parameters": {"weight": [0, 1], "gamma": [0, 1]}}, r"parameters\.gamma is not a parameter of 'ties'"),
    ({"parameters": {"weight": [1.0, 0.2]}}, r"parameters\.weight bounds \[1\.0, 0\.2\] are reversed"),
    ({"parameters": {"weight": [0, 1], "density": [0.5, 1.5]}}, r"leave the valid range \[0\.0, 1\.0\]"),
    ({"parameters": {"density": [0.2, 1.0]}}, r"method 'ties' needs parameters\.weight"),
    ({"objectives": []}, r"field 'objectives'"),
    ({"budget": {"trials": 0}}, r"field 'budget\.trials' input should be greater than 0"),
    ({"optimizer": {"name": "adam"}}, r"optimizer\.name 'adam' is not one of cma, tpe"),
    ({"optimizer": {"name": [[{"value": "cma"}]]}},  # unhashable (found by the fuzz test)
     r"optimizer\.name \[\[\{'value': 'cma'\}\]\] is not one of cma"),
    ({"optimizer": {"name": "tpe", "sigma0": 0.1}},
     r"field 'optimizer\.sigma0' does not apply to optimizer 'tpe' \(its settings: seed, n_startup"),
    ({"optimizer": {"name": "nsga2", "x0": "center"}}, r"'optimizer\.x0' does not apply to optimizer 'nsga2'"),
    ({"optimizer": {"name": "cmaes"}}, r"optimizer 'cmaes' handles one objective"),
    ({"method": None}, r"give a 'method', 'layer_swap: true', both, or 'dfs'"),
    ({"method": "model_stock", "parameters": {}, "layer_swap": True}, r"layer_swap with method .model_stock. is not supported"),
    ({"method": "slerp", "parameters": {"t": [0, 1]}}, r"method .slerp. cannot merge 2 models"),
    ({"layer_swap": {"choices": ["merge", "chef"]}}, r"layer_swap choice 'chef' is not a model alias"),
    ({"objectives": [{"evaluator": "nope", "task": "a", "metric": "b", "direction": "minimize"}]},
     r"objectives\[0\]\.evaluator 'nope' is not defined"),
    ({"objectives": [{"evaluator": "zoo", "task": "a", "metric": "b", "direction": "minimize",
                      "target": "high"}]}, r"field 'objectives\.0\.target' input should be a valid number"),
    ({"objectives": [{"evaluator": "zoo", "task": "a", "metric": "b", "direction": "minimize",
                      "target": float("nan")}]}, r"field 'objectives\.0\.target' must be a finite number \(got nan\)"),
    ({"optimizer": {"name": "tpe"}, "objectives": [{"evaluator": "zoo", "task": "a", "metric": "b",
                                                    "direction": "minimize", "target": 0.5}]},
     r"objectives\[0\]\.target 0\.5 caps the weighted sum that cma, path_ga, map_elites minimize; "
     r"optimizer 'tpe' is told the plain values"),
    ({"colour": "red"}, r"unknown field 'colour'"),
    ({"parameters": {"weight": "abc"}}, r"field 'parameters\.weight' must be a \[low, high\] range"),
    ({"granularity": {"filters": ["mlp"], "split_attn_mlp": True}}, r"split_attn_mlp is filters \[mlp\]"),
    ({"granularity": {"filters": ["mlp", "rest"]}}, r"none may be named 'rest'"),
    ({"granularity": {"filters": ["a.b", "a_b"]}}, r"filters \['a\.b', 'a_b'\] must be distinct"),
    ({"granularity": {"smooth": True}, "layer_swap": True}, r"granularity\.smooth interpolates"),
])
def test_bad_space(mini_zoo, over, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_space(space_dict(mini_zoo, **over))
    assert "\n" not in str(info.value)


def test_layer_swap_needs_equal_depth(mini_zoo, tiny, tmp_path):

    space = load_space(space_dict(mini_zoo, models={"math": str(mini_zoo / "math"),
                                                    "deep": tiny["deep"]}))
    with pytest.raises(ConfigError, match="same layer count"):
        space.check_models()


def test_unreachable_storage_creates_nothing(mini_zoo, tmp_path):
    from evomerge.search.driver import run_search

    space = load_space(space_dict(mini_zoo))
    with pytest.raises(ConfigError, match="Cannot reach the PostgreSQL server of storage 'postgresql://nobody@127.0.0.1:1/none' at 127.0.0.1:1"):
        run_search(space, storage="postgresql://nobody@127.0.0.1:1/none",
                   results_root=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def _open_and_report(url, queue):
    from evomerge.search.ledger import open_storage

    try:
        open_storage(url)
        queue.put("ok")
    except Exception as exc:  # noqa: BLE001 -- reported to the parent
        queue.put(f"{type(exc).__name__}: {exc}")


def test_two_processes_opening_one_new_study_database_both_succeed(tmp_path):
    """Optuna creates the schema of a new database when it opens it; two processes doing so
    at once raced (28% of pairs failed with 'table ... already exists' before the retry)."""
    import multiprocessing as mp

    import optuna  # noqa: F401 -- imported before forking, so the children start at once

    ctx = mp.get_context("fork")
    outcomes = []
    for i in range(12):
        url = f"sqlite:///{tmp_path / f'{i}.db'}"
        queue = ctx.Queue()
        procs = [ctx.Process(target=_open_and_report, args=(url, queue)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        outcomes += [queue.get(timeout=5) for _ in procs]
    assert outcomes == ["ok"] * 24, [o for o in outcomes if o != "ok"]


SHIPPED = sorted((Path(__file__).resolve().parents[2] / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_spaces_load_and_derive_a_genome(path, mini_zoo, tmp_path):
    """Every space in search_spaces/ validates, and over the mini zoo (same model names) its
    genome derives and decodes its start point to a recipe."""
    from evomerge.cli.quickstart import rebase_zoo
    from evomerge.search.genome import genome_of_models

    space = rebase_zoo(load_space(path), str(mini_zoo))
    if not space.base_model.startswith(str(mini_zoo)):  # over LoRA adapters: of the mini zoo's
        from lora_models import make_adapter

        base = str(mini_zoo / "base")
        space = rebase_zoo(space, str(mini_zoo), base_model=base, models={
            a: str(make_adapter(tmp_path / a, base, i)) for i, a in enumerate(space.models)})
        assert all(r.startswith(f"{base}+") for r in space.models.values())
    if any(r.startswith("study:") for r in space.models.values()):
        space = rebase_zoo(load_space(path), str(mini_zoo), models={
            a: str(mini_zoo / "math") if r.startswith("study:") else r
            for a, r in space.models.items()})
    genome = genome_of_models(space)
    assert genome.dim > 0
    genome.recipe(genome.from_unit(genome.start_point()))


def test_objective_target_loads_for_a_weighted_sum_optimizer(mini_zoo):
    objectives = space_dict(mini_zoo)["objectives"]
    capped = [{**objectives[0], "target": 0.25}, *objectives[1:]]
    space = load_space(space_dict(mini_zoo, objectives=capped))
    assert space.objectives[0].target == 0.25 and space.objectives[1].target is None
    assert load_space(space.to_yaml()) == space
