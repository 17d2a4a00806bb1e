"""Batched decoding with a KV cache on the resident candidate: greedy or seeded sampling,
stop strings, a max-new-tokens budget::

    gens = generate(model, tokenizer, [prompt_ids, ...], DecodeOptions(max_new_tokens=64,
                                                                       stop=("\\n\\n",)))
    gens[0].text, gens[0].finish          # cut at the first stop string; "eos"|"stop"|"length"

Prompts are sorted by length (longest first, as lm-eval does) and cut into batches of at most
``batch_size`` rows and ``token_budget`` tokens (rows x (widest prompt + max_new_tokens)),
left-padded. Two backends share the token choice and the stop test:

* ``loop`` (our own): one forward per step through a ``DynamicCache``; rows that finished
  are dropped from the batch (and the cache) once a quarter of it is done, so a long answer
  does not keep the short ones computing. Each path-model slot has its own cache index, so
  data-flow candidates decode the same way.
* ``hf`` / ``hf_static``: ``transformers``' ``generate`` with our choice as a logits
  processor and our stop test as a stopping criterion; ``hf_static`` asks for a static cache,
  which ``generate`` compiles with CUDA graphs on a GPU (``torch.compile``, mode
  ``reduce-overhead``). Batches are then padded to ``batch_size`` rows and cache lengths
  rounded up, so a few graphs serve every candidate: the resident model's weights are
  rewritten in place, so captured graphs stay valid (a path model re-points its weights, so
  it decodes with ``loop``).

Greedy decoding is ``argmax`` of the float32 logits (what ``generate`` does). Sampling is
Gumbel-max with noise that is a counter-based hash of (seed, example key, step, token): the
same example gets the same draws whatever its batch, its neighbours or the backend, and every
candidate sees the same noise (common random numbers make candidates comparable).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["DecodeOptions", "Generation", "generate", "choose_tokens", "batches"]

_M = 2**31 - 1  # Lehmer modulus: products of two residues stay below 2^62 in int64
BACKENDS = ("auto", "loop", "hf", "hf_static")


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode.

    Attributes:
        max_new_tokens: tokens generated per prompt at most.
        stop: strings that end a generation (the text is cut before the first one).
        do_sample: sample (seeded) instead of greedy argmax.
        temperature, top_k, top_p: sampling filters (top_k 0 and top_p 1: off).
        seed: sampling seed (with the example keys, fixes every draw).
        batch_size: rows per batch at most.
        token_budget: rows x (widest prompt + max_new_tokens) per batch at most.
        backend: "loop", "hf", "hf_static", or "auto" (hf_static on CUDA for a model whose
            weights are not re-pointed per candidate, loop otherwise).
    """

    max_new_tokens: int = 32
    stop: tuple[str, ...] = ()
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 64
    token_budget: int = 65536
    backend: str = "auto"


@dataclass(frozen=True)
class Generation:
    """One prompt's output: generated ids (EOS excluded), the decoded text cut at the first
    stop string, and why it ended: "eos", "stop" or "length"."""

    tokens: tuple[int, ...]
    text: str
    finish: str


