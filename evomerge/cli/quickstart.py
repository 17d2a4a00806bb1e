"""The main job on the embedded default: build the zoo (first use), search the default
space, report on held-out data, export the best recipe, and say where everything is."""

from __future__ import annotations

import time
from pathlib import Path

from evomerge.cli.progress import search_bar, stage_bar

__all__ = ["quickstart"]


def quickstart(zoo: str = "zoo", space: str = "search_spaces/zoo_mixed.yaml",
               results: str = "results", quiet: bool = False, trials: int | None = None,
               profile: str = "full", seed: int = 0) -> int:
    from rich.console import Console

    from evomerge.cli.tables import print_outcome
    from evomerge.commands import local_launch
    from evomerge.search.driver import run_search
    from evomerge.search.export import export_recipe
    from evomerge.search.heldout import make_report
    from evomerge.search.space import load_space
    from evomerge.zoo.build import build_zoo

    c = Console(stderr=True)
    t0 = time.time()
    c.print(f"[bold]1/4[/] model zoo in {zoo}/ (built on first use, 3–8 min on 2 cores)")
    with stage_bar(enabled=not quiet) as update:
        build_zoo(zoo, seed=seed, profile=profile, progress=update)
    s = load_space(space)
    if zoo != "zoo":  # the shipped spaces name ./zoo; point them at the chosen directory
        s = rebase_zoo(s, zoo)
    c.print(f"[bold]2/4[/] search {space} ({s.optimizer.name}, {trials or s.budget.trials} "
            "evaluations, validation split)")
    with search_bar(enabled=not quiet) as update:
        outcome = run_search(s, trials=trials, results_root=results, progress=update,
                             launch=local_launch(results, 0, {}))
    c.print("[bold]3/4[/] held-out report (test split): front vs sources vs uniform recipes")
    study, _ = _open(outcome)
    with stage_bar(enabled=not quiet, verb="scoring") as update:
        doc = make_report(study, s, outcome.results_dir, progress=update)
    recipe = export_recipe(study, s, outcome.results_dir / "best_recipe.yaml",
                           overwrite=True, best=True)
    c.print("[bold]4/4[/] exported the best recipe (weighted loss)")
    print((outcome.results_dir / "report.md").read_text())
    print_outcome(outcome)
    summary = doc["summary"]
    print(f"Best recipe: {recipe}  (build it: evomerge merge {recipe} merged_model)")
    print(f"Browse it:   evomerge dashboard --results {results}   (http://127.0.0.1:8080/)")
    print(f"Hypervolume on test: search front {summary['hypervolume_search_front']:.4f} vs "
          f"uniform front {summary['hypervolume_uniform_front']:.4f}. "
          f"Total time {time.time() - t0:.0f} s.")
    return 0


def rebase_zoo(space, zoo: str, **fields):
    """``space`` with its ``zoo/...`` model paths and zoo evaluators pointed at ``zoo``, and
    top-level ``fields`` (``device``, ``budget`` …) replaced."""
    from evomerge.search.space import load_space

    data = {**space.model_dump(mode="json"), **fields}
    fix = lambda p: str(Path(zoo) / Path(p).relative_to("zoo")) if p.startswith("zoo/") else p  # noqa: E731
    data["base_model"] = fix(data["base_model"])
    data["models"] = {k: fix(v) for k, v in data["models"].items()}
    for ev in data["evaluators"].values():
        if ev.get("zoo") == "zoo":
            ev["zoo"] = zoo
    return load_space(data)


def _open(outcome):
    from evomerge.search.ledger import load_study, open_storage

    return load_study(open_storage(outcome.storage), outcome.study), None
