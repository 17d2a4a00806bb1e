"""Search spaces: the validated YAML that says what the search may change and how it is scored.

    name: ties_dare_per_layer
    base_model: zoo/base
    models: {math: zoo/math, lang: zoo/lang}      # alias -> path (the experts)
    method: dare_ties                               # or a list: the method becomes a gene
    parameters:                                     # [low, high] = searched, scalar = fixed
      weight: [0.0, 1.2]
      density: [0.1, 1.0]
      lambda: 1.0
    granularity: {layers_per_group: 1, split_attn_mlp: false, embeddings: true}
    layer_swap: false                               # or true / {choices: [merge, base, math]}
    evaluators:
      zoo: {type: zoo, zoo: zoo, limit: 200}
    objectives:
      - {evaluator: zoo, task: add_l1, metric: answer_nll, direction: minimize}
      - {evaluator: zoo, task: maxmin_l2, metric: answer_nll, direction: minimize}
    budget: {trials: 200, wall_time: 600}
    fidelity: {rungs: [0.11, 0.33, 1.0], eta: 3}    # optional: cheaper fitness
    optimizer: {name: cma, popsize: 12, sigma0: 0.25, seed: 0}
    tokenizer: {source: union, pad_to_multiple_of: 64}   # optional: tokenizers that differ

Everything here is checked before any model is loaded: unknown methods or parameters, bounds
reversed or outside what the method accepts, empty objectives, a budget <= 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evomerge.engine.config_io import brief, format_validation_error, read_mapping
from evomerge.engine.derived import STUDY_REF, open_model
from evomerge.engine.lora import is_adapter_dir
from evomerge.engine.paths import out_projections
from evomerge.engine.vocab_config import TokenizerConfig, check_chat_template
from evomerge.errors import ConfigError
from evomerge.methods import MergeMethod, get_method
from evomerge.names import SAFE_NAME
from evomerge.search.granularity import FILTER_REST, Granularity
from evomerge.search.guard import warn_benchmarks
from evomerge.search.optimizer_config import (
    OPTIMIZER_CONFIGS,
    CmaConfig,
    OptimizerConfig,
    optimizer_config_input,
)
from evomerge.search.space_blocks import Budget, DataFlow, EvaluatorConfig, Fidelity, LayerSwap, Objective
from evomerge.tracking.config import TrackingConfig

__all__ = ["SearchSpace", "load_space", "SWAP_MERGE", "SWAP_BASE", "FILTER_REST"]

SWAP_MERGE, SWAP_BASE = "merge", "base"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SearchSpace(_Strict):
    """A validated search space (see module docstring)."""

    name: str = Field(min_length=1, max_length=100, pattern=SAFE_NAME.pattern)  # evomerge.names
    base_model: str
    models: dict[str, str] = Field(min_length=1)
    method: str | list[str] | None = None
    parameters: dict[str, tuple[float, float] | float | bool] = {}
    granularity: Granularity = Granularity()
    layer_swap: bool | LayerSwap = False
    dfs: DataFlow | None = None
    evaluators: dict[str, EvaluatorConfig] = Field(min_length=1)
    objectives: list[Objective] = Field(min_length=1)
    budget: Budget
    fidelity: Fidelity | None = None
    optimizer: OptimizerConfig = Field(default_factory=CmaConfig)
    seed: int = Field(0, ge=0, lt=2**32)  # seeds DARE/DELLA drops in every candidate recipe
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")  # merges + evaluation
    # The dtype merges compute in (mergekit's ``dtype``); default: float32 for bf16/fp16
    # sources, else as stored. ``out_dtype``: the resident model's and the exported recipe's
    # output dtype; default: the sources' stored dtype.
    dtype: Literal["float32", "float16", "bfloat16", "float64"] | None = None
    out_dtype: Literal["float32", "float16", "bfloat16", "float64"] | None = None
    # Keep base and experts in host memory (pinned with CUDA) and stream them to the device
    # per tensor: device memory ~ one model. Also `--offload` on search/resume.
    offload: bool = False
    # Filled in by the search, not by hand: the recipe each ``study:NAME#...`` model reference
    # stood for when the study started (evomerge.search.chain), so a resumed study and its
    # workers use the same model even after the other study has moved on.
    pinned: dict[str, str] = {}
    # Sources whose tokenizers differ (added tokens, padded embeddings): mergekit's recipe keys,
    # copied into every candidate recipe (evomerge.engine.vocab); the candidates are scored
    # with the output tokenizer that export writes.
    tokenizer_source: str | None = None
    tokenizer: TokenizerConfig | None = None
    chat_template: str | None = None
    # An experiment tracker watching the search (evomerge.search.tracking); also `--track`.
    tracking: TrackingConfig | None = None

    _optimizer_name = field_validator("optimizer", mode="before")(optimizer_config_input)
    _chat_template = field_validator("chat_template")(check_chat_template)

    @field_validator("models")
    @classmethod
    def _adapters_over_base(cls, models: dict[str, str], info: Any) -> dict[str, str]:
        """A LoRA adapter directory among the models is that adapter over ``base_model``,
        written BASE+ADAPTER (mergekit's spelling) in every recipe of the search."""
        base = info.data.get("base_model")
        return {alias: f"{base}+{ref}" if base and is_adapter_dir(ref) else ref
                for alias, ref in models.items()}

    @model_validator(mode="after")
    def _check(self) -> SearchSpace:
        if self.tokenizer_source is not None and self.tokenizer is not None:
            raise ValueError("give 'tokenizer_source' or a 'tokenizer' block, not both")
        if self.dfs is not None:
            _check_dfs(self)
        elif self.method is None and not self.layer_swap:
            raise ValueError("give a 'method', 'layer_swap: true', both, or 'dfs'")
        if self.method is None and self.layer_swap:
            _check_swap_tokenizer(self)
        if self.granularity.smooth and (self.layer_swap or self.dfs is not None):
            raise ValueError("granularity.smooth interpolates merge coefficients across layer "
                             "groups; a layer-swap or data-flow space copies whole layers: "
                             "drop one of the two")
        if SWAP_BASE in self.models or SWAP_MERGE in self.models:
            raise ValueError(f"model aliases {SWAP_BASE!r} and {SWAP_MERGE!r} are reserved")
        for m in self.methods:
            _check_method(m, self)
        _check_parameters(self)
        for i, obj in enumerate(self.objectives):
            if obj.evaluator not in self.evaluators:
                raise ValueError(f"objectives[{i}].evaluator {obj.evaluator!r} is not defined "
                                 f"under 'evaluators' ({', '.join(self.evaluators)})")
            if obj.target is not None and self.optimizer.objectives != "weighted_sum":
                summed = [n for n, c in OPTIMIZER_CONFIGS.items() if c.objectives == "weighted_sum"]
                raise ValueError(f"objectives[{i}].target {obj.target:g} caps the weighted sum "
                                 f"that {', '.join(summed)} minimize; optimizer "
                                 f"{self.optimizer.name!r} is told the plain values: drop the "
                                 "target or use one of those")
        _check_optimizer(self)
        if not self.optimizer.multi_objective and len(self.objectives) > 1:
            raise ValueError(f"optimizer {self.optimizer.name!r} handles one objective; use "
                             "'cma' (weighted sum of objectives), 'nsga2', 'tpe' or 'random'")
        for alias, ref in self.models.items():
            if ref.startswith("study:") and not STUDY_REF.match(ref):
                raise ValueError(f"models.{alias} {ref!r} is not a study point: write "
                                 "study:NAME#best, study:NAME#trial=N or study:NAME#pareto=I")
        for choice in self.swap_choices:
            if choice not in (*self.models, SWAP_BASE, SWAP_MERGE):
                raise ValueError(f"layer_swap choice {choice!r} is not a model alias, "
                                 f"{SWAP_BASE!r} or {SWAP_MERGE!r}")
        return self

    @property
    def methods(self) -> list[MergeMethod]:
        names = [self.method] if isinstance(self.method, str) else list(self.method or [])
        return [get_method(n) for n in names]

    def method_name(self, params: dict[str, Any]) -> str:
        """The merge method a candidate's parameters select: its ``method`` gene, the only
        method, or ``passthrough`` for a pure layer-swap space."""
        if not self.methods:
            return "passthrough"
        return params.get("method", self.methods[0].name)

    @property
    def swap_choices(self) -> list[str]:
        if not self.layer_swap:
            return []
        if isinstance(self.layer_swap, LayerSwap) and self.layer_swap.choices:
            return list(self.layer_swap.choices)
        choices = [SWAP_MERGE] if self.method else []
        return choices + [SWAP_BASE] + list(self.models)

    @property
    def searched(self) -> dict[str, tuple[float, float]]:
        return {k: v for k, v in self.parameters.items() if isinstance(v, tuple)}

    @property
    def fixed(self) -> dict[str, float | bool]:
        return {k: v for k, v in self.parameters.items() if not isinstance(v, tuple)}

    def recipe_dtypes(self, stored: str | None) -> tuple[str | None, str | None]:
        """(dtype, out_dtype) of the recipes this space writes for sources stored as
        ``stored``: 16-bit sources merge in float32 and are written back in their own dtype,
        so the search scores the same bits that export builds."""
        dtype = self.dtype or ("float32" if stored in ("bfloat16", "float16") else None)
        out = self.out_dtype or (stored if dtype and dtype != stored else None)
        return dtype, out

    def same_search(self, other: SearchSpace) -> bool:
        """Equal apart from run-time options that do not change any result (``offload``,
        ``tracking``)."""
        skip = {"offload", "pinned", "tracking"}
        return self.model_dump(exclude=skip) == other.model_dump(exclude=skip)

    def check_models(self) -> int:
        """Open every model's config and weight headers (checked; no weights read); returns
        the shared layer count.

        Raises:
            ModelError: a model is missing or unreadable.
            ConfigError: the models differ in depth.
        """
        depths, archs = {}, set()
        for field, ref in [("base_model", self.base_model),
                           *((f"models.{a}", p) for a, p in self.models.items())]:
            src = open_model(ref, field, self.pinned)
            depths[ref] = src.num_layers
            archs.add(src.architecture)
        if self.dfs is not None and self.dfs.scaling != "none":
            for arch in archs:
                out_projections(arch)
        if len(set(depths.values())) > 1:
            detail = ", ".join(f"{r!r} has {d}" for r, d in depths.items())
            raise ConfigError(f"The search needs models with the same layer count ({detail}).")
        return next(iter(depths.values()))

    def tokenizer_keys(self) -> dict[str, Any]:
        """The tokenizer keys every candidate recipe carries (mergekit's spelling)."""
        keys = {"tokenizer_source": self.tokenizer_source, "chat_template": self.chat_template,
                "tokenizer": (self.tokenizer.model_dump(mode="json", exclude_none=True)
                              if self.tokenizer is not None else None)}
        return {k: v for k, v in keys.items() if v is not None}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=False),
                              sort_keys=False)


