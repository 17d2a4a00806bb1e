"""Validation answers in the real-model searches (bench/real_model.py, bench/real_rerank.py):
the validation split scored with generation, the experts' exact match on it, and ``psem``,
the PS search whose fitness is what #32's goal counts instead of the answer NLL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KEEP = 0.8  # #32's goal: a merge keeping 80% of each expert's skill
PSEM_SKILL_WEIGHT = 4.0  # a skill example lost below its target costs 4 composite examples
PSEM_NLL_WEIGHT = 0.02  # the NLLs break ties: 0.8 nats of summed NLL ~ one validation example


def validation_generation(space: Any) -> dict[str, Any]:
    """The space's evaluators on the validation split with generation on (its own files and
    options; the ``test`` block, which would switch the files, dropped)."""
    from evomerge.evaluators import make_evaluator
    from evomerge.search.worker import evaluator_options

    out = {}
    for name, cfg in space.evaluators.items():
        opts = evaluator_options(space, name)
        opts.pop("test", None)
        out[name] = make_evaluator(cfg.type, **{**opts, "generate": True})
    return out


def em_cache(root: Path, tag: str, seed: int, steps: int, validation: int) -> Path:
    """Where :func:`expert_validation_em` keeps the experts' figures under ``--build``: one
    file per pair (``tag``), seed, fine-tune steps and validation size."""
    return Path(root) / f"expert_validation_em{tag}_s{seed}_{steps}_v{validation}.json"


def expert_validation_em(space: Any, experts: dict[str, str], worker: Any = None,
                         cache: Path | None = None) -> dict[str, float]:
    """Each expert's greedy exact match on its own skill's validation split (``experts``:
    skill -> model directory), with the space's evaluator options (``worker``: a Worker of
    ``space`` already built, for its device and tokenizer). With ``cache`` (:func:`em_cache`)
    they are generated once and read back after: psem's targets then stay those its study
    was created with, and real_rerank.py ranks against the same figures."""
    from transformers import AutoModelForCausalLM

    from evomerge.scoring import score
    from evomerge.search.worker import Worker

    if cache is not None and cache.exists():
        return json.loads(cache.read_text())
    worker = worker or Worker(space)
    evaluators = list(validation_generation(space).values())
    out = {}
    for skill, path in experts.items():
        model = AutoModelForCausalLM.from_pretrained(path).to(worker.device).eval()
        out[skill] = score(model, worker.tokenizer, evaluators)[f"{skill}/exact_match"]
    if cache is not None:
        cache.write_text(json.dumps(out))
    return out


def psem_space(ps_doc: dict[str, Any], expert_em: dict[str, float],
               keep: float = KEEP) -> dict[str, Any]:
    """``psem``: the PS space, optimizer and budget of ``ps_doc``, its fitness on validation
    answers (generation on): maximize exact match on the composite (weight 1) and on each
    expert's skill up to ``keep`` x that expert's validation exact match (weight
    :data:`PSEM_SKILL_WEIGHT`, nothing beyond the target: objective ``target``, a soft
    constraint), plus the answer NLLs at :data:`PSEM_NLL_WEIGHT` (a tie-break, and a slope
    while no candidate answers the composite). Its own study: ``_ps_`` -> ``_psem_``."""
    qa = {"evaluator": "qa", "metric": "exact_match", "direction": "maximize"}
    nll = [{**o, "weight": PSEM_NLL_WEIGHT} for o in ps_doc["objectives"]]
    composite = [o["task"] for o in nll if o["task"] not in expert_em]
    objectives = [{**qa, "task": t} for t in composite]
    objectives += [{**qa, "task": s, "weight": PSEM_SKILL_WEIGHT, "target": keep * em}
                   for s, em in expert_em.items()]
    evaluators = {k: {**v, "generate": True} for k, v in ps_doc["evaluators"].items()}
    return {**ps_doc, "name": ps_doc["name"].replace("_ps_", "_psem_"),
            "evaluators": evaluators, "objectives": objectives + nll}
