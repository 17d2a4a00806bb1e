"""evomerge's half of bench/peers.py, and the held-out scorer both programs' curves share.

``run_evomerge``: ``evomerge import-evolve`` of the mergekit-evolve config (the same flags:
``--max-fevals``, ``--random-seed``, ``--batch-size``, ``--task-search-path``), then
``evomerge search`` as a subprocess (one thread), measured as mergekit-evolve is; per
evaluation the trial's start and end, per generation the best candidate so far, from the
study. ``heldout_scorer``: the held-out score of each program's best-so-far candidates.
"""

from __future__ import annotations

import math
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

from peers_procs import env_with, run_measured

ROOT = Path(__file__).resolve().parents[1]
__all__ = ["run_evomerge", "kill_and_resume", "heldout_scorer"]


def _import(config: Path, out: Path, tasks: Path, fevals: int, seed: int, batch: int,
            popsize: int | None) -> tuple[Any, Path]:
    import yaml

    from evomerge.search.evolve_import import EvolveFlags, import_evolve

    flags = EvolveFlags(max_fevals=fevals, random_seed=seed, batch_size=batch,
                        task_search_path=[str(tasks)], force_population_size=popsize)
    imported = import_evolve(config, flags, name=f"peers_{out.parent.name}_{out.name}")
    out.mkdir(parents=True, exist_ok=True)
    space = out / "space.yaml"
    space.write_text(yaml.safe_dump(imported.doc, sort_keys=False))
    return imported, space


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "evomerge", *args, "-q"]


