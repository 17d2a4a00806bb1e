"""Recipes: the mergekit-compatible YAML that says how to build one merged model.

A recipe is a subset of mergekit's merge configuration, so the same file builds the same
model with ``mergekit-yaml``::

    merge_method: ties
    base_model: zoo/base
    models:
      - model: zoo/expert_a
        parameters: {weight: [0.2, 0.8], density: 0.5}   # list = gradient over layer depth
      - model: zoo/expert_b
        parameters:
          weight: [{filter: self_attn, value: 0.3}, {value: 0.7}]   # first match wins
    parameters: {lambda: 1.0}
    dtype: float32
    tokenizer: {source: union, pad_to_multiple_of: 64}   # sources whose tokenizers differ
    evomerge: {seed: 0}    # evomerge-only block; mergekit ignores unknown top-level keys

``tokenizer_source`` / ``tokenizer`` / ``chat_template`` are mergekit's keys
(:mod:`evomerge.engine.vocab_config`, :mod:`evomerge.engine.vocab`).

Everything here is validated before any weights are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from evomerge.engine.config_io import format_validation_error, read_mapping
from evomerge.engine.vocab_config import (
    TokenizerConfig,
    TokenizerSettings,
    check_chat_template,
    model_ref,
)
from evomerge.errors import ConfigError
from evomerge.methods import MergeMethod, get_method

__all__ = ["Conditional", "ModelEntry", "SliceSource", "Slice", "Recipe", "load_recipe", "DTYPES"]

Scalar = bool | int | float
Gradient = list[Scalar]

DTYPES = ("float32", "float16", "bfloat16", "float64")


class _Strict(BaseModel):
    # inf/nan are refused wherever a number is read: a NaN weight would merge into a NaN model
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Conditional(_Strict):
    """A value that applies to tensors whose name contains ``filter`` (no filter = any)."""

    value: Scalar | Gradient
    filter: str | None = None


ParamValue = Scalar | Gradient | Conditional | list[Conditional]
Params = dict[str, ParamValue]


class ModelEntry(_Strict):
    """``models:`` item: a source model and its per-model parameters."""

    model: str = Field(min_length=1)
    parameters: Params | None = None


class SliceSource(_Strict):
    """One source of an output slice: layers [start, end) of ``model``."""

    model: str = Field(min_length=1)
    layer_range: tuple[int, int]
    parameters: Params | None = None

    @model_validator(mode="after")
    def _range(self) -> SliceSource:
        start, end = self.layer_range
        if start < 0 or end <= start:
            raise ValueError(f"layer_range {list(self.layer_range)} must satisfy 0 <= start < end")
        return self


class Slice(_Strict):
    """``slices:`` item: output layers built from same-length layer ranges of its sources."""

    sources: list[SliceSource] = Field(min_length=1)
    base_model: str | None = None
    parameters: Params | None = None

    @model_validator(mode="after")
    def _same_length(self) -> Slice:
        lengths = {s.layer_range[1] - s.layer_range[0] for s in self.sources}
        if len(lengths) > 1:
            raise ValueError("all sources of a slice need the same number of layers, "
                             f"got {sorted(lengths)}")
        return self

    @property
    def num_layers(self) -> int:
        r = self.sources[0].layer_range
        return r[1] - r[0]


class EvomergeExtras(BaseModel):
    """The ``evomerge:`` block: settings only evomerge reads (mergekit ignores the block)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    seed: int = 0  # seeds DARE / DELLA drops; each tensor derives its own stream from it


