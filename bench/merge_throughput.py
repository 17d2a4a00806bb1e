"""Merge throughput on ~0.5B-parameter random Llama checkpoints (base + 2 experts, fp32).

    python bench/merge_throughput.py            # ~0.47B params, writes results/bench/merge_throughput.json
    python bench/merge_throughput.py --small    # a quick ~30M-param run

Times, in one run: a plain copy of the output bytes between preallocated tensors (the
memory-bandwidth floor), the in-memory materializer for linear, task_arithmetic and TIES
(warm: median of 3 after a first call that builds task-vector caches and compiles), the
streaming ``evomerge merge`` to disk, and mergekit's in-process ``run_merge`` on the same recipe.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evomerge.engine.materialize import Materializer  # noqa: E402
from evomerge.engine.merge import merge_to_disk  # noqa: E402
from evomerge.engine.recipe import load_recipe  # noqa: E402
from evomerge.engine.writer import ShardedWriter, TensorMeta  # noqa: E402

SIZES = {  # hidden, intermediate, layers, vocab
    "0.5B": (1024, 4096, 24, 32000),
    "small": (512, 1024, 8, 8000),
}


def llama_shapes(h: int, inter: int, layers: int, vocab: int) -> dict[str, tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (vocab, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for proj in ("q", "k", "v", "o"):
            shapes[f"{p}self_attn.{proj}_proj.weight"] = (h, h)
        shapes[f"{p}mlp.gate_proj.weight"] = (inter, h)
        shapes[f"{p}mlp.up_proj.weight"] = (inter, h)
        shapes[f"{p}mlp.down_proj.weight"] = (h, inter)
        shapes[f"{p}input_layernorm.weight"] = (h,)
        shapes[f"{p}post_attention_layernorm.weight"] = (h,)
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (vocab, h)
    return shapes


def build_models(root: Path, size: str) -> list[str]:
    """Write base, expert_a, expert_b (expert = base + 0.01 N(0,1)), 1 GB shards, if absent."""
    from transformers import LlamaConfig

    h, inter, layers, vocab = SIZES[size]
    shapes = llama_shapes(h, inter, layers, vocab)
    config = LlamaConfig(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
                         vocab_size=vocab, num_attention_heads=h // 64,
                         num_key_value_heads=h // 64, tie_word_embeddings=False)
    config.architectures = ["LlamaForCausalLM"]
    paths = []
    for seed, name in enumerate(("base", "expert_a", "expert_b")):
        path = root / size / name
        paths.append(str(path))
        if (path / "config.json").is_file():
            continue
        path.mkdir(parents=True, exist_ok=True)
        metas = [TensorMeta(n, s, torch.float32) for n, s in shapes.items()]
        with ShardedWriter(path, metas, max_shard_bytes=1024**3) as w:
            for n, s in shapes.items():
                base = torch.randn(s, generator=torch.Generator().manual_seed(hash(n) % 2**31))
                if seed:
                    base += 0.01 * torch.randn(s, generator=torch.Generator().manual_seed(seed))
                w.write(n, base * 0.02)
            w.finish()
        config.save_pretrained(path)
    return paths


def timed(fn, repeat: int = 3) -> float:
    fn()  # warm-up: caches, compilation, page cache
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def recipe_text(method: str, base: str, a: str, b: str) -> str:
    params = "weight: 0.5" + (", density: 0.3" if method == "ties" else "")
    base_line = "" if method == "linear" else f"base_model: {base}\n"
    return (f"merge_method: {method}\n{base_line}models:\n"
            f"  - {{model: {a}, parameters: {{{params}}}}}\n"
            f"  - {{model: {b}, parameters: {{{params}}}}}\ndtype: float32\n")


def copy_floor(tensors: list[torch.Tensor]) -> float:
    """Seconds to copy ``tensors`` into preallocated tensors of the same shapes."""
    dst = [torch.empty_like(t) for t in tensors]
    return timed(lambda: [d.copy_(s) for d, s in zip(dst, tensors)])


def in_memory(sec: dict, base: str, a: str, b: str) -> int:
    """Time the materializer per method (first call and warm); returns the parameter count."""
    mat = Materializer([a, b], base_model=base)
    sec["copy"] = copy_floor(list(mat.source_tensors(base).values()))
    for method in ("linear", "task_arithmetic", "ties"):
        recipe = load_recipe(recipe_text(method, base, a, b))
        t = time.perf_counter()
        mat.materialize(recipe)
        sec[f"in_memory_{method}_first"] = time.perf_counter() - t
        sec[f"in_memory_{method}"] = timed(lambda r=recipe: mat.materialize(r))
        print(method, sec[f"in_memory_{method}"], flush=True)
    return sum(p.numel() for p in mat.model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--work", default=str(ROOT / "build" / "bench"))
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "merge_throughput.json"))
    args = ap.parse_args()
    size = "small" if args.small else "0.5B"
    work = Path(args.work)
    base, a, b = build_models(work, size)
    res: dict = {"size": size, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
                 "torch": torch.__version__, "seconds": {}}
    sec = res["seconds"]

    res["params"] = in_memory(sec, base, a, b)
    gc.collect()

    ties = load_recipe(recipe_text("ties", base, a, b))
    out = work / "out_evomerge"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    merge_to_disk(ties, out)
    sec["streaming_merge_ties"] = time.perf_counter() - t
    shutil.rmtree(out)
    print("streaming", sec["streaming_merge_ties"], flush=True)

    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    out = work / "out_mergekit"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    run_merge(MergeConfiguration.model_validate(yaml.safe_load(ties.to_yaml())), str(out),
              MergeOptions(copy_tokenizer=False, quiet=True))
    sec["mergekit_run_merge_ties"] = time.perf_counter() - t
    shutil.rmtree(out)

    copy = sec["copy"]
    res["ratios"] = {
        "in_memory_ties_over_copy": sec["in_memory_ties"] / copy,
        "in_memory_task_arithmetic_over_copy": sec["in_memory_task_arithmetic"] / copy,
        "in_memory_linear_over_copy": sec["in_memory_linear"] / copy,
        "mergekit_over_in_memory_ties": sec["mergekit_run_merge_ties"] / sec["in_memory_ties"],
        "mergekit_over_streaming_ties": sec["mergekit_run_merge_ties"] / sec["streaming_merge_ties"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
