"""Servers a test starts (MLflow, optuna-dashboard): a free port, a process in its own session,
waited for until it answers, and stopped with its whole process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(cmd: list[str], ready_url: str, log: Path, timeout: float = 240,
            env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` until ``ready_url`` answers (its stderr in ``log``), yield, then stop it."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"),
                            env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(ready_url, timeout=2)
                break
            except OSError:
                assert proc.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, f"{cmd[0]} did not answer in {timeout} s"
                time.sleep(0.5)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
