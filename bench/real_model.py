"""Merging real fine-tunes: two SmolLM2-135M-Instruct experts (``add``: two-digit addition;
``words``: numbers in English words, or ``final``: GSM8K's final-answer format with ``--pair
final``), searched merges against both parents on ``both`` (the composite), which neither
expert was trained on. Skills and fine-tuning: bench/real_skills.py.

    python bench/real_model.py --pair final --seed 0 [--evals 48]   # one seed of one pair
    python bench/real_model.py --pair final --table                 # mean and spread over seeds
    python bench/real_model.py --mini            # the CI miniature: a few steps, a few candidates

Stages (each cached under ``--build``, so a rerun resumes): tasks -> experts (full fine-tune
of the decoder layers, ``--steps`` AdamW steps each) -> searches through ``run_search`` on the
validation split, each ``--evals`` evaluations (``--minutes`` optionally caps wall time
too): the spaces of bench/real_spaces.py, which says what each searches (ps, psta, psties,
psem, psemps, swap, dfs, path, pathlocal, pathmix, pathsplice, psdfs, pslocal, qd) -> the test
split: base, experts, the best uniform TIES and task-arithmetic recipes (by validation), and
every search's chosen points, by greedy exact match (with Wilson 95% intervals) and answer
NLL, with the greedy outputs of the first test examples. Writes
results/bench/real_model[_final]_s{seed}[_mini].json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from real_answers import em_cache, expert_validation_em, psem_space  # noqa: E402
from real_seeds import seed_docs, seeds_table  # noqa: E402
from real_skills import PAIRS, fine_tune, pair_tag, write_tasks  # noqa: E402
from real_spaces import DFS_SIGMA0, PS_STARTED, SPACES, psdfs_space, spaces  # noqa: E402

OUT = ROOT / "results" / "bench"
FULL = {"sizes": {"train": 4000, "validation": 60, "test": 100}, "front": 2, "levels": 3,
        "outputs": 3}
MINI = {"sizes": {"train": 64, "validation": 4, "test": 6}, "front": 1, "levels": 2,
        "outputs": 1}
def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p, d = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, centre - half), min(1.0, centre + half))


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


def greedy_outputs(model: Any, tokenizer: Any, files: dict[str, str], k: int) -> list[dict]:
    """Greedy answers of ``model`` to the first ``k`` examples of each test file (so a failure
    can be read, not only scored)."""
    import torch

    out = []
    for task, path in files.items():
        rows = [json.loads(x) for x in Path(path).read_text().splitlines()[:k]]
        for r in rows:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}],
                                                   tokenize=False, add_generation_prompt=True)
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
            with torch.no_grad():
                gen = model.generate(ids.to(model.device), max_new_tokens=12, do_sample=False,
                                     pad_token_id=tokenizer.eos_token_id)
            text = tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
            out.append({"task": task, "prompt": r["prompt"], "answer": r["answer"],
                        "output": text.strip()})
    return out


def test_row(worker: Any, tests: dict, recipe_yaml: str | None, path: str | None,
             files: dict[str, str] | None = None, k: int = 0) -> dict:
    """Test scores of a recipe (or of a model directory), with exact-match intervals and the
    greedy outputs of the first ``k`` examples of ``files``."""
    from transformers import AutoModelForCausalLM

    from evomerge.engine.recipe import load_recipe
    from evomerge.scoring import score

    if recipe_yaml is not None:
        r = worker.run(-1, recipe_yaml, tests)
        if r.values is None:
            raise RuntimeError(r.error)
        scores = r.scores
        model = worker.materializer.materialize(load_recipe(recipe_yaml)) if k else None
    else:
        model = AutoModelForCausalLM.from_pretrained(path).to(worker.device).eval()
        scores = score(model, worker.tokenizer, list(tests.values()))
    n = {s: size for ev in tests.values() for s, size in ev.sizes().items()}
    out: dict[str, Any] = {"scores": scores}
    for s in n:
        kk = round(scores[f"{s}/exact_match"] * n[s])
        out[f"{s}/exact_match_ci"] = wilson(kk, n[s])
    if k and files:
        out["outputs"] = greedy_outputs(model, worker.tokenizer, files, k)
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


def first_completed(study: Any, first: int | None = None) -> list[Any]:
    """The completed trials among the study's first ``first`` counted evaluations (all when
    None), in trial order."""
    from optuna.trial import TrialState

    from evomerge.search.ledger import counted

    trials = sorted((t for t in study.get_trials() if counted(t)), key=lambda t: t.number)
    return [t for t in trials[:first] if t.state == TrialState.COMPLETE]


def _best(study: Any, space: Any, first: int | None = None) -> Any:
    """The completed trial of lowest weighted validation loss among the first ``first``
    counted evaluations."""
    from evomerge.search.objectives import weighted_loss

    return min(first_completed(study, first),
               key=lambda t: weighted_loss(t.values, space.objectives))


def chosen_rows(key: str, study: Any, space: Any, evals: int, front: int, factor: int = 2,
                role: str | None = None) -> list[tuple[str, str, Any]]:
    """(label, role, trial) of the points a search contributes to the table: PS's best after
    each multiple of ``evals`` up to ``factor`` (roles ``ps``, ``ps (2x)``, ...), else the
    search's best (role ``role``, default ``key``) and ``front`` points of its front."""
    from evomerge.search.archive import archive_cells
    from evomerge.search.front import completed, front_trials

    if key == "ps":
        bests = [(i, _best(study, space, i * evals)) for i in range(1, factor + 1)]
        return [(f"ps trial {t.number} (best of {i * evals})", "ps" if i == 1 else f"ps ({i}x)",
                 t) for i, t in bests]
    if key == "qd":
        done = {t.number: t for t in completed(study)}
        cells = archive_cells(list(done.values()), space)
        keys = [o.key for o in space.objectives]
        both, skills = keys.index("both/answer_nll"), [i for i, k in enumerate(keys)
                                                       if not k.startswith("both/")]
        best = min(cells, key=lambda c: c.values[both])
        balanced = max(cells, key=lambda c: min(math.exp(-c.values[i]) for i in skills))
        return [(f"qd trial {best.trial} (archive best on both, cell {best.name})", "qd both",
                 done[best.trial]),
                (f"qd trial {balanced.trial} (archive most balanced, cell {balanced.name})",
                 "qd balanced", done[balanced.trial])]
    best, role = _best(study, space), role or key
    rows = [(f"{role} trial {best.number} (best)", role, best)]
    rows += [(f"{role} trial {t.number}", f"{role} front", t)
             for t in front_trials(study, space)[:front] if t.number != best.number]
    return rows


