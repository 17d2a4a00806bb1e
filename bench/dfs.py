"""Data-flow space on the zoo: DFS (CMA-ES over flags, and path_ga),
PS+DFS (both optimizers) and PS alone against the sources and the best
uniform recipe, same budget per search, held-out (test split) results.

    python bench/dfs.py --seed 0 [--evals 120]    # needs ./zoo; ~8 min per seed
    python bench/dfs.py --table                   # merge the seeds' JSON into the table

Per seed, through the product's own path (``run_search``, pinning, export recipes):
  PS      search_spaces/zoo_ties_dare.yaml (per-layer DARE-TIES, CMA-ES), 2 x evals; "PS"
          is its best after ``evals`` evaluations, "PS (2x)" after all of them;
  DFS     search_spaces/zoo_dfs.yaml over math and lang, ``evals`` evaluations;
  PS+DFS  search_spaces/zoo_ps_dfs.yaml over the PS study's best point after ``evals``
          (pinned as study:ps_s{seed}#trial=K), math and lang, ``evals`` more evaluations
          (so 2 x evals in all, like "PS (2x)");
  DFS (path_ga), PS+DFS (path_ga): the same two spaces and budgets searched by path_ga
          (paths as segments, from math's / the PS merge's own path) instead of CMA-ES.
"Best" = lowest weighted validation loss (sum of the three answer NLLs on 250 validation
examples per task); each best is re-scored on the whole test split (500 per task).
Writes results/bench/dfs_seed{S}.json, and results/bench/dfs.json with --table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from evomerge.cli.quickstart import rebase_zoo  # noqa: E402
from evomerge.search.heldout import heldout_evaluators  # noqa: E402
from evomerge.search.objectives import weighted_loss  # noqa: E402
from evomerge.search.space import load_space  # noqa: E402
from evomerge.search.worker import Worker  # noqa: E402

OUT = ROOT / "results" / "bench"
PATH_ROWS = ["DFS", "PS+DFS", "DFS (path_ga)", "PS+DFS (path_ga)"]  # rows that have a path
ROWS = ["base", "math", "lang", "uniform (best of grid)", "PS", "PS (2x)", *PATH_ROWS]
# the structured data-flow search (docs/search_algorithms.md) on the same spaces and budgets
PATH_GA = {"name": "path_ga", "popsize": 12, "parents": 4}


def space(name: str, zoo: str, study: str, seed: int, evals: int, optimizer: dict | None = None,
          **models: str):
    s = rebase_zoo(load_space(ROOT / "search_spaces" / f"{name}.yaml"), zoo, device="cpu")
    data = s.model_dump(mode="json")
    data.update(name=study, budget={"trials": evals})
    if optimizer:
        data["optimizer"] = dict(optimizer)
    data["optimizer"]["seed"] = seed
    data["models"].update(models)
    return load_space(data)


def best(study: Any, space_: Any, first: int | None = None) -> Any:
    """The completed trial of lowest weighted validation loss among the first ``first``
    counted evaluations."""
    from optuna.trial import TrialState

    from evomerge.search.ledger import counted

    counted_trials = sorted((t for t in study.get_trials() if counted(t)), key=lambda t: t.number)
    pool = [t for t in counted_trials[:first] if t.state == TrialState.COMPLETE]
    return min(pool, key=lambda t: weighted_loss(t.values, space_.objectives))


def test_scores(space_: Any, recipe_yaml: str) -> dict[str, float]:
    worker = Worker(space_)
    r = worker.run(-1, recipe_yaml, heldout_evaluators(space_))
    if r.values is None:
        raise RuntimeError(r.error)
    return r.scores


def uniform_best(space_: Any) -> dict[str, float]:
    from evomerge.search.heldout import uniform_params
    from evomerge.search.param_genome import ParamGenome

    worker = Worker(space_)
    genome = ParamGenome(space_, worker.materializer.num_layers)
    scored = []
    for params in uniform_params(genome, levels=3):
        r = worker.run(0, genome.recipe(params).to_yaml())
        scored.append((weighted_loss(r.values, space_.objectives), params))
    params = min(scored, key=lambda s: s[0])[1]
    return worker.run(0, genome.recipe(params).to_yaml(), heldout_evaluators(space_)).scores


def source_scores(space_: Any) -> dict[str, dict[str, float]]:
    from transformers import AutoModelForCausalLM

    from evomerge.scoring import score

    worker = Worker(space_)
    tests = list(heldout_evaluators(space_).values())
    out = {}
    for alias, path in [("base", space_.base_model), *space_.models.items()]:
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        out[alias] = score(model, worker.tokenizer, tests)
    return out


def run_seed(zoo: str, seed: int, evals: int, work: Path) -> dict[str, Any]:
    from evomerge.engine.paths import recipe_path
    from evomerge.engine.recipe import load_recipe
    from evomerge.search.driver import run_search
    from evomerge.search.ledger import default_storage, load_study, open_storage

    def study(name: str):
        return load_study(open_storage(default_storage(name, work)), name)

    rows: dict[str, Any] = {}
    ps = space("zoo_ties_dare", zoo, f"ps_s{seed}", seed, 2 * evals)
    rows.update(source_scores(ps))
    rows["uniform (best of grid)"] = uniform_best(ps)
    t0 = time.time()
    run_search(ps, results_root=work)
    seconds = {"PS (2x)": time.time() - t0}
    ps_best, ps_best2 = best(study(ps.name), ps, evals), best(study(ps.name), ps)
    rows["PS"] = test_scores(ps, ps_best.user_attrs["recipe"])
    rows["PS (2x)"] = test_scores(ps, ps_best2.user_attrs["recipe"])
    dfs = space("zoo_dfs", zoo, f"dfs_s{seed}", seed, evals)
    pin = f"study:{ps.name}#trial={ps_best.number}"  # PS's best after evals, for both PS+DFS
    psdfs = space("zoo_ps_dfs", zoo, f"psdfs_s{seed}", seed, evals, ps=pin)
    ga = space("zoo_dfs", zoo, f"dfs_ga_s{seed}", seed, evals, PATH_GA)
    psga = space("zoo_ps_dfs", zoo, f"psdfs_ga_s{seed}", seed, evals, PATH_GA, ps=pin)
    lengths = {}
    for label, sp in (("DFS", dfs), ("PS+DFS", psdfs), ("DFS (path_ga)", ga),
                      ("PS+DFS (path_ga)", psga)):
        t0 = time.time()
        run_search(sp, results_root=work)
        seconds[label] = time.time() - t0
        st = study(sp.name)
        b = best(st, sp)
        pinned = load_space(st.user_attrs["evomerge_space"])  # with the PS point pinned
        rows[label] = test_scores(pinned, b.user_attrs["recipe"])
        lengths[label] = [[s.model.rsplit("/", 1)[-1].split("#")[0], s.layer, round(s.scale, 3)]
                          for s in recipe_path(load_recipe(b.user_attrs["recipe"]))]
    keys = [o.key for o in ps.objectives]
    return {"seed": seed, "evals": evals, "objectives": keys, "scores": rows,
            "weighted_test_loss": {k: sum(v[o] for o in keys) for k, v in rows.items()},
            "best_paths": lengths, "search_seconds": seconds}


def table(paths: list[Path]) -> dict[str, Any]:
    docs = [json.loads(p.read_text()) for p in paths]
    keys = docs[0]["objectives"]
    add_em = "add_l2/exact_match"

    def stat(label: str, key: str) -> list[float]:
        return [d["scores"][label][key] for d in docs]

    out = {"seeds": [d["seed"] for d in docs], "evals": docs[0]["evals"], "rows": {}}
    lines = ["| recipe | " + " | ".join(keys) + " | sum (test) | add_l2 exact match |",
             "|---" * (len(keys) + 3) + "|"]
    for label in (r for r in ROWS if all(r in d["scores"] for d in docs)):
        per = {k: stat(label, k) for k in [*keys, add_em]}
        total = [sum(d["scores"][label][k] for k in keys) for d in docs]
        out["rows"][label] = {"per_seed_sum": total, **per}
        cells = [f"{statistics.mean(per[k]):.3f}" for k in keys]
        sd = statistics.stdev(total) if len(total) > 1 else 0.0
        lines.append(f"| {label} | " + " | ".join(cells) +
                     f" | {statistics.mean(total):.3f} ± {sd:.3f} | "
                     f"{statistics.mean(per[add_em]):.3f} |")
    out["markdown"] = "\n".join(lines)
    out["best_path_lengths"] = {k: [len(d["best_paths"][k]) for d in docs]
                                for k in PATH_ROWS if all(k in d["best_paths"] for d in docs)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", default=str(ROOT / "zoo"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--evals", type=int, default=120)
    ap.add_argument("--work", default="/tmp/evomerge_bench_dfs")
    ap.add_argument("--table", action="store_true", help="merge dfs_seed*.json into dfs.json")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.table:
        doc = table(sorted(OUT.glob("dfs_seed*.json")))
        (OUT / "dfs.json").write_text(json.dumps(doc, indent=2))
        print(doc["markdown"])
        print("best path lengths:", doc["best_path_lengths"])
        return
    doc = run_seed(args.zoo, args.seed, args.evals, Path(args.work) / f"s{args.seed}")
    (OUT / f"dfs_seed{args.seed}.json").write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc["weighted_test_loss"], indent=2))


if __name__ == "__main__":
    main()
