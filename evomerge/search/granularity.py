"""How finely a parameter-space genome's coefficients vary over the model: layer groups,
attention / MLP or tensor-name filter sets, a separate set for the embeddings and head, and
coefficients interpolated across groups (``smooth``). Part of a search space
(:class:`~evomerge.search.space.SearchSpace`'s ``granularity``)::

    granularity: {layers_per_group: 4, filters: [self_attn, mlp], embeddings: false, smooth: true}
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["Granularity", "FILTER_REST"]

FILTER_REST = "rest"  # the coefficient set of tensors no filter matches


class Granularity(BaseModel):
    """How finely coefficients vary over the model.

    ``filters``: a coefficient set per tensor-name filter and one for the rest, the first
    filter that is a substring of a tensor's name wins (mergekit's ``filter`` rule; ``[mlp]``
    is ``split_attn_mlp``). ``smooth``: each layer group's set is an anchor at depth
    g / (G - 1), and a layer's coefficients are interpolated linearly between anchors
    (mergekit's gradients; mergekit-evolve's ``smooth``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # consecutive layers sharing one coefficient set; "all": one set for the whole depth
    # (with embeddings: false, one weight per model: LoraHub's space over adapters)
    layers_per_group: int | Literal["all"] = 1
    split_attn_mlp: bool = False            # separate sets for attention and MLP tensors
    filters: list[str] | None = Field(None, min_length=1)
    embeddings: bool = True                 # a separate set for embeddings / final norm / head
    smooth: bool = False                    # interpolate coefficients across layer groups

    @model_validator(mode="after")
    def _check(self) -> Granularity:
        if self.filters is not None:
            if self.split_attn_mlp:
                raise ValueError("granularity.split_attn_mlp is filters [mlp]: give one of "
                                 "the two")
            parts = self.parts
            if "" in self.filters or len(set(parts)) != len(parts) or parts[-1] in parts[:-1]:
                raise ValueError(f"granularity.filters {self.filters} must be distinct, "
                                 f"non-empty, and none may be named {FILTER_REST!r}")
        return self

    @property
    def parts(self) -> list[str]:
        """Coefficient sets per layer group, by name: ``all``; ``attn``, ``mlp``
        (``split_attn_mlp``); or each filter (dots as ``_``) then ``rest``."""
        if self.filters:
            return [f.replace(".", "_") for f in self.filters] + [FILTER_REST]
        return ["attn", "mlp"] if self.split_attn_mlp else ["all"]

    @field_validator("layers_per_group", mode="before")
    @classmethod
    def _group(cls, value: Any) -> Any:
        if value == "all" or (isinstance(value, int) and not isinstance(value, bool)
                              and value >= 1):
            return value
        raise ValueError(f"granularity.layers_per_group must be a whole number >= 1 or 'all', "
                         f"got {value!r}")
