"""Model shells: a model built from its config with parameters on the meta device (no memory,
no weights read) and real buffers, which the materializer and the path model then point at
resident tensors."""

from __future__ import annotations

from contextlib import contextmanager

import torch

__all__ = ["parameters_on_meta", "empty_model"]


@contextmanager
def parameters_on_meta():
    """Create parameters on the meta device (no memory) and buffers for real: rotary
    frequencies and other non-persistent buffers are computed at construction and are not in
    any checkpoint, so they must not be left empty."""
    register = torch.nn.Module.register_parameter

    def on_meta(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and param.device.type != "meta":  # tying re-registers a meta one
            module._parameters[name] = torch.nn.Parameter(
                param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def empty_model(path: str, dtype: torch.dtype, device: torch.device,
                vocab_size: int | None = None) -> torch.nn.Module:
    """The model of ``path``'s config with uninitialised parameters of ``dtype`` on ``device``
    (tied parameters stay one tensor) and real buffers; one model's bytes, no weights read.
    ``vocab_size``: rows of the token-indexed tensors, where a tokenizer rule changes them."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    if vocab_size is not None:
        config.get_text_config().vocab_size = vocab_size
    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
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
