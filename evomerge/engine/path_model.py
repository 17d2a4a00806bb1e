"""Data-flow candidates in memory: a causal LM whose layers *reference* the resident layers of
the source models (no weight is copied per candidate)::

    paths = PathModels(weights, template_path, device)
    model = paths.build([Step("zoo/math", 0, 1.0), Step("zoo/lang", 0, 0.8), ...])

One shell model is built from the template's config with parameters on the meta device and
grown to the longest path seen; its slot k is a decoder layer module of its own with
``layer_idx = k`` (so a source layer used twice gets two KV-cache entries) whose parameters
are pointed at the source layer's tensors. The embeddings come with the first step's model
and the final norm / LM head with the last step's, as a mergekit ``passthrough`` export of the
path builds them. A step's scale multiplies the hidden state entering its layer (a forward
pre-hook), which is the residual stream that layer and every later one adds to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from evomerge.engine.arch import place
from evomerge.engine.paths import Step
from evomerge.engine.shell import meta_model
from evomerge.errors import ConfigError

__all__ = ["PathModels"]


def _scale_input(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple | None:
    w = module.evomerge_scale
    if w == 1.0:
        return None
    if args:
        return (args[0] * w, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": kwargs["hidden_states"] * w}


class PathModels:
    """Builds path models over resident source weights.

    Args:
        weights: model reference -> tensor name -> tensor (the materializer's sources).
        template: path of the model whose config shapes the shell (the base).
        device: where the path model runs; source tensors elsewhere (offloaded to host) are
            copied there once per build, one copy per distinct layer on the path.
    """

    def __init__(self, weights: Mapping[str, Mapping[str, torch.Tensor]], template: str,
                 device: torch.device) -> None:
        from transformers import AutoConfig

        self.weights, self.device = weights, device
        self.config = AutoConfig.from_pretrained(template)
        self._types = getattr(self.config, "layer_types", None)
        self._shell: Any = None
        self._slots: list[torch.nn.Module] = []
        self._params: dict[tuple[str, str], torch.nn.Parameter] = {}
        first = next(iter(weights.values()))
        self._prefix = next(place(n).prefix for n in first if place(n).group == "layer")

    def _grow(self, n: int) -> None:
        """Make sure the shell has at least ``n`` slots (rebuilt on meta, no weights)."""
        if self._shell is not None and len(self._slots) >= n:
            return
        import copy

        cfg = copy.deepcopy(self.config)
        cfg.num_hidden_layers = n
        if isinstance(self._types, list):
            cfg.layer_types = [self._types[0]] * n
        shell = meta_model(cfg, self._dtype())  # the config is data: nothing allocated
        for module in shell.modules():
            for name, b in module._buffers.items():
                if b is not None:
                    module._buffers[name] = b.to(self.device)
        self._shell = shell.eval()
        # its weights are re-pointed per candidate: decoders must not capture their addresses
        # (CUDA graphs); evomerge.evaluators.decode reads this flag
        self._shell.evomerge_repointed = True
        self._slots = list(self._layers())
        for slot in self._slots:
            slot.evomerge_scale = 1.0
            slot.register_forward_pre_hook(_scale_input, with_kwargs=True)

    def _dtype(self) -> torch.dtype:
        return next(iter(next(iter(self.weights.values())).values())).dtype

    def _layers(self) -> torch.nn.ModuleList:
        base = getattr(self._shell, self._shell.base_model_prefix)
        return base.layers

    def _param(self, model: str, name: str, cache: dict) -> torch.nn.Parameter:
        key = (model, name)
        if key in cache:
            return cache[key]
        if model not in self.weights or name not in self.weights[model]:
            raise ConfigError(f"Path step needs tensor {name!r} of model {model!r}, which is "
                              "not resident.")
        t = self.weights[model][name]
        if t.device != self.device:  # offloaded: one device copy per build
            cache[key] = torch.nn.Parameter(t.to(self.device, non_blocking=True),
                                            requires_grad=False)
            return cache[key]
        if key not in self._params:
            self._params[key] = torch.nn.Parameter(t, requires_grad=False)
        return self._params[key]

    def _point(self, module: torch.nn.Module, prefix: str, model: str, cache: dict) -> None:
        for full, _ in list(module.named_parameters(recurse=True)):
            owner_path, _, attr = full.rpartition(".")
            owner = module.get_submodule(owner_path) if owner_path else module
            owner._parameters[attr] = self._param(model, prefix + full, cache)

    @torch.no_grad()
    def build(self, path: Sequence[Step]) -> torch.nn.Module:
        """The model of ``path`` (the same shell object each call, re-pointed)."""
        if not path:
            raise ConfigError("A data-flow path needs at least one layer.")
        self._grow(len(path))
        cache: dict = {}
        shell, n = self._shell, len(path)
        for k, step in enumerate(path):
            slot = self._slots[k]
            self._point(slot, f"{self._prefix}{step.layer}.", step.model, cache)
            slot.evomerge_scale = float(step.scale)
        base = getattr(shell, shell.base_model_prefix)
        base.layers = torch.nn.ModuleList(self._slots[:n])
        for name, module in base.named_children():
            if name != "layers" and any(True for _ in module.parameters()):
                model = path[0].model if "embed" in name else path[-1].model
                self._point(module, f"{shell.base_model_prefix}.{name}.", model, cache)
        head = shell.get_output_embeddings()
        if head is not None:
            if shell.config.tie_word_embeddings:
                head._parameters["weight"] = shell.get_input_embeddings().weight
            else:
                self._point(head, "lm_head.", path[-1].model, cache)
        shell.config.num_hidden_layers = n
        if isinstance(self._types, list):
            shell.config.layer_types = [self._types[s.layer % len(self._types)] for s in path]
        return shell