def _check_dfs(space: SearchSpace) -> None:
    if space.tokenizer_source is not None or space.tokenizer is not None:
        raise ValueError("a 'dfs' space runs the models' own layers and embeddings: its models "
                         "need one tokenizer (drop 'tokenizer_source' / 'tokenizer')")
    if space.method is not None or space.layer_swap or space.parameters:
        raise ValueError("a 'dfs' space searches layer paths only: drop 'method', 'parameters' "
                         "and 'layer_swap' (merge in parameter space in a study of its own and "
                         "name its best point as a model: study:NAME#best)")
    adapted = [a for a, ref in space.models.items() if "+" in ref]
    if adapted:
        raise ValueError(f"a 'dfs' space runs the models' own layers, and models.{adapted[0]} "
                         "is a LoRA adapter: merge the adapters in a parameter-space study "
                         "first and name its point as a model (study:NAME#best)")
    start = space.dfs.start
    if start is not None and start not in space.models:
        raise ValueError(f"dfs.start {start!r} is not a model alias ({', '.join(space.models)})")


def _check_swap_tokenizer(space: SearchSpace) -> None:
    """A pure layer-swap candidate merges only the models its groups name, so a union
    vocabulary (or a token row from a model) would change from candidate to candidate."""
    rule = space.tokenizer.source if space.tokenizer else space.tokenizer_source
    tokens = space.tokenizer.tokens or {} if space.tokenizer else {}
    if rule == "union" or any(isinstance(t.source, str) or getattr(t.source, "model", None)
                              for t in tokens.values()):
        raise ValueError("a layer-swap space without a method merges different models in "
                         "each candidate, so a 'union' vocabulary or a token row taken from a "
                         "model would change between candidates: use source 'base' or a model, "
                         "or add a method")


