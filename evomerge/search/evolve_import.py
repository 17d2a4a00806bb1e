"""mergekit-evolve configs as evomerge search spaces (``evomerge import-evolve``).

    evomerge import-evolve evolve.yml --max-fevals 200 --storage-path runs -o space.yaml
    evomerge search space.yaml --results runs

mergekit-evolve (mergekit 0.1.5, deprecated) searches a genotype of shape (G, M, S, P): G layer
groups (``layer_granularity`` consecutive layers each, or one group), M = the ``models``
listed, S = one coefficient set per ``filters`` entry plus one for the other tensors, P = the
method's parameters (``weight``, and ``density`` for TIES / DARE-TIES). The imported space
has exactly these genes (:func:`genotype_names` lists them in mergekit's order) with the
same meaning: ``granularity.layers_per_group``, ``granularity.filters`` (first substring
match wins, as in mergekit), ``granularity.smooth`` (group values interpolated over depth),
no separate embedding set (embeddings and head take the first / last group's values, as in
mergekit). Bounds: mergekit-evolve's CMA-ES is unbounded and takes ``|x|`` for weights
(unless ``allow_negative_weights``) and ``clamp(|x|, 0, 1)`` for densities; evomerge's genes
are bounded: ``weight`` [0, 1] ([-1, 1] with negative weights) and ``density`` [0, 1] (a
normalized merge depends only on the weights' ratios, so [0, 1] reaches every such merge).
Scores: lm-eval tasks with mergekit's metric names and weights; a negative weight minimizes.
Every key and flag: docs/migrating_from_mergekit_evolve.md. A key or flag evomerge cannot
honour is a :class:`~evomerge.errors.ConfigError` naming it; nothing is dropped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evomerge.engine.config_io import format_validation_error, read_mapping
from evomerge.engine.derived import open_model
from evomerge.errors import ConfigError
from evomerge.search.space import SearchSpace, load_space

__all__ = ["EvolveConfig", "EvolveFlags", "Imported", "import_evolve", "genotype_names",
           "METHOD_PARAMS"]

# mergekit-evolve's genome parameters per method, in genotype order (its last axis).
METHOD_PARAMS = {"linear": ("weight",), "task_arithmetic": ("weight",),
                 "ties": ("weight", "density"), "dare_ties": ("weight", "density")}
_NORMALIZED = ("linear", "ties", "dare_ties")  # mergekit-evolve's default ``normalize``
_INT8_MASK = ("task_arithmetic", "ties", "dare_ties")  # it always sets int8_mask: true


class _Strict(BaseModel):
    # mergekit-evolve ignores unknown keys; here a misspelt key is an error naming it
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class EvolveTask(_Strict):
    """A ``tasks`` entry: an lm-eval task name, or {name, weight, metric}."""

    name: str = Field(min_length=1)
    weight: float = 1.0
    metric: str = "acc,none"

    @model_validator(mode="before")
    @classmethod
    def _name_only(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class EvolveGenome(_Strict):
    """mergekit-evolve's ``genome`` section."""

    models: list[str] = Field(min_length=1)
    merge_method: str
    base_model: str | None = None
    tokenizer_source: str | None = None
    layer_granularity: int = Field(0, ge=0)
    normalize: bool | None = None
    allow_negative_weights: bool = False
    filters: list[str] | None = None
    smooth: bool = False


class EvolveConfig(_Strict):
    """A mergekit-evolve config file (its ``EvolMergeConfiguration``)."""

    genome: EvolveGenome
    tasks: list[EvolveTask] = Field(min_length=1)
    limit: int | None = Field(None, ge=1)
    num_fewshot: int | None = Field(None, ge=0)
    shuffle: bool = False
    random_init: bool = False
    apply_chat_template: bool = True
    fewshot_as_multiturn: bool = True


class EvolveFlags(_Strict):
    """mergekit-evolve's command-line options, with its defaults."""

    max_fevals: int = Field(100, gt=0)
    sigma0: float = Field(1 / 6, gt=0)
    random_seed: int = 0
    batch_size: int | None = Field(None, ge=1)
    in_memory: bool = False
    storage_path: str | None = None
    timeout: float | None = Field(None, gt=0)
    force_population_size: int | None = Field(None, ge=2)
    task_search_path: list[str] = []
    num_gpus: int | None = Field(None, ge=1)
    merge_cuda: bool = True
    strategy: Literal["pool", "buffered", "serial"] = "pool"
    allow_benchmark_tasks: bool = False
    save_final_model: bool = True
    reshard: bool = True
    vllm: bool = False
    trust_remote_code: bool = False
    allow_crimes: bool = False
    wandb: bool = False
    wandb_project: str | None = None
    wandb_entity: str | None = None
    load_in_8bit: bool = False
    load_in_4bit: bool = False


