"""How balanced can a merge of the zoo's two experts get? (criterion (2) of the zoo)

    python bench/zoo_balance.py --zoo zoo [--evals 360] [--cma-seeds 1,2]
    python bench/zoo_balance.py --zoo zoo --retrain math --lr 1e-3 --steps 800   # a variant
    python bench/zoo_balance.py --zoo zoo --retrain math --mix add_l1=1            # other data
    python bench/zoo_balance.py --zoo zoo --layers-per-group 1                   # finer space

Searches the default space (``search_spaces/zoo_mixed.yaml``: per-layer TIES / task
arithmetic + layer swaps; ``--space`` another) with CMA-ES for the merge whose *worse*
share of an expert's own exact match is highest on the validation split:

    objective = min(EM_A(merge) / EM_A(math), EM_B(merge) / EM_B(lang))
                + 0.3 * min(TA_A(merge) / TA_A(math), TA_B(merge) / TA_B(lang))

(EM exact match, TA answer-token accuracy, a smooth tie-breaker), then re-scores the five
best on the whole test split (500 examples per task). ``--retrain`` first fine-tunes a
variant of one expert from the zoo's base (same data mix and seed as the zoo build, other
learning rate / steps / trainable parameters) into ``--variants-dir``, next to links to
the zoo's other models: how the design of the experts moves the balance. Writes
``results/bench/zoo_balance_<tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from evomerge.cli.quickstart import rebase_zoo  # noqa: E402
from evomerge.scoring import load_model, score  # noqa: E402
from evomerge.search.heldout import heldout_evaluators  # noqa: E402
from evomerge.search.param_genome import ParamGenome  # noqa: E402
from evomerge.search.space import load_space  # noqa: E402
from evomerge.search.worker import Worker  # noqa: E402


def retrain(zoo: Path, out: Path, expert: str, lr: float, steps: int,
            trainable: str | None, mix: dict[str, float] | None = None) -> Path:
    """A copy of ``zoo`` (links) whose ``expert`` is fine-tuned again from its base, with the
    build's data and seed; ``trainable`` is a regex over parameter names, "all", or None for
    the build's choice; ``mix`` (task -> weight) replaces the expert's own data mix, the
    build's share of base-mix replay still added."""
    from evomerge.zoo.build import PROFILES, _stages, expert_seed, expert_start, load_manifest
    from evomerge.zoo.model import build_tokenizer, save
    from evomerge.zoo.train import train

    seed = load_manifest(zoo)["seed"]
    out.mkdir(parents=True, exist_ok=True)
    for entry in os.listdir(zoo):
        if entry != expert and not (out / entry).exists():
            os.symlink((zoo / entry).resolve(), out / entry)
    if (out / expert / "config.json").is_file():
        return out
    full = PROFILES["full"]  # the build's profile, with this expert's settings replaced
    variant = replace(full, expert_lr={**full.expert_lr, expert: lr},
                      expert_steps={**full.expert_steps, expert: steps},
                      expert_mix={**full.expert_mix, expert: mix or full.expert_mix[expert]})
    stage = _stages(variant)[expert]
    if trainable is not None:
        rx = None if trainable == "all" else re.compile(trainable)
        stage = replace(stage, trainable=(lambda n: bool(rx.search(n))) if rx else None)
    model = expert_start(zoo / "base", seed, expert)
    train(model, stage, expert_seed(seed, expert))
    save(model, build_tokenizer(), out / expert)
    return out


DEFAULT_SPACE = ROOT / "search_spaces" / "zoo_mixed.yaml"


def _score(path: Path, evaluators: dict) -> dict[str, float]:
    return score(*load_model(path), list(evaluators.values()))


def _key(scores: dict, task: str, metric: str) -> str:
    return next(k for k in scores if task in k and k.endswith(metric))


def _cma_run(seed: int, evals: int, genome: ParamGenome, worker: Worker, em_shares, ta_shares,
             hist: list, t0: float) -> None:
    """One CMA-ES run of ``evals`` candidates maximizing the balance objective (appends to
    ``hist``: objective, validation shares A and B, params)."""
    import cma

    es = cma.CMAEvolutionStrategy(genome.start_point(), 0.2,
                                  {"bounds": [0, 1], "seed": seed, "popsize": 12, "verbose": -9})
    stop = len(hist) + evals
    while len(hist) < stop:
        xs = es.ask()
        losses = []
        for x in xs:
            params = genome.from_unit(x)
            r = worker.run(0, genome.recipe(params).to_yaml())
            if r.scores:
                a, b = em_shares(r.scores)
                obj = min(a, b) + 0.3 * min(ta_shares(r.scores))
            else:  # a failed candidate ranks below every success
                a, b, obj = 0.0, 0.0, -1.0
            hist.append((obj, a, b, params))
            losses.append(-obj)
        es.tell(xs, losses)
        best = max(hist, key=lambda h: h[0])
        print(f"seed {seed}, {len(hist)} evaluations: best validation shares A {best[1]:.2f} "
              f"B {best[2]:.2f} ({time.time() - t0:.0f} s)", flush=True)


