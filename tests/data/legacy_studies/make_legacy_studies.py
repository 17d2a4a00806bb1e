"""How the legacy studies here were written: with evomerge at commit 90101e3 (before the study
schema module and per-optimizer settings), in an empty directory:

    git worktree add /tmp/old 90101e3 && cd /tmp/empty && \
        PYTHONPATH=/tmp/old python /path/to/make_legacy_studies.py

tests/search/test_records.py opens, exports and resumes them with today's code."""

from evomerge.search.driver import run_search
from evomerge.search.space import load_space
from evomerge.zoo.build import build_zoo


def space(name: str, optimizer: dict, trials: int):
    return load_space({
        "name": name, "base_model": "zoo/base", "models": {"math": "zoo/math", "lang": "zoo/lang"},
        "method": "ties", "parameters": {"weight": [0.0, 1.0], "density": [0.2, 1.0]},
        "evaluators": {"zoo": {"type": "zoo", "zoo": "zoo", "limit": 16}},
        "objectives": [
            {"evaluator": "zoo", "task": "add_l1", "metric": "answer_nll", "direction": "minimize"},
            {"evaluator": "zoo", "task": "maxmin_l2", "metric": "answer_nll",
             "direction": "minimize"}],
        "budget": {"trials": trials}, "optimizer": optimizer, "device": "cpu"})


if __name__ == "__main__":
    build_zoo("zoo", seed=0, profile="mini")
    run_search(space("legacy_cma", {"name": "cma", "popsize": 4, "seed": 0}, 6), results_root="results")
    run_search(space("legacy_tpe", {"name": "tpe", "seed": 1}, 4), results_root="results")
