"""The zoo's table: source models and three uniform merges on the test split, per seed.

    python bench/zoo_table.py [--zoo zoo] [--split test]     # ~1 min once the zoo is built
    python bench/zoo_table.py --balance results/zoo_mixed/report.json

Exact match and answer NLL per token on tasks A (add_l1), B (maxmin_l2), C (add_l2) and
sub_l1, 500 examples each. Writes results/bench/zoo_table_seed<S>.json and prints the
markdown rows the README shows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from evomerge.evaluators import make_evaluator  # noqa: E402
from evomerge.scoring import load_model, score  # noqa: E402

TASKS = ["add_l1", "maxmin_l2", "add_l2", "sub_l1"]


def merges(zoo: Path) -> dict[str, dict]:
    two = [str(zoo / "math"), str(zoo / "lang")]
    return {
        "linear 0.5/0.5 (math, lang)": {
            "merge_method": "linear", "models": [{"model": m, "parameters": {"weight": 0.5}}
                                                 for m in two]},
        "task arithmetic 1/1": {
            "merge_method": "task_arithmetic", "base_model": str(zoo / "base"),
            "models": [{"model": m, "parameters": {"weight": 1.0}} for m in two]},
        "TIES density 0.5": {
            "merge_method": "ties", "base_model": str(zoo / "base"),
            "models": [{"model": m, "parameters": {"weight": 1.0, "density": 0.5}} for m in two]},
    }


def balance(report_path: str) -> None:
    """The most balanced point of a held-out report's fronts: the share of each expert's own
    exact match (math on A, lang on B) that a recipe keeps at once (the smaller of the two)."""
    rows = json.loads(Path(report_path).read_text())["rows"]
    src = {r["name"]: r["test"] for r in rows if r["kind"] == "source"}
    a, b = src["math"]["add_l1/exact_match"], src["lang"]["maxmin_l2/exact_match"]
    print(f"math A {100 * a:.1f}%, lang B {100 * b:.1f}% (lang on A "
          f"{100 * src['lang']['add_l1/exact_match']:.1f}%, math on B "
          f"{100 * src['math']['maxmin_l2/exact_match']:.1f}%)")
    for kind in ("search front", "uniform front"):
        pts = [r["test"] for r in rows if r["kind"] == kind]
        best = max(pts, key=lambda t: min(t["add_l1/exact_match"] / a, t["maxmin_l2/exact_match"] / b))
        keep = min(best["add_l1/exact_match"] / a, best["maxmin_l2/exact_match"] / b)
        print(f"{kind}: most balanced A {100 * best['add_l1/exact_match']:.1f}%, B "
              f"{100 * best['maxmin_l2/exact_match']:.1f}%, C {100 * best['add_l2/exact_match']:.1f}%"
              f" -> keeps {100 * keep:.0f}% of both experts' own scores")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", default=str(ROOT / "zoo"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--balance", default=None, help="a report.json: its most balanced point")
    args = ap.parse_args()
    if args.balance:
        return balance(args.balance)
    zoo = Path(args.zoo).resolve()
    seed = json.loads((zoo / "zoo.json").read_text())["seed"]
    ev = make_evaluator("zoo", tasks=TASKS, zoo=str(zoo), split=args.split)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        targets = {name: str(zoo / name) for name in ("base", "math", "lang", "sub")}
        for name, recipe in merges(zoo).items():
            path = Path(tmp) / f"{len(targets)}.yaml"
            path.write_text(yaml.safe_dump(recipe))
            targets[name] = str(path)
        for name, target in targets.items():
            rows[name] = score(*load_model(target), [ev])
    out = ROOT / "results" / "bench" / f"zoo_table_seed{seed}.json"
    out.write_text(json.dumps({"seed": seed, "split": args.split, "rows": rows}, indent=2))
    print(f"| model | {' | '.join(TASKS)} |")
    for name, s in rows.items():
        cells = [f"{100 * s[f'{t}/exact_match']:.1f}% / {s[f'{t}/answer_nll']:.2f}" for t in TASKS]
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
