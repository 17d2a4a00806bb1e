"""What one TIES candidate costs the resident materializer, against a plain copy of the
model's bytes, and how often it waits for the device: the merge-kernel figures of issue #31.

    python bench/merge_kernels.py                         # SmolLM2-135M + 3 experts, bf16, CPU
    python bench/merge_kernels.py --family 0.5b           # a random ~0.43B Llama + 3 experts
    python bench/merge_kernels.py --device cuda           # on a GPU

Per family: the first candidate (compilation, task-vector samples) and the steady one (min of
``--steady`` candidates with shifting densities) as x a plain copy of the model's weights
between preallocated tensors; and, counted on one more candidate with a dispatch mode, the
host synchronizations (``.item()``/``tolist()``/``float(t)``, ``nonzero``, boolean-mask
indexing: each one waits for the device on a GPU) and the aten operations (a proxy for kernel
launches). Writes results/bench/merge_kernels.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2")


class OpCounter:
    """Counts aten operations, and the host reads of tensor data, each of which waits for the
    device on a GPU: ``SYNC_OPS`` (``.item()``, ``float(t)``, ``nonzero``, ...), an index with
    a boolean mask, and ``Tensor.tolist`` (which reads without dispatching), while active."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.overloadpacket.__name__
                counter.ops += 1
                if name in SYNC_OPS or (name == "index" and any(
                        getattr(t, "dtype", None) is not None and str(t.dtype) == "torch.bool"
                        for t in (args[1] if len(args) > 1 else []) if t is not None)):
                    counter.syncs += 1
                    counter.by_op[name] = counter.by_op.get(name, 0) + 1
                return func(*args, **(kwargs or {}))

        self.ops = self.syncs = 0
        self.by_op: dict[str, int] = {}
        self.mode = Mode()

    def __enter__(self) -> OpCounter:
        import torch

        self._tolist = torch.Tensor.tolist
        counter, tolist = self, self._tolist

        def counted(t, *args, **kwargs):
            counter.syncs += 1
            counter.by_op["tolist"] = counter.by_op.get("tolist", 0) + 1
            return tolist(t, *args, **kwargs)

        torch.Tensor.tolist = counted
        self.mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        self.mode.__exit__(*exc)
        torch.Tensor.tolist = self._tolist


def family(name: str, root: Path) -> dict[str, str]:
    """A base and 3 experts in bf16: SmolLM2-135M-Instruct with seeded rank-8 deltas, or a
    random Llama of bench/memory_scaling.py's sizes."""
    from pretrained import build_smollm2, derive_expert

    if name == "smollm2":
        base = build_smollm2(root / "smollm2" / "base")
        return {"base": str(base)} | {f"e{i}": str(derive_expert(base, base.parent / f"e{i}", i))
                                      for i in (1, 2, 3)}
    import memory_scaling as ms

    return ms.build_family(root, name, "bfloat16")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fam: dict[str, str], device: str = "cpu", steady: int = 3,
            grouped: bool | None = None) -> dict:
    """Time and count TIES candidates (bench/memory_scaling.py's recipe, 3 experts)."""
    import memory_scaling as ms

    from evomerge.engine.materialize import Materializer

    experts = [fam[f"e{i}"] for i in (1, 2, 3)]
    kw = {} if grouped is None else {"grouped": grouped}
    mat = Materializer(experts, base_model=fam["base"], device=device, **kw)
    dev = mat.device
    base = mat.source_tensors(fam["base"])
    pairs = [(p, base[n]) for n, p in mat.output_tensors().items() if n in base]  # tied: once
    times = []
    for i in range(1 + steady):
        recipe = ms.ties_recipe(fam["base"], experts, "bfloat16", shift=0.01 * i)
        _sync(dev)
        t0 = time.perf_counter()
        mat.materialize(recipe)
        _sync(dev)
        times.append(time.perf_counter() - t0)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(5):
        for p, s in pairs:
            p.data.copy_(s, non_blocking=True)
    _sync(dev)
    copy_s = (time.perf_counter() - t0) / 5
    with OpCounter() as count:
        mat.materialize(ms.ties_recipe(fam["base"], experts, "bfloat16", shift=0.05))
    tensors = len(pairs)
    return {"device": dev.type, "tensors": tensors,
            "model_mb": round(mat.resident_bytes()["model"] / 2**20, 1),
            "copy_s": round(copy_s, 5), "first_s": round(times[0], 3),
            "steady_s": round(min(times[1:]), 4),
            "steady_x_copy": round(min(times[1:]) / copy_s, 1),
            "first_x_steady": round(times[0] / min(times[1:]), 1),
            "host_syncs_per_candidate": count.syncs, "syncs_by_op": count.by_op,
            "aten_ops_per_candidate": count.ops,
            "aten_ops_per_tensor": round(count.ops / tensors, 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="smollm2", choices=["smollm2", "small", "0.5b"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--steady", type=int, default=3)
    p.add_argument("--build", default=str(ROOT / "build" / "merge_kernels"))
    p.add_argument("--per-tensor", action="store_true",
                   help="the per-tensor engine (one threshold and one sync at a time)")
    p.add_argument("--label", default="", help="names this row (e.g. before / after a change)")
    p.add_argument("--out", default=str(ROOT / "results" / "bench" / "merge_kernels.json"))
    args = p.parse_args(argv)
    import torch

    row = measure(family(args.family, Path(args.build)), args.device, args.steady,
                  not args.per_tensor)
    row.update(family=args.family, per_tensor=args.per_tensor, label=args.label,
               torch=torch.__version__,
               machine=(torch.cuda.get_device_name() if args.device.startswith("cuda") else
                        f"{platform.machine()}, {torch.get_num_threads()} threads"))
    print(json.dumps(row), flush=True)
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    rows = [r for r in rows if (r.get("family"), r.get("device"), r.get("per_tensor"),
                                r.get("label")) != (row["family"], row["device"],
                                                    row["per_tensor"], row.get("label"))]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows + [row]}, indent=1))
    return row


if __name__ == "__main__":
    main()
