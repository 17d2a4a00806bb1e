"""mergekit-evolve and evomerge side by side on the same job (issue #30).

    python bench/peers.py                        # zoo (3 seeds) + SmolLM2 experts (1 seed)
    python bench/peers.py --settings zoo --seeds 0 --fevals 22
    python bench/peers.py --mini                 # CI: the evomerge half on the mini zoo

Each setting is one mergekit-evolve config (written here), run by the real mergekit-evolve
(bench/peers_mergekit.py: in memory, HF backend, one logical GPU on a private Ray head) and by
evomerge (``import-evolve`` of the same file, then ``evomerge search``): the same sources,
genes, lm-eval tasks and weights, the same number of evaluations (those mergekit-evolve made:
pycma finishes its last generation), one evaluator with one thread in both. Afterwards the
best-so-far candidate of each program at the end of every generation is scored on held-out
data (the tasks' test split) by one scorer (lm-eval through evomerge's engine, whose merges
equal mergekit's: tests/search/test_evolve_import.py), giving held-out curves against
evaluations and seconds. Settings:

* ``zoo``: the embedded zoo's base + math + lang experts, DARE-TIES, 3 layer groups (12
  genes), lm-eval acc of tasks A (add_l1) and B (maxmin_l2) on 100 validation documents;
  held out: the same tasks' 500 test documents.
* ``smollm2``: SmolLM2-135M-Instruct + its ``add`` and ``words`` experts from
  bench/real_model.py's cache (``--build``), DARE-TIES, 3 layer groups, the composite task
  (addition answered in words) as an lm-eval task with the chat template, perplexity of the
  answer (weight -1) on its 60 validation questions; held out: its 100 test questions.

Writes results/bench/peers[_mini].json, .md and .png. Wrap it in ``flock /work/heavy.lock``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peers_mergekit  # noqa: E402
from peers_evomerge import heldout_scorer, run_evomerge  # noqa: E402
from peers_report import markdown, plot, summarize  # noqa: E402

OUT = ROOT / "results" / "bench"
REAL_BUILD = ROOT / "build" / "real_model"  # bench/real_model.py's default --build


def zoo_config(zoo: Path, limit: int) -> tuple[dict, Path, list[dict]]:
    """The zoo setting: (mergekit-evolve config, lm-eval task directory, held-out tasks)."""
    from evomerge.zoo.build import write_lm_eval_yamls

    tasks = write_lm_eval_yamls(zoo)
    cfg = {"genome": {"models": [str(zoo / "math"), str(zoo / "lang")],
                      "merge_method": "dare_ties", "base_model": str(zoo / "base"),
                      "layer_granularity": _granularity(zoo / "base", 3)},
           "tasks": [{"name": "zoo_add_l1_validation", "metric": "acc,none"},
                     {"name": "zoo_maxmin_l2_validation", "metric": "acc,none"}],
           "limit": limit, "apply_chat_template": False, "fewshot_as_multiturn": False}
    heldout = [{"task": "zoo_add_l1_test", "metric": "acc", "weight": 1.0},
               {"task": "zoo_maxmin_l2_test", "metric": "acc", "weight": 1.0}]
    return cfg, tasks, heldout


def smollm2_config(build: Path, out: Path, seed: int) -> tuple[dict, Path, list[dict]]:
    """The SmolLM2 setting: experts from bench/real_model.py's cache (built there if absent:
    minutes each), the composite task as lm-eval task YAMLs."""
    import yaml
    from real_model import FULL
    from real_model import build as build_experts

    base, experts, info = build_experts(build, seed, 60, FULL["sizes"])
    tasks = out / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    for split in ("validation", "test"):
        doc = {"task": f"peers_both_{split}", "dataset_path": "json",
               "dataset_kwargs": {"data_files": {split: str(info["files"]["both"][split])}},
               "test_split": split, "output_type": "loglikelihood",
               "doc_to_text": "{{prompt}}", "doc_to_target": "{{answer}}",
               "target_delimiter": "",
               "metric_list": [{"metric": "perplexity", "aggregation": "perplexity",
                                "higher_is_better": False},
                               {"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
        (tasks / f"peers_both_{split}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    cfg = {"genome": {"models": [experts["add"], experts["words"]], "merge_method": "dare_ties",
                      "base_model": base, "layer_granularity": _granularity(Path(base), 3)},
           "tasks": [{"name": "peers_both_validation", "metric": "perplexity,none",
                      "weight": -1.0}]}
    heldout = [{"task": "peers_both_test", "metric": "perplexity", "weight": -1.0},
               {"task": "peers_both_test", "metric": "acc", "weight": 0.0}]
    return cfg, tasks, heldout


def _granularity(model: Path, groups: int) -> int:
    layers = json.loads((model / "config.json").read_text())["num_hidden_layers"]
    return layers // groups if layers % groups == 0 else layers


def run_setting(name: str, cfg: dict, tasks: Path, heldout: list[dict], seeds: list[int],
                out: Path, args: argparse.Namespace, log=print) -> dict[str, Any]:
    """Both programs on every seed, then the held-out scores of their curves."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    config = out / "evolve.yml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    why_not = ("skipped in --mini: it needs its own virtualenv (not in CI) and a Ray head "
               "(~15 s to start, ~6 s per evaluation here), over the miniature's time"
               if args.mini else peers_mergekit.available())
    runs: dict[str, Any] = {}
    for seed in seeds:
        mk = None
        fevals = args.fevals
        if why_not is None:
            log(f"[{name} s{seed}] mergekit-evolve, --max-fevals {fevals} ...")
            mk = peers_mergekit.run_mergekit_evolve(
                config, out / f"mergekit_s{seed}", tasks,
                ["--max-fevals", str(fevals), "--random-seed", str(seed),
                 "--batch-size", str(args.batch_size), *args.mk_flags],
                timeout=args.timeout)
            fevals = len(mk["evals"]) or fevals
            log(f"  rc {mk['rc']}, {len(mk['evals'])} evaluations in {mk['wall_s']:.0f} s")
        log(f"[{name} s{seed}] evomerge, {fevals} evaluations ...")
        evo = run_evomerge(config, out / f"evomerge_s{seed}", tasks, fevals, seed,
                           args.batch_size, popsize=args.popsize, timeout=args.timeout)
        log(f"  rc {evo['rc']}, {len(evo['evals'])} evaluations in {evo['wall_s']:.0f} s")
        runs[f"s{seed}"] = {"mergekit-evolve": mk, "evomerge": evo}
    score = heldout_scorer(config, tasks, heldout, args.batch_size)
    for run in runs.values():
        for prog in run.values():
            if prog is not None:
                prog["curve"] = score(prog)
    return {"config": cfg, "heldout": heldout, "runs": runs,
            "mergekit_evolve": why_not or "ran"}