def batches(lengths: Sequence[int], options: DecodeOptions) -> list[list[int]]:
    """Indices of prompts per batch: longest first, each batch within ``batch_size`` rows and
    ``token_budget`` tokens (at least one row)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    for i in order:
        if out and len(out[-1]) < options.batch_size and (len(out[-1]) + 1) * (
                lengths[out[-1][0]] + options.max_new_tokens) <= options.token_budget:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _uniform(seed: int, keys: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """(B, V) uniforms in (0, 1) from a hash of (seed, key, step, token): no generator state,
    so a draw never depends on the batch it was made in."""
    v = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    salt = (seed * 1_000_003 + step * 7919 + 12345) % _M
    h = (keys[:, None] % _M * 69621 + salt) % _M
    h = (h * 48271 + v[None, :]) % _M
    for a in (16807, 48271, 69621):
        h = (h * a) % _M
        h = h ^ (h >> 11)
    return (h.double() + 0.5) / (_M + 1)


def choose_tokens(logits: torch.Tensor, keys: torch.Tensor, step: int,
                  options: DecodeOptions) -> torch.Tensor:
    """Next token per row from (B, V) float32 logits: argmax, or a seeded Gumbel-max sample
    of softmax(logits / temperature) restricted by top-k / top-p. ``keys`` (B,) name the
    examples (their draws), ``step`` the position in the generation."""
    if not options.do_sample:
        return logits.argmax(-1)
    scores = logits / max(options.temperature, 1e-6)
    if 0 < options.top_k < scores.shape[-1]:
        kth = scores.topk(options.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, -torch.inf)
    if options.top_p < 1.0:
        ordered, idx = scores.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        drop = probs.cumsum(-1) - probs > options.top_p  # keeps the smallest set reaching top_p
        scores = scores.masked_fill(drop.scatter(-1, idx, drop), -torch.inf)
    gumbel = -torch.log(-torch.log(_uniform(options.seed, keys, step, scores.shape[-1])))
    return (scores.double() + gumbel).argmax(-1)


class _Stops:
    """Per-row stop test: EOS ids, stop strings found in the decoded tail, the budget."""

    def __init__(self, tokenizer: Any, model: Any, options: DecodeOptions) -> None:
        self.tok, self.stop, self.max_new = tokenizer, [s for s in options.stop if s], \
            options.max_new_tokens
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids = eos if isinstance(eos, list) else [eos]
        self.eos = {int(i) for i in [*ids, tokenizer.eos_token_id] if i is not None}
        # a stop string of c characters lies within the last c + 2 tokens (lm-eval's window)
        self.window = max((len(s) for s in self.stop), default=0) + 2

    def finish(self, generated: list[int]) -> str | None:
        if generated and generated[-1] in self.eos:
            return "eos"
        if self.stop:
            tail = self.tok.decode(generated[-self.window:], skip_special_tokens=True)
            if any(s in tail for s in self.stop):
                return "stop"
        return "length" if len(generated) >= self.max_new else None

    def result(self, generated: list[int], finish: str) -> Generation:
        if finish == "eos":
            generated = generated[:-1]
        text = self.tok.decode(generated, skip_special_tokens=True)
        for s in self.stop:  # lm-eval's cut: text before the first occurrence of any stop
            text = text.split(s, 1)[0]
        return Generation(tuple(generated), text, finish)


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    return pad if pad is not None else (tokenizer.eos_token_id or 0)


def _left_pad(rows: list[Sequence[int]], pad: int, device: torch.device, width: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, W) ids and attention mask, every prompt ending at the last column."""
    width = max(width, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def _keeps_logits(model: Any) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _cache_arg(model: Any) -> str:
    """The forward argument that takes the KV cache (transformers >= 5.2x: ``cache``)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.no_grad()
def _loop_batch(model: Any, rows: list[Sequence[int]], keys: list[int], stops: _Stops,
                options: DecodeOptions, pad: int) -> list[Generation]:
    """Our own decoding loop over one batch (module docstring)."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    ids, mask = _left_pad(rows, pad, device)
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # generate's position ids
    cache = DynamicCache(config=model.config)
    arg = _cache_arg(model)
    keep = {"logits_to_keep": 1} if _keeps_logits(model) else {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                **keep, **{arg: cache})
    active = list(range(len(rows)))  # batch row -> prompt row
    key_t = torch.tensor(keys, dtype=torch.long, device=device)
    generated: list[list[int]] = [[] for _ in rows]
    done: dict[int, Generation] = {}
    pos = pos[:, -1:]
    for step in range(options.max_new_tokens):
        nxt = choose_tokens(out.logits[:, -1].float(), key_t, step, options)
        for r, t in zip(active, nxt.tolist()):
            if r in done:  # finished, not dropped yet: decodes padding
                continue
            generated[r].append(t)
            why = stops.finish(generated[r])
            if why:
                done[r] = stops.result(generated[r], why)
        if len(done) == len(rows):
            break
        live = [b for b, r in enumerate(active) if r not in done]
        if 4 * (len(active) - len(live)) >= len(active):  # drop finished rows: a smaller batch
            sel = torch.tensor(live, device=device)
            cache.batch_select_indices(sel)
            mask, pos, nxt, key_t = mask[sel], pos[sel], nxt[sel], key_t[sel]
            active = [active[b] for b in live]
        else:
            alive = torch.tensor([r not in done for r in active], device=device)
            nxt = torch.where(alive, nxt, pad)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = pos + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                    use_cache=True, **keep, **{arg: cache})
    for r in range(len(rows)):
        if r not in done:  # max_new_tokens 0
            done[r] = stops.result(generated[r], "length")
    return [done[r] for r in range(len(rows))]


