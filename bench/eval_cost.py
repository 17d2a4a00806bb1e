"""What cheaper fitness costs and what it keeps, on the zoo.

    python bench/eval_cost.py [--seeds 5]        # needs ./zoo (bash scripts/run.sh builds it)

Part 1, estimation (per seed): 20 + 100 random candidates of the default space
(search_spaces/zoo_ties_dare.yaml, 250 validation examples per task) are scored in full, per
example. Four estimators then score the 100 from a fraction of the examples (--fractions,
default 1/50, 1/20, 1/10, 1/5): a seeded random subset (plain mean); anchor points chosen from
the 20 others' response patterns (evomerge.search.fidelity); and, on the same anchors,
tinyBenchmarks' p-IRT and gp-IRT with item parameters fitted on the 20 (evomerge.search.irt).
Spearman's rho between each estimate and the full score, per objective and for the weighted
loss CMA-ES minimizes, and per estimator the smallest fraction reaching rho >= 0.9. All come
from the same per-example numbers the scorer returns, so they are what a search would see.

Part 2, cost to quality (per seed; search_efficiency.py's setting: 150 validation examples per
task, popsize 8, held-out = the whole test split, 500 per task): the mergekit-evolve-style
loop's held-out loss after 96 full evaluations is the target. evomerge CMA-ES then searches
in five settings, for up to --candidates candidates each: full fidelity; multi-fidelity
(rungs 1/9, 1/3, 1, eta 3); subset (anchors at 1/5 after a warmup of 8 full candidates,
one CMA-ES generation); both (anchors at 1/5, then the full set for the best third); gp-IRT
(gp-IRT estimates from anchors at 1/20 after the same warmup). Each
new incumbent (best by validation or its estimate) is re-scored on test; the table gives the
validation examples scored until the incumbent's held-out loss first reaches the target, the
same for a harder target (the full-fidelity setting's own final held-out loss), and the final
held-out loss. Medians over seeds. Writes results/bench/eval_cost.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from search_efficiency import run_single  # noqa: E402

from evomerge.cli.quickstart import rebase_zoo  # noqa: E402
from evomerge.search.fidelity import fit_anchors  # noqa: E402
from evomerge.search.heldout import heldout_evaluators  # noqa: E402
from evomerge.search.irt import IrtEstimator  # noqa: E402
from evomerge.search.objectives import objective_values, weighted_loss  # noqa: E402
from evomerge.search.param_genome import ParamGenome  # noqa: E402
from evomerge.search.space import load_space  # noqa: E402
from evomerge.search.worker import Worker  # noqa: E402

SETTINGS = {
    "full": None,
    "multi-fidelity": {"rungs": [1 / 9, 1 / 3, 1.0], "eta": 3},
    "subset": {"rungs": [0.2], "estimator": "anchors", "warmup": 8},
    "both": {"rungs": [0.2, 1.0], "eta": 3, "estimator": "anchors", "warmup": 8},
    "gp-IRT": {"rungs": [0.05], "estimator": "gpirt", "warmup": 8},  # 1/20 of the examples
    "gp-IRT 1/5": {"rungs": [0.2], "estimator": "gpirt", "warmup": 8},  # subset's fraction
}


def make_space(zoo: str, limit: int, **fields: Any):
    space = rebase_zoo(load_space(ROOT / "search_spaces" / "zoo_ties_dare.yaml"), zoo,
                       device="cpu", **fields)
    data = space.model_dump(mode="json")
    data["evaluators"]["zoo"]["limit"] = limit
    return load_space(data)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (average ranks for ties)."""
    def rank(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):  # ties share their mean rank
            r[x == v] = r[x == v].mean()
        return r
    return float(np.corrcoef(rank(a), rank(b))[0, 1])


def per_example(worker: Worker, genome: ParamGenome, rng: np.random.Generator, n: int) -> list:
    """Per-example stats of ``n`` random candidates: [{task/metric: [nums, dens]}]."""
    out = []
    for _ in range(n):
        recipe = genome.recipe(genome.from_unit(rng.random(genome.dim)))
        r = worker.run(0, recipe.to_yaml(), job={"per_example": True})
        out.append(r.example_stats["zoo"])
    return out


