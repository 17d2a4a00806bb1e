"""A whole search on one GPU, measured: SmolLM2-135M experts built there, searches scored by
generation and teacher forcing with one worker, one overlapped worker and two workers sharing
the GPU, the merge-kernel figures and the generation-speed comparison, in one JSON.

    python bench/gpu_search.py --base DIR          # a SmolLM2-135M-Instruct directory
    python bench/gpu_search.py --gguf FILE         # or its GGUF file (needs the gguf package)
    python bench/gpu_search.py --mini              # CI: a tiny Llama with SmolLM2's tokenizer, CPU
    python bench/gpu_search.py --pack .gpu         # here: wheels + the GGUF for a GPU machine

Stages (each prints a line and rewrites the JSON, so a run cut short keeps what it measured):

1. ``experts``: ``add`` (two-digit sums) and ``final`` (GSM8K's "#### N" answer line)
   fine-tuned from the base on the device (bench/real_skills.py, ``--steps`` AdamW steps);
2. ``search_1``: CMA-ES over per-layer-group TIES for ``--seconds``, one in-process worker.
   Objectives: exact match of greedy generations on ``both`` ("What is 47 + 85? Reply in the
   final-answer format.", the answer taken by the ``gsm8k`` extraction) and the teacher-forced
   answer NLLs of ``add`` and ``both``; ``search_overlap``: the same with the next candidate
   merged while one is scored (``--overlap``); ``search_2``: two worker processes sharing the
   GPU, each running its own study for the same time (Ray is not needed). Per search:
   candidates/hour, merge and evaluation seconds per candidate, GPU busy fraction (NVML
   utilization sampled every 0.1 s), peak device memory, generated tokens/s;
3. ``merge_kernels``: TIES candidates on SmolLM2 (and a random 0.43B Llama) with 3 experts,
   together and one tensor at a time, as x a plain copy (bench/merge_kernels.py);
4. ``generation``: the decoder against ``generate`` (and lm-eval, if installed) at batch 64
   (bench/generation_speed.py).

Needs torch, transformers, numpy, PyYAML, safetensors, pydantic, optuna, cma, cmaes, plotly
and matplotlib (the search and its front); ``--wheels DIR`` installs missing ones from a
directory of wheels (``--pack`` prepares it) into build/gpu_site. Writes
results/bench/gpu_search.json (``--out``; ``--mini``: gpu_search_mini.json).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

NEEDED = {"torch": "torch", "transformers": "transformers", "numpy": "numpy", "yaml": "PyYAML",
          "safetensors": "safetensors", "pydantic": "pydantic", "optuna": "optuna",
          "cma": "cma", "cmaes": "cmaes", "plotly": "plotly", "matplotlib": "matplotlib"}
WHEELS = ["pydantic==2.12.5", "pydantic-core==2.41.5", "annotated-types==0.7.0",
          "typing-inspection==0.4.2", "optuna==4.6.0", "sqlalchemy==2.0.45", "alembic==1.17.2",
          "mako==1.3.10", "colorlog==6.10.1", "greenlet==3.3.0", "cma==4.4.1", "cmaes==0.12.0",
          "plotly==6.5.0", "narwhals==2.14.0", "gguf==0.17.1"]
SITE = ROOT / "build" / "gpu_site"
FULL = {"steps": 60, "sizes": {"train": 2000, "validation": 64, "test": 8}, "seconds": 75,
        "overlap_seconds": 45, "trials": 10_000, "gen": (128, 64, 128)}
MINI = {"steps": 2, "sizes": {"train": 32, "validation": 4, "test": 2}, "seconds": 600,
        "overlap_seconds": 600, "trials": 2, "gen": (4, 2, 6)}


def missing(gguf: bool = False) -> list[str]:
    """Distributions this run needs that cannot be imported."""
    need = dict(NEEDED, **({"gguf": "gguf"} if gguf else {}))
    out = []
    for module, dist in need.items():
        try:
            importlib.import_module(module)
        except ImportError:
            out.append(dist)
    return out


def install_wheels(wheels: Path) -> None:
    """Unpack every wheel of ``wheels`` into build/gpu_site (a wheel is a zip archive: no pip,
    no network) and put it on the path."""
    import zipfile

    SITE.mkdir(parents=True, exist_ok=True)
    for whl in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(whl) as zf:
            zf.extractall(SITE)
    sys.path.insert(0, str(SITE))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(SITE), os.environ.get("PYTHONPATH", "")])


def pack(dest: Path, python: str = "3.12") -> None:
    """Wheels of ``WHEELS`` for CPython ``python`` on x86-64 Linux, and SmolLM2's GGUF cut in
    a 60 MB part and the rest (the device tool carries at most 64 MiB a call, the repository
    included): docs/gpu.md says how they travel."""
    from pretrained import _gguf_file, cache_dir

    wheels = dest / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    plats = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
             for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
                    *plats, "-d", str(wheels), *WHEELS], check=True)
    data = _gguf_file(cache_dir()).read_bytes()
    (dest / "smollm2.gguf.part0").write_bytes(data[:60_000_000])
    (dest / "smollm2.gguf.part1").write_bytes(data[60_000_000:])
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()) / 2**20
    print(f"{dest}: {len(list(wheels.glob('*.whl')))} wheels, 2 GGUF parts, {size:.0f} MB")


class Busy:
    """Mean GPU utilization (NVML, sampled every 0.1 s) while active; None off a GPU."""

    def __init__(self, device: str) -> None:
        self.on, self.samples, self.error = device.startswith("cuda"), [], None
        self._stop = threading.Event()

    def _run(self) -> None:
        import torch

        while not self._stop.wait(0.1):
            try:
                self.samples.append(torch.cuda.utilization())
            except Exception as exc:  # noqa: BLE001 -- no NVML: say so, measure the rest
                self.error = f"{type(exc).__name__}: {exc}"
                return

    def __enter__(self) -> Busy:
        if self.on:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    @property
    def fraction(self) -> float | None:
        return round(sum(self.samples) / len(self.samples) / 100, 3) if self.samples else None


def tiny_base(dest: Path, layers: int = 2) -> Path:
    """A random ``layers``-layer Llama (bf16, tied embeddings, as SmolLM2) with
    SmolLM2-135M-Instruct's tokenizer and chat template (the CI miniatures: every code path of
    the real run, seconds on a CPU)."""
    import torch
    from pretrained import build_smollm2, cache_dir
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (dest / "model.safetensors").is_file():
        return dest
    tok = AutoTokenizer.from_pretrained(build_smollm2(cache_dir() / "fixtures" / "smollm2"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(dest)
    tok.save_pretrained(dest)
    return dest


def experts(base: Path, root: Path, cfg: dict, device: str) -> tuple[dict, dict, dict]:
    """The add and final experts, fine-tuned on ``device``; their task files; timings."""
    from real_skills import fine_tune, write_tasks

    files = write_tasks(root / "tasks", 0, cfg["sizes"], pair="final")
    out, log = {}, {}
    for skill in ("add", "final"):
        t0 = time.perf_counter()
        doc = fine_tune(base, root / skill, files[skill]["train"], steps=cfg["steps"],
                        device=device, log=lambda *_: None)
        out[skill] = str(root / skill)
        log[skill] = {"seconds": round(time.perf_counter() - t0, 1), "steps": doc["steps"],
                      "last_loss": doc["losses"][-1]}
    return out, files, log


def space(name: str, base: Path, models: dict, files: dict, cfg: dict, seconds: float,
          device: str) -> dict:
    """TIES per 5-layer group; a generative and two teacher-forced objectives."""
    val = {t: str(files[t]["validation"]) for t in ("add", "final", "both")}
    return {
        "name": name, "base_model": str(base), "models": models, "method": "ties",
        "parameters": {"weight": [0.0, 1.0], "density": [0.1, 1.0]},
        "granularity": {"layers_per_group": 5},
        "evaluators": {
            "gen": {"type": "answers", "files": {"both": val["both"]}, "chat_template": True,
                    "generate": True, "teacher_forced": False, "extract": "gsm8k",
                    "max_new_tokens": 12, "gen_batch_size": 64},
            "tf": {"type": "answers", "files": {t: val[t] for t in ("add", "both")},
                   "chat_template": True, "batch_size": 64}},
        "objectives": [
            {"evaluator": "gen", "task": "both", "metric": "exact_match",
             "direction": "maximize"},
            {"evaluator": "tf", "task": "add", "metric": "answer_nll", "direction": "minimize"},
            {"evaluator": "tf", "task": "both", "metric": "answer_nll", "direction": "minimize"}],
        "budget": {"trials": cfg["trials"], "wall_time": seconds},
        "optimizer": {"name": "cma", "popsize": 8, "seed": 0}, "device": device}


def run_one(space_doc: dict, results: Path, overlap: bool = False) -> dict:
    """One in-process search; its per-candidate figures from the study."""
    import torch

    from evomerge.search.driver import run_search
    from evomerge.search.executors import OverlapExecutor
    from evomerge.search.space import SearchSpace

    sp = SearchSpace.model_validate(space_doc)
    dev = space_doc["device"]
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with Busy(dev) as busy:
        outcome = run_search(sp, storage=f"sqlite:///{results / sp.name}.db",
                             results_root=str(results),
                             executor_factory=OverlapExecutor if overlap else None)
    row = summarize(outcome.storage, sp.name, time.perf_counter() - t0, _gen_examples(sp))
    row["gpu_busy_fraction"], row["busy_error"] = busy.fraction, busy.error
    row["peak_device_memory_gb"] = (round(torch.cuda.max_memory_allocated() / 2**30, 2)
                                    if dev.startswith("cuda") else None)
    return row


def _gen_examples(sp) -> int:
    path = sp.evaluators["gen"].options()["files"]["both"]
    return sum(1 for line in Path(path).read_text().splitlines() if line.strip())


def summarize(storage: str, name: str, wall: float, gen_examples: int) -> dict:
    """Candidates/hour, merge and evaluation seconds per candidate, and generated tokens per
    second of evaluation (every evaluator's time counted), from the study."""
    import optuna

    from evomerge.search.records import TrialRecord

    trials = [TrialRecord(t) for t in optuna.load_study(study_name=name,
                                                        storage=storage).trials]
    done = [t for t in trials if t.state == "COMPLETE"]
    n = len(done)
    merge = sum(t.merge_seconds or 0.0 for t in done)
    ev = sum(t.eval_seconds or 0.0 for t in done)
    tokens = gen_examples * sum(t.scores.get("both/gen_tokens", 0.0) for t in done)
    best = max((t.values[0] for t in done), default=None)
    return {"candidates": n, "failed": sum(t.state == "FAIL" for t in trials),
            "wall_s": round(wall, 1), "candidates_per_hour": round(3600 * n / wall, 1),
            "merge_s_per_candidate": round(merge / max(n, 1), 4),
            "eval_s_per_candidate": round(ev / max(n, 1), 4),
            "generated_tokens_per_eval_s": round(tokens / ev, 1) if ev else None,
            "best_both_exact_match": best}


def run_two(space_doc: dict, results: Path) -> dict:
    """Two worker processes sharing the device, each with its own study, for the same wall
    time; their figures and the total."""
    docs = [dict(space_doc, name=f"{space_doc['name']}_w{i}") for i in (0, 1)]
    t0 = time.perf_counter()
    with Busy(space_doc["device"]) as busy:
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(d),
                                   str(results)], stdout=subprocess.PIPE, text=True)
                 for d in docs]
        rows = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a worker process failed: {[p.returncode for p in procs]}")
    n = sum(r["candidates"] for r in rows)
    return {"workers": rows, "wall_s": round(wall, 1), "candidates": n,
            "candidates_per_hour": round(3600 * n / wall, 1),
            "gpu_busy_fraction": busy.fraction, "busy_error": busy.error}


