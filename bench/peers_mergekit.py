"""The real mergekit-evolve (mergekit 0.1.5), run for bench/peers.py on a CPU-only machine.

It runs from its own virtualenv (``bash bench/peers_venv.sh`` makes it:
``$MERGEKIT_EVOLVE_VENV``, default /work/venvs/mergekit-evolve, with
``pip install 'mergekit[evolve]==0.1.5'``) against a private Ray
head started with logical GPUs (its actors ask for ``num_gpus=1``), with ``--in-memory``, the
HF backend (no ``--vllm``) and ``--no-merge-cuda``, as its users run it. Three things of it
cannot run here unchanged; ``peers_shim/mkevo_shim.py`` (loaded through ``sitecustomize`` in
every process, Ray's workers too; it edits no file) works around each, with the exact error:

1. without vLLM installed, ``mergekit-evolve --help`` already fails: lm-eval >= 0.4.10 imports
   ``lm_eval.models.vllm_causallms`` lazily and that module imports vllm unguarded
   (``AttributeError: module 'lm_eval.models' has no attribute 'vllm_causallms'``);
2. ``--in-memory`` fails on its first evaluation for every merge method, on GPUs too
   (``TypeError: Can't instantiate abstract class Task[Tensor] with abstract methods
   arguments, execute``: ``ReturnTensor`` re-validates 0.1.5's tensor tasks);
3. on-disk mode on a CPU: ``AttributeError: module 'torch.cpu' has no attribute
   'empty_cache'`` and lm-eval's HF backend defaulting to CUDA
   (``AssertionError: Torch not compiled with CUDA enabled``).

What is measured: per evaluation, the start and end of each ``evaluate_genotype`` actor call
(its ``task:execute`` span in ``ray.timeline()``, Ray's task events; no dashboard needed);
per generation, pycma's best genotype and fitness from the
``outcmaes/`` files it writes (``xrecentbest.dat``); the command's wall time and the peak
summed resident memory of its processes, Ray's included.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from peers_procs import end_processes, env_with, matching, run_measured

__all__ = ["venv", "available", "run_mergekit_evolve", "cma_generations"]

SHIM = Path(__file__).resolve().parent / "peers_shim"
_EVENTS = """
import json, ray
ray.init(address="auto", logging_level="ERROR")
ev = [e for e in ray.timeline() if e.get("ph") == "X"]
calls = [e for e in ev if e.get("cat") == "task::InMemoryMergeEvaluator.evaluate_genotype"]
runs = [e for e in ev if e.get("cat") == "task:execute"]
out = []
for c in calls:  # the execution inside each call (a call's span also counts its queueing)
    inside = [r for r in runs if r["tid"] == c["tid"] and c["ts"] <= r["ts"] <= c["ts"] + c["dur"]]
    r = max(inside, key=lambda r: r["dur"]) if inside else c
    out.append({"start": r["ts"] / 1e6, "end": (r["ts"] + r["dur"]) / 1e6})
