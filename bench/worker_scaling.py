"""Candidates per minute with --workers 0, 1 and 2 Ray actors on the zoo, and where the time goes.

    python bench/worker_scaling.py        # needs ./zoo (evomerge zoo build); ~4 min on 2 cores
    python bench/worker_scaling.py --lm-eval-only   # redo only the lm-eval timing

For each setting a fresh study evaluates the same number of random candidates of a per-layer
DARE-TIES space (the three zoo objectives, 250 validation examples each). Reported per
setting: candidates/min (after set-up), mean merge and evaluation seconds per candidate, and
scheduling overhead = 1 - (merge + eval time) / (actor-seconds available). Also timed: lm-eval
(HFLM, log-likelihood task) against the raw teacher-forced pass of the fast scorer on the same
250 examples, with the zoo model and with a wider random model of the same vocabulary (where
the forward pass weighs like a real model's). Writes results/bench/worker_scaling.json.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from evomerge.cli.quickstart import rebase_zoo  # noqa: E402
from evomerge.commands import executor_factory  # noqa: E402
from evomerge.search.driver import run_search  # noqa: E402
from evomerge.search.space import load_space  # noqa: E402

N = 48


def space(zoo: str):
    return rebase_zoo(load_space(ROOT / "search_spaces" / "zoo_ties_dare.yaml"), zoo,
                      optimizer={"name": "random", "seed": 0}, budget={"trials": N},
                      device="cpu")


def one(zoo: str, workers: int, work: Path) -> dict:
    import optuna

    shutil.rmtree(work / f"w{workers}", ignore_errors=True)
    stamps = []
    factory = executor_factory(workers, temp_dir=work / "ray") if workers else None
    out = run_search(space(zoo), study=f"w{workers}", results_root=work,
                     executor_factory=factory,
                     progress=lambda info: stamps.append(time.monotonic()))
    st = optuna.load_study(study_name=f"w{workers}", storage=out.storage)
    trials = [t for t in st.get_trials() if t.values]
    merge = sum(t.user_attrs["merge_seconds"] for t in trials) / len(trials)
    ev = sum(t.user_attrs["eval_seconds"] for t in trials) / len(trials)
    # Steady state: from the first result to the last (set-up and the first candidate excluded).
    wall = stamps[-1] - stamps[0]
    per_min = 60 * (len(stamps) - 1) / wall
    slots = max(workers, 1)
    overhead = 1 - (len(stamps) - 1) * (merge + ev) / (wall * slots)
    return {"workers": workers, "candidates": len(trials), "candidates_per_min": per_min,
            "merge_seconds": merge, "eval_seconds": ev, "scheduling_overhead": overhead}


def _wider(zoo: str) -> Any:
    """A randomly initialised, wider and deeper Llama with the zoo's tokenizer (25M params):
    the same examples, with a forward pass that weighs like a real model's."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(f"{zoo}/math")
    cfg.update({"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8,
                "num_attention_heads": 8, "num_key_value_heads": 8, "head_dim": 64})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def lm_eval_vs_raw(zoo: str, model: Any, label: str) -> dict:
    from transformers import AutoTokenizer

    from evomerge.evaluators import make_evaluator
    from evomerge.zoo.build import write_lm_eval_yamls

    tok = AutoTokenizer.from_pretrained(f"{zoo}/math")
    include = str(write_lm_eval_yamls(Path(zoo)))
    harness = make_evaluator("lm_eval", tasks=["zoo_add_l1_validation"], include_path=include,
                             limit=250, batch_size=250)
    fast = make_evaluator("zoo", tasks=["add_l1"], zoo=zoo, limit=250, batch_size=250)
    out = {"model": label, "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    times: dict[str, list[float]] = {"lm_eval": [], "raw_forward": []}
    for ev in (harness, fast):
        ev(model, tok)  # warm: tasks built, requests and batches encoded, HFLM wrapped
    for _ in range(5):  # interleaved, median: this machine's speed drifts between runs
        for name, ev in (("lm_eval", harness), ("raw_forward", fast)):
            t = time.perf_counter()
            ev(model, tok)
            times[name].append(time.perf_counter() - t)
    for name, ts in times.items():
        out[f"{name}_seconds"] = sorted(ts)[len(ts) // 2]
    out["lm_eval_overhead"] = out["lm_eval_seconds"] / out["raw_forward_seconds"] - 1
    return out


def lm_eval_vs_raw_both(zoo: str) -> list[dict]:
    from transformers import AutoModelForCausalLM

    zoo_model = AutoModelForCausalLM.from_pretrained(f"{zoo}/math").eval()
    return [lm_eval_vs_raw(zoo, zoo_model, "zoo math expert"),
            lm_eval_vs_raw(zoo, _wider(zoo), "random Llama, d=512, 8 layers")]


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    zoo = args[0] if args else str(ROOT / "zoo")
    out = ROOT / "results" / "bench" / "worker_scaling.json"
    if "--lm-eval-only" in sys.argv:
        res = json.loads(out.read_text())
        res["lm_eval_vs_raw"] = lm_eval_vs_raw_both(zoo)
    else:
        work = ROOT / "build" / "bench_workers"
        rows = [one(zoo, w, work) for w in (0, 1, 2)]
        res = {"settings": rows, "machine_cpus": os.cpu_count(),
               "speedup_2_over_1": rows[2]["candidates_per_min"] / rows[1]["candidates_per_min"],
               "lm_eval_vs_raw": lm_eval_vs_raw_both(zoo)}
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