def _check_optimizer(space: SearchSpace) -> None:
    """Settings of an optimizer that need the rest of the space."""
    opt = space.optimizer
    if opt.name == "path_ga":
        if space.dfs is None:
            raise ValueError("optimizer 'path_ga' searches data-flow paths: the space needs a "
                             "'dfs' block")
        for s in opt.starts or []:
            if s not in space.models:
                raise ValueError(f"optimizer.starts {s!r} is not a model alias "
                                 f"({', '.join(space.models)})")
        if opt.operators and set(opt.operators) == {"scale"} and space.dfs.scaling == "none":
            raise ValueError("optimizer.operators ['scale'] has nothing to change where "
                             "dfs.scaling is 'none'")
    if opt.name == "map_elites":
        keys = [o.key for o in space.objectives]
        for d in opt.descriptors or []:
            if d not in keys:
                raise ValueError(f"optimizer.descriptors {d!r} is not an objective "
                                 f"({', '.join(keys)})")


def _check_method(method: MergeMethod, space: SearchSpace) -> None:
    if method.name == "passthrough":
        raise ValueError("method 'passthrough' is what layer_swap does; use 'layer_swap: true'")
    n = len(space.models)
    if n < method.min_inputs or (method.max_inputs is not None and n > method.max_inputs):
        raise ValueError(f"method {method.name!r} cannot merge {n} models")
    for p in method.params:
        if p.required and p.name not in space.parameters:
            raise ValueError(f"method {method.name!r} needs parameters.{p.name} (a [low, high] "
                             "range to search or a fixed value)")
    if space.layer_swap:
        if "weight" not in method.param_names:
            raise ValueError(f"layer_swap with method {method.name!r} is not supported: it "
                             "selects a model by weight, and the method has none")
        if method.base == "input" and SWAP_BASE in space.swap_choices:
            raise ValueError(f"layer_swap choice 'base' needs a method that uses the base "
                             f"model; {method.name!r} does not (list 'choices' without it)")