print(json.dumps(out))
"""


def venv() -> Path:
    return Path(os.environ.get("MERGEKIT_EVOLVE_VENV", "/work/venvs/mergekit-evolve"))


def available() -> str | None:
    """None if mergekit-evolve can run here, else why not (one sentence)."""
    exe = venv() / "bin" / "mergekit-evolve"
    if not exe.exists():
        return (f"no mergekit-evolve at {exe} (pip install 'mergekit[evolve]==0.1.5' into "
                "a virtualenv and set MERGEKIT_EVOLVE_VENV)")
    return None


def _env(port: int, tmp: str, threads: int) -> dict[str, str]:
    path = f"{venv() / 'bin'}:{os.environ.get('PATH', '')}"
    # RAY_AUTH_MODE: with a ~/.ray/auth_token of another Ray user on the machine, `ray start`
    # turns token authentication on and the driver (mode disabled) is refused.
    return env_with(PATH=path, PYTHONPATH=str(SHIM), MKEVO_FIX_INMEMORY="1", MKEVO_CPU="1",
                    RAY_AUTH_MODE="disabled",
                    OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                    RAY_ADDRESS=f"127.0.0.1:{port}", RAY_DEDUP_LOGS="0",
                    VIRTUAL_ENV=str(venv()), PEERS_RAY_TMP=tmp)


def _ray_up(env: dict[str, str], port: int, tmp: str, cpus: int) -> None:
    cmd = [str(venv() / "bin" / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
           f"--port={port}", f"--num-cpus={cpus}", "--num-gpus=1",
           "--include-dashboard=false", "--disable-usage-stats",
           "--object-store-memory=300000000", f"--temp-dir={tmp}"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=180)


def _events(env: dict[str, str]) -> list[dict[str, Any]]:
    out = subprocess.run([str(venv() / "bin" / "python"), "-c", _EVENTS], env=env,
                         capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise RuntimeError(f"Ray task events unreadable: {out.stderr[-400:]}")
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    return sorted(rows, key=lambda r: r["start"])


def cma_generations(outdir: Path) -> list[dict[str, Any]]:
    """Per pycma iteration: evaluations so far, and the recent best fitness and genotype
    (``xrecentbest.dat``: iteration, evaluations, sigma, 0, fitness, x...)."""
    path = outdir / "xrecentbest.dat"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("%") or not line.strip():
            continue
        v = [float(x) for x in line.split()]
        rows.append({"iteration": int(v[0]), "evaluations": int(v[1]), "fitness": v[4],
                     "x": v[5:]})
    return rows


def run_mergekit_evolve(config: Path, store: Path, task_dir: Path, flags: list[str], *,
                        threads: int = 1, cpus: int = 2, kill_after_evals: int | None = None,
                        timeout: float | None = None) -> dict[str, Any]:
    """Run ``mergekit-evolve CONFIG`` (in memory, one logical GPU) with ``flags``; returns
    timings, the per-iteration best genotypes and the measured process facts."""
    store.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    tmp = f"/tmp/peers-ray-{os.getpid()}"
    env = _env(port, tmp, threads)
    t0 = time.time()
    _ray_up(env, port, tmp, cpus)
    log = store / "mergekit-evolve.log"
    cmd = [str(venv() / "bin" / "mergekit-evolve"), str(config), "--storage-path", str(store),
           "--task-search-path", str(task_dir), "--in-memory", "--no-merge-cuda",
           "--num-gpus", "1", *flags]

    kill = (lambda: _finished(store) >= kill_after_evals) if kill_after_evals else None
    try:
        m = run_measured(cmd, log, env, cwd=store, extra=lambda: matching(tmp),
                         kill_when=kill, timeout=timeout)
        events = _events(env)
    finally:
        end_processes(matching(tmp))
    evals = [(e["start"] - t0, e["end"] - t0) for e in events]
    return {"rc": m.rc, "killed": m.killed, "wall_s": m.wall_s, "peak_mb": m.peak_mb,
            "total_s": m.started + m.wall_s - t0, "ray_start_s": m.started - t0,
            "evals": evals, "failed_evals": _failed(log),
            "generations": _best_so_far(cma_generations(store / "outcmaes"), evals)
            + _final_mean(store, log, evals), "log": str(log)}


def _best_so_far(rows: list[dict[str, Any]], evals: list[tuple[float, float]]
                 ) -> list[dict[str, Any]]:
    """pycma's per-iteration recent best -> the best so far, with the time it was known (the
    end of that iteration's last evaluation, seconds since the run started)."""
    out, best = [], None
    for r in rows:
        if best is None or r["fitness"] < best["fitness"]:
            best = r
        k = r["evaluations"]
        out.append({"iteration": r["iteration"], "evaluations": k, "fitness": best["fitness"],
                    "x": best["x"], "recent_fitness": r["fitness"],
                    "time": evals[k - 1][1] if 0 < k <= len(evals) else None})
    return out


def _final_mean(store: Path, log: Path, evals: list[tuple[float, float]]
                ) -> list[dict[str, Any]]:
    """pycma's last evaluation, of the distribution's mean (``eval_final_mean``), as a curve
    point when it beats every generation's best (its f from the log's ``final/bestever
    f-value = F B``, its x from the last row of ``xmean.dat``)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    found = re.findall(r"final/bestever f-value = (\S+) (\S+)", text)
    path = store / "outcmaes" / "xmean.dat"
    if not found or not path.exists() or not evals:
        return []
    final, best = (float(v) for v in found[-1])
    rows = [line.split() for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("%")]
    if final > best or not rows:
        return []
    return [{"iteration": int(rows[-1][0]) + 1, "evaluations": len(evals), "fitness": final,
             "x": [float(v) for v in rows[-1][5:]], "recent_fitness": final,
             "time": evals[-1][1]}]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _failed(log: Path) -> int:
    """Candidates whose merge failed (mergekit-evolve logs them and scores them None)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return text.count("Invalid genotype") + text.count("Model merge failed")


def _finished(store: Path) -> int:
    """Evaluations pycma has been told about (its ``fit.dat``: iteration, evaluations, ...)."""
    path = store / "outcmaes" / "fit.dat"
    if not path.exists():
        return 0
    rows = [line.split() for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("%")]
    return int(float(rows[-1][1])) if rows else 0
