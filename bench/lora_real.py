"""Searching over real LoRA adapters: SmolLM2-135M-Instruct adapters trained here (PEFT, rank
8 on every linear layer) on six skills, searched on two composite tasks none of them was
trained on, against the uniform average and the best single adapter, on held-out examples.

    python bench/lora_real.py                 # ~1.5 h on 2 cores (adapters cached afterwards)
    python bench/lora_real.py --mini          # the CI miniature: 2 steps, 2 adapters, 2 candidates

Skills (bench/real_skills.py): ``add``, ``words`` (a number in English words), ``final``
(GSM8K's final-answer line), ``sub``, ``reverse`` (a number's digits reversed), ``compare``
(the larger of two). Composites: ``add_words`` ("What is 47 + 85? Reply in English words
only." -> "one hundred thirty-two") and ``add_final`` (-> "#### 132"). Stages, each cached
under ``--build``: tasks -> adapters (``--steps`` AdamW steps each) -> searches through
``run_search`` on the composites' validation split (answer NLL, CMA-ES on the sum, wall time
``--minutes`` each): ``ta`` (task arithmetic, one weight per adapter: LoraHub's space),
``ta_groups`` (one weight per adapter and 10-layer group) and ``lorahub`` (A and B composed) ->
the test split: the base, every adapter alone, the uniform average (task arithmetic, weight 1/M
each), and each search's best point, by greedy exact match (Wilson 95% intervals) and answer
NLL. Writes results/bench/lora_real[_mini].json and .md.
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

from real_model import wilson  # noqa: E402
from real_skills import train_steps, write_tasks  # noqa: E402

OUT = ROOT / "results" / "bench"
SKILLS = ("add", "words", "final", "sub", "reverse", "compare")
COMPOSITES = ("add_words", "add_final")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FULL = {"sizes": {"train": 2000, "validation": 60, "test": 100}, "skills": SKILLS, "batch": 16,
        "new_tokens": 12}
MINI = {"sizes": {"train": 16, "validation": 2, "test": 2}, "skills": SKILLS[:2], "batch": 2,
        "new_tokens": 3}


def lora_tune(base: str, out: Path, train: Path, *, steps: int, batch: int = 16,
              lr: float = 1e-3, rank: int = 8, seed: int = 0, log=print) -> dict[str, Any]:
    """A PEFT LoRA adapter of ``base`` (rank ``rank``, alpha 2 rank, every linear layer of the
    decoder) trained on ``train`` (JSONL) for ``steps`` AdamW steps in float32, saved at
    ``out``. Kept if already trained. Returns the training log."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = out / "lora_tune.json"
    if meta.is_file():
        return json.loads(meta.read_text())
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS,
                                      lora_dropout=0.0, task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    losses, t0 = train_steps(model, params, tok, rows, steps=steps, batch=min(batch, len(rows)),
                             lr=lr, seed=seed, name=out.name, log=log)
    model.save_pretrained(out)
    doc = {"steps": steps, "batch": batch, "lr": lr, "rank": rank,
           "seconds": round(time.time() - t0, 1), "losses": losses, "train": str(train)}
    meta.write_text(json.dumps(doc))
    return doc


def build(root: Path, seed: int, steps: int, cfg: dict, base: str | None = None,
          log=print) -> tuple[str, dict[str, str], dict[str, Any]]:
    """SmolLM2 (bf16; ``base`` if given), the task files, and one adapter per skill, cached
    under ``root``."""
    from pretrained import build_smollm2

    base = base or str(build_smollm2(root / "smollm2"))
    files = write_tasks(root / f"tasks_s{seed}", seed, cfg["sizes"],
                        skills=(*cfg["skills"], *COMPOSITES))
    adapters, logs = {}, {}
    for skill in cfg["skills"]:
        out = root / f"lora_{skill}_s{seed}_{steps}"
        logs[skill] = lora_tune(base, out, files[skill]["train"], steps=steps,
                                batch=cfg["batch"], seed=seed, log=log)
        adapters[skill] = str(out)
    return base, adapters, {"files": files, "lora_tune": logs}