def estimate(stats: dict, subsets: dict[str, tuple[list, list | None]], objectives) -> tuple:
    scores = {}
    for o in objectives:
        idx, w = subsets[o.task]
        num, den = (np.asarray(v)[idx] for v in stats[o.key])
        w = np.ones(len(idx)) if w is None else np.asarray(w)
        scores[o.key] = float(np.dot(w, num) / np.dot(w, den))
    return objective_values(scores, objectives)


FRACTIONS = (0.02, 0.05, 0.1, 0.2)
ESTIMATORS = ("random", "anchors", "pirt", "gpirt")


def _picks(fit: list, tasks: list[str], objs, frac: float, seed: int,
           rng: np.random.Generator) -> dict[str, Any]:
    """Per estimator, how it scores a candidate at ``frac``: random and anchor subsets
    (task -> (indices, weights)), and the IRT estimator fitted on the ``fit`` candidates."""
    anchors = {t: fit_anchors(fit, t, {0: frac}, [o.key for o in objs if o.task == t],
                              seed)[0] for t in tasks}
    k = math.ceil(frac * len(fit[0][objs[0].key][0]))
    n = len(fit[0][objs[0].key][0])
    irt = IrtEstimator(fit, [o.key for o in objs], {o.key: anchors[o.task] for o in objs})
    return {"random": {t: (rng.permutation(n)[:k], None) for t in tasks},
            "anchors": anchors, "irt": irt}


def _irt_values(irt: IrtEstimator, stats: dict, objs) -> dict[str, tuple]:
    seen = {o.key: tuple(np.asarray(v)[np.asarray(irt.anchors[o.key][0])]
                         for v in stats[o.key]) for o in objs}
    est = irt.estimate(seen)
    return {name: objective_values({k: e[name] for k, e in est.items()}, objs)
            for name in ("pirt", "gpirt")}


def part1(zoo: str, seeds: list[int], fractions=FRACTIONS) -> dict[str, Any]:
    space = make_space(zoo, 250)
    worker = Worker(space)
    genome = ParamGenome(space, worker.materializer.num_layers)
    objs = space.objectives
    tasks = sorted({o.task for o in objs})
    rho: dict[str, list] = {}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        fit, test = per_example(worker, genome, rng, 20), per_example(worker, genome, rng, 100)
        n = len(fit[0][objs[0].key][0])  # examples per task (250; fewer in a small zoo)
        full = [estimate(s, {t: (np.arange(n), None) for t in tasks}, objs) for s in test]
        for frac in fractions:
            picks = _picks(fit, tasks, objs, frac, seed, rng)
            ests = {name: [estimate(s, picks[name], objs) for s in test]
                    for name in ("random", "anchors")}
            irt = [_irt_values(picks["irt"], s, objs) for s in test]
            ests.update({name: [e[name] for e in irt] for name in ("pirt", "gpirt")})
            for name, est in ests.items():
                cols = {o.key: (np.array([e[i] for e in est]), np.array([f[i] for f in full]))
                        for i, o in enumerate(objs)}
                cols["weighted_loss"] = (np.array([weighted_loss(e, objs) for e in est]),
                                         np.array([weighted_loss(f, objs) for f in full]))
                for key, (a, b) in cols.items():
                    rho.setdefault(f"{name}@{frac:g}/{key}", []).append(spearman(a, b))
        print("part 1 seed", seed, {k: round(v[-1], 3) for k, v in rho.items()
                                    if k.endswith("weighted_loss")}, flush=True)
    return {"candidates": 100, "fit_candidates": 20, "examples_per_task": n,
            "fractions": list(fractions),
            "spearman": {k: {"median": float(np.median(v)), "min": float(np.min(v)),
                             "seeds": v} for k, v in rho.items()}}


