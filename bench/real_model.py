"""Merging real fine-tunes: two SmolLM2-135M-Instruct experts (``add``: two-digit addition;
``words``: numbers in English words), searched merges against both parents on ``both``
(addition answered in words), which neither expert was trained on. Skills and fine-tuning:
bench/real_skills.py.

    python bench/real_model.py [--seed 0] [--steps 60] [--minutes 12]     # ~1 h here
    python bench/real_model.py --pair final --spaces ps swap   # add + a format skill
    python bench/real_model.py --mini            # the CI miniature: a few steps, a few candidates

Stages (each cached under ``--build``, so a rerun resumes): tasks -> experts (full fine-tune
of the decoder layers, ``--steps`` AdamW steps each) -> searches through ``run_search`` on the
validation split (answer NLL of the three tasks, CMA-ES on their sum): ``ps`` (per-layer
DARE-TIES), ``swap`` (layer swapping) and ``dfs`` (data-flow paths), each ``--minutes`` of
wall time -> the test split: base, experts, the best uniform TIES and task-arithmetic recipes
(by validation), and every search's best and front points, by greedy exact match (with Wilson
95% intervals) and answer NLL. Writes results/bench/real_model[_final][_mini].json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from real_skills import PAIRS, fine_tune, write_tasks  # noqa: E402

OUT = ROOT / "results" / "bench"
FULL = {"sizes": {"train": 4000, "validation": 60, "test": 100}, "front": 2, "levels": 3}
MINI = {"sizes": {"train": 64, "validation": 4, "test": 6}, "front": 1, "levels": 2}
DFS_SIGMA0 = 0.2  # the DFS search's CMA-ES step as first run (README table)


def pair_tag(pair: str) -> str:
    """The suffix naming a pair's tasks, studies and results ('' for the first pair, words)."""
    return "" if pair == "words" else f"_{pair}"


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p, d = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, centre - half), min(1.0, centre + half))


def base_space(name: str, base: str, experts: dict[str, str], files: dict, sizes: dict,
               minutes: float, trials: int, seed: int) -> dict[str, Any]:
    val = {s: str(f["validation"]) for s, f in files.items()}
    test = {s: str(f["test"]) for s, f in files.items()}
    return {
        "name": name, "base_model": base, "models": experts,
        "evaluators": {"qa": {"type": "answers", "files": val, "chat_template": True,
                              "batch_size": 30, "max_new_tokens": 10,
                              "test": {"files": test, "generate": True, "limit": sizes["test"]}}},
        "objectives": [{"evaluator": "qa", "task": s, "metric": "answer_nll",
                        "direction": "minimize"} for s in files],
        "budget": {"trials": trials, "wall_time": minutes * 60},
        "optimizer": {"name": "cma", "popsize": 8, "seed": seed}, "device": "auto"}


def spaces(base: str, experts: dict[str, str], files: dict, sizes: dict, minutes: float,
           trials: int, seed: int, pair: str = "words",
           dfs_sigma0: float = DFS_SIGMA0) -> dict[str, dict[str, Any]]:
    """The three searched spaces (names as in the README table)."""
    dfs_name = "dfs" if dfs_sigma0 == DFS_SIGMA0 else f"dfs_sigma{dfs_sigma0:g}"  # own study

    def make(name: str, **over: Any) -> dict[str, Any]:
        return {**base_space(f"real{pair_tag(pair)}_{name}_s{seed}", base, experts, files, sizes, minutes,
                             trials, seed), **over}
    return {
        "ps": make("ps", method="dare_ties",
                   parameters={"weight": [0.0, 1.5], "density": [0.1, 1.0]},
                   granularity={"layers_per_group": 3, "embeddings": False}),
        "swap": make("swap", layer_swap={"choices": ["base", *experts]},
                     granularity={"layers_per_group": 3}),
        "dfs": make(dfs_name, dfs={"repeats": 2, "max_length": 40, "scaling": "pair",
                                   "start": "add"},
                    optimizer={"name": "cma", "popsize": 8, "seed": seed,
                               "sigma0": dfs_sigma0}),
    }


