"""The real-model experiment's seeds table (``python bench/real_model.py --table``): each
seed's result files gathered (:func:`seed_docs`) and combined into mean and spread of the
composite's exact match per row (:func:`seeds_table`), with how well each seed's validation
loss ranks the rows on test (:func:`validation_rho`)."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any

from real_skills import PAIRS, pair_tag


def seed_docs(folder: Path, pair: str) -> list[dict[str, Any]]:
    """Each seed's rows for ``--table``, by seed: its main file ``real_model{tag}_s{N}.json``
    with the rows of the same seed's later runs (``real_model{tag}_{name}_s{N}.json``: a
    space added since, run with ``--spaces ... --out``) whose roles it lacks. A role that two
    files score differently is refused (ValueError): the table never picks a run silently."""
    pat = re.compile(rf"real_model{re.escape(pair_tag(pair))}(?:_([a-z0-9]+))?_s(\d+)\.json")
    files: dict[int, list[tuple[str, Path]]] = {}
    for p in folder.glob("real_model*_s*.json"):
        m = pat.fullmatch(p.name)
        # real_model_final_s0 is no file of the words pair; real_failures.py's answer classes
        # (real_model_final_failures_s2) hold no rows
        if m and m.group(1) not in (*PAIRS, "failures"):
            files.setdefault(int(m.group(2)), []).append((m.group(1) or "", p))
    docs = []
    for seed in sorted(files):
        doc: dict[str, Any] | None = None
        where: dict[str, tuple[dict, str]] = {}  # role -> (its exact matches, file)
        for _, p in sorted(files[seed]):  # the main file ("" sorts first), then by name
            d = json.loads(p.read_text())
            if doc is None:
                doc = {**d, "rows": {}, "files": []}
            doc["files"].append(p.name)
            for label, r in d["rows"].items():
                # every skill's exact match: an expert fine-tuned again scores 0 on both anyway
                role = r.get("role")
                em = {k: v for k, v in r["scores"].items() if k.endswith("/exact_match")}
                if role in where:
                    if where[role][0] != em:
                        raise ValueError(f"seed {seed}: row {role!r} scores {where[role][0]} in "
                                         f"{where[role][1]} and {em} in {p.name}")
                    continue
                where[role] = (em, p.name)
                doc["rows"][label if label not in doc["rows"] else f"{label} ({p.name})"] = r
        docs.append(doc)
    return docs


def seeds_table(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per row role, ``both`` exact match over seeds (mean, standard deviation, each seed's
    count and Wilson interval) and each skill's mean exact match."""
    skills = docs[0]["skills"]
    out: dict[str, Any] = {"seeds": [d["seed"] for d in docs], "pair": docs[0]["pair"],
                           "files": [f for d in docs for f in d.get("files", [])], "rows": {}}
    lines = ["| row | both EM mean ± sd | per seed: both EM [95% CI] | "
             + " | ".join(f"{s} EM mean" for s in skills[:2]) + " |", "|---|---|---|---|---|"]
    roles = dict.fromkeys(r.get("role") for d in docs for r in d["rows"].values())
    for role in (r for r in roles if r and not r.endswith("front")):
        found = [(d["seed"], next((r for r in d["rows"].values() if r.get("role") == role),
                                  None)) for d in docs]
        seeds = [seed for seed, r in found if r is not None]  # a row some seeds did not run
        per = [r for _, r in found if r is not None]
        both = [r["scores"]["both/exact_match"] for r in per]
        sd = statistics.stdev(both) if len(both) > 1 else 0.0
        skill = [statistics.mean(r["scores"][f"{s}/exact_match"] for r in per)
                 for s in skills[:2]]
        cis = [f"s{seed}: {b:.2f} [{r['both/exact_match_ci'][0]:.2f}, "
               f"{r['both/exact_match_ci'][1]:.2f}]" for seed, b, r in zip(seeds, both, per)]
        out["rows"][role] = {"seeds": seeds, "both": both, "mean": statistics.mean(both),
                             "sd": sd, "skills": dict(zip(skills[:2], skill))}
        lines.append(f"| {role} | {statistics.mean(both):.3f} ± {sd:.3f} | {'; '.join(cis)} | "
                     + " | ".join(f"{v:.3f}" for v in skill) + " |")
    rho = {d["seed"]: validation_rho(d) for d in docs}
    out["validation_rho"] = {seed: r for seed, r in rho.items() if r is not None}
    if out["validation_rho"]:
        lines.append("\nSpearman rank correlation of the validation loss of the rows chosen on "
                     "validation with their test `both` EM, per seed: " + ", ".join(
                         f"s{seed} {r:.3f}" for seed, r in out["validation_rho"].items()))
    out["markdown"] = "\n".join(lines)
    return out


def validation_rho(doc: dict[str, Any]) -> float | None:
    """Spearman's rho between the validation loss the searches minimise and the test ``both``
    exact match, over one seed's rows that have a validation loss (searched points and uniform
    grids; not the rows chosen on validation answers, which carry ``validation_em``: the
    re-ranked rows of bench/real_rerank.py and psem, whose validation is no loss; negative: a
    lower loss ranks higher on test). None under 3 such rows or when either side is constant
    (nothing to rank)."""
    import numpy as np
    from eval_cost import spearman  # the benches' one rank correlation (ties: mean ranks)

    pts = [(r["validation"], r["scores"]["both/exact_match"]) for r in doc["rows"].values()
           if r.get("validation") is not None and not r.get("role", "").endswith("front")
           and "validation_em" not in r]  # chosen on answers (real_rerank.py, psem)
    if len(pts) < 3 or len({v for v, _ in pts}) < 2 or len({e for _, e in pts}) < 2:
        return None
    return spearman(*(np.array(side) for side in zip(*pts)))
