"""A driver's liveness: its heartbeat in the study, one driver per study, and SIGTERM.

The heartbeat (host, pid, Slurm job, time, progress) is what the dashboard shows and what a
second driver checks before it refuses to search the same study.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from evomerge.errors import ConfigError
from evomerge.search.ledger import STALE_SECONDS, driver_state
from evomerge.search.records import StudyRecord

__all__ = ["Heartbeat", "StopSignal", "HEARTBEAT_SECONDS"]

HEARTBEAT_SECONDS = 30.0


class StopSignal:
    """SIGTERM (e.g. Slurm before preemption) requests a clean stop at the next result."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> StopSignal:
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def reinstall(self) -> None:
        """Take SIGTERM back after a library (``ray.init``) installed its own handler."""
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


class Heartbeat:
    """A driver's heartbeat in its study (what the dashboard shows, and what a second driver
    checks before it refuses to search the same study).

    Args:
        record: the study.
        name: the study's name (for messages).
        progress: ``() -> (done, budget)``, reported with each beat.
    """

    def __init__(self, record: StudyRecord, name: str,
                 progress: Callable[[], tuple[int, int]]) -> None:
        self.record, self.name, self.progress = record, name, progress
        self._beat = 0.0

    def beat(self, state: str = "running", force: bool = False) -> None:
        """Record that a driver is alive: at most one storage write every
        ``HEARTBEAT_SECONDS`` unless ``force``."""
        now = time.time()
        if not force and now - self._beat < HEARTBEAT_SECONDS:
            return
        self._beat = now
        done, budget = self.progress()
        self.record.set_driver({
            "host": socket.gethostname(), "pid": os.getpid(), "state": state,
            "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "heartbeat": now, "done": done, "budget": budget})

    def refuse_second_driver(self) -> None:
        """One driver per study: two would each spend the budget (double counting). A driver
        is live while its heartbeat is fresh (and, on this host, its process exists)."""
        info = self.record.driver
        if driver_state(self.record.study) != "running":
            return
        if info.get("host") == socket.gethostname() and info.get("pid") == os.getpid():
            return  # this process, searching again
        job = os.environ.get("SLURM_JOB_ID")
        if job and info.get("slurm_job") == job:
            return  # a requeued Slurm job: its previous run has ended, whatever it recorded
        age = time.time() - float(info.get("heartbeat", 0))
        raise ConfigError(
            f"Study {self.name!r} is being searched by another driver (host "
            f"{info.get('host')}, pid {info.get('pid')}, heartbeat {age:.0f} s ago); stop it "
            f"first, or if it died, resume once its heartbeat is {STALE_SECONDS:.0f} s old.")

    def in_background(self) -> threading.Event:
        """Keep the heartbeat fresh while a long candidate blocks the loop (a 7B evaluation
        takes minutes); set the returned event to stop."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(HEARTBEAT_SECONDS):
                try:
                    self.beat(force=True)
                except Exception:  # noqa: BLE001 -- a missed beat must not kill the search
                    pass

        threading.Thread(target=beat, name="evomerge-heartbeat", daemon=True).start()
        return done