def build(root: Path, seed: int, steps: int, sizes: dict, base: str | None = None,
          log=print, pair: str = "words") -> tuple[str, dict, dict]:
    """SmolLM2 (bf16; ``base`` if given), the task files of ``pair`` and its two experts;
    cached under ``root`` (the ``add`` expert is the same for every pair)."""
    from pretrained import build_smollm2

    base = Path(base) if base else build_smollm2(root / "smollm2")
    files = write_tasks(root / f"tasks{pair_tag(pair)}_s{seed}", seed, sizes, pair)
    experts, logs = {}, {}
    for skill in PAIRS[pair][:2]:
        out = root / f"{skill}_s{seed}_{steps}"
        logs[skill] = fine_tune(base, out, files[skill]["train"], steps=steps, seed=seed, log=log)
        experts[skill] = str(out)
    return str(base), experts, {"files": files, "fine_tune": logs}


def test_row(worker: Any, tests: dict, recipe_yaml: str | None, path: str | None) -> dict:
    """Test scores of a recipe (or of a model directory), with exact-match intervals."""
    from transformers import AutoModelForCausalLM

    from evomerge.scoring import score

    if recipe_yaml is not None:
        r = worker.run(-1, recipe_yaml, tests)
        if r.values is None:
            raise RuntimeError(r.error)
        scores = r.scores
    else:
        model = AutoModelForCausalLM.from_pretrained(path).to(worker.device).eval()
        scores = score(model, worker.tokenizer, list(tests.values()))
    n = {s: k for ev in tests.values() for s, k in ev.sizes().items()}
    out = {"scores": scores}
    for s in n:
        k = round(scores[f"{s}/exact_match"] * n[s])
        out[f"{s}/exact_match_ci"] = wilson(k, n[s])
    return out


def uniform_best(space: Any, method: str, levels: int) -> tuple[str, float]:
    """The uniform recipe of ``method`` (one weight per expert, density) with the lowest
    validation loss, as YAML, and that loss."""
    from evomerge.search.genome import genome_of_models
    from evomerge.search.heldout import uniform_params
    from evomerge.search.objectives import weighted_loss
    from evomerge.search.space import load_space
    from evomerge.search.worker import Worker

    data = space.model_dump(mode="json")
    data.update(method=method, parameters={k: v for k, v in data["parameters"].items()
                                           if k in ("weight", "density") and
                                           (method != "task_arithmetic" or k == "weight")})
    sp = load_space(data)
    worker, genome = Worker(sp), genome_of_models(sp)
    best = None
    for params in uniform_params(genome, levels):
        yaml_ = genome.recipe(params).to_yaml()
        r = worker.run(0, yaml_)
        loss = weighted_loss(r.values, sp.objectives) if r.values else math.inf
        best = min(best or (yaml_, loss), (yaml_, loss), key=lambda x: x[1])
    return best


