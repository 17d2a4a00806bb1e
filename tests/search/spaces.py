"""Search-space dicts over the mini zoo, for tests."""

from __future__ import annotations

from pathlib import Path


def space_dict(zoo: Path, **over) -> dict:
    d = {
        "name": "t",
        "base_model": str(zoo / "base"),
        "models": {"math": str(zoo / "math"), "lang": str(zoo / "lang")},
        "method": "ties",
        "parameters": {"weight": [0.0, 1.0], "density": [0.2, 1.0]},
        "evaluators": {"zoo": {"type": "zoo", "zoo": str(zoo), "limit": 16}},
        "objectives": [
            {"evaluator": "zoo", "task": "add_l1", "metric": "answer_nll", "direction": "minimize"},
            {"evaluator": "zoo", "task": "maxmin_l2", "metric": "answer_nll", "direction": "minimize"},
        ],
        "budget": {"trials": 10},
        "optimizer": {"name": "cma", "popsize": 4, "seed": 0},
        "device": "cpu",
    }
    d.update(over)
    return d