class Recipe(_Strict):
    """A validated merge recipe (see module docstring)."""

    merge_method: str
    base_model: str | None = None
    models: list[ModelEntry] | None = None
    slices: list[Slice] | None = None
    parameters: Params | None = None
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    tokenizer: TokenizerConfig | None = None
    chat_template: str | None = None
    evomerge: EvomergeExtras = EvomergeExtras()

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        if (self.models is None) == (self.slices is None) or not (self.models or self.slices):
            raise ValueError("exactly one of 'models' or 'slices' must be given")
        for name in ("dtype", "out_dtype"):
            value = getattr(self, name)
            if value is not None and value not in DTYPES:
                raise ValueError(f"{name} {value!r} is not one of {', '.join(DTYPES)}")
        if self.tokenizer_source is not None and self.tokenizer is not None:
            raise ValueError("give 'tokenizer_source' or a 'tokenizer' block, not both")
        settings = self.tokenizer_settings
        for ref in settings.token_models() if settings else []:
            if ref not in self.referenced_models():
                raise ValueError(f"tokenizer.tokens takes a row from model {ref!r}, which the "
                                 "recipe does not merge")
        method = get_method(self.merge_method)
        _check_duplicates(self)
        _check_parameters(self, method)
        _check_structure(self, method)
        return self

    @field_validator("tokenizer_source")
    @classmethod
    def _tokenizer_ref(cls, value: str | None) -> str | None:
        return None if value is None else model_ref(value)

    _chat_template = field_validator("chat_template")(check_chat_template)

    @property
    def method(self) -> MergeMethod:
        return get_method(self.merge_method)

    @property
    def tokenizer_settings(self) -> TokenizerSettings | None:
        """How the output vocabulary is built (:mod:`evomerge.engine.vocab`); None: the
        sources share one tokenizer, which is copied."""
        return TokenizerSettings.of(self.tokenizer_source, self.tokenizer)

    @property
    def tokenizer_base(self) -> str:
        """The model whose tokenizer a ``base`` or ``union`` vocabulary starts from."""
        return self.base_model or self.referenced_models()[0]

    def referenced_models(self) -> list[str]:
        """Every model the recipe names, in first-mention order."""
        refs: list[str] = []
        for ref in ([self.base_model] if self.base_model else []) + [
            e.model for e in self.models or []
        ] + [s.model for sl in self.slices or [] for s in sl.sources] + [
            sl.base_model for sl in self.slices or [] if sl.base_model
        ]:
            if ref not in refs:
                refs.append(ref)
        return refs

    def warnings(self) -> list[str]:
        """What in a valid recipe is probably not what its author meant (sentences)."""
        method, base = self.method, self.base_model
        out = []
        for i, e in enumerate(self.models or []):
            if base is not None and e.model == base and e.parameters and method.base != "input":
                out.append(f"models[{i}] is the base model {base!r} with parameters "
                           f"({', '.join(e.parameters)}); {method.name!r} uses the base as "
                           "the base only, so they are ignored.")
        return out

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_none=True)
        if data.get("evomerge") == {"seed": 0}:
            data.pop("evomerge")
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def _check_duplicates(recipe: Recipe) -> None:
    """A model listed twice in ``models`` (or in one slice's sources) is refused: inputs are
    told apart by model, so the second entry's parameters would be silently confused."""
    groups = [("models", [e.model for e in recipe.models or []])]
    groups += [(f"slices[{i}].sources", [s.model for s in sl.sources])
               for i, sl in enumerate(recipe.slices or [])]
    for where, refs in groups:
        for j, ref in enumerate(refs):
            if ref in refs[:j]:
                raise ValueError(f"{where} lists model {ref!r} twice (entries {refs.index(ref)} "
                                 f"and {j}); list each model once")


def _param_tables(recipe: Recipe) -> list[tuple[str, Params]]:
    tables: list[tuple[str, Params]] = []
    if recipe.parameters:
        tables.append(("parameters", recipe.parameters))
    for i, entry in enumerate(recipe.models or []):
        if entry.parameters:
            tables.append((f"models[{i}].parameters", entry.parameters))
    for i, sl in enumerate(recipe.slices or []):
        if sl.parameters:
            tables.append((f"slices[{i}].parameters", sl.parameters))
        for j, src in enumerate(sl.sources):
            if src.parameters:
                tables.append((f"slices[{i}].sources[{j}].parameters", src.parameters))
    return tables


