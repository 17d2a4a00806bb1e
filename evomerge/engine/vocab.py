"""The output vocabulary of a merge whose sources' tokenizers differ, by mergekit's rules.

Fine-tunes often add tokens to their base (ChatML's ``<|im_start|>``, tool-call tokens) or pad
their embedding to a multiple of 64, so their embedding matrices differ in rows and a token may
sit at different ids. A recipe's ``tokenizer_source`` / ``tokenizer:`` block
(:mod:`evomerge.engine.vocab_config`) names the output tokenizer:

* ``base``: the base model's (the first model's without one) tokenizer, less any token whose id
  lies beyond the base's embedding;
* ``union``: the base's tokenizer plus every token of the other models it lacks, in model
  order (the base first, then the recipe's order), added tokens keeping their settings;
* a model: that model's tokenizer as it is;

plus every token named under ``tokenizer.tokens``. :class:`VocabPlan` holds that tokenizer and,
per model, the row of each output token in the model's own embedding (-1: it lacks the token);
:mod:`evomerge.engine.vocab_align` re-indexes the token-indexed tensors with it before the merge.

Sources whose base vocabularies disagree (a token id meaning different text in two models'
core vocabularies, beyond tokens added on top) are refused: no tokenizer rule makes their
layers compatible.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evomerge.engine.recipe import Recipe
from evomerge.engine.vocab_config import TokenEmbedding, TokenizerSettings
from evomerge.errors import ConfigError, ModelError

__all__ = ["VocabPlan", "build_vocab", "check_base_vocabularies", "chat_template_for",
           "output_tokenizer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VocabPlan:
    """The output tokenizer and how each model's token rows map onto it.

    Attributes:
        tokenizer: the output tokenizer (a transformers tokenizer; saved with the model).
        vocab: output token -> id; ids are 0 .. len(vocab) - 1.
        rows: rows of every token-indexed output tensor (``len(vocab)`` rounded up to
            ``pad_to_multiple_of``).
        perms: model reference -> int64 tensor (len(vocab),): the model's own row of each
            output token, -1 where it lacks the token.
        vocabs: model reference -> its own token -> id (``model_token`` sources look up here).
        tokens: output id -> the configured :class:`TokenEmbedding` of that token.
        base: the model whose tokenizer a ``base`` or ``union`` vocabulary starts from.
    """

    tokenizer: Any
    vocab: Mapping[str, int]
    rows: int
    perms: Mapping[str, torch.Tensor]
    vocabs: Mapping[str, Mapping[str, int]]
    tokens: Mapping[int, TokenEmbedding]
    base: str


def _load(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:  # no remote code: a tokenizer directory is data
        return AutoTokenizer.from_pretrained(str(path), use_fast=True)
    except Exception as exc:  # noqa: BLE001 -- any unreadable tokenizer is one sentence
        raise ModelError(f"Cannot load the tokenizer of {str(path)!r} "
                         f"({type(exc).__name__}: {exc}).") from None


def _stripped(path: Path, size: int | None) -> Any:
    """The tokenizer at ``path`` without tokens whose ids are >= ``size`` (the embedding's
    rows): a base whose tokenizer names rows it does not have (BPE tokenizers only)."""
    import tokenizers

    tok = _load(path)
    vocab = tok.get_vocab()
    unused = {t for t, i in vocab.items() if size is not None and i >= size}
    if not unused:
        return tok
    data = json.loads(tok._tokenizer.to_str())  # the fast tokenizer's own JSON (public format)
    if data["model"]["type"] != "BPE":
        raise ModelError(f"{str(path)!r}: its tokenizer has {len(unused)} tokens beyond its "
                         f"{size} embedding rows and is not BPE; only BPE tokenizers can be cut "
                         "to the embedding.")
    data["added_tokens"] = [e for e in data["added_tokens"] if e["id"] < size]
    for t in unused:
        data["model"]["vocab"].pop(t, None)

    def keep(merge: str | list[str]) -> bool:
        parts = merge.split(" ") if isinstance(merge, str) else merge
        return not any(p in unused for p in parts)

    data["model"]["merges"] = [m for m in data["model"]["merges"] if keep(m)]
    tok._tokenizer = tokenizers.Tokenizer.from_str(json.dumps(data))
    return tok


def _union(base_tok: Any, toks: Mapping[str, Any], sizes: Mapping[str, int | None]) -> Any:
    """The base tokenizer (a copy) plus every other model's tokens it lacks: plain tokens
    first, then added tokens with their settings (the first model's where they differ)."""
    from transformers import AutoTokenizer

    new_plain: dict[str, None] = {}
    added: dict[str, Any] = {}
    for ref, tok in toks.items():
        size = sizes[ref] or tok.vocab_size
        decoder = tok.added_tokens_decoder
        for t, i in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            if i < size and i not in decoder:
                new_plain.setdefault(t)
        for i, info in decoder.items():
            if i < size and info.content not in added:
                added[info.content] = info
            elif i < size and added[info.content] != info:
                log.warning("Token %r is added with different settings; using the first "
                            "model's.", info.content)
    with tempfile.TemporaryDirectory() as tmp:  # a copy: the base's own stays as it was
        base_tok.save_pretrained(tmp)
        out = AutoTokenizer.from_pretrained(tmp, use_fast=True)
    base_vocab = base_tok.get_vocab()
    for t in new_plain:
        if t not in added and t not in base_vocab:
            out.add_tokens(t)
    for info in added.values():
        out.add_tokens(info)
    return out


def _output(settings: TokenizerSettings, base_tok: Any, toks: Mapping[str, Any],
            sizes: Mapping[str, int | None]) -> Any:
    """The output tokenizer of ``settings`` (module docstring), with the configured tokens
    added where missing."""
    if settings.source == "base":
        out = base_tok
    elif settings.source == "union":
        out = _union(base_tok, toks, sizes)
    else:
        path = Path(settings.source).expanduser()
        if not path.is_dir():
            raise ModelError(f"tokenizer source {settings.source!r}: no such directory.")
        out = _load(path)
    for token, _ in settings.tokens:
        if token not in out.get_vocab():
            out.add_tokens(token)
    return out


def build_vocab(settings: TokenizerSettings, base: str, refs: Sequence[str],
                sources: Mapping[str, Any]) -> VocabPlan:
    """The output tokenizer of ``settings`` and each referenced model's row map.

    Args:
        settings: the recipe's tokenizer settings.
        base: the base model (the first model where the recipe has none).
        refs: every model the recipe merges, in first-mention order.
        sources: opened sources (config and tokenizer files) by reference.

    Raises:
        ModelError: unloadable tokenizers, or output ids that are not 0 .. n-1.
    """
    sizes = {r: sources[r].vocab_size for r in refs}
    toks = {base: _stripped(sources[base].path, sizes[base])}
    for ref in refs:
        if ref != base and sources[ref].tokenizer is not None:
            toks[ref] = _load(sources[ref].path)
    out = _output(settings, toks[base], toks, sizes)
    vocab = dict(out.get_vocab())
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise ModelError(f"The output tokenizer's ids are not 0 .. {len(vocab) - 1} (a gap or a "
                         "repeated id), so it cannot index an embedding.")
    rows, pad = len(vocab), settings.pad_to_multiple_of
    if pad and rows % pad:
        rows += pad - rows % pad
    by_id = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    perms, vocabs = {}, {}
    for ref in refs:
        own = toks.get(ref, toks[base]).get_vocab()
        size = sizes[ref] or len(own)
        # a token whose id lies beyond the model's rows (an unpadded tokenizer entry) is absent
        perms[ref] = torch.tensor([own[t] if own.get(t, size) < size else -1 for t in by_id],
                                  dtype=torch.int64)
        vocabs[ref] = own
    tokens = {vocab[t]: emb for t, emb in settings.tokens}
    return VocabPlan(out, vocab, rows, perms, vocabs, tokens, base)


def output_tokenizer(recipe: Recipe, vocab: VocabPlan | None) -> Any:
    """The tokenizer written with ``recipe``'s model, which its evaluation uses too: the
    output vocabulary's (``vocab``, from the plan), else the tokenizer source's or the base's
    (or the first model's) own; with the recipe's ``chat_template`` set."""
    refs = recipe.referenced_models()
    tok = vocab.tokenizer if vocab is not None else _load(
        Path(recipe.tokenizer_source or recipe.tokenizer_base).expanduser())
    if recipe.chat_template is not None:
        if vocab is not None:  # the plan's tokenizer is shared by every recipe of that rule
            tok = copy.deepcopy(tok)
        others = ([] if recipe.chat_template != "auto"
                  else [_load(Path(r).expanduser()) for r in refs])
        tok.chat_template = chat_template_for(recipe.chat_template, others)
    return tok


def chat_template_for(setting: str, tokenizers: Sequence[Any]) -> str:
    """The chat template a recipe's ``chat_template`` names: ``auto`` (the template most of
    the models' tokenizers carry) or a Jinja template given inline."""
    if setting == "auto":
        found = [t.chat_template.strip() for t in tokenizers
                 if isinstance(getattr(t, "chat_template", None), str) and t.chat_template]
        if not found:
            raise ConfigError("chat_template 'auto': none of the models' tokenizers has a chat "
                              "template.")
        return Counter(found).most_common(1)[0][0]
    return setting


def check_base_vocabularies(sources: Sequence[Any]) -> None:
    """Refuse sources whose core vocabularies (the tokenizer model's own tokens, not tokens
    added on top) give one id two different tokens.

    Raises:
        ModelError: naming the two models and the first id they disagree on.
    """
    cores = [(s, s.core_vocab) for s in sources if s.core_vocab is not None]
    for (a, va), (b, vb) in zip(cores, cores[1:]):
        if va == vb:  # the common case (tokens added on top): one comparison per candidate
            continue
        if isinstance(va, str) or isinstance(vb, str):
            if va != vb:
                raise ModelError(f"Tokenizer mismatch: {a.ref!r} and {b.ref!r} have different "
                                 "base vocabularies (their tokenizer files differ); no tokenizer "
                                 "rule can align models of different base tokenizers.")
            continue
        i = next((i for i in sorted(set(va) & set(vb)) if va[i] != vb[i]), None)
        if i is not None:
            raise ModelError(f"Tokenizer mismatch: {a.ref!r} and {b.ref!r} have different base "
                             f"vocabularies (token {i} is {va[i]!r} in one and {vb[i]!r} in the "
                             "other); no tokenizer rule can align models of different base "
                             "tokenizers.")
