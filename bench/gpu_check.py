"""GPU check, one short run on a CUDA machine (a few minutes; writes results/bench/gpu_check.json).

1. The materializer in bf16 on the GPU with a base and 3 experts of a random ~0.5B Llama:
   peak ``torch.cuda.max_memory_allocated`` as x model bytes, with and without offload, and
   first / steady-state TIES candidates as x a plain copy (bench/memory_scaling.py's measure).
2. The fused kernel compiled for CUDA (Triton) stays compiled.
3. Search = export on the GPU: the weights the materializer holds equal, bit for bit, what
   ``evomerge merge --device cuda`` writes; and how far ``--device cpu`` is from them.
4. Two workers sharing the GPU (what ``--num-gpus 0.5`` gives two Ray actors): two processes,
   each with its own resident materializer, merging and scoring candidates at once.

    python bench/gpu_check.py [--out results/bench/gpu_check.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import memory_scaling as ms  # noqa: E402


def _diff(a: dict, b: dict) -> dict:
    differing = sum(int((a[k] != b[k]).sum()) for k in b)
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in b)
    return {"differing_entries": differing, "entries": sum(v.numel() for v in b.values()),
            "max_abs_diff": worst}


DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")  # "cpu" for a dry run of the script


def search_equals_export(family: dict, tmp: Path) -> dict:
    import torch

    from evomerge.engine.materialize import Materializer
    from evomerge.engine.merge import merge_to_disk
    from evomerge.engine.sources import ModelSource

    experts = [family[f"e{i}"] for i in (1, 2, 3)]
    mat = Materializer(experts, base_model=family["base"], device=DEVICE)
    out = {"kernel_compiled_for_cuda": None}
    for name, recipe in (("ties", ms.ties_recipe(family["base"], experts, "bfloat16")),):
        state = {k: v.detach().cpu().clone() for k, v in mat.materialize(recipe).state_dict().items()}
        out["kernel_compiled_for_cuda"] = mat.kernels_compiled
        for device in dict.fromkeys((DEVICE, "cpu")):
            t0 = time.perf_counter()
            merge_to_disk(recipe, tmp / f"{name}_{device}", device=device)
            src = ModelSource(str(tmp / f"{name}_{device}"))
            disk = {k: src.get(k) for k in src.names}
            out[f"{name}_vs_merge_{device}"] = {**_diff(state, disk),
                                                "merge_s": round(time.perf_counter() - t0, 1)}
    del mat
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return out


def worker(family: dict, candidates: int) -> dict:
    """One process = one worker: resident materializer + a forward pass per candidate."""
    import torch

    from evomerge.engine.materialize import Materializer

    experts = [family[f"e{i}"] for i in (1, 2, 3)]
    mat = Materializer(experts, base_model=family["base"], device=DEVICE)
    ids = torch.randint(0, 1000, (8, 256), device=DEVICE, generator=torch.Generator(
        device=DEVICE).manual_seed(0))
    times = []
    for i in range(candidates + 1):
        ms.sync(mat.device)
        t0 = time.perf_counter()
        model = mat.materialize(ms.ties_recipe(family["base"], experts, "bfloat16", 0.01 * i))
        with torch.no_grad():
            loss = model(ids, labels=ids).loss.item()
        ms.sync(mat.device)
        times.append(time.perf_counter() - t0)
    return {"steady_candidate_s": round(min(times[1:]), 3), "loss": round(loss, 4),
            "peak_gb": round(ms.peak_bytes(mat.device) / 2**30, 2)}


def shared_gpu(family: dict, candidates: int = 6) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    cmd = [sys.executable, __file__, "--worker", json.dumps(family), str(candidates)]
    t0 = time.perf_counter()
    one = json.loads(subprocess.run(cmd, capture_output=True, text=True, env=env,
                                    check=True).stdout.strip().splitlines()[-1])
    single_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    two = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return {"one_worker": one, "two_workers": two, "one_worker_wall_s": round(single_s, 1),
            "two_workers_wall_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "results" / "bench" / "gpu_check.json"))
    p.add_argument("--size", default="0.5b", choices=sorted(ms.SIZES))
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker[0]), int(args.worker[1]))))
        return
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    t0 = time.perf_counter()
    family = ms.build_family(tmp, args.size, "bfloat16")
    report = {"gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else "none (dry run)",
              "torch": torch.__version__,
              "build_s": round(time.perf_counter() - t0, 1), "size": args.size}
    for offload in (False, True):
        report[f"materializer_offload_{offload}".lower()] = ms.measure(
            family, 3, "bfloat16", DEVICE, offload)
        print(json.dumps(report), flush=True)
    report["search_equals_export"] = search_equals_export(family, tmp)
    print(json.dumps(report), flush=True)
    report["shared_gpu"] = shared_gpu(family)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