def _hf_batch(model: Any, rows: list[Sequence[int]], keys: list[int], stops: _Stops,
              options: DecodeOptions, pad: int, static: bool) -> list[Generation]:
    """One batch through ``transformers``' ``generate`` (module docstring)."""
    from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    device = next(model.parameters()).device
    n = len(rows)
    width = 0
    if static:  # fixed shapes: a few compiled graphs serve every batch and candidate
        rows = list(rows) + [rows[-1]] * (options.batch_size - n)
        keys = list(keys) + [keys[-1]] * (options.batch_size - n)
        width = -(-max(len(r) for r in rows) // 64) * 64
    ids, mask = _left_pad(rows, pad, device, width)
    start = ids.shape[1]
    key_t = torch.tensor(keys, dtype=torch.long, device=device)

    class Choice(LogitsProcessor):
        def __call__(self, input_ids, scores):  # the chosen token gets +inf: argmax picks it
            nxt = choose_tokens(scores.float(), key_t, input_ids.shape[1] - start, options)
            return torch.full_like(scores, -torch.inf).scatter(-1, nxt[:, None], 0.0)

    class Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            gen = input_ids[:, start:].tolist()
            return torch.tensor([stops.finish(g) in ("stop", "eos") for g in gen],
                                device=device)

    kwargs = {"cache_implementation": "static"} if static else {}
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                             max_new_tokens=options.max_new_tokens, pad_token_id=pad,
                             logits_processor=LogitsProcessorList([Choice()]),
                             stopping_criteria=StoppingCriteriaList([Stop()]), **kwargs)
    result = []
    for g in out[:n, start:].tolist():
        gen: list[int] = []
        why = None
        for t in g:  # generate pads finished rows; replay the stop test to find the end
            gen.append(t)
            why = stops.finish(gen)
            if why:
                break
        result.append(stops.result(gen, why or "length"))
    return result


def _backend(model: Any, options: DecodeOptions) -> str:
    if options.backend not in BACKENDS:
        raise ValueError(f"backend {options.backend!r} is not one of {', '.join(BACKENDS)}")
    if options.backend != "auto":
        return options.backend
    on_cuda = next(model.parameters()).device.type == "cuda"
    return "hf_static" if on_cuda and not getattr(model, "evomerge_repointed", False) else "loop"


def generate(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]],
             options: DecodeOptions, keys: Sequence[int] | None = None) -> list[Generation]:
    """Decode every prompt (token ids); results in the prompts' order. ``keys`` name the
    examples for seeded sampling (default: their positions)."""
    keys = list(range(len(prompts))) if keys is None else list(keys)
    stops, pad = _Stops(tokenizer, model, options), _pad_id(tokenizer)
    backend = _backend(model, options)
    out: list[Generation | None] = [None] * len(prompts)
    for idx in batches([len(p) for p in prompts], options):
        rows, ks = [prompts[i] for i in idx], [keys[i] for i in idx]
        if backend == "loop":
            gens = _loop_batch(model, rows, ks, stops, options, pad)
        else:
            gens = _hf_batch(model, rows, ks, stops, options, pad, backend == "hf_static")
        for i, g in zip(idx, gens):
            out[i] = g
    return out  # type: ignore[return-value]