# Flags evomerge cannot honour: set, each is one sentence and exit 2.
_REFUSED = {
    "vllm": "evaluates with lm-eval's Hugging Face backend on the resident merged model; "
            "vLLM is not supported",
    "trust_remote_code": "loads only built-in transformers architectures (model directories "
                         "never pick code to run)",
    "allow_crimes": "merges models of one architecture only",
    "load_in_8bit": "evaluates the merged model in its merge dtype; quantized evaluation is "
                    "not supported",
    "load_in_4bit": "evaluates the merged model in its merge dtype; quantized evaluation is "
                    "not supported",
}


@dataclass
class Imported:
    """An imported config: the space document (written as YAML), the validated space, the
    number of genes, and notes on flags that changed nothing or changed meaning."""

    doc: dict[str, Any]
    space: SearchSpace
    num_layers: int
    genes: int
    notes: list[str] = field(default_factory=list)
    search_args: list[str] = field(default_factory=list)


def import_evolve(source: str | Path | dict[str, Any], flags: EvolveFlags | None = None,
                  name: str | None = None) -> Imported:
    """The evomerge search space of a mergekit-evolve config (path, YAML text or dict).

    Reads each model's config and weight headers (no weights) for the layer count.

    Raises:
        ConfigError: a key or flag that cannot be honoured, or a bad value; one sentence
            naming it.
    """
    flags = flags or EvolveFlags()
    data, where = read_mapping(source, "mergekit-evolve config")
    try:
        cfg = EvolveConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where, "has a wrong type")) from None
    _refuse_flags(flags)
    g = cfg.genome
    _check_genome(g)
    aliases = _aliases(g.models)
    base = g.base_model or g.models[0]  # linear needs none: the first model lends its shell
    depth = _depth(g.models, base)
    if g.layer_granularity and depth % g.layer_granularity:
        raise ConfigError(f"genome.layer_granularity {g.layer_granularity} does not divide "
                          f"the models' {depth} layers (mergekit-evolve requires a divisor).")
    params = METHOD_PARAMS[g.merge_method]
    weight = (-1.0, 1.0) if g.allow_negative_weights else (0.0, 1.0)
    parameters: dict[str, Any] = {"weight": list(weight)}
    if "density" in params:
        parameters["density"] = [0.0, 1.0]
    parameters["normalize"] = g.normalize if g.normalize is not None else \
        g.merge_method in _NORMALIZED
    if g.merge_method in _INT8_MASK:
        parameters["int8_mask"] = True
    seed = flags.random_seed
    optimizer: dict[str, Any] = {"name": "cma", "seed": seed,
                                 "sigma0": min(1.0, flags.sigma0 / (weight[1] - weight[0])),
                                 "x0": "random" if cfg.random_init else "uniform"}
    if flags.force_population_size:
        optimizer["popsize"] = flags.force_population_size
    doc: dict[str, Any] = {
        "name": _space_name(name, source),
        "base_model": base,
        "models": dict(zip(aliases, g.models)),
        "method": g.merge_method,
        "parameters": parameters,
        "granularity": {"layers_per_group": g.layer_granularity or "all", "embeddings": False,
                        **({"filters": list(g.filters)} if g.filters else {}),
                        **({"smooth": True} if g.smooth else {})},
        "evaluators": {"harness": _harness(cfg, flags)},
        "objectives": _objectives(cfg.tasks),
        "budget": {"trials": flags.max_fevals,
                   **({"wall_time": flags.timeout} if flags.timeout else {})},
        "optimizer": optimizer,
        "seed": seed,
        "dtype": "bfloat16", "out_dtype": "bfloat16",  # mergekit-evolve merges and scores in bf16
    }
    if flags.wandb:  # its run: project `wandb_project or "mergekit-evolve"`, entity as given
        doc["tracking"] = {"type": "wandb", "project": flags.wandb_project or "mergekit-evolve",
                           **({"entity": flags.wandb_entity} if flags.wandb_entity else {})}
    space = load_space(doc)
    genes = (depth // (g.layer_granularity or depth)) * len(g.models) * \
        (len(g.filters or []) + 1) * len(params)
    notes, search_args = _flag_notes(flags, cfg)
    return Imported(doc, space, depth, genes, notes, search_args)


def genotype_names(space: SearchSpace, num_layers: int, params: tuple[str, ...]
                   ) -> list[str]:
    """The imported space's gene names in mergekit-evolve's genotype order: its flat vector is
    a (groups, models, filter sets, parameters) array in C order."""
    k = space.granularity.layers_per_group
    groups = 1 if k == "all" else -(-num_layers // k)
    return [f"{p}.{alias}.g{g}.{part}" for g in range(groups) for alias in space.models
            for part in space.granularity.parts for p in params]


def _refuse_flags(flags: EvolveFlags) -> None:
    for key, why in _REFUSED.items():
        if getattr(flags, key):
            raise ConfigError(f"--{key.replace('_', '-')} cannot be honoured: evomerge {why}.")


def _check_genome(g: EvolveGenome) -> None:
    if g.merge_method == "slerp":
        raise ConfigError("genome.merge_method 'slerp' cannot be honoured: mergekit-evolve's "
                          "slerp genome picks the two highest-weighted models per layer group "
                          "and sets t by a softmax of their weights, a parameterization evomerge "
                          "does not have; write an evomerge space with method: slerp "
                          "(t per layer group) instead.")
    if g.merge_method not in METHOD_PARAMS:
        raise ConfigError(f"genome.merge_method {g.merge_method!r} is not one of "
                          f"mergekit-evolve's: {', '.join([*METHOD_PARAMS, 'slerp'])}.")
    if g.merge_method != "linear" and g.base_model is None:
        raise ConfigError(f"genome.base_model is required for {g.merge_method!r} "
                          "(as in mergekit-evolve).")
    if g.tokenizer_source not in (None, "base", g.base_model):
        raise ConfigError(f"genome.tokenizer_source {g.tokenizer_source!r} cannot be honoured: "
                          "evomerge merges models that share one tokenizer (the base "
                          "model's); drop the key.")
    for ref in [*g.models, *([g.base_model] if g.base_model else [])]:
        if "+" in ref and not Path(ref).exists():
            raise ConfigError(f"genome model {ref!r} cannot be honoured: a 'model+LoRA' "
                              "reference; merge the adapter into a model directory first.")
    if len(set(g.models)) != len(g.models):
        raise ConfigError("genome.models lists a model twice.")


def _aliases(models: list[str]) -> list[str]:
    """Short names for the models (directory names, made unique)."""
    out: list[str] = []
    for ref in models:
        stem = re.sub(r"[^\w-]", "_", Path(ref.rstrip("/")).name) or "model"
        alias, k = stem, 2
        while alias in out or alias in ("base", "merge"):
            alias, k = f"{stem}_{k}", k + 1
        out.append(alias)
    return out


def _depth(models: list[str], base: str) -> int:
    depths = {ref: open_model(ref, f"genome model {ref!r}").num_layers
              for ref in dict.fromkeys([*models, base])}
    if len(set(depths.values())) > 1:
        detail = ", ".join(f"{r!r} has {d}" for r, d in depths.items())
        raise ConfigError(f"genome.models differ in layer count ({detail}).")
    return next(iter(depths.values()))


def _space_name(name: str | None, source: Any) -> str:
    if name:
        return name
    stem = Path(source).stem if isinstance(source, (str, Path)) and "\n" not in str(source) \
        else "evolve"
    # a safe study name (evomerge/names.py): starts with a letter or digit, at most 100 long
    return re.sub(r"^[^A-Za-z0-9]+", "", re.sub(r"[^\w.-]", "_", stem.encode("ascii", "replace")
                                                .decode()))[:100] or "evolve"


def _harness(cfg: EvolveConfig, flags: EvolveFlags) -> dict[str, Any]:
    """The lm_eval evaluator doing what mergekit-evolve's lm-eval call does."""
    tasks = list(dict.fromkeys(t.name for t in cfg.tasks))
    opts: dict[str, Any] = {"type": "lm_eval", "tasks": tasks,
                            "apply_chat_template": cfg.apply_chat_template,
                            # lm-eval reads it only with a chat template (so the same)
                            "fewshot_as_multiturn": cfg.fewshot_as_multiturn
                            and cfg.apply_chat_template}
    if flags.batch_size:
        opts["batch_size"] = flags.batch_size
    if cfg.limit is not None:
        opts["limit"] = cfg.limit
    if cfg.num_fewshot is not None:
        opts["num_fewshot"] = cfg.num_fewshot
    if cfg.shuffle:
        opts.update(shuffle=True, shuffle_seed=flags.random_seed)
    if flags.task_search_path:
        paths = [str(Path(p).resolve()) for p in flags.task_search_path]
        opts["include_path"] = paths if len(paths) > 1 else paths[0]
        opts["include_defaults"] = not _all_local(tasks, paths)
    return opts


def _all_local(tasks: list[str], paths: list[str]) -> bool:
    """Whether every task is defined under ``paths`` (lm-eval's built-in index, ~4 s per
    worker, is then skipped)."""
    from lm_eval.tasks import TaskManager

    local = TaskManager(include_path=paths, include_defaults=False).all_tasks
    return all(t in local for t in tasks)


def _objectives(tasks: list[EvolveTask]) -> list[dict[str, Any]]:
    """One objective per (task, metric); mergekit-evolve maximizes sum(weight * value), so a
    negative weight minimizes; entries naming the same score add their weights."""
    weights: dict[tuple[str, str], float] = {}
    for t in tasks:
        key = (t.name, t.metric.removesuffix(",none"))
        weights[key] = weights.get(key, 0.0) + t.weight
    out = []
    for (task, metric), w in weights.items():
        if w == 0:
            raise ConfigError(f"tasks {task!r} metric {metric!r} has weight 0: it would not "
                              "count in the score; drop it or give it a weight.")
        out.append({"evaluator": "harness", "task": task, "metric": metric,
                    "direction": "maximize" if w > 0 else "minimize", "weight": abs(w)})
    return out


def _flag_notes(flags: EvolveFlags, cfg: EvolveConfig) -> tuple[list[str], list[str]]:
    """Notes on flags that change nothing or mean something else here, and the arguments
    the printed ``evomerge search`` command takes from them."""
    notes, args = [], []
    if flags.storage_path:
        args += ["--results", flags.storage_path]
    if flags.num_gpus:
        args += ["--workers", str(flags.num_gpus), "--num-gpus", "1"]
        notes.append(f"--num-gpus {flags.num_gpus}: one resident Ray worker per GPU "
                     f"(--workers {flags.num_gpus} --num-gpus 1).")
    if not flags.in_memory:
        notes.append("--no-in-memory: evomerge always merges in memory (one resident model "
                     "per worker); no merged model is written per candidate.")
    if not flags.merge_cuda:
        notes.append("--no-merge-cuda: evomerge merges on the device it evaluates on "
                      "(space key device: auto; set device: cpu for CPU only).")
    if flags.strategy != "pool":
        notes.append(f"--strategy {flags.strategy}: evomerge schedules candidates over its "
                     "workers itself (as 'pool' does).")
    if flags.save_final_model:
        notes.append("--save-final-model: after the search, `evomerge export NAME --best -o "
                     "best.yaml && evomerge merge best.yaml final_model` builds it.")
    if not flags.reshard:
        notes.append("--no-reshard: evomerge reads the sources' safetensors as they are "
                     "(it never reshards).")
    if flags.allow_benchmark_tasks:
        notes.append("--i-understand-the-depths-of-the-evils-i-am-unleashing: benchmark tasks "
                     "are a warning in evomerge, never a refusal.")
    if flags.wandb:
        notes.append("--wandb: the space's tracking block logs the search to Weights & Biases "
                     "(one run per study, every trial; pip install 'evomerge[wandb]').")
    elif flags.wandb_project or flags.wandb_entity:
        notes.append("--wandb-project / --wandb-entity: no effect without --wandb (as in "
                     "mergekit-evolve).")
    if cfg.shuffle:
        notes.append("shuffle: every candidate is scored on the same random documents (seed "
                     f"{flags.random_seed}); mergekit-evolve drew new ones for each.")
    return notes, args
