"""``evomerge report STUDY``: held-out evaluation of what the search found.

The search scores candidates on the validation split only. The report re-scores, on the test
split: the base and source models, the study's Pareto front, and the front of *uniform*
recipes (one value per parameter and model for all layers, from a small grid scored on
validation, as a careful user would try by hand). It compares the two fronts by hypervolume
(same reference point: the worst test value of any reported model, per objective) and writes
``results/<study>/report.md``, ``report.json`` and ``report.png`` (front vs uniform front vs
sources).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from evomerge.engine.outputs import markdown_text
from evomerge.errors import ConfigError
from evomerge.search.front import front_trials
from evomerge.search.gene import Genome
from evomerge.search.genome import genome_of_models
from evomerge.search.pareto import hypervolume, pareto_front
from evomerge.search.records import TrialRecord
from evomerge.search.space import SWAP_MERGE, SearchSpace

__all__ = ["heldout_evaluators", "uniform_params", "make_report", "plot_report", "adapter_recipe"]


def heldout_evaluators(space: SearchSpace) -> dict[str, Any]:
    """The space's evaluators switched to the test split (zoo evaluators: ``split: test``;
    others: their ``test`` option block, which replaces options for the report)."""
    from evomerge.evaluators import make_evaluator
    from evomerge.search.worker import evaluator_options

    out = {}
    for name, cfg in space.evaluators.items():
        opts = evaluator_options(space, name)
        override = opts.pop("test", None)
        if override is not None:
            opts.update(override)
        elif cfg.type == "zoo":
            opts["split"] = "test"
        else:
            raise ConfigError(f"evaluators.{name} has no 'test' options, so the report cannot "
                              "score it on held-out data.")
        out[name] = make_evaluator(cfg.type, **opts)
    return out


def uniform_params(genome: Genome, levels: int = 3) -> list[dict[str, Any]]:
    """Grid of uniform recipes: every layer group and part shares one value per parameter
    (and per model for per-model parameters); whole source models for pure layer swaps."""
    space = genome.space
    if not space.methods:
        return [{g.name: choice for g in genome.genes} for choice in space.swap_choices]
    axes: dict[str, list[Any]] = {}
    for g in genome.genes:
        if g.name == "method":
            axes["method"] = list(g.choices)
        elif not g.name.startswith("swap."):
            key = g.name.rsplit(".", 2)[0]  # weight.math.g3.attn -> weight.math
            axes[key] = list(np.linspace(g.low, g.high, levels + 1)[1:])  # skip all-zero
    combos = []
    for values in itertools.product(*axes.values()):
        chosen = dict(zip(axes, values))
        params = {}
        for g in genome.genes:
            if g.name.startswith("swap."):
                params[g.name] = SWAP_MERGE
            elif g.name == "method":
                params[g.name] = chosen["method"]
            else:
                params[g.name] = float(chosen[g.name.rsplit(".", 2)[0]])
        combos.append(params)
    return combos


def make_report(study: Any, space: SearchSpace, out_dir: Path, levels: int = 3,
                progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Score models, front and uniform recipes on the test split; write report.md/json."""
    from evomerge.search.worker import Worker

    genome = genome_of_models(space)
    worker = Worker(space)
    tests = heldout_evaluators(space)
    objs = space.objectives
    keys = [o.key for o in objs]

    def score(recipe_yaml: str, evaluators: dict | None) -> dict[str, float]:
        r = worker.run(-1, recipe_yaml, evaluators)
        if r.values is None:
            raise ConfigError(f"Scoring a report recipe failed: {r.error}")
        return r.scores

    rows: list[dict[str, Any]] = []
    for alias, path in [("base", space.base_model), *space.models.items()]:
        rows.append({"kind": "source", "name": alias, "test": _whole_model(worker, path, tests)})
    front = front_trials(study, space)
    for i, t in enumerate(front):
        if progress:
            progress("front", i + 1, len(front))
        rows.append({"kind": "search front", "name": f"trial {t.number}",
                     "validation": dict(zip(keys, t.values)),
                     "test": score(TrialRecord(t).recipe, tests)})
    grid = _distinct(genome, uniform_params(genome, levels))
    val_points = []
    for i, params in enumerate(grid):
        if progress:
            progress("uniform grid", i + 1, len(grid))
        s = score(genome.recipe(params).to_yaml(), None)
        val_points.append([s[k] for k in keys])
    directions = [o.direction for o in objs]
    for i in pareto_front(val_points, directions):
        rows.append({"kind": "uniform front", "name": _describe(grid[i]),
                     "validation": dict(zip(keys, val_points[i])),
                     "test": score(genome.recipe(grid[i]).to_yaml(), tests)})
    summary = _summary(rows, objs, space, len(grid))
    doc = {"study": study.study_name, "objectives": [o.model_dump() for o in objs],
           "rows": rows, "summary": summary}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(doc, indent=2))
    (out_dir / "report.md").write_text(_markdown(doc))
    plot_report(doc, out_dir / "report.png")
    return doc


