"""Model shells: a model built from its config with parameters on the meta device (no memory,
no weights read) and real buffers, which the materializer and the path model then point at
resident tensors."""

from __future__ import annotations

import math
from typing import Any

import torch

from evomerge.engine.arch import is_vocab_tensor
from evomerge.engine.sources import ModelSource
from evomerge.errors import ModelError

__all__ = ["meta_model", "empty_model"]

_MAX_BUFFERS = 1 << 30  # bytes of computed buffers (rotary frequencies, embedding scales)


def meta_model(config: Any, dtype: torch.dtype) -> torch.nn.Module:
    """The causal LM of ``config`` with every parameter on the meta device, never allocated
    (the sizes are the config's, which is data: ``intermediate_size: 1e9`` must cost nothing),
    and real buffers on the CPU. Built wholly on meta, then the buffers are given storage and
    computed by ``initialize_weights``, as transformers does after a meta-device load (its
    ``from_pretrained``); parameters on meta are left as they are by it.

    Raises:
        ModelError: the buffers would take more than 1 GiB (the config's sizes are wrong).
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # transformers skips weight init on meta
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    buffers = dict(model.named_buffers())
    size = sum(b.numel() * b.element_size() for b in buffers.values())
    if size > _MAX_BUFFERS:  # rotary tables are kB; head_dim: 2**36 asked for 137 GB
        name, big = max(buffers.items(), key=lambda kv: kv[1].numel())
        raise ModelError(f"{config.name_or_path!r}: config.json asks for {size} bytes of "
                         f"buffers ({name} {list(big.shape)}), more than the "
                         f"{_MAX_BUFFERS >> 30} GiB any model needs; its sizes are wrong.")
    for module in model.modules():
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = torch.empty_like(b, device="cpu")
    model.initialize_weights()  # computes rotary frequencies, embedding scales, ...
    return model


def _shell_within_weights(model: torch.nn.Module, source: ModelSource) -> None:
    """The shell must hold no more parameters than ``source``'s weights (the token-indexed
    tensors aside, whose rows a tokenizer rule sets): its sizes are config.json's, which is
    data, and they are allocated for real next. ModelSource checks the common sizes against
    the tensors; this bounds every other one (``head_dim``, ``num_key_value_heads``, ...)."""
    held = sum(math.prod(source.shape(n)) for n in source.names if not is_vocab_tensor(n))
    asked = sum(p.numel() for n, p in model.named_parameters() if not is_vocab_tensor(n))
    if asked > held + held // 100 + (1 << 20):  # slack: a few small tensors a checkpoint omits
        raise ModelError(f"{str(source.path)!r}: config.json describes a model of {asked} parameters "
                         f"(besides its token embeddings) but its weights hold {held}; "
                         "config and tensors must agree.")


def empty_model(source: ModelSource, dtype: torch.dtype, device: torch.device,
                vocab_size: int | None = None) -> torch.nn.Module:
    """The model of ``source``'s config with uninitialised parameters of ``dtype`` on ``device``
    (tied parameters stay one tensor) and real buffers; one model's bytes, no weights read.
    ``vocab_size``: rows of the token-indexed tensors, where a tokenizer rule changes them.

    Raises:
        ModelError: the config asks for more parameters than the weights hold.
    """
    from transformers import AutoConfig

    path = str(source.path)
    config = AutoConfig.from_pretrained(path)
    if vocab_size is not None:
        config.get_text_config().vocab_size = vocab_size
    model = meta_model(config, dtype)
    _shell_within_weights(model, source)  # before the parameters are allocated
    storage: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                if id(p) not in storage:
                    storage[id(p)] = torch.nn.Parameter(
                        torch.empty(p.shape, dtype=p.dtype, device=device), requires_grad=False)
                module._parameters[name] = storage[id(p)]
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = b.to(device)
    return model.eval()