def run(args: argparse.Namespace) -> dict[str, Any]:
    from evomerge.search.driver import run_search
    from evomerge.search.front import best_trial, front_trials
    from evomerge.search.heldout import heldout_evaluators
    from evomerge.search.ledger import default_storage, load_study, open_storage
    from evomerge.search.objectives import weighted_loss
    from evomerge.search.space import load_space
    from evomerge.search.worker import Worker

    cfg = MINI if args.mini else FULL
    root = Path(args.build)
    t0 = time.time()
    base, experts, info = build(root, args.seed, args.steps, cfg["sizes"], args.base,
                                pair=args.pair)
    build_s = time.time() - t0
    docs = spaces(base, experts, info["files"], cfg["sizes"], args.minutes, args.trials,
                  args.seed, args.pair, args.dfs_sigma0)
    ps = load_space(docs["ps"])  # the uniform grids are PS recipes, searched or not
    docs = {k: v for k, v in docs.items() if k in args.spaces}
    worker, tests = Worker(ps), heldout_evaluators(ps)
    rows: dict[str, Any] = {alias: test_row(worker, tests, None, path)
                            for alias, path in [("base", base), *experts.items()]}
    print(f"[{time.time() - t0:.0f} s] built; sources scored", file=sys.stderr)
    if args.uniform:
        for method in ("ties", "task_arithmetic"):
            yaml_, val = uniform_best(ps, method, cfg["levels"])
            rows[f"uniform {method}"] = {**test_row(worker, tests, yaml_, None),
                                         "validation": val}
        print(f"[{time.time() - t0:.0f} s] uniform grids scored", file=sys.stderr)
    searches = {}
    for key, doc in docs.items():
        space = load_space(doc)
        t1 = time.time()
        out = run_search(space, results_root=root / "studies")
        study = load_study(open_storage(default_storage(space.name, root / "studies")),
                           space.name)
        chosen = [best_trial(study, space)] + front_trials(study, space)[:cfg["front"]]
        w, tst = Worker(space), heldout_evaluators(space)
        for t in {t.number: t for t in chosen}.values():
            label = f"{key} trial {t.number}" + (" (best)" if t.number == chosen[0].number
                                                  else "")
            rows[label] = {**test_row(w, tst, t.user_attrs["recipe"], None),
                           "validation": weighted_loss(t.values, space.objectives)}
        searches[key] = {"evaluations": out.evaluations, "failed": out.failed,
                         "stopped": out.stopped, "seconds": round(time.time() - t1, 1)}
        print(f"[{time.time() - t0:.0f} s] search {key}: {searches[key]}", file=sys.stderr)
    return {"pair": args.pair, "skills": list(PAIRS[args.pair]), "seed": args.seed,
            "dfs_sigma0": args.dfs_sigma0,
            "steps": args.steps, "minutes": args.minutes,
            "sizes": cfg["sizes"], "build_seconds": round(build_s, 1),
            "fine_tune": {k: {"seconds": v["seconds"], "last_loss": v["losses"][-1]}
                          for k, v in info["fine_tune"].items()},
            "searches": searches, "rows": rows, "total_seconds": round(time.time() - t0, 1)}


def markdown(doc: dict[str, Any]) -> str:
    skills = doc.get("skills", PAIRS["words"])
    lines = ["| model | " + " | ".join(f"{s} exact match [95% CI]" for s in skills)
             + " | " + " | ".join(f"{s} NLL" for s in skills) + " |",
             "|---" * (2 * len(skills) + 1) + "|"]
    for label, r in doc["rows"].items():
        s = r["scores"]
        em = [f"{s[f'{k}/exact_match']:.3f} [{r[f'{k}/exact_match_ci'][0]:.3f}, "
              f"{r[f'{k}/exact_match_ci'][1]:.3f}]" for k in skills]
        nll = [f"{s[f'{k}/answer_nll']:.3f}" for k in skills]
        lines.append(f"| {label} | " + " | ".join(em + nll) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=60, help="fine-tune steps per expert")
    ap.add_argument("--minutes", type=float, default=12.0, help="wall time per search")
    ap.add_argument("--trials", type=int, default=400, help="evaluations per search at most")
    ap.add_argument("--build", default=str(ROOT / "build" / "real_model"))
    ap.add_argument("--base", default=None, help="an existing SmolLM2 directory to start from")
    ap.add_argument("--mini", action="store_true", help="the CI miniature")
    ap.add_argument("--out", default=None, help="JSON path (default results/bench/...)")
    ap.add_argument("--pair", choices=sorted(PAIRS), default="words",
                    help="skill pair: add + words (default) or add + final-answer format")
    ap.add_argument("--dfs-sigma0", type=float, default=DFS_SIGMA0,
                    help="CMA-ES step size of the DFS search (a flag at 0.25 / 0.75 flips "
                         "when a step crosses 0.5)")
    ap.add_argument("--no-uniform", dest="uniform", action="store_false",
                    help="skip the uniform TIES / task-arithmetic grids")
    ap.add_argument("--spaces", nargs="+", choices=["ps", "swap", "dfs"],
                    default=["ps", "swap", "dfs"], help="searched spaces")
    args = ap.parse_args(argv)
    if args.mini:
        args.steps, args.minutes, args.trials = min(args.steps, 2), min(args.minutes, 5), 4
    doc = run(args)
    tag = pair_tag(args.pair) + ("_mini" if args.mini else "")
    out = Path(args.out) if args.out else OUT / f"real_model{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    out.with_suffix(".md").write_text(markdown(doc) + "\n")
    print(markdown(doc))
    print(f"total {doc['total_seconds']} s -> {out}")
    return doc


if __name__ == "__main__":
    main()