def needed(est: dict[str, Any], target: float = 0.9) -> dict[str, Any]:
    """Per estimator, the smallest fraction whose median Spearman of the weighted loss
    reaches ``target``, its examples per task and the saving against full fidelity."""
    n = est["examples_per_task"]
    out = {}
    for name in ESTIMATORS:
        ok = [f for f in est.get("fractions", (0.1, 0.2))
              if est["spearman"].get(f"{name}@{f:g}/weighted_loss", {}).get("median", -1) >= target]
        f = min(ok) if ok else None
        out[name] = {"fraction": f, "examples_per_task": math.ceil(f * n) if f else None,
                     "fewer": round(n / math.ceil(f * n), 1) if f else None}
    return out


class _Reuse:
    """An in-process executor around one resident worker (the models load once)."""

    capacity = 1

    def __init__(self, worker: Worker) -> None:
        self.worker, self._done = worker, []

    def submit(self, trial: int, recipe_yaml: str, job: dict | None = None) -> None:
        self._done.append(self.worker.run(trial, recipe_yaml, job=job))

    def next_result(self):
        return self._done.pop(0)

    def close(self) -> None:
        self._done.clear()


def run_setting(zoo: str, worker: Worker, tests: dict, fidelity: dict | None, seed: int,
                candidates: int, target: float) -> dict[str, Any]:
    from optuna.trial import TrialState

    from evomerge.search.driver import run_search
    from evomerge.search.ledger import counted, load_study, open_storage

    space = make_space(zoo, 150, fidelity=fidelity, budget={"trials": candidates},
                       optimizer={"name": "cma", "popsize": 8, "seed": seed})
    objs, n_full = space.objectives, 150 * len({o.task for o in space.objectives})
    from unittest import mock

    import evomerge.search.front as front

    # the front's plots are not what is measured; patched for this search only (a lasting
    # patch left every later search in the process, tests included, without its front)
    with mock.patch.object(front, "write_front", lambda *a, **k: None), \
            tempfile.TemporaryDirectory() as tmp:
        out = run_search(space, results_root=tmp, executor_factory=lambda _s: _Reuse(worker))
        trials = load_study(open_storage(out.storage), out.study).get_trials()
    best, examples, curve = math.inf, 0, []
    for t in sorted((t for t in trials if counted(t)), key=lambda t: t.number):
        examples += (t.user_attrs.get("fidelity") or {}).get("examples", n_full)
        if t.state != TrialState.COMPLETE or weighted_loss(t.values, objs) >= best:
            continue
        best = weighted_loss(t.values, objs)
        r = worker.run(0, t.user_attrs["recipe"], tests)
        held = weighted_loss(objective_values(r.scores, objs), objs)
        curve.append([examples, held])
    return {"examples_to_target": first_reaching(curve, target), "final_test_loss": curve[-1][1],
            "examples_total": examples, "incumbents": curve}


def first_reaching(curve: list[list[float]], target: float) -> int | None:
    """Examples scored when an incumbent's held-out loss (``curve``: [examples, held-out loss]
    per new incumbent, in order) first reaches ``target``; None if none does."""
    return next((n for n, held in curve if held <= target), None)


def resident(zoo: str) -> tuple[Any, Worker, dict]:
    """Part 2's space (150 validation examples per task), its resident worker and held-out
    evaluators, shared by every setting and seed."""
    space = make_space(zoo, 150)
    return space, Worker(space), heldout_evaluators(space)


def part2(zoo: str, seeds: list[int], candidates: int) -> dict[str, Any]:
    space, worker, tests = resident(zoo)
    per_seed: list[dict] = []
    for seed in seeds:
        t0 = time.time()
        target = run_single(space, worker, tests, "evolve", seed, 96, [96])[-1]
        row = {"target": target, "evolve_examples": 96 * 150 * 3}
        for name, fid in SETTINGS.items():
            row[name] = run_setting(zoo, worker, tests, fid, seed, candidates, target)
        row["full_final"] = row["full"]["final_test_loss"]
        for name in SETTINGS:  # the harder target: what full fidelity ends with
            row[name]["examples_to_full_final"] = first_reaching(row[name]["incumbents"],
                                                                 row["full_final"])
        row["seed"] = seed
        per_seed.append(row)
        print("part 2 seed", seed, round(target, 3),
              {k: (row[k]["examples_to_target"], round(row[k]["final_test_loss"], 3))
               for k in SETTINGS}, f"{time.time() - t0:.0f} s", flush=True)
    return summarize(per_seed, candidates)


