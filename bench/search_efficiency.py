"""Search efficiency on the zoo: best held-out score vs evaluations, same budget and seeds.

    python bench/search_efficiency.py [--evals 96] [--seeds 5]     # needs ./zoo; ~27 min

Single objective (weighted sum of the three zoo answer NLLs, per-layer DARE-TIES space):
  (a) evomerge CMA-ES (pycma ask/tell, bounded unit cube)   (b) Optuna TPE and Optuna GP
  (d) random search
  (e) a mergekit-evolve-style loop, reimplemented from its documented behaviour: generation-
      synchronous pycma on unbounded genes folded through abs() (weights) and clamp (density),
      uniform start 1/n, sigma0 = 1/6
  (f) the best uniform recipe of a small grid (one weight / density per expert for all layers)
Multi-objective (the same three objectives): NSGA-II vs TPE vs random by test hypervolume.

"Held-out" = the test split: at checkpoints the best-so-far candidate (by validation, --limit
examples per task) is re-scored on the whole test split (500 per task). Medians over seeds.
Writes results/bench/search_efficiency.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from evomerge.cli.quickstart import rebase_zoo  # noqa: E402
from evomerge.search.heldout import heldout_evaluators, uniform_params  # noqa: E402
from evomerge.search.objectives import objective_values, weighted_loss  # noqa: E402
from evomerge.search.optimizer_config import OPTIMIZER_CONFIGS, CmaConfig  # noqa: E402
from evomerge.search.optimizers import make_optimizer  # noqa: E402
from evomerge.search.param_genome import ParamGenome  # noqa: E402
from evomerge.search.pareto import hypervolume, pareto_front  # noqa: E402
from evomerge.search.space import load_space  # noqa: E402
from evomerge.search.worker import Worker  # noqa: E402


def make_space(zoo: str, limit: int):
    space = rebase_zoo(load_space(ROOT / "search_spaces" / "zoo_ties_dare.yaml"), zoo,
                       device="cpu")
    data = space.model_dump(mode="json")
    data["evaluators"]["zoo"]["limit"] = limit
    return load_space(data)


class EvolveStyle:
    """mergekit-evolve's documented loop: cma over raw genes, abs()/clamp folding, x0 = 1/n,
    sigma0 = 1/6, told once per full generation (no bounds)."""

    def __init__(self, genome: ParamGenome, seed: int, popsize: int) -> None:
        import cma

        self.genome = genome
        n = len(genome.space.models)
        self.es = cma.CMAEvolutionStrategy(np.full(len(genome.genes), 1.0 / n), 1 / 6,
                                           {"seed": seed + 1, "popsize": popsize, "verbose": -9})

    def params(self, x: np.ndarray) -> dict[str, Any]:
        out = {}
        for g, v in zip(self.genome.genes, x):
            out[g.name] = (float(abs(v)) if g.name.startswith("weight")
                           else float(np.clip(v, 0.0, 1.0)))
        return out


SINGLE = ("cma", "tpe", "gp", "random", "evolve")
CMA = {k: getattr(CmaConfig(), k) for k in ("sigma0", "x0", "diagonal")}  # the defaults


def run_single(space, worker, tests, method: str, seed: int, evals: int, checkpoints):
    genome = ParamGenome(space, worker.materializer.num_layers)
    objs = space.objectives
    best = (np.inf, None)
    curve: list[float] = []

    last: dict[str, Any] = {}

    def evaluate(params):
        r = worker.run(0, genome.recipe(params).to_yaml())
        last["values"] = r.values
        return weighted_loss(r.values, objs) if r.values else np.inf

    def checkpoint(n):
        if n in checkpoints:
            r = worker.run(0, genome.recipe(best[1]).to_yaml(), tests)
            curve.append(weighted_loss(objective_values(r.scores, objs), objs))

    n = 0
    if method == "evolve":
        opt = EvolveStyle(genome, seed, popsize=8)
        while n < evals:
            X = opt.es.ask()
            fs = []
            for x in X:  # generation-synchronous: overshoots the budget to a full generation
                p = opt.params(np.asarray(x))
                f = evaluate(p)
                fs.append(f)
                n += 1
                if f < best[0]:
                    best = (f, p)
                checkpoint(n)
            opt.es.tell(X, fs)
        return curve
    if method in ("cma", "tpe", "gp", "random"):
        cfg = OPTIMIZER_CONFIGS[method](name=method, seed=seed,
                                        **({"popsize": 8, **CMA} if method == "cma" else {}))
        if method == "cma":
            opt = make_optimizer(cfg, genome, objs)
            while n < evals:
                prop = opt.ask()
                f = evaluate(prop.params)
                n += 1
                opt.tell(prop.attrs, last["values"])
                if f < best[0]:
                    best = (f, prop.params)
                checkpoint(n)
            return curve
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True),
                   "gp": lambda: optuna.samplers.GPSampler(seed=seed),
                   "random": lambda: optuna.samplers.RandomSampler(seed=seed)}[method]()
        study = optuna.create_study(sampler=sampler)
        dists = genome.distributions()
        while n < evals:
            t = study.ask(dists)
            f = evaluate(t.params)
            study.tell(t, f if np.isfinite(f) else None,
                       state=None if np.isfinite(f) else optuna.trial.TrialState.FAIL)
            n += 1
            if f < best[0]:
                best = (f, t.params)
            checkpoint(n)
        return curve
    raise ValueError(method)


def uniform_best(space, worker, tests) -> float:
    genome = ParamGenome(space, worker.materializer.num_layers)
    objs = space.objectives
    scored = []
    for params in uniform_params(genome, levels=3):
        r = worker.run(0, genome.recipe(params).to_yaml())
        scored.append((weighted_loss(r.values, objs), params))
    _, params = min(scored, key=lambda s: s[0])
    r = worker.run(0, genome.recipe(params).to_yaml(), tests)
    return weighted_loss(objective_values(r.scores, objs), objs)


def run_multi(space, worker, tests, method: str, seed: int, evals: int) -> float:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    genome = ParamGenome(space, worker.materializer.num_layers)
    objs = space.objectives
    sampler = {"nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed, population_size=16),
               "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True),
               "random": lambda: optuna.samplers.RandomSampler(seed=seed)}[method]()
    study = optuna.create_study(directions=[o.direction for o in objs], sampler=sampler)
    dists = genome.distributions()
    for _ in range(evals):
        t = study.ask(dists)
        r = worker.run(0, genome.recipe(t.params).to_yaml())
        study.tell(t, list(r.values))
    done = [t for t in study.trials if t.values]
    front = [done[i] for i in pareto_front([t.values for t in done], [o.direction for o in objs])]
    pts = [objective_values(worker.run(0, genome.recipe(t.params).to_yaml(), tests).scores, objs)
           for t in front]
    return pts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default=str(ROOT / "zoo"))
    ap.add_argument("--evals", type=int, default=96)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--limit", type=int, default=150)
    ap.add_argument("--only", default=None,
                    help="e.g. cma or cma,gp: rerun these single-objective optimizers and update "
                         "their entries in the JSON (with --seeds, all of them must be rerun "
                         "when the stored seed count differs)")
    ap.add_argument("--sigma0", type=float, default=None, help="CMA-ES sigma0 (unit cube)")
    ap.add_argument("--x0", default=None, choices=["center", "uniform"], help="CMA-ES start")
    ap.add_argument("--diagonal", default=None, choices=["true", "false"],
                    help="CMA-ES separable (diagonal covariance) or full")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "search_efficiency.json"))
    args = ap.parse_args()
    if args.sigma0 is not None:
        CMA["sigma0"] = args.sigma0
    if args.x0 is not None:
        CMA["x0"] = args.x0
    if args.diagonal is not None:
        CMA["diagonal"] = args.diagonal == "true"
    if args.only:
        return rerun_one(args)
    space = make_space(args.zoo, args.limit)
    worker = Worker(space)
    tests = heldout_evaluators(space)
    checkpoints = list(range(16, args.evals + 1, 16))
    curves: dict[str, list[list[float]]] = {}
    for method in SINGLE:
        curves[method] = [run_single(space, worker, tests, method, s, args.evals, checkpoints)
                          for s in range(args.seeds)]
        print(method, np.median(curves[method], axis=0).round(3).tolist(), flush=True)
    uniform = uniform_best(space, worker, tests)
    fronts = {m: [run_multi(space, worker, tests, m, s, args.evals) for s in range(args.seeds)]
              for m in ("nsga2", "tpe", "random")}
    every = [p for fs in fronts.values() for f in fs for p in f]
    directions = [o.direction for o in space.objectives]
    ref = [max(p[i] for p in every) for i in range(len(directions))]
    hv = {m: [hypervolume(f, ref, directions) for f in fs] for m, fs in fronts.items()}
    med = {m: np.median(c, axis=0).tolist() for m, c in curves.items()}
    evolve_final = med["evolve"][-1]
    cma_reach = next((checkpoints[i] for i, v in enumerate(med["cma"]) if v <= evolve_final), None)
    res = {"evaluations": args.evals, "seeds": args.seeds, "multi_objective_seeds": args.seeds,
           "examples_per_task": args.limit, "test_examples_per_task": "all (500)",
           "checkpoints": checkpoints, "median_test_loss": med, "per_seed_test_loss": curves,
           "best_uniform_test_loss": uniform,
           "cma_evals_to_reach_evolve_final": cma_reach, "cma_config": dict(CMA),
           "multi_objective_test_hypervolume": {m: {"median": float(np.median(v)), "seeds": v}
                                                for m, v in hv.items()},
           "hypervolume_reference": ref}
    out = Path(args.out)
    out.write_text(json.dumps(res, indent=2))
    _plot(res, out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in res.items() if k != "per_seed_test_loss"}, indent=2))


def rerun_one(args) -> None:
    """Re-measure one single-objective optimizer and update the stored results (in --out)."""
    res = json.loads((ROOT / "results" / "bench" / "search_efficiency.json").read_text())
    out = Path(args.out)
    space = make_space(args.zoo, res["examples_per_task"])
    worker = Worker(space)
    tests = heldout_evaluators(space)
    only = args.only.split(",")
    res.setdefault("multi_objective_seeds", res["seeds"])
    if args.seeds != res["seeds"]:
        missing = [m for m in SINGLE if m not in only]
        if missing:
            raise SystemExit(f"--seeds {args.seeds} differs from the stored {res['seeds']}: "
                             f"rerun {', '.join(missing)} too (--only {','.join(SINGLE)}).")
        res["seeds"] = args.seeds
    for method in only:
        curves = [run_single(space, worker, tests, method, s, res["evaluations"],
                             res["checkpoints"]) for s in range(args.seeds)]
        res["per_seed_test_loss"][method] = curves
        res["median_test_loss"][method] = np.median(curves, axis=0).tolist()
        print(method, [round(v, 3) for v in res["median_test_loss"][method]], flush=True)
    res["cma_config"] = dict(CMA)
    final = res["median_test_loss"]["evolve"][-1]
    res["cma_evals_to_reach_evolve_final"] = next(
        (c for c, v in zip(res["checkpoints"], res["median_test_loss"]["cma"]) if v <= final), None)
    out.write_text(json.dumps(res, indent=2))
    _plot(res, out.with_suffix(".png"))
    print("cma reaches evolve's final at", res["cma_evals_to_reach_evolve_final"])


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    names = {"cma": "evomerge CMA-ES", "tpe": "Optuna TPE", "gp": "Optuna GP", "random": "random",
             "evolve": "mergekit-evolve-style"}
    for m, ys in res["median_test_loss"].items():
        ax.plot(res["checkpoints"], ys, marker="o", label=names[m])
    ax.axhline(res["best_uniform_test_loss"], color="gray", ls="--", label="best uniform recipe")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("test weighted NLL of best-so-far (lower is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