class Report:
    """The JSON, rewritten after every stage."""

    def __init__(self, path: Path, head: dict) -> None:
        self.path, self.doc = path, dict(head, stages={})

    def stage(self, name: str, fn, *args) -> Any:
        t0 = time.perf_counter()
        print(f"[gpu_search] {name} ...", flush=True)
        try:
            value = fn(*args)
        except Exception as exc:  # noqa: BLE001 -- record it, keep the other stages' figures
            value = {"error": f"{type(exc).__name__}: {exc}"}
        self.doc["stages"][name] = {"seconds": round(time.perf_counter() - t0, 1),
                                    "result": value}
        print(f"[gpu_search] {name}: {json.dumps(value)[:400]}", flush=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.doc, indent=1, default=str))
        return value


def merge_figures(base: Path, work: Path, device: str, mini: bool) -> dict:
    """TIES candidates with 3 experts, together and one tensor at a time."""
    import merge_kernels as mk
    from pretrained import derive_expert

    fams = {"smollm2": {"base": str(base)} | {
        f"e{i}": str(derive_expert(base, work / f"e{i}", i)) for i in (1, 2, 3)}}
    if not mini:
        import memory_scaling as ms

        fams["random_0.43b"] = ms.build_family(work, "0.5b", "bfloat16")
    return {f"{name}_{'grouped' if g else 'per_tensor'}": mk.measure(fam, device,
                                                                     1 if mini else 3, g)
            for name, fam in fams.items() for g in (True, False)}


