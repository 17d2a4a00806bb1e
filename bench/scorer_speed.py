"""The fast scorer against lm-eval's loglikelihood on a real model (SmolLM2-135M-Instruct,
float32, this machine's CPU): the same (context, continuation) pairs, the same batch size,
median of interleaved runs; also the largest difference between their log-likelihoods.

    python bench/scorer_speed.py [--items 96] [--batch 16] [--repeats 3]

Writes results/bench/scorer_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pairs(n: int) -> list[tuple[str, str]]:
    """Arithmetic and capital questions with their answers (varied lengths, all distinct)."""
    caps = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Germany", "Berlin"), ("Canada", "Ottawa"), ("Egypt", "Cairo"), ("Peru", "Lima")]
    out = []
    for i in range(n):
        if i % 2:
            a, b = 17 * i % 97, 31 * i % 89
            out.append((f"Question: What is {a} + {b}?\nAnswer:", f" {a + b}"))
        else:
            country, city = caps[i // 2 % len(caps)]  # every item distinct (lm-eval dedups)
            out.append((f"Fact {i}: the capital of {country} is",
                        f" {city}, a city of {i + 2} million people."))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from pretrained import build_smollm2, cache_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.cli.quiet import quiet_third_party
    from evomerge.evaluators.answers import encode_pair, loglikelihoods

    quiet_third_party()
    path = build_smollm2(cache_dir() / "fixtures" / "smollm2")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    items = pairs(args.items)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch, device="cpu")
    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i)
            for i, p in enumerate(items)]
    times: dict[str, list[float]] = {"lm_eval": [], "evomerge": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        theirs = lm.loglikelihood(reqs, disable_tqdm=True)
        times["lm_eval"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        encoded = [encode_pair(tok, c, a) for c, a in items]  # tokenization counted
        ours = loglikelihoods(model, encoded, args.batch)
        times["evomerge"].append(time.perf_counter() - t0)
    diff = max(abs(a[0] - b[0]) for a, b in zip(theirs, ours))
    med = {k: statistics.median(v) for k, v in times.items()}
    doc = {"model": "SmolLM2-135M-Instruct (float32)", "items": args.items,
           "batch_size": args.batch, "repeats": args.repeats, "cpu": platform.processor(),
           "threads": torch.get_num_threads(), "seconds": times, "median_seconds": med,
           "speedup": med["lm_eval"] / med["evomerge"], "max_abs_loglik_diff": diff,
           "greedy_flags_equal": all(a[1] == b[1] for a, b in zip(theirs, ours))}
    out = ROOT / "results" / "bench" / "scorer_speed.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: doc[k] for k in ("median_seconds", "speedup", "max_abs_loglik_diff",
                                          "greedy_flags_equal")}, indent=2))


if __name__ == "__main__":
    main()
