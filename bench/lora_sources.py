"""LoRA adapters as sources: resident memory and the cost of one candidate, on
SmolLM2-135M-Instruct (bf16) with synthetic PEFT adapters (seeded random A and B, fp32 as PEFT
saves them; the layout of each comes from an adapter PEFT itself wrote). ::

    python bench/lora_sources.py          # ~10 min on 2 cores; results/bench/lora_sources.json
    python bench/lora_sources.py --mini   # the CI miniature: a tiny Llama, seconds

Each measurement runs in a fresh process (peak resident memory, VmHWM, above the process's
baseline after its imports -- the model's code included -- as x the base model's bytes):

* ``memory``: 32 rank-16 adapters on q_proj/v_proj (PEFT's default targets for Llama) as
  ``base+adapter`` sources, one linear candidate (uniform weights) materialized; and the same
  with adapters on every linear layer (q, k, v, o, gate, up, down) for comparison.
* ``cost``: a linear candidate over 8 rank-8 adapters, in memory from the factors, against the
  same candidate over the 8 adapters merged into full checkpoints (``evomerge merge`` of each
  ``base+adapter``), in the same run: first candidate, and the median of the next ones
  (other weights), in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

OUT = ROOT / "results" / "bench"
QV = ("q_proj", "v_proj")
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FULL = {"memory": [(32, 16, QV), (32, 16, ALL_LINEAR)], "cost": (8, 8, QV), "candidates": 5}
MINI = {"memory": [(6, 4, QV)], "cost": (3, 2, QV), "candidates": 2}


def synthetic_adapters(base: str, root: Path, n: int, rank: int, targets: tuple[str, ...],
                       seed: int = 0) -> list[str]:
    """``n`` PEFT LoRA adapters of ``base`` (rank ``rank`` on ``targets``, alpha 2 rank) under
    ``root``: one written by PEFT, the others with its config and tensor layout and seeded
    random factors (fp32, like PEFT's). Kept if already there."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = [root / f"a{i:02d}" for i in range(n)]
    if all((p / "adapter_model.safetensors").is_file() for p in out):
        return [str(p) for p in out]
    template = root / "template"
    if not (template / "adapter_model.safetensors").is_file():
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(
            targets), lora_dropout=0.0)).save_pretrained(template)
    with safe_open(template / "adapter_model.safetensors", "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    config = (template / "adapter_config.json").read_text()
    for i, path in enumerate(out):
        gen = torch.Generator().manual_seed(seed * 1000 + i)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: (torch.randn(s, generator=gen) * 0.02).contiguous()
                   for k, s in sorted(shapes.items())}
        save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
        (path / "adapter_config.json").write_text(config)
    return [str(p) for p in out]


def merged_checkpoints(base: str, adapters: list[str], root: Path) -> list[str]:
    """Each adapter merged into a full checkpoint of the base (bf16, as the base is stored)."""
    from evomerge.engine.merge import merge_to_disk
    from evomerge.engine.recipe import load_recipe
    from evomerge.engine.sources import ModelSource

    stored = str(ModelSource(base).stored_dtype).removeprefix("torch.")
    out = []
    for a in adapters:
        dest = root / f"merged_{Path(a).name}"
        if not (dest / "config.json").is_file():
            merge_to_disk(load_recipe({
                "merge_method": "task_arithmetic", "base_model": base, "dtype": "float32",
                "out_dtype": stored,
                "models": [{"model": f"{base}+{a}", "parameters": {"weight": 1.0}}]}), dest)
        out.append(str(dest))
    return out


def _linear(models: list[str], weights: list[float], stored: str) -> Any:
    from evomerge.engine.recipe import load_recipe

    return load_recipe({"merge_method": "linear", "dtype": "float32", "out_dtype": stored,
                        "models": [{"model": m, "parameters": {"weight": w}}
                                   for m, w in zip(models, weights)]})


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(models: list[str], base: str | None, candidates: int) -> dict[str, Any]:
    """In this process: load ``models`` (base + adapters, or full checkpoints), materialize a
    uniform linear candidate and ``candidates`` more with other weights."""
    import torch

    from evomerge.engine.materialize import Materializer
    from evomerge.engine.sources import ModelSource

    template = ModelSource(base or models[0])
    base_bytes, stored = template.nbytes, str(template.stored_dtype).removeprefix("torch.")
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):  # the model's code imported before the baseline (no weights)
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(template.path))
    baseline = _rss_kb("VmRSS") * 1024
    t0 = time.perf_counter()
    mat = Materializer(models, base_model=base)
    load_s = time.perf_counter() - t0
    m = len(models)
    t0 = time.perf_counter()
    mat.materialize(_linear(models, [1.0 / m] * m, stored))
    first_s = time.perf_counter() - t0
    steady = []
    for k in range(candidates):
        weights = [0.5 + ((i * 7 + k * 3) % 5) / 10 for i in range(m)]
        t0 = time.perf_counter()
        mat.materialize(_linear(models, weights, stored))
        steady.append(time.perf_counter() - t0)
    peak = _rss_kb("VmHWM") * 1024 - baseline
    held = mat.resident_bytes()
    return {"base_mb": round(base_bytes / 2**20, 1), "load_s": round(load_s, 3),
            "first_s": round(first_s, 4), "steady_s": round(statistics.median(steady), 4),
            "peak_x_base": round(peak / base_bytes, 3),
            "held_x_base": round((held["sources"] + held["model"]) / base_bytes, 3),
            "sources_x_base": round(held["sources"] / base_bytes, 3),
            "model_x_base": round(held["model"] / base_bytes, 3)}


