"""Memory and time of the resident materializer as the number of experts grows.

For M = 1, 2, 3 experts of a random Llama (~0.5B parameters by default) in fp32 and bf16, and
of the real SmolLM2-135M-Instruct (bf16, experts derived by seeded rank-8 deltas), each in a
fresh process: peak resident memory above the process's baseline as x model bytes, the bytes
the materializer holds (sources and output model), and the first and steady-state TIES
candidates as x a plain copy of the model's weights; with and without offload. ::

    python bench/memory_scaling.py                 # ~25 min on 2 CPU cores
    python bench/memory_scaling.py --size small    # ~0.1B model, a few minutes

Writes results/bench/memory_scaling.json. The baseline is taken after the imports and after
one tiny compiled merge, so the compiler's fixed footprint (~0.3 GB, whatever the model size)
is reported apart (``compiler_mb``) rather than as model copies.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {  # hidden, intermediate, layers, vocab: ~0.5B and ~0.1B parameters
    "0.5b": (1024, 4096, 24, 32000),
    "small": (512, 2048, 16, 16000),
}


def build_family(root: Path, size: str, dtype: str, m: int = 3) -> dict[str, str]:
    """A seeded random Llama base and ``m`` experts (rank-8 deltas in every decoder layer)."""
    import torch
    from pretrained import derive_expert
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, layers, vocab = SIZES[size]
    base = root / f"{size}_{dtype}" / "base"
    if not (base / "model.safetensors").is_file():
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                             num_hidden_layers=layers, num_attention_heads=hidden // 64,
                             num_key_value_heads=max(1, hidden // 256),
                             max_position_embeddings=512, tie_word_embeddings=False)
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
        model.save_pretrained(base, max_shard_size="100GB")
    out = {"base": str(base)}
    for i in range(1, m + 1):
        out[f"e{i}"] = str(derive_expert(base, base.parent / f"e{i}", seed=i))
    return out


def ties_recipe(base: str, experts: list[str], dtype: str, shift: float = 0.0):
    from evomerge.engine.recipe import load_recipe

    models = "\n".join(f"  - {{model: {e}, parameters: {{weight: {0.3 + 0.1 * i}, "
                       f"density: {0.3 + 0.15 * i + shift:.3f}}}}}"
                       for i, e in enumerate(experts))
    extra = f"dtype: float32\nout_dtype: {dtype}\n" if dtype != "float32" else ""
    return load_recipe(f"merge_method: ties\nbase_model: {base}\n{extra}models:\n{models}\n")


def peak_bytes(device) -> int:
    """Peak device allocation (CUDA) or peak resident set (VmHWM: per address space, so not
    inherited from the parent the way ru_maxrss is)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak() -> int:
    """Reset the CPU peak to the current resident set (Linux ``clear_refs`` 5); returns it."""
    import torch

    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return peak_bytes(torch.device("cpu"))


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _warm_compiler(device, m: int, dtype: str) -> None:
    """Tiny TIES merges with the run's expert count and dtype, so that the baseline holds the
    compiler and its kernels (a fixed cost whatever the model size, reported apart)."""
    from types import MappingProxyType

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from evomerge.engine.fused import TensorEngine
    from evomerge.engine.plan import TensorTask
    from evomerge.methods import get_method

    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=1, num_attention_heads=2))  # model code
    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(0)
    engine = TensorEngine(compile=True)
    for n in (1 << 17, 3 << 16):  # the two-phase path, then a second size (dynamic shapes)
        src = {f"e{i}": torch.randn(n, generator=g).to(device, dt) for i in range(m + 1)}
        refs = tuple((f"e{i}", "t") for i in range(1, m + 1))
        task = TensorTask("t", refs, ("e0", "t"), MappingProxyType({"normalize": True}),
                          MappingProxyType({"weight": (0.5,) * m, "density": (0.5,) * m}),
                          None, (n,))
        engine.run(task, get_method("ties"), lambda mod, k, src=src: src[mod], torch.float32,
                   torch.empty(n, device=device, dtype=dt))