def _env() -> dict[str, str]:
    return env_with(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _finished(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'"
                               ).fetchone()[0]
    except sqlite3.Error:
        return 0


def run_evomerge(config: Path, out: Path, tasks: Path, fevals: int, seed: int, batch: int,
                 popsize: int | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Import and search; timings and generations from the study."""
    imported, space = _import(config, out, tasks, fevals, seed, batch, popsize)
    results = out / "results"
    shutil.rmtree(results, ignore_errors=True)  # a study of an earlier run would be resumed
    m = run_measured(_cmd("search", str(space), "--results", str(results)), out / "search.log",
                     _env(), timeout=timeout)
    return {"rc": m.rc, "killed": m.killed, "wall_s": m.wall_s, "total_s": m.wall_s,
            "peak_mb": m.peak_mb, "space": str(space), "genes": imported.genes,
            **_study_facts(imported.space.name, results, imported.space, m.started)}


def _study_facts(name: str, results: Path, space: Any, started: float | None = None
                 ) -> dict[str, Any]:
    """Per finished trial (start, end) in seconds since the command started (``started``,
    epoch; default: the first trial's start), and per CMA-ES generation the evaluations so
    far, the best candidate so far (weighted loss, parameters) and when it was known."""
    import optuna

    from evomerge.search.front import completed
    from evomerge.search.objectives import weighted_loss

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{results / name / 'study.db'}")
    trials = sorted(completed(study), key=lambda t: t.datetime_start)  # duplicates excluded
    if not trials:
        return {"evals": [], "generations": []}
    t0 = started if started is not None else trials[0].datetime_start.timestamp()
    evals, gens, best = [], [], None
    for i, t in enumerate(trials):
        evals.append((t.datetime_start.timestamp() - t0, t.datetime_complete.timestamp() - t0))
        loss = weighted_loss(t.values, space.objectives)
        if best is None or loss < best[0]:
            best = (loss, dict(t.params))
        last = i + 1 == len(trials) or trials[i + 1].user_attrs.get("cma_gen") != \
            t.user_attrs.get("cma_gen")
        if last:
            gens.append({"iteration": int(t.user_attrs.get("cma_gen", len(gens))) + 1,
                         "evaluations": i + 1, "fitness": best[0], "params": best[1],
                         "time": evals[-1][1]})
    return {"evals": evals, "generations": gens, "failed_evals":
            sum(t.state.name == "FAIL" for t in study.trials)}


def kill_and_resume(config: Path, out: Path, tasks: Path, fevals: int, batch: int,
                    popsize: int | None) -> dict[str, Any]:
    """SIGKILL ``evomerge search`` once a generation and a bit are done, then ``evomerge
    resume``: does the study end with exactly ``fevals`` evaluations, none lost?"""
    imported, space = _import(config, out, tasks, fevals, 0, batch, popsize)
    results, name = out / "results", imported.space.name
    shutil.rmtree(results, ignore_errors=True)
    db = results / name / "study.db"
    pop = popsize or 4 + int(3 * math.log(imported.genes))
    first = run_measured(_cmd("search", str(space), "--results", str(results)),
                         out / "search.log", _env(), kill_when=lambda: _finished(db) >= pop + 1)
    before = _finished(db)
    again = run_measured(_cmd("resume", name, "--results", str(results)), out / "resume.log",
                         _env())
    facts = _study_facts(name, results, imported.space)
    return {"killed": first.killed, "finished_before_kill": before, "resume_rc": again.rc,
            "evaluations_after_resume": len(facts["evals"]),
            "continues": first.killed and again.rc == 0 and len(facts["evals"]) == fevals}


def heldout_scorer(config: Path, tasks: Path, heldout: list[dict[str, Any]], batch: int):
    """A function scoring a program's run: the held-out score of its best-so-far candidate at
    the end of each generation (``sum weight * metric`` over the held-out tasks, as
    mergekit-evolve scores), each distinct candidate merged and scored once."""
    from transformers import AutoTokenizer

    from evomerge.engine.materialize import Materializer
    from evomerge.engine.sources import torch_dtype
    from evomerge.evaluators.harness import LmEvalEvaluator
    from evomerge.search.evolve_import import METHOD_PARAMS, genotype_names, import_evolve
    from evomerge.search.gene import recipe_hash
    from evomerge.search.genome import genome_of_models

    imported = import_evolve(config)
    space = imported.space
    genome = genome_of_models(space)
    method = space.methods[0].name
    names = genotype_names(space, genome.num_layers, METHOD_PARAMS[method])
    neg = space.searched["weight"][0] < 0
    base = space.base_model
    mat = Materializer([p for p in space.models.values() if p != base], base,
                       dtype=torch_dtype(space.out_dtype))
    tok = AutoTokenizer.from_pretrained(base)
    ev = LmEvalEvaluator(sorted({h["task"] for h in heldout}), include_path=str(tasks),
                         batch_size=batch, apply_chat_template=space.evaluators["harness"]
                         .options()["apply_chat_template"])
    cache: dict[str, dict[str, float]] = {}

    def params_of(gen: dict[str, Any]) -> dict[str, Any]:
        if "params" in gen:
            return gen["params"]
        # mergekit-evolve's decoding of its genotype: |x| (weights, unless negatives are
        # allowed), clamp(|x|, 0, 1) (densities); evomerge's recipe of those values builds
        # the model mergekit's config does (tests/search/test_evolve_import.py)
        out = {}
        for n, x in zip(names, gen["x"]):
            out[n] = (x if neg else abs(x)) if n.startswith("weight.") else min(abs(x), 1.0)
        return out

    def scores(params: dict[str, Any]) -> dict[str, float]:
        recipe = genome.recipe(params)
        key = recipe_hash(recipe)
        if key not in cache:
            got = ev(mat.materialize(recipe), tok)
            cache[key] = {f"{h['task']}/{h['metric']}": got[f"{h['task']}/{h['metric']}"]
                          for h in heldout}
        return cache[key]

    def score(run: dict[str, Any]) -> list[dict[str, Any]]:
        curve = []
        for gen in run["generations"]:
            s = scores(params_of(gen))
            curve.append({"evaluations": gen["evaluations"], "time": gen["time"],
                          "search_fitness": gen["fitness"], "heldout": s,
                          "heldout_score": sum(h["weight"] * s[f"{h['task']}/{h['metric']}"]
                                               for h in heldout)})
        return curve

    return score