def add_settings(zoo: str, per_seed: list[dict], names: list[str],
                 candidates: int) -> dict[str, Any]:
    """Run only the settings ``names`` on the seeds of stored part-2 rows, against each row's
    stored targets (its evolve loop's and full fidelity's final held-out loss), and summarize
    old and new settings together. The stored rows must come from the same zoo (it is built
    from seeds: the sources' test scores repeat to the last digit)."""
    _, worker, tests = resident(zoo)
    for row in per_seed:
        t0 = time.time()
        for name in names:
            row[name] = run_setting(zoo, worker, tests, SETTINGS[name], row["seed"], candidates,
                                    row["target"])
            row[name]["examples_to_full_final"] = first_reaching(row[name]["incumbents"],
                                                                 row["full_final"])
        print("part 2 seed", row["seed"], {k: (row[k]["examples_to_target"],
                                               round(row[k]["final_test_loss"], 3))
                                           for k in names}, f"{time.time() - t0:.0f} s",
              flush=True)
    return summarize(per_seed, candidates)


def summarize(per_seed: list[dict], candidates: int) -> dict[str, Any]:
    """Medians over the seeds' rows (also used to merge runs of different seeds)."""
    summary = {}
    for name in (n for n in SETTINGS if all(n in r for r in per_seed)):  # older runs lack some
        reach = [r[name]["examples_to_target"] for r in per_seed]
        finite = [x if x is not None else math.inf for x in reach]
        hard = [r[name]["examples_to_full_final"] for r in per_seed]
        summary[name] = {
            "median_examples_to_target": float(np.median(finite)),
            "reached": sum(x is not None for x in reach),
            "median_examples_to_full_final": float(np.median(
                [x if x is not None else math.inf for x in hard])),
            "reached_full_final": sum(x is not None for x in hard),
            "median_final_test_loss": float(np.median([r[name]["final_test_loss"]
                                                       for r in per_seed])),
            "median_examples_total": float(np.median([r[name]["examples_total"]
                                                      for r in per_seed]))}
    return {"candidates": candidates, "examples_per_task": 150, "settings": SETTINGS,
            "median_target": float(np.median([r["target"] for r in per_seed])),
            "summary": summary, "per_seed": per_seed, "seeds": len(per_seed)}


