"""The zoo's model: a small ``LlamaForCausalLM`` over a character tokenizer, with an L2 digit
embedding factorised as (its L1 twin + a shared language vector) during training.

Why factorised: with free embeddings, nothing ties an L2 digit to the L1 digit of the same
value, so arithmetic learned on L1 never reaches L2 and the composite task stays at 0% for
every merge (measured in the prototype). With rows ``E[l2(d)] = E[d] + v`` the two forms share
one number representation and differ by one direction ``v``. The parametrization folds back
into a plain embedding matrix at save time, so the saved model is an ordinary Llama.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from evomerge.zoo.tasks import CHARS, L1, L2

__all__ = ["ZooModelConfig", "build_tokenizer", "new_model", "factorise", "fold", "SPECIALS"]

SPECIALS = ["<pad>", "<unk>", "<eos>"]


@dataclass(frozen=True)
class ZooModelConfig:
    hidden: int = 128          # d_model
    layers: int = 6            # decoder blocks
    heads: int = 4             # attention heads (head dim 32)
    intermediate: int = 320    # SwiGLU width
    max_len: int = 32          # longest prompt + answer + newline is 22 characters


def vocab() -> dict[str, int]:
    return {tok: i for i, tok in enumerate(SPECIALS + list(CHARS))}


def build_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` (no BOS: prompts start with a marker)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab(), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   eos_token="<eos>", model_max_length=64)


def new_model(cfg: ZooModelConfig, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    n = len(vocab())
    config = LlamaConfig(vocab_size=n, hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                         num_key_value_heads=cfg.heads, max_position_embeddings=cfg.max_len,
                         tie_word_embeddings=False, pad_token_id=vocab()["<pad>"],
                         eos_token_id=vocab()["<eos>"], bos_token_id=None)
    return LlamaForCausalLM(config)


class _TwinRows(nn.Module):
    """weight -> weight with rows[l2] = rows[l1] + lang (the raw L2 rows are ignored)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        v = vocab()
        self.register_buffer("l1", torch.tensor([v[c] for c in L1]), persistent=False)
        self.register_buffer("l2", torch.tensor([v[c] for c in L2]), persistent=False)
        lang = (weight[self.l2] - weight[self.l1]).mean(0)  # recovers v from a folded matrix
        self.lang = nn.Parameter(lang.detach().clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        out = weight.clone()
        out[self.l2] = weight[self.l1] + self.lang
        return out


def factorise(model) -> None:
    """Tie L2 digit rows of the input embedding and of the LM head to their L1 twins."""
    for module in (model.model.embed_tokens, model.lm_head):
        parametrize.register_parametrization(module, "weight", _TwinRows(module.weight.data))


def fold(model) -> None:
    """Turn the parametrization back into plain weights (before ``save_pretrained``)."""
    for module in (model.model.embed_tokens, model.lm_head):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def save(model, tokenizer, path: Path) -> None:
    fold(model)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