def kill_test(cfg_dir: Path, tasks: Path, fevals: int, batch: int, popsize: int | None,
              with_mergekit: bool) -> dict[str, Any]:
    """SIGKILL each program after its first generation, then continue it as its users would
    (``evomerge resume``; mergekit-evolve has no resume: the same command again)."""
    from peers_evomerge import kill_and_resume

    out = {"evomerge": kill_and_resume(cfg_dir / "evolve.yml", cfg_dir / "kill_evomerge", tasks,
                                       fevals, batch, popsize)}
    if with_mergekit:
        store = cfg_dir / "kill_mergekit"
        flags = ["--max-fevals", str(fevals), "--random-seed", "0", "--batch-size", str(batch)]
        first = peers_mergekit.run_mergekit_evolve(cfg_dir / "evolve.yml", store, tasks, flags,
                                                   kill_after_evals=1)
        again = peers_mergekit.run_mergekit_evolve(cfg_dir / "evolve.yml", store, tasks, flags)
        gens = again["generations"]
        out["mergekit-evolve"] = {
            "killed_after": (first["generations"] or [{}])[-1].get("evaluations", 0),
            "rerun_first_iteration": gens[0]["iteration"] if gens else None,
            "rerun_evaluations": len(again["evals"]),
            "continues": bool(gens) and gens[0]["iteration"] > 1}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", choices=["zoo", "smollm2"], default=["zoo", "smollm2"])
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="zoo seeds (0 1 2)")
    # pycma stops once evaluations - 1 >= max-fevals after a generation, then evaluates its
    # mean once: 65 -> 6 generations of 11 + 1 = 67 evaluations (32 -> 3 x 11 + 1 = 34)
    ap.add_argument("--fevals", type=int, default=65, help="mergekit-evolve --max-fevals (zoo)")
    ap.add_argument("--smollm2-fevals", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--limit", type=int, default=100, help="zoo validation documents per task")
    ap.add_argument("--zoo", default=str(ROOT / "zoo"), help="zoo directory (built if absent)")
    ap.add_argument("--build", default=str(REAL_BUILD), help="bench/real_model.py's cache")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per program run")
    ap.add_argument("--no-kill-test", dest="kill_test", action="store_false",
                    help="skip killing and continuing each program (zoo, full run only)")
    ap.add_argument("--mini", action="store_true", help="CI: evomerge half, mini zoo")
    ap.add_argument("--out", default=None, help="JSON path (default results/bench/peers.json)")
    ap.add_argument("--work", default=None, help="run directory (default build/peers)")
    args = ap.parse_args(argv)
    # the search only: evomerge writes no model either (export + merge are separate commands)
    args.mk_flags, args.popsize = ["--no-save-final-model"], None
    if args.mini:
        args.settings, args.fevals, args.limit, args.popsize = ["zoo"], 8, 12, 4
    from evomerge.zoo.build import build_zoo

    t0 = time.time()
    tag = "_mini" if args.mini else ""
    work = Path(args.work) if args.work else ROOT / "build" / f"peers{tag}"
    out = Path(args.out) if args.out else OUT / f"peers{tag}.json"
    doc: dict[str, Any] = {"settings": {}, "machine": _machine()}
    if out.exists() and not args.mini:  # settings run before (another invocation) stay
        doc["settings"] = json.loads(out.read_text()).get("settings", {})
    for name in args.settings:
        started = time.time()
        if name == "zoo":
            if not (Path(args.zoo) / "zoo.json").exists():  # an existing zoo is used as is
                build_zoo(args.zoo, seed=0, profile="mini" if args.mini else "full")
            cfg, tasks, held = zoo_config(Path(args.zoo), args.limit)
            seeds = args.seeds or ([0] if args.mini else [0, 1, 2])
        else:
            cfg, tasks, held = smollm2_config(Path(args.build), work / name, 0)
            seeds = [0]
        ns = argparse.Namespace(**{**vars(args), "fevals": args.fevals if name == "zoo"
                                   else args.smollm2_fevals})
        doc["settings"][name] = run_setting(name, cfg, tasks, held, seeds, work / name, ns)
        if name == "zoo" and args.kill_test and not args.mini:
            doc["settings"][name]["kill_test"] = kill_test(
                work / name, tasks, 2 * (args.popsize or 11) - 1, args.batch_size, args.popsize,
                with_mergekit=not args.mini and peers_mergekit.available() is None)
        doc["settings"][name]["seconds"] = round(time.time() - started, 1)
    doc["summary"] = summarize(doc)
    doc["total_seconds"] = round(time.time() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    out.with_suffix(".md").write_text(markdown(doc) + "\n")
    plot(doc, out.with_suffix(".png"))
    print(markdown(doc))
    print(f"total {doc['total_seconds']} s -> {out}")
    return doc


def _machine() -> dict[str, Any]:
    import platform

    import psutil
    import torch

    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "torch": torch.__version__, "python": platform.python_version(), "gpu": False,
            "threads_per_evaluator": 1}


if __name__ == "__main__":
    main()