def spaces(base: str, adapters: dict[str, str], files: dict, cfg: dict, minutes: float,
           trials: int, seed: int) -> dict[str, dict[str, Any]]:
    """The searched spaces over the adapters (names as in the table)."""
    sizes = cfg["sizes"]
    val = {s: str(files[s]["validation"]) for s in COMPOSITES}
    test = {s: str(files[s]["test"]) for s in COMPOSITES}
    common = {
        "base_model": base, "models": adapters,
        "evaluators": {"qa": {"type": "answers", "files": val, "chat_template": True,
                              "batch_size": 30, "max_new_tokens": cfg["new_tokens"],
                              "test": {"files": test, "generate": True, "limit": sizes["test"]}}},
        "objectives": [{"evaluator": "qa", "task": s, "metric": "answer_nll",
                        "direction": "minimize"} for s in COMPOSITES],
        "budget": {"trials": trials, "wall_time": minutes * 60},
        "optimizer": {"name": "cma", "popsize": 8, "seed": seed, "sigma0": 0.2},
        "device": "auto"}
    one = {"layers_per_group": "all", "embeddings": False}
    return {
        "ta": {**common, "name": f"lora_ta_s{seed}", "method": "task_arithmetic",
               "parameters": {"weight": [-1.0, 2.0]}, "granularity": one},
        "ta_groups": {**common, "name": f"lora_ta_groups_s{seed}", "method": "task_arithmetic",
                      "parameters": {"weight": [-1.0, 2.0]},
                      "granularity": {"layers_per_group": 10, "embeddings": False}},
        "lorahub": {**common, "name": f"lorahub_s{seed}", "method": "lorahub",
                    "parameters": {"weight": [-1.5, 1.5]}, "granularity": one},
    }


def row(worker: Any, tests: dict, recipe_yaml: str | None, path: str | None) -> dict[str, Any]:
    """Test scores of a recipe (or a model directory) with exact-match intervals."""
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
    n = {s: len(ev._examples[s]) for ev in tests.values() for s in ev._examples}
    out: dict[str, Any] = {"scores": scores}
    for s in n:
        k = round(scores[f"{s}/exact_match"] * n[s])
        out[f"{s}/exact_match_ci"] = wilson(k, n[s])
    return out


def _validation(worker: Any, recipe_yaml: str, space: Any) -> float:
    from evomerge.search.objectives import weighted_loss

    r = worker.run(-1, recipe_yaml)
    return weighted_loss(r.values, space.objectives) if r.values else math.inf


