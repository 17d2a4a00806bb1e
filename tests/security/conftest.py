"""Fixtures of the trust-boundary suite: a headless Chromium, a dashboard served on a free
port, and a study stopped part-way (mini zoo)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-quic", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright (a failure in CI, EVOMERGE_REQUIRE_BROWSER=1)."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("EVOMERGE_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium is required here: apt-get install chromium")
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert proc is None or proc.poll() is None, proc.stdout.read() if proc else ""
            time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port}")


@contextlib.contextmanager
def dashboard(results: Path) -> Iterator[str]:
    """``evomerge dashboard --results RESULTS`` on a free loopback port: its base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "evomerge", "dashboard", "--results",
                             str(results), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="session")
def study_root(mini_zoo, tmp_path_factory) -> Path:
    """Results root holding study ``dash``: 5 of 12 evaluations, stopped. Shared by the whole
    suite: a test that changes it puts it back."""
    from dashboard.conftest import make_stopped_study

    root = tmp_path_factory.mktemp("security_study")
    make_stopped_study(mini_zoo, root)
    return root / "results"