def generation_figures(base: Path, device: str, dtype: str, gen: tuple, mini: bool) -> dict:
    import generation_speed as gs

    n, batch, max_new = gen
    label = "tiny Llama, SmolLM2 tokenizer" if mini else "SmolLM2-135M-Instruct"
    return gs.measure(str(base), device, dtype, n, batch, max_new, 1, label)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="a SmolLM2-135M-Instruct directory")
    ap.add_argument("--gguf", help="SmolLM2-135M-Instruct's GGUF file (built to --work)")
    ap.add_argument("--mini", action="store_true", help="CI: tiny model, a few candidates, CPU")
    ap.add_argument("--device", default=None, help="default: cuda, cpu with --mini")
    ap.add_argument("--wheels", help="a directory of wheels to install missing packages from")
    ap.add_argument("--pack", help="write wheels and the GGUF parts for a GPU machine here")
    ap.add_argument("--work", default=str(ROOT / "build" / "gpu_search"))
    ap.add_argument("--seconds", type=float, default=None,
                    help="wall time of each search (default 75; the overlapped one 60%%)")
    ap.add_argument("--skip", nargs="*", default=[], help="stages to leave out",
                    choices=["search_1", "search_overlap", "search_2", "merge_kernels",
                             "generation"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.pack:
        pack(Path(args.pack))
        return {}
    if args.wheels:
        install_wheels(Path(args.wheels))
    lacking = missing(gguf=bool(args.gguf))
    if lacking:
        sys.exit(f"gpu_search needs {', '.join(lacking)}: pass --wheels DIR (a directory of "
                 f"wheels; `python bench/gpu_search.py --pack .gpu` prepares one) or install "
                 f"them. Only torch, transformers, numpy, PyYAML, safetensors and matplotlib "
                 f"are expected on the GPU machine.")
    if args.worker:
        print(json.dumps(run_one(json.loads(args.worker[0]), Path(args.worker[1]))))
        return {}
    return run(args)


def base_model(args: argparse.Namespace, work: Path) -> Path:
    if args.mini:
        return tiny_base(work / "tiny_base")
    if args.base:
        return Path(args.base)
    if args.gguf:
        from pretrained import build_from_gguf

        dest = work / "smollm2"
        return dest if (dest / "model.safetensors").is_file() else build_from_gguf(args.gguf,
                                                                                  dest)
    raise SystemExit("gpu_search needs the base model: --base DIR (SmolLM2-135M-Instruct) or "
                     "--gguf FILE (its GGUF), or --mini.")


def run(args: argparse.Namespace) -> dict:
    import torch
    import transformers

    cfg = dict(MINI if args.mini else FULL)
    if args.seconds:
        cfg["seconds"], cfg["overlap_seconds"] = args.seconds, 0.6 * args.seconds
    device = args.device or ("cpu" if args.mini else "cuda")
    if args.mini:  # the code paths, not the compiler: eager kernels (child processes too)
        os.environ["TORCHDYNAMO_DISABLE"] = "1"
    work = Path(args.work) / ("mini" if args.mini else "full")
    out = Path(args.out or ROOT / "results" / "bench" /
               ("gpu_search_mini.json" if args.mini else "gpu_search.json"))
    rep = Report(out, {"device": device, "mini": args.mini, "torch": torch.__version__,
                       "transformers": transformers.__version__,
                       "gpu": torch.cuda.get_device_name() if device.startswith("cuda")
                       else None, "settings": cfg})
    t0 = time.perf_counter()
    base = base_model(args, work)
    rep.doc["base_s"] = round(time.perf_counter() - t0, 1)  # a GGUF dequantized, or nothing
    models, files, log = experts(base, work / "experts", cfg, device)
    rep.stage("experts", lambda: log)
    stamp = time.strftime("%H%M%S")
    studies = work / "studies"
    studies.mkdir(parents=True, exist_ok=True)

    def doc(name: str, seconds: float) -> dict:
        return space(f"{name}_{stamp}", base, models, files, cfg, seconds, device)

    plan = [("search_1", run_one, doc("gpu1", cfg["seconds"]), studies),
            ("search_overlap", lambda d, r: run_one(d, r, overlap=True),
             doc("gpu1ov", cfg["overlap_seconds"]), studies),
            ("search_2", run_two, doc("gpu2", cfg["seconds"]), studies),
            ("merge_kernels", merge_figures, base, work / "merge", device, args.mini),
            ("generation", generation_figures, base, device,
             "float32" if device == "cpu" else "bfloat16", cfg["gen"], args.mini)]
    for name, fn, *fn_args in plan:
        if name not in args.skip:
            rep.stage(name, fn, *fn_args)
    rep.doc["total_s"] = round(time.perf_counter() - t0, 1)
    out.write_text(json.dumps(rep.doc, indent=1, default=str))
    print(f"[gpu_search] done in {rep.doc['total_s']} s: {out}", flush=True)
    return rep.doc


if __name__ == "__main__":
    main()