def run(args: argparse.Namespace, save: Any = None) -> dict[str, Any]:
    """Every stage of one pair and seed; ``save(doc)`` (if given) after each stage, so a run cut
    short keeps the rows it finished (its studies resume on the next run)."""
    from evomerge.search.driver import run_search
    from evomerge.search.heldout import heldout_evaluators
    from evomerge.search.ledger import counted, default_storage, load_study, open_storage
    from evomerge.search.objectives import weighted_loss
    from evomerge.search.space import load_space
    from evomerge.search.worker import Worker

    cfg = MINI if args.mini else FULL
    front = cfg["front"] if args.front is None else args.front
    root = Path(args.build)
    t0 = time.time()
    base, experts, info = build(root, args.seed, args.steps, cfg["sizes"], args.base,
                                pair=args.pair)
    build_s = time.time() - t0
    docs = spaces(base, experts, info["files"], cfg["sizes"], args.minutes, args.evals,
                  args.seed, args.pair, args.dfs_sigma0, args.ps_first)
    first = args.evals if args.ps_first is None else args.ps_first  # as in spaces()
    ps = load_space(docs["ps"])  # the uniform grids are PS recipes, searched or not
    worker, tests = Worker(ps), heldout_evaluators(ps)
    files = {s: str(f["test"]) for s, f in info["files"].items()}
    k = cfg["outputs"]
    rows: dict[str, Any] = {alias: {**test_row(worker, tests, None, path, files, k),
                                    "role": alias if alias == "base" else f"expert {alias}"}
                            for alias, path in [("base", base), *experts.items()]}
    searches: dict[str, Any] = {}
    expert_em: dict[str, float] = {}  # validation exact match, for psem's targets

    def snapshot() -> dict[str, Any]:
        return {"pair": args.pair, "skills": list(PAIRS[args.pair]), "seed": args.seed,
                "dfs_sigma0": args.dfs_sigma0, "evals": args.evals,
                "ps_factor": args.ps_factor, "ps_first": first,
                "steps": args.steps, "minutes": args.minutes,
                "sizes": cfg["sizes"], "build_seconds": round(build_s, 1),
                "fine_tune": {k: {"seconds": v["seconds"], "last_loss": v["losses"][-1]}
                              for k, v in info["fine_tune"].items()},
                "searches": searches, "rows": rows, "expert_validation_em": expert_em,
                "total_seconds": round(time.time() - t0, 1)}

    save = save or (lambda d: None)

    def checkpoint() -> dict[str, Any]:
        """Save a snapshot and return it: the file and the returned doc are one object."""
        d = snapshot()
        save(d)
        return d

    last = checkpoint()
    print(f"[{time.time() - t0:.0f} s] built; sources scored", file=sys.stderr)
    if args.uniform:
        for method in ("ties", "task_arithmetic"):
            yaml_, val = uniform_best(ps, method, cfg["levels"])
            rows[f"uniform {method}"] = {**test_row(worker, tests, yaml_, None, files, k),
                                         "validation": val, "role": f"uniform {method}"}
        print(f"[{time.time() - t0:.0f} s] uniform grids scored", file=sys.stderr)
        last = checkpoint()
    keys = [s for s in SPACES if s in args.spaces]
    if set(PS_STARTED) & set(keys) and "ps" not in keys:
        keys.insert(0, "ps")  # PS+DFS starts from the PS study's point
    for key in keys:
        doc = docs[key]
        if key in PS_STARTED:
            ps_study = load_study(open_storage(default_storage(ps.name, root / "studies")), ps.name)
            done = sum(map(counted, ps_study.get_trials()))
            if args.ps_first is not None and done < first:  # --minutes stopped PS short
                raise RuntimeError(f"--ps-first {first}: the PS study {ps.name!r} has only "
                                   f"{done} evaluations")
            start = _best(ps_study, ps, first)
            doc = ({**doc, "optimizer": {**doc["optimizer"], "x0": start.params}}
                   if key == "psemps" else psdfs_space(doc, ps.name, start.number))
        if key in ("psem", "psemps"):  # targets generated once: a resumed study sees the same
            cache = em_cache(root, pair_tag(args.pair), args.seed, args.steps,
                             cfg["sizes"]["validation"])
            expert_em.update(expert_validation_em(ps, experts, worker, cache))
            doc = psem_space(doc, expert_em)
        search_role = key if key not in PS_STARTED or first == args.evals else \
            f"{key} ({first}+{2 * args.evals - first})"  # PS evaluations + DFS evaluations
        space = load_space(doc)
        t1 = time.time()
        # --ps-factor continues the PS study past 2 x evals: run_search's ``trials`` override,
        # unlike the space's budget, is no part of the study's identity (a later default run
        # then records 2 x evals as its budget again; its evaluations count the whole study)
        out = run_search(space, results_root=root / "studies",
                         trials=args.ps_factor * args.evals if key == "ps" else None)
        study = load_study(open_storage(default_storage(space.name, root / "studies")),
                           space.name)
        pinned = load_space(study.user_attrs["evomerge_space"])  # study: sources pinned
        w, tst = Worker(pinned), heldout_evaluators(pinned)
        for label, role, t in chosen_rows(key, study, space, args.evals, front,
                                          args.ps_factor, search_role):
            em = {o.task: v for o, v in zip(space.objectives, t.values)
                  if o.metric == "exact_match"}  # psem: chosen on answers, not on loss
            rows[label] = {**test_row(w, tst, t.user_attrs["recipe"], None, files, k),
                           "validation": weighted_loss(t.values, space.objectives),
                           "role": role, "path": t.user_attrs.get("path"),
                           **({"validation_em": em} if em else {})}
        searches[key] = {"evaluations": out.evaluations, "failed": out.failed,
                         "stopped": out.stopped, "seconds": round(time.time() - t1, 1),
                         "study": space.name}
        print(f"[{time.time() - t0:.0f} s] search {key}: {searches[key]}", file=sys.stderr)
        last = checkpoint()
    return last