def baseline_rows(ta: Any) -> tuple[dict[str, Any], str]:
    """Test rows of the base, every adapter alone and the uniform average (task arithmetic,
    weight 1/M each) of the one-weight-per-adapter space ``ta``, and the best single adapter
    (lowest validation loss)."""
    from evomerge.search.genome import genome_of_models
    from evomerge.search.heldout import adapter_recipe, heldout_evaluators
    from evomerge.search.worker import Worker

    worker, tests = Worker(ta), heldout_evaluators(ta)
    rows: dict[str, Any] = {"base": {**row(worker, tests, None, ta.base_model),
                                     "validation": None}}
    singles = {}
    for skill, ref in ta.models.items():
        y = adapter_recipe(ta, ref).to_yaml()
        singles[skill] = _validation(worker, y, ta)
        rows[f"adapter {skill}"] = {**row(worker, tests, y, None), "validation": singles[skill]}
    genome = genome_of_models(ta)
    uniform = genome.recipe({g.name: 1.0 / len(ta.models) for g in genome.genes}).to_yaml()
    rows["uniform average"] = {**row(worker, tests, uniform, None),
                               "validation": _validation(worker, uniform, ta)}
    return rows, min(singles, key=singles.get)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from evomerge.search.driver import run_search
    from evomerge.search.front import best_trial
    from evomerge.search.heldout import heldout_evaluators
    from evomerge.search.ledger import default_storage, load_study, open_storage
    from evomerge.search.objectives import weighted_loss
    from evomerge.search.records import TrialRecord
    from evomerge.search.space import load_space
    from evomerge.search.worker import Worker

    cfg = MINI if args.mini else FULL
    root = Path(args.build)
    t0 = time.time()
    base, adapters, info = build(root, args.seed, args.steps, cfg, args.base)
    build_s = time.time() - t0
    docs = spaces(base, adapters, info["files"], cfg, args.minutes, args.trials, args.seed)
    rows, best_single = baseline_rows(load_space(docs["ta"]))
    print(f"[{time.time() - t0:.0f} s] built; sources and uniform scored", file=sys.stderr)
    searches = {}
    for key in args.spaces:
        space = load_space(docs[key])
        t1 = time.time()
        out = run_search(space, results_root=root / "studies")
        study = load_study(open_storage(default_storage(space.name, root / "studies")),
                           space.name)
        best = TrialRecord(best_trial(study, space))
        w = Worker(space)
        rows[f"search {key} (trial {best.number})"] = {
            **row(w, heldout_evaluators(space), best.recipe, None),
            "validation": weighted_loss(best.values, space.objectives), "recipe": best.recipe}
        searches[key] = {"evaluations": out.evaluations, "failed": out.failed,
                         "stopped": out.stopped, "seconds": round(time.time() - t1, 1)}
        print(f"[{time.time() - t0:.0f} s] search {key}: {searches[key]}", file=sys.stderr)
    return {"skills": list(cfg["skills"]), "composites": list(COMPOSITES), "seed": args.seed,
            "steps": args.steps, "minutes": args.minutes, "sizes": cfg["sizes"],
            "best_single_adapter": best_single, "build_seconds": round(build_s, 1),
            "lora_tune": {k: {"seconds": v["seconds"], "last_loss": v["losses"][-1]}
                          for k, v in info["lora_tune"].items()},
            "searches": searches, "rows": rows, "total_seconds": round(time.time() - t0, 1)}


def markdown(doc: dict[str, Any]) -> str:
    comps = doc["composites"]
    lines = ["| model | validation loss | " + " | ".join(
        f"{s} exact match [95% CI]" for s in comps) + " | " + " | ".join(
        f"{s} NLL" for s in comps) + " |", "|---" * (2 * len(comps) + 2) + "|"]
    for label, r in doc["rows"].items():
        s = r["scores"]
        em = [f"{s[f'{k}/exact_match']:.2f} [{r[f'{k}/exact_match_ci'][0]:.2f}, "
              f"{r[f'{k}/exact_match_ci'][1]:.2f}]" for k in comps]
        nll = [f"{s[f'{k}/answer_nll']:.3f}" for k in comps]
        val = "" if r.get("validation") is None else f"{r['validation']:.3f}"
        mark = " (best single)" if label == f"adapter {doc['best_single_adapter']}" else ""
        lines.append(f"| {label}{mark} | {val} | " + " | ".join(em + nll) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=80, help="training steps per adapter")
    ap.add_argument("--minutes", type=float, default=10.0, help="wall time per search")
    ap.add_argument("--trials", type=int, default=300, help="evaluations per search at most")
    ap.add_argument("--build", default=str(ROOT / "build" / "lora_real"))
    ap.add_argument("--base", default=None, help="an existing SmolLM2 directory to start from")
    ap.add_argument("--spaces", nargs="+", choices=["ta", "ta_groups", "lorahub"],
                    default=["ta", "ta_groups", "lorahub"])
    ap.add_argument("--mini", action="store_true", help="the CI miniature")
    ap.add_argument("--out", default=None, help="JSON path (default results/bench/...)")
    args = ap.parse_args(argv)
    if args.mini:
        args.steps, args.minutes, args.trials = min(args.steps, 2), min(args.minutes, 5), 2
        args.spaces = args.spaces[:1]
    doc = run(args)
    out = Path(args.out) if args.out else OUT / f"lora_real{'_mini' if args.mini else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    out.with_suffix(".md").write_text(markdown(doc) + "\n")
    print(markdown(doc))
    print(f"total {doc['total_seconds']} s -> {out}")
    return doc


if __name__ == "__main__":
    main()