def _leaves(value: ParamValue) -> list[Scalar]:
    if isinstance(value, Conditional):
        return _leaves(value.value)
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _check_parameters(recipe: Recipe, method: MergeMethod) -> None:
    for where, table in _param_tables(recipe):
        for name, value in table.items():
            try:
                spec = method.param(name)
            except KeyError as exc:
                raise ValueError(
                    f"{where}: unknown parameter {name!r} for merge method "
                    f"{method.name!r}; valid: {', '.join(method.param_names)}"
                ) from exc
            for leaf in _leaves(value):
                _check_leaf(where, name, leaf, spec, method)


def _check_leaf(where: str, name: str, leaf: Scalar, spec: Any, method: MergeMethod) -> None:
    if spec.kind is bool:
        if not isinstance(leaf, bool):
            raise ValueError(f"{where}.{name} must be true or false, got {leaf!r}")
        return
    if isinstance(leaf, bool):
        raise ValueError(f"{where}.{name} must be a number, got {leaf!r}")
    if spec.low is not None and leaf < spec.low:
        raise ValueError(
            f"{where}.{name} = {leaf} is below the minimum {spec.low} for {method.name!r}"
        )
    if spec.high is not None and leaf > spec.high:
        raise ValueError(
            f"{where}.{name} = {leaf} is above the maximum {spec.high} for {method.name!r}"
        )


def _check_structure(recipe: Recipe, method: MergeMethod) -> None:
    if method.base == "required" and not recipe.base_model and (
        recipe.slices is None or not all(sl.base_model for sl in recipe.slices)
    ):
        raise ValueError(f"merge method {method.name!r} needs a base_model")
    _check_required(recipe, method)
    # (inputs, whether the base joins them): ``models:`` merges the base with the models (as
    # the plan does); a slice merges its sources only, so a base there only names the
    # tokenizer base (passthrough) and is not an input.
    groups: list[tuple[list[str], bool]] = []
    if recipe.models is not None:
        groups.append(([e.model for e in recipe.models], True))
    for sl in recipe.slices or []:
        groups.append(([s.model for s in sl.sources], False))
    for group, joins in groups:
        base = recipe.base_model
        n = len([m for m in group if m != base]) if method.base != "input" else len(
            group if base is None or base in group or not joins else group + [base]
        )
        if n < method.min_inputs or (method.max_inputs is not None and n > method.max_inputs):
            bound = (f"exactly {method.min_inputs}" if method.min_inputs == method.max_inputs
                     else f"at least {method.min_inputs}" if method.max_inputs is None
                     else f"{method.min_inputs} to {method.max_inputs}")
            kind = "models besides the base" if method.base != "input" else "input models"
            raise ValueError(f"merge method {method.name!r} takes {bound} {kind}, got {n}")


def _check_required(recipe: Recipe, method: MergeMethod) -> None:
    """Every required parameter must be set somewhere it applies (filters aside)."""
    top = recipe.parameters or {}
    slices = recipe.slices or [Slice(sources=[SliceSource(model=e.model, layer_range=(0, 1),
                                                          parameters=e.parameters)
                                              for e in recipe.models or []])]
    for sl in slices:
        shared = {**top, **(sl.parameters or {})}
        base = sl.base_model or recipe.base_model
        for spec in method.params:
            if not spec.required:
                continue
            if not spec.per_model:
                if spec.name not in shared:
                    raise ValueError(f"merge method {method.name!r} needs parameter "
                                     f"{spec.name!r} (in 'parameters')")
                continue
            for src in sl.sources:
                if method.base != "input" and src.model == base:
                    continue
                if spec.name not in {**shared, **(src.parameters or {})}:
                    raise ValueError(f"merge method {method.name!r} needs parameter "
                                     f"{spec.name!r} for model {src.model!r}")


def load_recipe(source: str | Path | dict[str, Any]) -> Recipe:
    """Parse and validate a recipe from a YAML path, a YAML string or a dict.

    Raises:
        ConfigError: the file is missing, is not YAML, or fails validation; the message names
            the field and the value.
    """
    data, name = read_mapping(source, "recipe", "a YAML mapping with a 'merge_method' key")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, name)) from None
