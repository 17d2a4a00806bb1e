"""Where the composite's answers fail (bench/real_model.py's pairs): every test answer of the
add expert and of stored search points, on ``add`` and on ``both``, each put in one class:

  exact                    the right sum in the composite's form ("#### 148", or the words)
  right sum, other form    the right sum, but not in that form (the add expert's "148")
  wrong sum, framed        the composite's form around a wrong sum ("#### 256")
  wrong sum, other form    anything else

with the share of right sums (in any form) split by whether the sum reaches 100, so that a
merge that frames but no longer adds reads apart from one that adds but does not frame:

    python bench/real_failures.py --pair final --seed 2 --points real_final_e32_ps_s2:57

Points are ``STUDY:TRIAL`` of the studies under ``--build``/studies (nothing is searched).
Writes results/bench/real_model{tag}_failures_s{seed}.json (every answer kept) and .md.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_model  # noqa: E402  (sets HF_HUB_OFFLINE before transformers loads)
from real_skills import PAIRS, in_words, pair_tag  # noqa: E402

CLASSES = ("exact", "right sum, other form", "wrong sum, framed", "wrong sum, other form")
WORDS = {in_words(n): n for n in range(1000)}


def value(text: str) -> int | None:
    """The number an answer states, in digits or in words, with or without the final-answer
    line's ``#### ``; None for anything else."""
    t = text.strip().removeprefix("####").strip()
    if re.fullmatch(r"\d{1,4}", t):
        return int(t)
    return WORDS.get(t.lower())


def framed(text: str, pair: str) -> bool:
    """Whether an answer has the composite's form: the final-answer line, or words only."""
    t = text.strip()
    return t.startswith("#### ") if pair == "final" else bool(t) and value(t) is not None \
        and not re.search(r"\d", t)


def classify(prompt: str, output: str, answer: str, pair: str) -> str:
    """One of :data:`CLASSES` for a greedy ``output`` to an addition ``prompt``."""
    a, b = map(int, re.findall(r"\d+", prompt)[:2])
    if output.strip() == answer.strip():
        return CLASSES[0]
    right = value(output) == a + b
    return CLASSES[1] if right else CLASSES[2] if framed(output, pair) else CLASSES[3]


def summary(outputs: list[dict[str, str]], pair: str) -> dict[str, Any]:
    """Class counts and right sums (any form) by sum below / at least 100, per task."""
    out: dict[str, Any] = {}
    for task in ("add", "both"):
        rows = [o for o in outputs if o["task"] == task]
        cls = [classify(o["prompt"], o["output"], o["answer"], pair) for o in rows]
        sums = [sum(map(int, re.findall(r"\d+", o["prompt"])[:2])) for o in rows]
        right = [c in CLASSES[:2] for c in cls]
        out[task] = {"n": len(rows), **{c: cls.count(c) for c in CLASSES},
                     "right sum": sum(right),
                     "right sum, sum < 100": f"{sum(r for r, s in zip(right, sums) if s < 100)}"
                                             f"/{sum(s < 100 for s in sums)}",
                     "right sum, sum >= 100": f"{sum(r for r, s in zip(right, sums) if s >= 100)}"
                                              f"/{sum(s >= 100 for s in sums)}"}
    return out


def markdown(doc: dict[str, Any]) -> str:
    head = ["model", "task", *CLASSES, "right sum", "sum < 100", "sum >= 100"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, m in doc["models"].items():
        for task, s in m["summary"].items():
            lines.append("| " + " | ".join([label, task, *(str(s[c]) for c in CLASSES),
                                            f"{s['right sum']}/{s['n']}",
                                            s["right sum, sum < 100"],
                                            s["right sum, sum >= 100"]]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    from evomerge.engine.recipe import load_recipe
    from evomerge.search.ledger import default_storage, load_study, open_storage
    from evomerge.search.space import load_space
    from evomerge.search.worker import Worker

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pair", choices=sorted(PAIRS), default="final")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=60, help="the experts' fine-tune steps")
    ap.add_argument("--points", nargs="+", required=True, help="STUDY:TRIAL, one or more")
    ap.add_argument("--build", default=str(real_model.ROOT / "build" / "real_model"))
    ap.add_argument("--base", default=None, help="the SmolLM2 directory the searches used")
    ap.add_argument("--mini", action="store_true", help="the CI miniature's build")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    points = []
    for p in args.points:
        study, _, trial = p.rpartition(":")
        if not study or not trial.isdigit():
            ap.error(f"--points {p!r} must be STUDY:TRIAL")
        points.append((study, int(trial)))
    t0, root = time.time(), Path(args.build)
    cfg = real_model.MINI if args.mini else real_model.FULL
    steps = min(args.steps, 2) if args.mini else args.steps
    _, experts, info = real_model.build(root, args.seed, steps, cfg["sizes"], args.base,
                                        pair=args.pair)
    files = {s: str(info["files"][s]["test"]) for s in ("add", "both")}
    n = cfg["sizes"]["test"]
    doc: dict[str, Any] = {"pair": args.pair, "seed": args.seed, "test": n, "models": {}}
    worker = None
    for study, trial in points:
        st = load_study(open_storage(default_storage(study, root / "studies")), study)
        t = next((x for x in st.get_trials() if x.number == trial), None)
        if t is None or "recipe" not in t.user_attrs:
            raise ValueError(f"--points {study}:{trial}: no such evaluated trial")
        worker = worker or Worker(load_space(st.user_attrs["evomerge_space"]))
        model = worker.materializer.materialize(load_recipe(t.user_attrs["recipe"]))
        doc["models"][f"{study} trial {trial}"] = real_model.greedy_outputs(
            model, worker.tokenizer, files, n)
    model = AutoModelForCausalLM.from_pretrained(experts["add"]).to(worker.device).eval()
    doc["models"]["add expert"] = real_model.greedy_outputs(model, worker.tokenizer, files, n)
    doc["models"] = {k: {"summary": summary(v, args.pair), "outputs": v}
                     for k, v in doc["models"].items()}
    doc["total_seconds"] = round(time.time() - t0, 1)
    _, save = real_model.doc_writer(args.out, f"real_model{pair_tag(args.pair)}_failures_s"
                                    f"{args.seed}", args.mini, markdown)
    save(doc)
    print(markdown(doc))
    return doc


if __name__ == "__main__":
    main()