_STYLE = {"source": ("s", "black", 60), "uniform front": ("D", "C1", 30),
          "search front": ("o", "C3", 22)}


def plot_report(doc: dict[str, Any], path: Path) -> None:
    """``report.png``: test scores of the search front, the uniform front and the source
    models, one panel per pair of objectives (one strip for a single objective)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [o["task"] + "/" + o["metric"] for o in doc["objectives"]]
    dirs = {k: o["direction"] for k, o in zip(keys, doc["objectives"])}
    pairs = list(itertools.combinations(keys, 2)) or [(None, keys[0])]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4.3), dpi=100, squeeze=False)
    for ax, (kx, ky) in zip(axes[0], pairs):
        for i, kind in enumerate(_STYLE):
            rows = [r for r in doc["rows"] if r["kind"] == kind]
            xs = [r["test"][kx] if kx else i for r in rows]
            marker, colour, size = _STYLE[kind]
            ax.scatter(xs, [r["test"][ky] for r in rows], marker=marker, c=colour, s=size,
                       label=kind, zorder=3 if kind == "source" else 2)
            if kind == "source":
                for x, r in zip(xs, rows):
                    ax.annotate(r["name"], (x, r["test"][ky]), textcoords="offset points",
                                xytext=(5, 4), fontsize=8)
        if kx:
            ax.set_xlabel(f"{kx} ({dirs[kx]})")
        else:
            ax.set_xticks(range(len(_STYLE)), list(_STYLE))
        ax.set_ylabel(f"{ky} ({dirs[ky]})")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    s = doc["summary"]
    fig.suptitle(f"{doc['study']} on the test split: hypervolume search front "
                 f"{s['hypervolume_search_front']:.4g} vs uniform front "
                 f"{s['hypervolume_uniform_front']:.4g}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _distinct(genome: Genome, grid: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Grid points that build different models (e.g. density is moot for task arithmetic)."""
    from evomerge.search.gene import recipe_hash

    seen, out = set(), []
    for params in grid:
        h = recipe_hash(genome.recipe(params))
        if h not in seen:
            seen.add(h)
            out.append(params)
    return out


def _whole_model(worker: Any, path: str, tests: dict[str, Any]) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomerge.engine.derived import DerivedSource
    from evomerge.engine.lora_source import LoraSource
    from evomerge.engine.paths import Step
    from evomerge.scoring import score

    src = worker.materializer.sources.get(path)
    if isinstance(src, DerivedSource):  # a pinned study point: resident, scored in place
        model = worker.materializer.path_model([Step(path, i) for i in range(src.num_layers)])
        tokenizer = worker.tokenizer
    elif isinstance(src, LoraSource):  # an adapter: written into the resident model alone
        model = worker.materializer.materialize(adapter_recipe(worker.space, path))
        tokenizer = worker.tokenizer
    else:
        model = AutoModelForCausalLM.from_pretrained(path).to(worker.device).eval()
        # sources whose tokenizers differ (a tokenizer rule) are scored with their own
        tokenizer = worker.tokenizer if not worker.space.tokenizer_keys() else (
            AutoTokenizer.from_pretrained(path))
    return score(model, tokenizer, list(tests.values()))


