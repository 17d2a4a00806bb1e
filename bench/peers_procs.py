"""Processes of a benchmarked program: run a command, sample the summed resident memory of
its process tree (and of the extra processes it relies on, e.g. a Ray head), kill it with
SIGKILL at a chosen moment, and end only the processes this benchmark started.

Used by bench/peers.py for both programs, so both are measured the same way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

__all__ = ["Measured", "run_measured", "tree", "matching", "end_processes"]


@dataclass
class Measured:
    """A finished (or killed) command: exit code, wall seconds, peak summed RSS (MB)."""

    rc: int
    wall_s: float
    peak_mb: float
    started: float = 0.0  # epoch seconds at launch
    killed: bool = False
    samples: list[float] = field(default_factory=list)


def tree(pid: int) -> list[psutil.Process]:
    """``pid`` and its descendants (those still alive)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def matching(needle: str) -> list[psutil.Process]:
    """Processes whose command line contains ``needle`` (a unique temp dir, say), with their
    descendants."""
    out: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        if needle in " ".join(p.info["cmdline"] or []):
            for q in tree(p.pid):
                out[q.pid] = q
    return list(out.values())


def _rss_mb(procs: list[psutil.Process]) -> float:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def run_measured(cmd: list[str], log: Path, env: dict[str, str], cwd: Path | None = None,
                 extra: Callable[[], list[psutil.Process]] | None = None,
                 kill_when: Callable[[], bool] | None = None,
                 timeout: float | None = None, every: float = 0.5) -> Measured:
    """Run ``cmd`` (output to ``log``), sampling the RSS of its tree plus ``extra()`` every
    ``every`` seconds; SIGKILL its tree once ``kill_when()`` is true or after ``timeout``."""
    t0, started = time.perf_counter(), time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd, start_new_session=True)
        samples: list[float] = []
        killed = False
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(_rss_mb(tree(proc.pid) + (extra() if extra else [])))
                stop.wait(every)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        while proc.poll() is None:
            over = timeout is not None and time.perf_counter() - t0 > timeout
            if over or (kill_when is not None and kill_when()):
                for p in reversed(tree(proc.pid)):
                    _signal(p, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.5)
        rc = proc.wait()
        stop.set()
        thread.join()
    return Measured(rc, time.perf_counter() - t0, max(samples, default=0.0), started, killed,
                    samples)


def _signal(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)
    except psutil.Error:
        pass


def end_processes(procs: list[psutil.Process], grace: float = 5.0) -> None:
    """SIGTERM these processes (by id, children first), SIGKILL what is left after
    ``grace`` seconds."""
    for p in reversed(procs):
        _signal(p, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        _signal(p, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=grace)


def env_with(**over: str) -> dict[str, str]:
    """This process's environment with ``over`` set (offline, single-threaded by default)."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env.update(over)
    return env