def _spawn(models: list[str], base: str | None, candidates: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", json.dumps(
        {"models": models, "base": base, "candidates": candidates})]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ,
                                                                     "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _base(args: argparse.Namespace) -> str:
    if args.base:
        return args.base
    if args.mini:
        sys.path.insert(0, str(ROOT / "tests"))
        from models import make_model, tiny_config  # noqa: F401

        path = Path(args.build) / "tiny_base"
        return str(path if (path / "config.json").is_file() else make_model(path, 0))
    from pretrained import build_smollm2, cache_dir

    return str(build_smollm2(cache_dir() / "fixtures" / "smollm2"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = MINI if args.mini else FULL
    build = Path(args.build)
    base = _base(args)
    rows = []
    for n, rank, targets in cfg["memory"]:
        tag = "qv" if targets == QV else "all_linear"
        adapters = synthetic_adapters(base, build / f"r{rank}_{tag}", n, rank, targets)
        refs = [f"{base}+{a}" for a in adapters]
        rows.append({"adapters": n, "rank": rank, "targets": list(targets),
                     **_spawn(refs, base, 1)})
        print(f"memory {n} x rank {rank} {tag}: {rows[-1]}", file=sys.stderr)
    n, rank, targets = cfg["cost"]
    adapters = synthetic_adapters(base, build / f"r{rank}_qv", n, rank, targets)
    full = merged_checkpoints(base, adapters, build / f"r{rank}_qv")
    lowrank = _spawn([f"{base}+{a}" for a in adapters], base, cfg["candidates"])
    dense = _spawn(full, None, cfg["candidates"])
    cost = {"adapters": n, "rank": rank, "targets": list(targets), "lowrank": lowrank,
            "full_checkpoints": dense,
            "steady_speedup": round(dense["steady_s"] / lowrank["steady_s"], 1),
            "first_speedup": round(dense["first_s"] / lowrank["first_s"], 1)}
    print(f"cost: {cost}", file=sys.stderr)
    memory = rows[0]
    return {"model": "tiny" if args.mini else "SmolLM2-135M-Instruct (bf16)", "memory": rows,
            "cost": cost,
            "goals": {"memory_x_base<=2.3": memory["peak_x_base"] <= 2.3,
                      "linear_speedup>=10": cost["steady_speedup"] >= 10},
            "cpus": os.cpu_count(), "load_average": [round(x, 1) for x in os.getloadavg()]}


def markdown(doc: dict[str, Any]) -> str:
    lines = ["| adapters | rank | targets | peak RSS x base | held x base (sources + model) |",
             "|---:|---:|---|---:|---:|"]
    for r in doc["memory"]:
        lines.append(f"| {r['adapters']} | {r['rank']} | {', '.join(r['targets'])} | "
                     f"{r['peak_x_base']} | {r['held_x_base']} ({r['sources_x_base']} + "
                     f"{r['model_x_base']}) |")
    c = doc["cost"]
    lines += ["", "| linear candidate over 8 rank-8 adapters | first (s) | next (s, median) | "
              "peak RSS x base |", "|---|---:|---:|---:|"]
    for label, r in (("from the factors", c["lowrank"]),
                     ("over the 8 adapters merged into full checkpoints", c["full_checkpoints"])):
        lines.append(f"| {label} | {r['first_s']} | {r['steady_s']} | {r['peak_x_base']} |")
    lines.append(f"\nSpeed-up: {c['steady_speedup']}x per candidate ({c['first_speedup']}x "
                 "on the first).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mini", action="store_true", help="the CI miniature (a tiny Llama)")
    ap.add_argument("--base", default=None, help="base model directory (default SmolLM2)")
    ap.add_argument("--build", default=str(ROOT / "build" / "lora_sources"))
    ap.add_argument("--out", default=None, help="JSON path (default results/bench/...)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(child(spec["models"], spec["base"], spec["candidates"])))
        return {}
    doc = run(args)
    out = Path(args.out) if args.out else OUT / f"lora_sources{'_mini' if args.mini else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    out.with_suffix(".md").write_text(markdown(doc) + "\n")
    print(markdown(doc))
    return doc


if __name__ == "__main__":
    main()
