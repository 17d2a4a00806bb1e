"""Generation speed on the same prompts: evomerge's batched decoder against transformers'
``generate`` (batched, left-padded, rows ended at stop strings) and lm-eval's HF
``generate_until``, on
SmolLM2-135M-Instruct; every output is checked equal to ``generate``'s.

    python bench/generation_speed.py                      # this CPU: fp32, batch 16
    python bench/generation_speed.py --device cuda --dtype bfloat16 --batch 64 --prompts 256 \\
        --max-new 128                                     # a GPU: adds the static-cache rows
    python bench/generation_speed.py --mini               # CI: 4 prompts, a few tokens

Prompts are chat-formatted arithmetic word problems asking for a short reasoning and "The
answer is N." (GSM8K-like answers of different lengths); generation stops at a blank line,
EOS or ``--max-new`` tokens. Tokens/s counts the tokens each method keeps (up to its stop),
over the median wall time of ``--repeats`` interleaved runs after one warm-up (the warm-up
pays a compilation where there is one, reported apart). Writes
results/bench/generation_speed.json (``--out``). Needs torch and transformers; lm-eval's row
is left out, with the reason, where lm-eval is not installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

STOP = ("\n\n",)
NAMES = ["Tom", "Ana", "Li", "Sam", "Maria", "Kofi", "Yuki", "Omar"]
THINGS = ["apples", "books", "coins", "stamps", "marbles", "cards"]


def decode_module():
    """evomerge.evaluators.decode; loaded from its file where evomerge's own dependencies
    (pydantic, ...) are missing, since it needs only torch and transformers."""
    try:
        from evomerge.evaluators import decode
        return decode
    except ImportError:
        path = ROOT / "evomerge" / "evaluators" / "decode.py"
        spec = importlib.util.spec_from_file_location("evomerge_decode", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["evomerge_decode"] = mod
        spec.loader.exec_module(mod)
        return mod


def questions(n: int) -> list[str]:
    """Arithmetic word problems of varied wording and length (all distinct)."""
    out = []
    for i in range(n):
        name, thing = NAMES[i % len(NAMES)], THINGS[i // len(NAMES) % len(THINGS)]
        a, b, c = 3 + 7 * i % 40, 2 + 11 * i % 30, 1 + i % 5
        extra = (f" Then {name} gives away {c} of them." if i % 3 == 0 else
                 f" {name}'s friend doubles what {name} has." if i % 3 == 1 else "")
        out.append(f"{name} has {a} {thing} and buys {b} more.{extra} How many {thing} does "
                   f"{name} have now? Explain briefly, then end with 'The answer is N.'")
    return out


def load(base: str, device: str, dtype: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype)).to(device)
    return model.eval(), AutoTokenizer.from_pretrained(base)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def cut(tok: Any, ids: list[int], eos: set[int]) -> tuple[list[int], str]:
    """Tokens up to EOS (or a stop string) and the text cut at the first stop string."""
    out = []
    for t in ids:
        if t in eos:
            break
        out.append(t)
        if any(s in tok.decode(out[-4:], skip_special_tokens=True) for s in STOP):
            break
    text = tok.decode(out, skip_special_tokens=True)
    for s in STOP:
        text = text.split(s, 1)[0]
    return out, text


def tail_stop(tok: Any, start: int) -> Any:
    """A stopping criterion that ends each row once its generated tail holds a stop string,
    as lm-eval's HF model stops (``generate``'s own ``stop_strings`` ended rows at a lone
    newline for the stop "\\n\\n" here, with transformers 5.17 and 5.25)."""
    import torch
    from transformers import StoppingCriteria

    window = max(len(s) for s in STOP) + 2

    class TailStop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            tails = tok.batch_decode(input_ids[:, max(start, input_ids.shape[1] - window):],
                                     skip_special_tokens=True)
            return torch.tensor([any(s in t for s in STOP) for t in tails],
                                device=input_ids.device)

    return TailStop()


def hf_generate(model: Any, tok: Any, prompts: list[list[int]], batch: int, max_new: int,
                static: bool = False) -> list[str]:
    """transformers' ``generate``, batches of ``batch`` prompts sorted by length, each row
    ended at a stop string (:func:`tail_stop`)."""
    import torch
    from transformers import StoppingCriteriaList

    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = {tok.eos_token_id, *_as_list(model.generation_config.eos_token_id)} - {None}
    texts: list[str] = [""] * len(prompts)
    extra = {"cache_implementation": "static"} if static else {}
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(idx):
            ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]):] = 1
        with torch.no_grad():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new, do_sample=False, pad_token_id=pad,
                                 stopping_criteria=StoppingCriteriaList([tail_stop(tok, width)]),
                                 **extra)
        for r, i in enumerate(idx):
            texts[i] = cut(tok, out[r, width:].tolist(), eos)[1]
    return texts


def _as_list(x: Any) -> list:
    return x if isinstance(x, list) else [x]


def lm_eval_generate(model: Any, tok: Any, contexts: list[str], batch: int,
                     max_new: int) -> list[str]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    device = str(next(model.parameters()).device)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch, device=device)
    kw = {"until": list(STOP), "max_gen_toks": max_new, "do_sample": False}
    reqs = [Instance(request_type="generate_until", doc={}, arguments=(c, dict(kw)), idx=i)
            for i, c in enumerate(contexts)]
    return lm.generate_until(reqs, disable_tqdm=True)


def timed(fn, device: str, repeats: int) -> tuple[Any, float, float]:
    """(result, warm-up seconds, median seconds of ``repeats`` runs)."""
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t
    times, out = [], None
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return out, first, statistics.median(times)


def measure(base: str, device: str, dtype: str, n: int, batch: int, max_new: int,
            repeats: int, label: str = "SmolLM2-135M-Instruct") -> dict[str, Any]:
    """Every method on the same prompts; tokens/s and equality with ``generate``."""
    dec = decode_module()
    model, tok = load(base, device, dtype)
    contexts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                        add_generation_prompt=True) for q in questions(n)]
    prompts = [tok.encode(c) for c in contexts]
    methods: dict[str, Any] = {
        "generate": lambda: hf_generate(model, tok, prompts, batch, max_new),
        "evomerge_loop": lambda: [g.text for g in dec.generate(
            model, tok, prompts, dec.DecodeOptions(max_new, STOP, batch_size=batch,
                                                   backend="loop"))],
    }
    if device.startswith("cuda"):
        methods["evomerge_static"] = lambda: [g.text for g in dec.generate(
            model, tok, prompts, dec.DecodeOptions(max_new, STOP, batch_size=batch,
                                                   backend="hf_static"))]
        methods["generate_static"] = lambda: hf_generate(model, tok, prompts, batch, max_new,
                                                         static=True)
    skipped = {}
    try:
        import lm_eval  # noqa: F401
        methods["lm_eval_generate_until"] = lambda: lm_eval_generate(model, tok, contexts, batch,
                                                                     max_new)
    except ImportError as exc:
        skipped["lm_eval_generate_until"] = f"lm-eval not installed ({exc})"
    ref = dec.generate(model, tok, prompts, dec.DecodeOptions(max_new, STOP, batch_size=batch,
                                                              backend="loop"))
    kept = sum(len(g.tokens) for g in ref)  # the tokens every method keeps, when equal
    rows, want = {}, None
    for name, fn in methods.items():  # generate first: its outputs are the reference
        texts, first, sec = timed(fn, device, repeats)
        want = texts if want is None else want
        rows[name] = {"seconds": round(sec, 3), "first_call_s": round(first, 3),
                      "tokens_per_s": round(kept / sec, 1),
                      "equal_outputs": sum(a == b for a, b in zip(texts, want)),
                      "outputs": len(texts)}
        print(name, rows[name], flush=True)
    gen = rows["generate"]["tokens_per_s"]
    speedup = {k: round(v["tokens_per_s"] / gen, 2) for k, v in rows.items()}
    return {"model": label, "device": device, "dtype": dtype, "prompts": n,
            "batch": batch, "max_new_tokens": max_new, "stop": list(STOP), "repeats": repeats,
            "tokens_kept": kept, "truncated": sum(g.finish == "length" for g in ref),
            "methods": rows, "speedup_vs_generate": speedup, "skipped": skipped}


def default_base() -> str:
    from pretrained import build_smollm2, cache_dir

    return str(build_smollm2(cache_dir() / "fixtures" / "smollm2"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="a SmolLM2-135M-Instruct directory (default: built here)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-new", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--mini", action="store_true", help="CI: 4 prompts, 6 tokens, 1 repeat")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "generation_speed.json"))
    args = ap.parse_args(argv)
    if args.mini:
        args.prompts, args.batch, args.max_new, args.repeats = 4, 2, 6, 1
    import torch

    res = measure(args.base or default_base(), args.device, args.dtype, args.prompts,
                  args.batch, args.max_new, args.repeats)
    res["machine"] = (torch.cuda.get_device_name() if args.device.startswith("cuda") else
                      f"{platform.machine()}, {torch.get_num_threads()} threads")
    res["torch"] = torch.__version__
    import transformers
    res["transformers"] = transformers.__version__
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
