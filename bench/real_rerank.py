"""Choosing on generated answers: the real-model searches (bench/real_model.py) minimise the
validation answer NLL, which ranks failures from successes well but not the best merges among
themselves (docs/real_models.md: rho about -0.9 over the rows, yet merges 20% apart in loss
answer the same on test). This re-ranks a search's ``--top`` lowest-loss points by what the
goal counts, greedy exact match on the *validation* split, and tests the one it picks:

    python bench/real_rerank.py --pair final --seed 2 [--top 12] [--evals 32]

Rows (each from the stored studies of ``real_model.py --evals E``; nothing is searched again):

  ps (2x) rerank      the PS study's first 2 x E evaluations
  ps (3x) rerank      its first 3 x E (only where the study was continued, ``--ps-factor 3``)
  pslocal rerank      PS's first E and the PS+DFS study ``pslocal`` (2 x E in all); likewise
                      ``pslocal (48+16) rerank``: PS's first 48 and the study ``pslocal48``
  pathsplice rerank   the study's E evaluations (likewise path, pathlocal, pathmix)

A row's label names the study of its pick: a point PS and PS+DFS share (PS+DFS's start) is
PS's. The pick (:func:`pick`): among the pool's ``--top`` lowest validation losses, those keeping at
least ``--keep`` (0.8) of each expert's validation exact match on its own skill come first,
then the highest validation exact match on ``both``, then the lower loss (``--keep 0``: the
composite alone; its rows are named so). The selection costs ``--top`` generations over the
validation split per row, reported beside the rows (``--answers`` reuses an earlier run's). The test
split is touched once per row, for the pick only. Writes
results/bench/real_model{tag}_rerank_s{seed}.json and .md (rows in real_model.py's format, so
``real_model.py --table`` gathers them with the seed's other files).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import real_model  # noqa: E402  (sets HF_HUB_OFFLINE before transformers loads)
from real_answers import KEEP, em_cache, expert_validation_em, validation_generation  # noqa: E402
from real_skills import PAIRS, pair_tag  # noqa: E402

PATHS = ("path", "pathlocal", "pathmix", "pathsplice")  # real_model.py's new DFS spaces


def pick(cands: list[dict[str, Any]], experts: dict[str, float], keep: float,
         composite: str = "both") -> dict[str, Any]:
    """The candidate to keep: those whose validation exact match on every expert's skill is at
    least ``keep`` x that expert's come first, then the highest exact match on ``composite``,
    then the lowest validation loss. ``cands``: ``{"validation": loss, "em": {task: EM}}``."""
    def kept(c: dict[str, Any]) -> bool:
        # the tolerance: 44/60 keeps exactly 0.8 of 55/60, which float products miss
        return all(c["em"][s] >= keep * e - 1e-9 for s, e in experts.items())
    return min(cands, key=lambda c: (not kept(c), -c["em"][composite], c["validation"]))


def pool(studies: list[tuple[Any, Any, int]], top: int) -> list[tuple[float, Any, Any, Any]]:
    """(weighted validation loss, study, space, trial) of the ``top`` lowest losses among each
    study's first N counted evaluations (``studies``: (study, space, N)); a point two studies
    share (same objective values: PS+DFS's start is PS's point) counted once."""
    from evomerge.search.ledger import counted
    from evomerge.search.objectives import weighted_loss

    seen, out = set(), []
    for study, space, n in studies:
        done = sum(map(counted, study.get_trials()))
        if done < n:
            raise RuntimeError(f"study {study.study_name!r} has {done} evaluations, "
                               f"fewer than the {n} asked")
        for t in real_model.first_completed(study, n):
            if tuple(t.values) not in seen:
                seen.add(tuple(t.values))
                out.append((weighted_loss(t.values, space.objectives), study, space, t))
    out.sort(key=lambda x: x[0])
    return out[:top]


def jobs(args: argparse.Namespace, root: Path) -> list[tuple[str, list[tuple[str, int]]]]:
    """(role, [(study name, first N)]) of each row, from the studies stored under ``root``:
    PS after each multiple of ``--evals`` from 2x on, and every PS+DFS study with local
    mutations (``pslocal``: PS's first E + its E; ``pslocal{N}``: PS's first N + its 2E - N),
    and the path searches of :data:`PATHS` (their E)."""
    import re

    from evomerge.search.ledger import counted, default_storage, load_study, open_storage

    tag, e = f"real{pair_tag(args.pair)}_e{args.evals}", args.evals
    ps = f"{tag}_ps_s{args.seed}"
    out: list[tuple[str, list[tuple[str, int]]]] = []
    if (root / ps).exists():  # else only the path searches (their PS study since deleted)
        n_ps = sum(map(counted, load_study(open_storage(default_storage(ps, root)),
                                           ps).get_trials()))
        out += [(f"ps ({f}x) rerank", [(ps, f * e)]) for f in range(2, n_ps // e + 1)]
        pat = re.compile(rf"{re.escape(tag)}_pslocal(\d*)_s{args.seed}")
        for name in sorted(p.name for p in root.iterdir() if pat.fullmatch(p.name)):
            n = int(pat.fullmatch(name).group(1) or e)
            if n < 2 * e:
                role = "pslocal rerank" if n == e else f"pslocal ({n}+{2 * e - n}) rerank"
                out.append((role, [(ps, n), (name, 2 * e - n)]))
    for space in PATHS:  # the path searches of their own (not started from PS)
        if (root / f"{tag}_{space}_s{args.seed}").exists():
            out.append((f"{space} rerank", [(f"{tag}_{space}_s{args.seed}", e)]))
    return [j for j in out if not args.rows or j[0] in args.rows]


def run(args: argparse.Namespace, save: Any) -> dict[str, Any]:
    """Every row of ``jobs``: pool, validation generations, the pick, its test scores."""
    from evomerge.search.heldout import heldout_evaluators
    from evomerge.search.ledger import default_storage, load_study, open_storage
    from evomerge.search.space import load_space
    from evomerge.search.worker import Worker

    t0, root = time.time(), Path(args.build)
    seen: dict[tuple[str, int], dict[str, Any]] = {}  # (study, trial) -> its candidate entry
    expert_em: dict[str, float] = {}
    for path in args.answers:  # an earlier run's validation answers: deterministic, reused
        old = json.loads(Path(path).read_text())
        if (old["pair"], old["seed"], old["evals"]) != (args.pair, args.seed, args.evals):
            raise ValueError(f"--answers {path}: pair {old['pair']}, seed {old['seed']}, evals "
                             f"{old['evals']}, not {args.pair}, {args.seed}, {args.evals}")
        if expert_em and old["expert_validation_em"] != expert_em:
            raise ValueError(f"--answers {path}: the experts' validation exact match "
                             f"{old['expert_validation_em']}, not {expert_em}")
        expert_em = old["expert_validation_em"]
        seen.update({(c["study"], c["trial"]): c for sel in old["selection"].values()
                     for c in sel["candidates"]})
    cfg = real_model.MINI if args.mini else real_model.FULL
    base, experts, info = real_model.build(root, args.seed, args.steps, cfg["sizes"], args.base,
                                           pair=args.pair)
    files = {s: str(f["test"]) for s, f in info["files"].items()}
    skills = PAIRS[args.pair]
    studies, workers = {}, {}
    tested: dict[tuple[str, int], dict[str, Any]] = {}  # rows' pools overlap: score each once

    def study(name: str) -> tuple[Any, Any]:
        if name not in studies:
            st = load_study(open_storage(default_storage(name, root / "studies")), name)
            sp = load_space(st.user_attrs["evomerge_space"])
            studies[name] = (st, sp)
        return studies[name]

    def worker(name: str) -> tuple[Any, dict, dict]:
        if name not in workers:
            sp = study(name)[1]
            workers[name] = (Worker(sp), validation_generation(sp), heldout_evaluators(sp))
        return workers[name]

    todo = jobs(args, root / "studies")
    if not todo:
        raise ValueError(f"no stored study gives a row{' named ' + repr(args.rows) if args.rows else ''}"
                         f" for pair {args.pair}, seed {args.seed}, evals {args.evals}")
    if not expert_em:  # any row's space scores the experts: the same evaluators
        name = todo[0][1][0][0]
        expert_em = expert_validation_em(study(name)[1], {s: experts[s] for s in skills[:2]},
                                         worker(name)[0],
                                         em_cache(root, pair_tag(args.pair), args.seed,
                                                  args.steps, cfg["sizes"]["validation"]))
    doc: dict[str, Any] = {"pair": args.pair, "skills": list(skills), "seed": args.seed,
                           "evals": args.evals, "top": args.top, "keep": args.keep,
                           "sizes": cfg["sizes"], "expert_validation_em": expert_em,
                           "answers_from": [str(a) for a in args.answers],
                           "rows": {}, "selection": {}}
    for role, parts in todo:
        role += "" if args.keep == KEEP else f" (keep {args.keep:g})"  # its own row
        t1 = time.time()
        cands = []
        for loss, st, _, t in pool([(*study(n), k) for n, k in parts], args.top):
            key = (st.study_name, t.number)
            if key not in seen:
                w, val, _ = worker(st.study_name)
                r = w.run(-1, t.user_attrs["recipe"], val)
                if r.values is None:
                    raise RuntimeError(r.error)
                seen[key] = {"study": st.study_name, "trial": t.number, "validation": loss,
                             "em": {s: r.scores[f"{s}/exact_match"] for s in skills}}
            cands.append(seen[key])
        chosen = pick(cands, expert_em, args.keep)
        key = (chosen["study"], chosen["trial"])
        if key not in tested:
            st = study(chosen["study"])[0]
            t = next(x for x in st.get_trials() if x.number == chosen["trial"])
            w, _, tst = worker(st.study_name)
            tested[key] = {**real_model.test_row(w, tst, t.user_attrs["recipe"], None, files,
                                                 cfg["outputs"]),
                           "path": t.user_attrs.get("path")}
        label = f"{role} {chosen['study'].split('_')[-2]} trial {chosen['trial']}"
        doc["rows"][label] = {**tested[key], "validation": chosen["validation"],
                              "validation_em": chosen["em"], "role": role}
        doc["selection"][role] = {"pool": [list(p) for p in parts], "candidates": cands,
                                  "seconds": round(time.time() - t1, 1)}
        doc["total_seconds"] = round(time.time() - t0, 1)
        save(doc)
        print(f"[{time.time() - t0:.0f} s] {label}: val EM {chosen['em']}", file=sys.stderr)
    return doc


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pair", choices=sorted(PAIRS), default="final")  # the pair it helps
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--evals", type=int, default=32, help="the searches' --evals")
    ap.add_argument("--steps", type=int, default=60, help="the experts' fine-tune steps")
    ap.add_argument("--top", type=int, default=12,
                    help="lowest-loss points re-ranked on validation generations, per row")
    ap.add_argument("--keep", type=float, default=KEEP,
                    help="share of each expert's validation exact match a pick must keep "
                         "(another value names its rows, e.g. 'ps (2x) rerank (keep 0)')")
    ap.add_argument("--answers", nargs="*", default=[],
                    help="earlier runs' JSON: their candidates' validation answers are reused, "
                         "not generated again")
    ap.add_argument("--rows", nargs="*", default=None,
                    help="only these rows, named without the '(keep ...)' suffix")
    ap.add_argument("--build", default=str(ROOT / "build" / "real_model"))
    ap.add_argument("--base", default=None, help="the SmolLM2 directory the searches used")
    ap.add_argument("--mini", action="store_true",
                    help="the CI miniature's studies (real_model.py --mini)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.mini:
        args.steps, args.evals = min(args.steps, 2), 4
    if args.top < 1:
        ap.error(f"--top {args.top} must be at least 1")
    if not 0 <= args.keep <= 1:
        ap.error(f"--keep {args.keep} must be between 0 and 1")
    _, save = real_model.doc_writer(args.out, f"real_model{pair_tag(args.pair)}_rerank_s"
                                    f"{args.seed}", args.mini, real_model.markdown)
    doc = run(args, save)
    print(real_model.markdown(doc))
    return doc


if __name__ == "__main__":
    main()