def markdown(res: dict[str, Any]) -> str:
    """The README's tables, from the JSON."""
    lines = []
    est = res.get("estimation")
    if est:
        sp = est["spearman"]
        keys = [k.split("/", 1)[1] for k in sp if k.startswith("random@0.1/")]
        lines += [f"Spearman rho, estimate vs full validation score, {est['candidates']} random "
                  f"candidates, median (min) of {est['seeds']} seeds:", "",
                  "| estimator | " + " | ".join(keys) + " |",
                  "|---|" + "---:|" * len(keys)]
        for frac in est.get("fractions", (0.1, 0.2)):
            for est_name in ESTIMATORS:
                name = f"{est_name}@{frac:g}"
                if f"{name}/{keys[0]}" not in sp:
                    continue
                cells = [f"{sp[f'{name}/{k}']['median']:.3f} ({sp[f'{name}/{k}']['min']:.3f})"
                         for k in keys]
                lines.append(f"| {name.replace('@', ' at ')} | " + " | ".join(cells) + " |")
        lines += ["", "Smallest fraction whose median rho of the weighted loss is >= 0.9 "
                      f"(examples per task; times fewer than the {est['examples_per_task']} "
                      "of full fidelity):", ""]
        for name, row in needed(est).items():
            lines.append(f"- {name}: " + (f"{row['fraction']:g} ({row['examples_per_task']} "
                                          f"examples, {row['fewer']}x fewer)"
                                          if row["fraction"] else "not reached"))
        lines.append("")
    cq = res.get("cost_to_quality")
    if cq:
        lines += [f"Validation examples scored (median of {cq['seeds']} seeds; evolve-style "
                  f"target {cq['median_target']:.3f}, reached by that loop after 43,200):", "",
                  "| setting | to the evolve-style target | to full fidelity's final | "
                  "final held-out loss | examples in all |", "|---|---:|---:|---:|---:|"]
        def n(x: float) -> str:  # a median over seeds where most missed: "not reached"
            return f"{x:,.0f}" if math.isfinite(x) else "not reached"

        for name, row in cq["summary"].items():
            lines.append(
                f"| {name} | {n(row['median_examples_to_target'])} ({row['reached']}/"
                f"{cq['seeds']}) | {n(row['median_examples_to_full_final'])} "
                f"({row['reached_full_final']}/{cq['seeds']}) | "
                f"{row['median_final_test_loss']:.3f} | {row['median_examples_total']:,.0f} |")
    return "\n".join(lines)


def merge(paths: list[str], out: Path) -> None:
    """One JSON from runs over disjoint seeds (part 1 rows and part 2 rows pooled)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    res: dict[str, Any] = {}
    rows = [r for run in runs for r in run.get("cost_to_quality", {}).get("per_seed", [])]
    if rows:
        cand = next(run["cost_to_quality"]["candidates"] for run in runs
                    if "cost_to_quality" in run)
        res["cost_to_quality"] = summarize(sorted(rows, key=lambda r: r["seed"]), cand)
    ests = [run["estimation"] for run in runs if "estimation" in run]
    if ests:
        pooled: dict[str, list] = {}
        for e in ests:
            for k, v in e["spearman"].items():
                pooled.setdefault(k, []).extend(v["seeds"])
        res["estimation"] = {**{k: v for k, v in ests[0].items() if k != "spearman"},
                             "seeds": sum(e["seeds"] for e in ests),
                             "spearman": {k: {"median": float(np.median(v)),
                                              "min": float(np.min(v)), "seeds": v}
                                          for k, v in pooled.items()}}
    out.write_text(json.dumps(res, indent=2))
    print(markdown(res))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default=str(ROOT / "zoo"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--candidates", type=int, default=128)
    ap.add_argument("--part", choices=["1", "2", "both"], default="both")
    ap.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS),
                    help="part 1: fractions of the examples each estimator scores")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "eval_cost.json"))
    ap.add_argument("--table", action="store_true", help="print the tables of --out and stop")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first..first+n-1")
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=None,
                    help="part 2: run only these settings, on the seeds stored in --out, and "
                         "add them to its rows")
    ap.add_argument("--merge", nargs="+", default=None,
                    help="JSON files of runs over different seeds: combine them into --out")
    args = ap.parse_args()
    out = Path(args.out)
    if args.table:
        print(markdown(json.loads(out.read_text())))
        return
    if args.merge:
        return merge(args.merge, out)
    res = json.loads(out.read_text()) if out.exists() else {}
    t0 = time.time()
    if args.part in ("1", "both") and not args.settings:
        res["estimation"] = {**part1(args.zoo, list(range(args.first_seed,
                                                          args.first_seed + args.seeds)),
                                     tuple(args.fractions)),
                             "seeds": args.seeds}
    if args.settings:
        cq = res["cost_to_quality"]
        res["cost_to_quality"] = add_settings(args.zoo, cq["per_seed"], args.settings,
                                              cq["candidates"])
    elif args.part in ("2", "both"):
        seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        res["cost_to_quality"] = part2(args.zoo, seeds, args.candidates)
    res["seconds_last_run"] = round(time.time() - t0)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(markdown(res))


if __name__ == "__main__":
    main()
