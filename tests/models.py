"""Tiny seeded Hugging Face checkpoints for tests: a base and fine-tuned variants."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

VOCAB = 48


def tiny_config(layers: int = 4, vocab: int = VOCAB, tied: bool = False) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=64, tie_word_embeddings=tied)


def save_tokenizer(path: Path, vocab: int = VOCAB) -> None:
    words = {f"w{i}": i for i in range(vocab - 1)} | {"<unk>": vocab - 1}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(path)


def make_model(path: Path, seed: int, base: Path | None = None, scale: float = 0.02,
               layers: int = 4, vocab: int = VOCAB, tied: bool = False,
               only_layers: tuple[int, ...] | None = None) -> Path:
    """Save a random Llama (``base is None``) or a perturbed copy of ``base`` at ``path``.

    ``only_layers`` restricts the perturbation to those decoder layers (a partial fine-tune).
    """
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(layers, vocab, tied)) if base is None else (
        LlamaForCausalLM.from_pretrained(base))
    if base is not None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if only_layers is not None and not any(f"layers.{i}." in name
                                                       for i in only_layers):
                    continue
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    model.save_pretrained(path)
    save_tokenizer(path, vocab)
    return path