def adapter_recipe(space: SearchSpace, ref: str) -> Any:
    """The recipe of one adapted source alone (``base+adapter``, weight 1), in the space's
    dtypes: what PEFT's ``merge_and_unload`` builds, as the search scores it."""
    from evomerge.engine.lora_source import LoraSource
    from evomerge.engine.recipe import load_recipe

    stored = str(LoraSource(ref).stored_dtype).removeprefix("torch.")
    dtype, out_dtype = space.recipe_dtypes(stored)
    doc = {"merge_method": "task_arithmetic", "base_model": space.base_model,
           "models": [{"model": ref, "parameters": {"weight": 1.0}}]}
    doc.update({k: v for k, v in (("dtype", dtype), ("out_dtype", out_dtype)) if v})
    return load_recipe(doc)


def _describe(params: dict[str, Any]) -> str:
    if all(k.startswith("swap.") for k in params):
        return f"whole model: {next(iter(params.values()))}"
    seen: dict[str, Any] = {}
    for k, v in params.items():
        if not k.startswith("swap."):
            seen.setdefault(k if k == "method" else k.rsplit(".", 2)[0], v)
    return ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in seen.items())


def _summary(rows: list[dict], objs: list, space: SearchSpace, grid_size: int) -> dict[str, Any]:
    keys = [o.key for o in objs]
    directions = [o.direction for o in objs]
    pts = {kind: [[r["test"][k] for k in keys] for r in rows if r["kind"] == kind]
           for kind in ("source", "search front", "uniform front")}
    every = [p for ps in pts.values() for p in ps]
    ref = [max(p[i] for p in every) if d == "minimize" else min(p[i] for p in every)
           for i, d in enumerate(directions)]
    hv = {kind: hypervolume(ps, ref, directions) for kind, ps in pts.items()}
    out: dict[str, Any] = {"reference_point": ref, "uniform_grid_size": grid_size,
                           "hypervolume_search_front": hv["search front"],
                           "hypervolume_uniform_front": hv["uniform front"]}
    sources = [r for r in rows if r["kind"] == "source" and r["name"] != "base"]
    for o in objs:
        better = (min if o.direction == "minimize" else max)
        best_source = better(r["test"][o.key] for r in sources)
        best_found = better(r["test"][o.key] for r in rows if r["kind"] == "search front")
        # a front point equal to a source (its whole weight on it) differs by float noise
        # (4.5e-9 seen): a tie is not a win
        tie = math.isclose(best_found, best_source, rel_tol=1e-6, abs_tol=1e-12)
        beats = not tie and (best_found < best_source if o.direction == "minimize"
                             else best_found > best_source)
        out[f"{o.key}: best source model"] = best_source
        out[f"{o.key}: best search-front recipe"] = best_found
        out[f"{o.key}: a found recipe beats every source"] = bool(beats)
    return out


def _markdown(doc: dict[str, Any]) -> str:
    """report.md; every name from the study or its space is literal text (markdown_text)."""
    keys = [o["task"] + "/" + o["metric"] for o in doc["objectives"]]
    extra = sorted({k for r in doc["rows"] for k in r["test"]
                    if k.endswith("exact_match") and k.split("/")[0] in
                    {x.split("/")[0] for x in keys}})
    cols = keys + [k for k in extra if k not in keys]
    md = markdown_text
    lines = [f"# Held-out report: study {md(doc['study'])}", "",
             "Scores on the **test** split (the search saw only validation).", "",
             "| kind | model / recipe | " + " | ".join(md(c) for c in cols) + " |",
             "|---|---|" + "---:|" * len(cols)]
    for r in doc["rows"]:
        lines.append(f"| {r['kind']} | {md(r['name'])} | "
                     + " | ".join(f"{r['test'].get(c, float('nan')):.4f}" for c in cols) + " |")
    s = doc["summary"]
    lines += ["", "## Summary", ""]
    lines += [f"- {md(k)}: {v:.4f}" if isinstance(v, float) else f"- {md(k)}: {v}"
              for k, v in s.items() if k != "reference_point"]
    lines += [f"- hypervolume reference point (worst test value per objective): "
              f"{[round(v, 4) for v in s['reference_point']]}", ""]
    return "\n".join(lines)
