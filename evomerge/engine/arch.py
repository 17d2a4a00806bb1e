"""Layer awareness: place every tensor name of a decoder checkpoint in a layer group.

Groups: ``embed`` (token/position embeddings, merged before the layers), ``layer`` (one decoder
block, with its index), ``final`` (final norm and LM head, after the layers). Within a layer,
``kind`` is ``attn``, ``mlp``, ``norm`` or ``other``, which the search uses for separate
attention / MLP coefficient groups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from evomerge.engine.config_io import brief
from evomerge.errors import ModelError

__all__ = ["TensorPlace", "place", "rename_layer", "num_layers_of", "LAYER_COUNT_KEYS",
           "is_vocab_tensor", "layer_index", "MAX_LAYERS"]

MAX_LAYERS = 10_000  # decoder depth bound; the deepest real decoders have ~200 layers

# prefix + index + rest; the prefix is kept when a tensor is renumbered for a layer swap. An
# index has at most 6 digits: names come from safetensors headers (data), and int() of a
# 5,000-digit index raises ValueError; such a name is then simply not placed.
_LAYER = [
    re.compile(r"^(?P<prefix>(?:model\.)?(?:language_model\.)?(?:decoder\.)?layers\.)(?P<idx>\d{1,6})\.(?P<rest>.+)$"),
    re.compile(r"^(?P<prefix>transformer\.h\.)(?P<idx>\d{1,6})\.(?P<rest>.+)$"),
    re.compile(r"^(?P<prefix>gpt_neox\.layers\.)(?P<idx>\d{1,6})\.(?P<rest>.+)$"),
]
_EMBED = re.compile(
    r"^(?:model\.)?(?:language_model\.)?(?:decoder\.)?(?:transformer\.|gpt_neox\.)?"
    r"(?:embed_tokens|wte|wpe|embed_in|embed_positions)\.[\w.]+$"
)
_FINAL = re.compile(
    r"^(?:(?:model\.)?(?:language_model\.)?(?:decoder\.)?(?:norm|final_layernorm|final_layer_norm)"
    r"|transformer\.ln_f|gpt_neox\.final_layer_norm|lm_head|embed_out)\.[\w.]+$"
)
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
# Token-indexed tensors (one row per token id: the vocabulary is axis 0), which a tokenizer
# rule re-indexes: the token embedding and the LM head (position embeddings are not).
_VOCAB = re.compile(
    r"^(?:model\.)?(?:language_model\.)?(?:decoder\.)?(?:transformer\.|gpt_neox\.)?"
    r"(?:embed_tokens|wte|embed_in)\.weight$|^(?:lm_head|embed_out)\.weight$"
)


@dataclass(frozen=True)
class TensorPlace:
    """Where a tensor sits: group, layer index (layers only), kind inside the layer."""

    group: Literal["embed", "layer", "final"]
    layer: int | None = None
    kind: Literal["attn", "mlp", "norm", "other", "embed", "head"] = "other"
    prefix: str = ""
    rest: str = ""


def _kind(rest: str) -> str:
    if "attn" in rest or "attention" in rest:
        return "attn"
    if "mlp" in rest or "feed_forward" in rest:
        return "mlp"
    if "norm" in rest or rest.startswith("ln_"):
        return "norm"
    return "other"


@lru_cache(maxsize=1 << 16)  # a plan places every tensor once per model and parameter, per candidate
def place(name: str) -> TensorPlace:
    """Place tensor ``name``; raises ModelError naming it if the architecture is unknown.

    >>> p = place("model.layers.3.self_attn.q_proj.weight")
    >>> p.group, p.layer, p.kind
    ('layer', 3, 'attn')
    >>> place("lm_head.weight").group
    'final'
    """
    for pattern in _LAYER:
        m = pattern.match(name)
        if m:
            rest = m["rest"]
            return TensorPlace("layer", int(m["idx"]), _kind(rest), m["prefix"], rest)
    if _EMBED.match(name):
        return TensorPlace("embed", kind="embed")
    if _FINAL.match(name):
        head = name.startswith(("lm_head", "embed_out"))
        return TensorPlace("final", kind="head" if head else "norm")
    raise ModelError(
        f"Cannot place tensor {name!r} in a layer group: evomerge knows Llama/Mistral/Qwen2/"
        "Gemma-style 'model.layers.N.', GPT-2-style 'transformer.h.N.' and GPT-NeoX-style "
        "'gpt_neox.layers.N.' decoders."
    )


def is_vocab_tensor(name: str) -> bool:
    """Whether ``name`` holds one row per token id (axis 0).

    >>> is_vocab_tensor("model.embed_tokens.weight"), is_vocab_tensor("transformer.wpe.weight")
    (True, False)
    """
    return bool(_VOCAB.match(name))


def layer_index(name: str) -> int | None:
    """The decoder layer a tensor belongs to, or None (embeddings, head, unknown names).

    >>> layer_index("model.layers.12.mlp.up_proj.weight"), layer_index("lm_head.weight")
    (12, None)
    """
    for pattern in _LAYER:
        m = pattern.match(name)
        if m:
            return int(m["idx"])
    return None


def rename_layer(name: str, new_index: int) -> str:
    """``model.layers.5.mlp.up_proj.weight`` -> ``model.layers.{new_index}.mlp.up_proj.weight``."""
    p = place(name)
    if p.group != "layer":
        return name
    return f"{p.prefix}{new_index}.{p.rest}"


def num_layers_of(config: dict, where: str = "config.json") -> int:
    """Decoder layer count from a HF config dict: a whole number from 0 to MAX_LAYERS.

    Raises:
        ModelError: no count, or a count that is a boolean, negative or over MAX_LAYERS.
    """
    for key in LAYER_COUNT_KEYS:
        value = config.get(key)
        if isinstance(value, int):
            if isinstance(value, bool) or not 0 <= value <= MAX_LAYERS:
                raise ModelError(f"{where} sets {key} = {brief(value, 40)}, which is not a layer count "
                                 f"(a whole number from 0 to {MAX_LAYERS}).")
            return value
    text = config.get("text_config")
    if isinstance(text, dict):
        return num_layers_of(text, where)
    raise ModelError(f"{where} has no layer count (none of {', '.join(LAYER_COUNT_KEYS)}).")
