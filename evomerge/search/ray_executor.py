"""Ray executor: resident-model actors evaluate candidates asynchronously, with retries.

Each actor loads the source models once (onto the GPU Ray assigned it, or the CPU), builds
its evaluators once, then serves candidates: materialize in place -> evaluate -> a frozen
:class:`~evomerge.search.worker.CandidateResult`. Scheduling is asynchronous: whenever an actor
is free it takes the next submitted candidate, so actors never wait for the slowest member of
a generation. An actor that dies (killed, out of memory) is replaced and its candidate is
dispatched again, up to ``max_retries``; after that, or after ``timeout`` seconds, the
candidate comes back as a failure with the reason and the search goes on.

Embedded mode (default) starts Ray in this process with a temp dir beside the study, no
dashboard, no auth; ``ray_address`` ("auto" or "HOST:PORT") joins an existing cluster.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError
from evomerge.search.space import SearchSpace
from evomerge.search.worker import CandidateResult

__all__ = ["RayExecutor", "check_capacity", "join_cluster", "local_capacity"]

log = logging.getLogger(__name__)


def _fits(have: float, each: float, whole: bool) -> int:
    """How many actors asking ``each`` of a resource ``have`` holds. GPUs are packed per
    device: a fraction shares one GPU (0.6 twice does not fit on one), more than 1 takes
    whole ones (Ray's rule)."""
    if each <= 0:
        return 1 << 30
    if whole and each < 1:
        return int(have + 1e-9) * math.floor(1 / each + 1e-9)
    return math.floor(have / each + 1e-9)


def check_capacity(workers: int, num_cpus: float | None, num_gpus: float | None,
                   cpus: float, gpus: float, where: str) -> None:
    """Refuse a worker count and per-worker resources that ``cpus`` and ``gpus`` cannot hold:
    Ray would wait for the missing actors forever (before this check, ``--num-gpus 1`` on a
    machine without a GPU hung with 0 evaluations)."""
    asks = (("GPU", num_gpus or 0.0, gpus, "--num-gpus", True),
            ("CPU", 1.0 if num_cpus is None else num_cpus, cpus, "--num-cpus", False))
    for what, each, have, flag, whole in asks:
        if _fits(have, each, whole) < workers:
            raise ConfigError(f"--workers {workers} with {flag} {each:g} each do not fit on "
                              f"{where}, which has {have:g} {what}{'s' * (have != 1)}; "
                              + (f"drop {flag}." if have == 0 else
                                 f"ask for fewer workers or a smaller {flag}."))


def join_cluster(address: str) -> None:
    """Join the Ray cluster at ``address`` ("auto", "HOST:PORT", "ray://HOST:PORT") now, so
    that a wrong address is one sentence before the study exists, not a traceback after it
    (an unanswered HOST:PORT made Ray retry for over 5 minutes). :class:`RayExecutor` then
    uses this connection, and ends it when it closes."""
    import ray

    global _JOINED
    if ray.is_initialized():
        return
    host, _, port = address.rpartition("://")[2].rpartition(":")
    if address != "auto" and host and port.isdigit():
        why = _speaks_grpc(host.strip("[]"), int(port))
        if why:
            raise ConfigError(f"--ray-address {address}: no Ray cluster answers there "
                              f"({why}).")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        why = " ".join(str(exc).split(". ")[0].split())
        raise ConfigError(f"--ray-address {address}: could not join a Ray cluster "
                          f"({why}).") from None
    _JOINED = True


_JOINED = False  # Ray was initialised by join_cluster: the next RayExecutor owns it


def _speaks_grpc(host: str, port: int, timeout: float = 10.0) -> str | None:
    """None if ``host:port`` answers as a gRPC server does (Ray's GCS and its client server
    are gRPC: HTTP/2 answers a client's preface with a SETTINGS frame), else why not. A port
    that accepts but never answers made ``ray.init`` retry for minutes. Skipped under
    ``RAY_USE_TLS`` (the handshake comes first there)."""
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return None
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
            frame = b""
            while len(frame) < 9:
                chunk = sock.recv(9 - len(frame))
                if not chunk:
                    return "it closed the connection"
                frame += chunk
    except TimeoutError:
        return f"nothing answered within {timeout:.0f} s"
    except OSError as exc:
        return exc.strerror or str(exc)
    return None if frame[3] == 4 else "it does not speak gRPC"


def local_capacity(workers: int) -> tuple[float, float]:
    """(CPUs, GPUs) of the Ray instance :class:`RayExecutor` starts on this machine: as many
    CPUs as cores (at least ``workers``), the GPUs CUDA sees."""
    import torch

    return float(max(os.cpu_count() or 1, workers)), float(torch.cuda.device_count())


class _Actor:
    """The actor body (wrapped by ``ray.remote`` at run time, so ray stays a lazy import)."""

    def __init__(self, space_json: dict, num_threads: int, use_gpu: bool) -> None:
        import torch

        from evomerge.search.space import load_space
        from evomerge.search.worker import Worker

        torch.set_num_threads(max(1, num_threads))  # one actor per core(s): no oversubscription
        space = load_space(space_json)
        self.worker = Worker(space, device="cuda" if use_gpu else
                             ("cpu" if space.device == "auto" else space.device))

    def pid(self) -> int:
        return os.getpid()

    def run(self, trial: int, recipe_yaml: str, job: dict | None = None) -> CandidateResult:
        import dataclasses

        import ray

        result = self.worker.run(trial, recipe_yaml, job=job)
        return dataclasses.replace(result, node=ray.util.get_node_ip_address())


def _temp_dir(hint: Path | None) -> str:
    # Ray puts unix sockets under its temp dir; their paths must stay under ~107 bytes.
    if hint is not None and len(str(hint.resolve())) < 48:
        hint.mkdir(parents=True, exist_ok=True)
        return str(hint.resolve())
    return tempfile.mkdtemp(prefix="evray-")


class RayExecutor:
    """Asynchronous pool of resident-model actors.

    Args:
        space: the search space every actor serves.
        workers: number of actors.
        ray_address: join this cluster ("auto", "HOST:PORT"); None starts Ray here.
        num_cpus, num_gpus: resources per actor (fractional GPUs share a device).
        timeout: seconds a candidate may run before its actor is replaced.
        max_retries: re-dispatches of a candidate whose actor died.
        temp_dir: Ray's temp dir in embedded mode (default: a short dir beside the study).
        prefetch: candidates queued beyond one per actor (default: one more per actor), so a
            freed actor starts its next candidate at once instead of waiting while the driver
            records the last result in the study.
    """

    def __init__(self, space: SearchSpace, workers: int = 2, ray_address: str | None = None,
                 num_cpus: float | None = None, num_gpus: float | None = None,
                 timeout: float | None = None, max_retries: int = 2,
                 temp_dir: str | Path | None = None, prefetch: int | None = None) -> None:
        import ray

        global _JOINED
        self._ray = ray
        started = not ray.is_initialized()
        self._owns_ray = started or _JOINED  # shut down (or disconnected) on close
        _JOINED = False
        self.temp_dir: str | None = None  # Ray's temp dir when this executor started Ray
        if started:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            common = {"include_dashboard": False, "log_to_driver": False,
                      "ignore_reinit_error": True}
            if ray_address:
                ray.init(address=ray_address, **common)
            else:
                self.temp_dir = _temp_dir(Path(temp_dir) if temp_dir else None)
                ray.init(num_cpus=max(os.cpu_count() or 1, workers), _temp_dir=self.temp_dir,
                         **common)
        have = ray.cluster_resources()
        cpus, gpus = have.get("CPU", 0.0), have.get("GPU", 0.0)
        if started and not ray_address:
            try:
                check_capacity(workers, num_cpus, num_gpus, cpus, gpus, "this machine's Ray")
            except ConfigError:
                ray.shutdown()
                raise
        else:  # a cluster's autoscaler may add the nodes: say why the start may wait
            try:
                check_capacity(workers, num_cpus, num_gpus, cpus, gpus, "the Ray cluster")
            except ConfigError as exc:
                log.warning("%s The workers wait until the cluster has room.", exc)
        self._cpus = num_cpus if num_cpus is not None else 1.0
        self._gpus = num_gpus or 0.0
        # SPREAD: actors go to different nodes first (one node's loss costs the fewest actors)
        self._cls = ray.remote(num_cpus=self._cpus, num_gpus=self._gpus, max_restarts=0,
                               scheduling_strategy="SPREAD")(_Actor)
        self._space = space.model_dump(mode="json")
        self.workers = workers
        self.capacity = workers + (workers if prefetch is None else prefetch)
        self.timeout, self.max_retries = timeout, max_retries
        self._idle = [self._spawn() for _ in range(workers)]
        ray.get([a.pid.remote() for a in self._idle])  # models loaded before the clock starts
        self._queue: deque[tuple[int, str, int]] = deque()
        self._running: dict[Any, tuple[Any, int, str, int, float]] = {}
        self._results: deque[CandidateResult] = deque()
        self._busy = 0.0
        self._start = time.monotonic()
        self._end: float | None = None  # set by close(): Ray's shutdown is no actor's idle time
        self.replaced = 0

    def _spawn(self) -> Any:
        return self._cls.remote(self._space, int(max(1, self._cpus)), self._gpus > 0)

    def actor_pids(self) -> list[int]:
        """Process ids of the current actors (tests kill one to check recovery)."""
        actors = self._idle + [v[0] for v in self._running.values()]
        return self._ray.get([a.pid.remote() for a in actors])

    def submit(self, trial: int, recipe_yaml: str, job: dict | None = None) -> None:
        self._queue.append((trial, (recipe_yaml, job), 0))
        self._dispatch()

    def _dispatch(self) -> None:
        while self._idle and self._queue:
            actor = self._idle.pop()
            trial, recipe, attempts = self._queue.popleft()
            ref = actor.run.remote(trial, *recipe)
            self._running[ref] = (actor, trial, recipe, attempts, time.monotonic())

    def _replace(self, actor: Any) -> None:
        try:
            self._ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 -- already dead
            pass
        self._idle.append(self._spawn())
        self.replaced += 1

    def _collect(self, ref: Any) -> None:
        from ray.exceptions import GetTimeoutError, RayActorError

        actor, trial, recipe, attempts, t0 = self._running.pop(ref)
        self._busy += time.monotonic() - t0
        try:
            self._results.append(self._ray.get(ref, timeout=60))
            self._idle.append(actor)
        except (RayActorError, GetTimeoutError) as exc:
            self._replace(actor)
            if attempts < self.max_retries:
                self._queue.appendleft((trial, recipe, attempts + 1))
            else:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self._results.append(CandidateResult(
                    trial, None, error=f"worker died {attempts + 1} times ({reason})"))
        except Exception as exc:  # noqa: BLE001 -- a task error is the candidate's failure
            self._idle.append(actor)
            self._results.append(CandidateResult(trial, None, error=f"{type(exc).__name__}: {exc}"))

    def _expire(self) -> None:
        if self.timeout is None:
            return
        now = time.monotonic()
        for ref, (actor, trial, _, _, t0) in list(self._running.items()):
            if now - t0 > self.timeout:
                del self._running[ref]
                self._busy += now - t0
                self._replace(actor)
                self._results.append(CandidateResult(
                    trial, None, error=f"timed out after {self.timeout:g} s"))

    def next_result(self) -> CandidateResult:
        """Block until some candidate finishes; returns its result."""
        while not self._results:
            self._dispatch()
            if not self._running:
                raise RuntimeError("next_result() called with nothing submitted")
            ready, _ = self._ray.wait(list(self._running), num_returns=1, timeout=0.5)
            for ref in ready:
                self._collect(ref)
            self._expire()
        self._dispatch()  # before the driver spends time recording this result
        return self._results.popleft()

    def stats(self) -> dict[str, float]:
        """Actor utilisation (busy time / (actors x wall time until close)) and replacements
        so far."""
        wall = (self._end or time.monotonic()) - self._start
        return {"actors": self.workers, "utilisation": self._busy / max(wall * self.workers, 1e-9),
                "replaced": self.replaced}

    def close(self) -> None:
        self._end = self._end or time.monotonic()
        for actor in self._idle + [v[0] for v in self._running.values()]:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass
        self._idle, self._running = [], {}
        if self._owns_ray:
            self._ray.shutdown()