def doc_writer(out: str | None, stem: str, mini: bool, md: Callable[[dict[str, Any]], str]
               ) -> tuple[Path, Callable[[dict[str, Any]], None]]:
    """(path, save) of a bench document: ``out``, or results/bench/{stem}[_mini].json, its
    folder made; ``save(doc)`` writes the JSON there and ``md(doc)`` beside it as .md."""
    path = Path(out) if out else OUT / f"{stem}{'_mini' if mini else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def save(d: dict[str, Any]) -> None:
        path.write_text(json.dumps(d, indent=2))
        path.with_suffix(".md").write_text(md(d) + "\n")
    return path, save


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
    ap.add_argument("--evals", type=int, default=48,
                    help="evaluations per search (PS: twice this, or --ps-factor times; see "
                         "the docstring)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="also stop each search after this wall time (then its study names "
                         "drop the evaluation count, as the first runs did)")
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
    ap.add_argument("--spaces", nargs="*", choices=list(SPACES), default=list(SPACES),
                    help="searched spaces (none: the sources and the uniform grids only)")
    ap.add_argument("--front", type=int, default=None,
                    help="Pareto-front points tested per search beside its best (default 2; "
                         "the miniature 1)")
    ap.add_argument("--table", action="store_true",
                    help="combine this pair's per-seed JSON files into the seeds table")
    ap.add_argument("--ps-factor", type=int, default=2,
                    help="PS runs this many times --evals (rows: its best after each multiple)")
    ap.add_argument("--ps-first", type=int, default=None,
                    help="PS+DFS starts from PS's best of its first N evaluations and runs "
                         "2 x --evals - N (default N = --evals)")
    args = ap.parse_args(argv)
    if args.mini:
        args.steps, args.evals = min(args.steps, 2), 4
    if args.ps_factor < 2:
        ap.error(f"--ps-factor {args.ps_factor} must be at least 2 (ps and ps (2x) are rows)")
    if args.ps_first is not None and not 1 <= args.ps_first < 2 * args.evals:
        ap.error(f"--ps-first {args.ps_first} must be between 1 and 2 x --evals - 1 "
                 f"({2 * args.evals - 1}), so that PS+DFS has evaluations of its own")
    tag = pair_tag(args.pair)
    if args.table:
        doc = seeds_table(seed_docs(OUT, args.pair))
        (OUT / f"real_model{tag}_seeds.json").write_text(json.dumps(doc, indent=2))
        print(doc["markdown"])
        return doc
    out, save = doc_writer(args.out, f"real_model{tag}_s{args.seed}", args.mini, markdown)
    doc = run(args, save)
    print(markdown(doc))
    print(f"total {doc['total_seconds']} s -> {out}")
    return doc


if __name__ == "__main__":
    main()
