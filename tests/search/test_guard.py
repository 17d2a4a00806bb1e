"""The benchmark-gaming guard: searching on a common benchmark's test set is a warning from the
space loader (mergekit-evolve's guard, for every space), unless a held-out block reads other
documents; shipped spaces raise none."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from evomerge.search import guard
from evomerge.search.space import load_space

from .spaces import space_dict

SHIPPED = sorted((Path(__file__).resolve().parents[2] / "search_spaces").glob("*.yaml"))


def _harness(zoo, tasks, **opts):
    return space_dict(zoo, evaluators={"h": {"type": "lm_eval", "tasks": tasks, **opts}},
                      objectives=[{"evaluator": "h", "task": t, "metric": "acc",
                                   "direction": "maximize"} for t in tasks])


@pytest.mark.parametrize("tasks, opts, flagged", [
    (["arc_easy", "hellaswag"], {}, ["arc_easy", "hellaswag"]),
    (["mmlu_anatomy", "gsm8k_train", "my_task"], {}, ["mmlu_anatomy"]),
    (["arc_easy"], {"limit": 500, "test": {"offset": 500, "limit": None}}, []),
    (["arc_easy"], {"offset": 200, "test": {"offset": 0, "limit": 200}}, []),
    (["arc_easy"], {"limit": 500, "test": {"offset": 100}}, ["arc_easy"]),  # overlaps
    (["arc_easy"], {"limit": 500, "test": {"limit": 500}}, ["arc_easy"]),  # the same ones
    (["arc_easy"], {"limit": 500, "shuffle": True, "test": {"offset": 500, "shuffle": False}},
     ["arc_easy"]),  # another order: the windows may overlap
    (["arc_easy"], {"test": {"tasks": ["arc_easy_heldout"]}}, []),
])
def test_benchmark_tasks_searched_without_held_out_documents_warn(mini_zoo, caplog, tasks, opts,
                                                                  flagged):
    guard._warned.clear()
    with caplog.at_level(logging.WARNING, logger="evomerge.search.guard"):
        load_space(_harness(mini_zoo, tasks, **opts))
        load_space(_harness(mini_zoo, tasks, **opts))  # once per process
    got = [r.getMessage() for r in caplog.records]
    assert [m.split("'")[1] for m in got] == flagged
    assert all(m.startswith("evaluators.h searches on lm-eval task") for m in got)


def test_answers_on_train_split_is_fine(mini_zoo):
    ev = {"a": {"type": "answers", "lm_eval_tasks": ["arc_easy"], "split": "train"}}
    space = load_space(space_dict(mini_zoo, evaluators=ev, objectives=[
        {"evaluator": "a", "task": "arc_easy", "metric": "answer_nll", "direction": "minimize"}]))
    assert guard.benchmark_warnings(space.evaluators, space.objectives) == []


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_spaces_search_no_benchmark_test_set(path):
    space = load_space(path)
    assert guard.benchmark_warnings(space.evaluators, space.objectives) == []


def test_the_held_out_block_reads_documents_the_search_never_saw(mini_zoo):
    """The README's discipline: search on `limit` shuffled documents, report (`test` block,
    `offset`) on others; the report's evaluator reads a disjoint set."""
    from evomerge.search.heldout import heldout_evaluators
    from evomerge.search.worker import build_evaluators
    from evomerge.zoo.build import write_lm_eval_yamls

    include = str(write_lm_eval_yamls(mini_zoo))
    space = load_space(_harness(mini_zoo, ["zoo_add_l1_validation"], include_path=include,
                                shuffle=True, limit=15, test={"offset": 15, "limit": None}))
    assert guard.benchmark_warnings(space.evaluators, space.objectives) == []
    search = build_evaluators(space)["h"]._samples["zoo_add_l1_validation"]
    report = heldout_evaluators(space)["h"]._samples["zoo_add_l1_validation"]
    assert len(search) == 15 and len(report) == 40 - 15 and not set(search) & set(report)
