"""A recipe's tokenizer settings, spelled as mergekit spells them.

Either the short form ``tokenizer_source: base | union | MODEL`` or the block::

    tokenizer:
      source: union                 # base | union | a model (default: union)
      pad_to_multiple_of: 64        # round the embedding's rows up (extra rows: the mean row)
      tokens:                       # per token: where its row comes from, added if missing
        <|im_start|>: {source: path/to/chat_model}             # that model's row of the token
        <tool_call>: {source: {kind: model_token, model: path/to/chat_model, token: "<|im_end|>"}}
        <pad>: {source: {kind: zero}, force: true}              # force: for every model

Older mergekit recipes write a model as ``model:PATH``; the prefix is accepted and dropped, so
the recipe written back (``mergekit_config.yml``) is what mergekit 0.1.5 reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["ModelToken", "ZeroEmbedding", "TokenEmbedding", "TokenizerConfig",
           "TokenizerSettings", "model_ref", "check_chat_template"]


def model_ref(value: str) -> str:
    """``model:PATH`` (older mergekit) -> ``PATH``; anything else as given."""
    return value.removeprefix("model:") if value.startswith("model:") else value


def check_chat_template(value: str | None) -> str | None:
    """``chat_template``: ``auto`` (the template most models carry) or a Jinja template; a
    name of one of mergekit's bundled templates is refused (evomerge does not ship them)."""
    if value is not None and value != "auto" and ("{" not in value or len(value) < 20):
        raise ValueError(f"chat_template {value[:40]!r} is neither 'auto' nor a Jinja template "
                         "(evomerge does not ship mergekit's named templates; paste the "
                         "template text)")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelToken(_Strict):
    """A given token's row (``token`` or ``token_id``) of ``model``'s own vocabulary."""

    kind: Literal["model_token"]
    model: str = Field(min_length=1)
    token_id: int | None = Field(None, ge=0)
    token: str | None = None

    @field_validator("model")
    @classmethod
    def _ref(cls, value: str) -> str:
        return model_ref(value)

    @model_validator(mode="after")
    def _one(self) -> ModelToken:
        if (self.token_id is None) == (self.token is None):
            raise ValueError("a model_token source names exactly one of 'token' or 'token_id'")
        return self


class ZeroEmbedding(_Strict):
    """A row of zeros."""

    kind: Literal["zero"]


class TokenEmbedding(_Strict):
    """Where one output token's row comes from for the models that lack it (``force``: for
    every model). ``source``: a model (its own row of the token), a :class:`ModelToken`, a
    :class:`ZeroEmbedding`, or none (the automatic rules)."""

    source: ModelToken | ZeroEmbedding | str | None = None
    force: bool = False

    @field_validator("source")
    @classmethod
    def _ref(cls, value: object) -> object:
        return model_ref(value) if isinstance(value, str) else value


class TokenizerConfig(_Strict):
    """The ``tokenizer:`` block of a recipe (see the module docstring)."""

    source: str = Field("union", min_length=1)
    tokens: dict[str, TokenEmbedding] | None = None
    pad_to_multiple_of: int | None = Field(None, gt=0, le=65536)  # rows padded: bounded

    @field_validator("source")
    @classmethod
    def _ref(cls, value: str) -> str:
        return model_ref(value)


@dataclass(frozen=True)
class TokenizerSettings:
    """What the output vocabulary is built from: ``source`` (``base``, ``union`` or a model
    reference), the configured ``tokens`` (in order) and ``pad_to_multiple_of``."""

    source: str
    tokens: tuple[tuple[str, TokenEmbedding], ...] = ()
    pad_to_multiple_of: int | None = None

    @classmethod
    def of(cls, tokenizer_source: str | None, tokenizer: TokenizerConfig | None
           ) -> TokenizerSettings | None:
        """The settings of a recipe's two spellings (None: the sources' own tokenizer)."""
        if tokenizer is not None:
            return cls(tokenizer.source, tuple((tokenizer.tokens or {}).items()),
                       tokenizer.pad_to_multiple_of)
        return cls(tokenizer_source) if tokenizer_source is not None else None

    @property
    def key(self) -> str:
        """A text that is equal exactly when the settings are (cache key)."""
        return json.dumps([self.source, [(t, e.model_dump(mode="json")) for t, e in self.tokens],
                           self.pad_to_multiple_of])

    def token_models(self) -> list[str]:
        """Models whose rows ``tokens`` entries take (each must be merged by the recipe)."""
        refs: list[str] = []
        for _, emb in self.tokens:
            src = emb.source
            ref = src if isinstance(src, str) else getattr(src, "model", None)
            if ref is not None and ref not in refs:
                refs.append(ref)
        return refs