def measure(family: dict[str, str], m: int, dtype: str, device: str = "cpu",
            offload: bool = False, steady: int = 3) -> dict:
    """Load a materializer over base + ``m`` experts and time TIES candidates, in-process."""
    import torch

    from evomerge.engine.materialize import Materializer, resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    _warm_compiler(dev, m, dtype)
    compiler_s = time.perf_counter() - t0
    sync(dev)
    base_bytes = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else _reset_peak()
    experts = [family[f"e{i}"] for i in range(1, m + 1)]
    t0 = time.perf_counter()
    mat = Materializer(experts, base_model=family["base"], device=device, offload=offload)
    mat.model  # noqa: B018 -- the output model is allocated on first use; count it in loading
    load_s = time.perf_counter() - t0
    model_bytes = mat.resident_bytes()["model"]
    store = mat.source_tensors(family["base"])
    out = mat.output_tensors()
    pairs = [(out[n], store[n]) for n in mat.sources[family["base"]].names]
    times = []
    for i in range(1 + steady):
        recipe = ties_recipe(family["base"], experts, dtype, shift=0.01 * i)
        sync(dev)
        t0 = time.perf_counter()
        mat.materialize(recipe)
        sync(dev)
        times.append(time.perf_counter() - t0)
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(3):
        for p, s in pairs:
            p.data.copy_(s, non_blocking=True)
    sync(dev)
    copy_s = (time.perf_counter() - t0) / 3
    peak = peak_bytes(dev) - base_bytes
    resident = mat.resident_bytes()
    on_device = resident["model"] + (0 if offload else resident["sources"])
    return {
        "experts": m, "dtype": dtype, "device": dev.type, "offload": offload,
        "model_mb": round(model_bytes / 2**20, 1),
        "peak_x_model": round(peak / model_bytes, 3),
        "device_resident_x_model": round(on_device / model_bytes, 3),
        "sources_x_model": round(resident["sources"] / model_bytes, 3),
        "target_x_model": round(1.3 if offload else m + 2.3, 2),
        "load_s": round(load_s, 2), "compiler_warmup_s": round(compiler_s, 2),
        "copy_s": round(copy_s, 4),
        "first_s": round(times[0], 3), "steady_s": round(min(times[1:]), 3),
        "first_x_steady": round(times[0] / min(times[1:]), 2),
        "steady_x_copy": round(min(times[1:]) / copy_s, 1),
    }


def _one(args: argparse.Namespace) -> None:
    family = json.loads(args.family)
    print(json.dumps(measure(family, args.m, args.dtype, args.device, args.offload)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="0.5b", choices=sorted(SIZES))
    p.add_argument("--build", default=str(ROOT / "build" / "memory_scaling"))
    p.add_argument("--out", default=str(ROOT / "results" / "bench" / "memory_scaling.json"))
    p.add_argument("--no-smollm", action="store_true", help="skip the SmolLM2 rows")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--family", help=argparse.SUPPRESS)
    p.add_argument("--m", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--offload", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return _one(args)
    from pretrained import build_smollm2, derive_expert

    root = Path(args.build)
    families = [(f"random-{args.size}", d, build_family(root, args.size, d)) for d in
                ("float32", "bfloat16")]
    if not args.no_smollm:
        base = build_smollm2(root / "smollm2" / "base")
        fam = {"base": str(base)} | {f"e{i}": str(derive_expert(base, base.parent / f"e{i}", i))
                                     for i in (1, 2, 3)}
        families.append(("SmolLM2-135M", "bfloat16", fam))
    rows = []
    for name, dtype, fam in families:
        for m in (1, 2, 3):
            for offload in (False, True):
                cmd = [sys.executable, __file__, "--one", "--family", json.dumps(fam), "--m",
                       str(m), "--dtype", dtype] + (["--offload"] if offload else [])
                env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                row = {"model": name, **json.loads(proc.stdout.strip().splitlines()[-1])}
                print(json.dumps(row), flush=True)
                rows.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "size": args.size,
                                          "machine": f"{os.cpu_count()} CPU cores"}, indent=1))


if __name__ == "__main__":
    main()
