"""Item 2: no page of another origin can frame the dashboard (clickjacking a Resume), and
the dashboard's own pages still work under its Content-Security-Policy (Chromium)."""

from __future__ import annotations

import http.server
import threading
import urllib.request
from functools import partial
from urllib.parse import urlencode

import pytest

from .conftest import dashboard, free_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture()
def other_origin(tmp_path):
    """A static web server on another loopback port (another origin, same site)."""
    port = free_port()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tmp_path, f"http://127.0.0.1:{port}"
    server.shutdown()


def test_a_page_on_another_port_cannot_frame_the_dashboard(browser, study_root, other_origin):
    site, origin = other_origin
    with dashboard(study_root) as base:
        [url] = [f"sqlite:///{p}" for p in study_root.glob("*/study.db")]
        study = f"{base}/study?" + urlencode({"storage": url, "name": "dash"})
        (site / "frame.html").write_text(
            f'<!doctype html><p>win a prize: click the button</p>'
            f'<iframe id="f" src="{study}" width="900" height="600"></iframe>')
        page = browser.new_page()
        page.goto(f"{origin}/frame.html")
        page.wait_for_timeout(3000)  # time for the frame to load, were it allowed
        frames = [f for f in page.frames if f != page.main_frame]
        assert frames, "the iframe element is missing"
        assert all(f.query_selector("#resume") is None for f in frames)  # nothing to click
        page.close()

        headers = urllib.request.urlopen(f"{base}/").headers
        assert headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"

        # the dashboard itself runs under its CSP: plots drawn, no violation reported
        page = browser.new_page()
        violations = []
        page.on("console", lambda m: violations.append(m.text)
                if "Content Security Policy" in m.text else None)
        page.goto(study)
        page.wait_for_selector("#front .scatterlayer .point", timeout=60_000)
        page.wait_for_selector("#heatmap .main-svg", timeout=60_000)
        assert page.locator("#trials tbody tr").count() >= 5
        assert violations == []
        page.close()