def balance_search(zoo: Path, evals: int, seeds: tuple[int, ...] = (1,),
                   space_file: Path = DEFAULT_SPACE, layers_per_group: int | None = None) -> dict:
    """``space_file`` on ``zoo`` (its evaluators as the YAML says: the shipped spaces search
    250 validation examples per task and report on the whole test split), optionally with
    one coefficient set per ``layers_per_group`` layers."""
    space = load_space(space_file)
    gran = ({} if layers_per_group is None else
            {"granularity": {**space.granularity.model_dump(), "layers_per_group": layers_per_group}})
    space = rebase_zoo(space, str(zoo), **gran)
    worker = Worker(space)
    tests = heldout_evaluators(space)
    genome = ParamGenome(space, worker.materializer.num_layers)
    refs = {split: {m: _score(zoo / m, evs) for m in ("math", "lang")}
            for split, evs in (("validation", worker.evaluators), ("test", tests))}
    any_scores = refs["validation"]["math"]
    em = (_key(any_scores, "add_l1", "exact_match"), _key(any_scores, "maxmin_l2", "exact_match"))
    ta = (_key(any_scores, "add_l1", "token_acc"), _key(any_scores, "maxmin_l2", "token_acc"))

    def shares(scores: dict, split: str, keys: tuple[str, str]) -> tuple[float, float]:
        ref = refs[split]
        return scores[keys[0]] / ref["math"][keys[0]], scores[keys[1]] / ref["lang"][keys[1]]

    hist: list[tuple[float, float, float, dict]] = []
    t0 = time.time()
    for seed in seeds:  # independent CMA-ES runs of ``evals`` each, one pooled history
        _cma_run(seed, evals, genome, worker, lambda s: shares(s, "validation", em),
                 lambda s: shares(s, "validation", ta), hist, t0)
    top = sorted(hist, key=lambda h: -h[0])[:5]
    rows = []
    for _, a, b, params in top:
        r = worker.run(0, genome.recipe(params).to_yaml(), tests)
        ta_, tb_ = shares(r.scores, "test", em)
        rows.append({"validation_shares": [a, b], "test_shares": [ta_, tb_],
                     "test_exact_match": [r.scores[em[0]], r.scores[em[1]]], "params": params})
    return {"zoo": str(zoo), "evaluations": evals * len(seeds),
            "expert_exact_match": {s: {"math_on_A": refs[s]["math"][em[0]],
                                       "lang_on_B": refs[s]["lang"][em[1]]} for s in refs},
            "top5_by_validation": rows,
            "best_test_min_share": max(min(r["test_shares"]) for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", default=str(ROOT / "zoo"))
    ap.add_argument("--evals", type=int, default=360)
    ap.add_argument("--cma-seeds", default="1",
                    help="comma-separated CMA-ES seeds: one run of --evals each, pooled")
    ap.add_argument("--space", default=str(DEFAULT_SPACE),
                    help="search space YAML whose recipes are searched (default: zoo_mixed)")
    ap.add_argument("--layers-per-group", type=int, default=None,
                    help="override the space's granularity (e.g. 1: a set per layer)")
    ap.add_argument("--retrain", choices=["math", "lang"], default=None)
    ap.add_argument("--lr", type=float, default=None, help="default: as in the zoo build")
    ap.add_argument("--steps", type=int, default=None, help="default: as in the zoo build")
    ap.add_argument("--trainable", default=None,
                    help="regex over parameter names ('all'); default: as in the zoo build")
    ap.add_argument("--mix", default=None,
                    help="the expert's own data mix, e.g. add_l1=1,maxmin_l1=0.2 (plus the "
                         "build's replay); default: as in the zoo build")
    ap.add_argument("--variants-dir", default=str(ROOT / "build" / "zoo_variants"))
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()
    zoo = Path(args.zoo).resolve()
    tag = args.tag or zoo.name
    if args.retrain:
        from evomerge.zoo.build import PROFILES

        args.lr = args.lr or PROFILES["full"].expert_lr[args.retrain]
        args.steps = args.steps or PROFILES["full"].expert_steps[args.retrain]
        tag = args.tag or f"{zoo.name}_{args.retrain}_lr{args.lr:g}_steps{args.steps}"
        mix = ({k: float(v) for k, v in (kv.split("=") for kv in args.mix.split(","))}
               if args.mix else None)
        zoo = retrain(zoo, Path(args.variants_dir) / tag, args.retrain, args.lr, args.steps,
                      args.trainable, mix)
    seeds = tuple(int(v) for v in args.cma_seeds.split(","))
    res = balance_search(zoo, args.evals, seeds, Path(args.space), args.layers_per_group)
    res["cma_seeds"] = list(seeds)
    res["space"] = os.path.relpath(Path(args.space).resolve(), ROOT)
    res["layers_per_group"] = args.layers_per_group or "as in the space"
    res["variant"] = (None if not args.retrain else
                      {"expert": args.retrain, "lr": args.lr, "steps": args.steps,
                       "trainable": args.trainable or "as in the build",
                       "mix": args.mix or "as in the build"})
    out = ROOT / "results" / "bench" / f"zoo_balance_{tag}.json"
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != "top5_by_validation"}, indent=2))
    for r in res["top5_by_validation"]:
        print("validation shares", np.round(r["validation_shares"], 3).tolist(),
              "test shares", np.round(r["test_shares"], 3).tolist())


if __name__ == "__main__":
    main()