def _check_parameters(space: SearchSpace) -> None:
    methods = space.methods
    for name, value in space.parameters.items():
        specs = [m.param(name) for m in methods if name in m.param_names]
        if not specs:
            valid = sorted({p for m in methods for p in m.param_names})
            raise ValueError(f"parameters.{name} is not a parameter of "
                             f"{', '.join(repr(m.name) for m in methods) or 'layer swapping'}; "
                             f"valid: {', '.join(valid)}")
        spec = specs[0]
        if isinstance(value, tuple):
            lo, hi = value
            if spec.kind is bool:
                raise ValueError(f"parameters.{name} is true/false and cannot take a range")
            if lo >= hi:
                raise ValueError(f"parameters.{name} bounds [{lo}, {hi}] are reversed or empty")
            if (spec.low is not None and lo < spec.low) or (spec.high is not None and hi > spec.high):
                raise ValueError(f"parameters.{name} bounds [{lo}, {hi}] leave the valid range "
                                 f"[{spec.low}, {spec.high}]")


def load_space(source: str | Path | dict[str, Any]) -> SearchSpace:
    """Parse and validate a search space from a YAML path, YAML text or a dict. A space that
    searches on a common benchmark's test set is logged as a warning
    (:mod:`evomerge.search.guard`).

    Raises:
        ConfigError: one sentence naming the field and the value.
    """
    data, name = read_mapping(source, "search space")
    if "genome" in data and "tasks" in data and "name" not in data:
        raise ConfigError(f"{name} is a mergekit-evolve config; convert it first: evomerge "
                          "import-evolve CONFIG -o space.yaml (docs/migrating_from_mergekit_"
                          "evolve.md).")
    try:
        space = SearchSpace.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_optimizer_error(exc, name) or format_validation_error(
            exc, name, "must be a [low, high] range to search, a number or true/false")) from None
    warn_benchmarks(space.evaluators, space.objectives)
    return space


def _optimizer_error(exc: ValidationError, source: str) -> str | None:
    """A setting the chosen optimizer does not take, named without the union's tag:
    ``optimizer.sigma0 does not apply to optimizer 'tpe'``."""
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    if (len(loc) == 3 and loc[0] == "optimizer" and loc[1] in OPTIMIZER_CONFIGS
            and first["type"] == "extra_forbidden"):
        takes = ", ".join(f for f in OPTIMIZER_CONFIGS[loc[1]].model_fields if f != "name")
        return (f"{source}: field 'optimizer.{loc[2]}' does not apply to optimizer "
                f"{loc[1]!r} (its settings: {takes}).")
    if loc[:3] == ["optimizer", "cma", "x0"]:
        return (f"{source}: field 'optimizer.x0' must be center, uniform, random, each "
                f"gene's value by name or a study's point, study:NAME#best (got "
                f"{brief(first.get('input'))}).")
    return None
