"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright):
study list -> study page -> Pareto plot rendered (screenshot) -> export a recipe that
`evomerge merge` builds -> resume a stopped study and watch its trial count grow.

Skips without Chromium, unless EVOMERGE_REQUIRE_BROWSER=1 (CI), where that is a failure.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from evomerge.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-quic", "--no-first-run", "--disable-sync"]
SHOTS = Path(__file__).resolve().parents[2] / "results" / "dashboard"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("EVOMERGE_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium is required here: apt-get install chromium chromium-driver")
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture()
def dashboard(stopped_study, tmp_path):
    results, _ = stopped_study
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "evomerge", "dashboard", "--results",
                             str(results), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
    yield base
    proc.terminate()
    proc.wait(timeout=20)


def test_dashboard_in_chromium(browser, dashboard, stopped_study, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
    page.goto(dashboard + "/")
    row = page.locator("#studies tbody tr", has_text="dash")
    assert "5 / 12" in row.inner_text() and "stopped (interrupted)" in row.inner_text()

    page.click("a.study-link")
    page.wait_for_selector("#front .main-svg", timeout=30_000)
    page.wait_for_selector("#front .scatterlayer .point", timeout=30_000)
    assert page.locator("#front .scatterlayer .point").count() >= 5
    page.wait_for_selector("#layers tbody tr")  # the first front point's per-layer recipe
    assert page.locator("#layers tbody tr").count() >= 2  # mini zoo: 2 layers (+ embed/head)
    assert "merge_method" in page.inner_text("#recipe")
    page.wait_for_selector("#heatmap .main-svg")  # the same trial's per-layer heatmap
    first = page.get_attribute("#heatmap", "data-trial")
    assert first == page.input_value("#export-trial")
    assert page.locator("#heatmap .hm").count() == 2  # source strip + coefficients
    assert page.locator("#trials tbody tr").count() >= 5
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "study.png"), full_page=True)

    # sort the trial table by trial number, descending
    page.click("#trials thead th:first-child")
    page.click("#trials thead th:first-child")
    numbers = [int(x) for x in page.locator("#trials tbody tr td:first-child").all_inner_texts()]
    assert numbers == sorted(numbers, reverse=True)

    # export the selected trial: valid YAML that `evomerge merge` builds
    trial = page.input_value("#export-trial")
    with page.expect_download() as dl:
        page.click("#export")
    recipe = tmp_path / "exported.yaml"
    dl.value.save_as(recipe)
    doc = yaml.safe_load(recipe.read_text())
    assert doc["evomerge"]["trial"] == int(trial)
    assert main(["merge", str(recipe), str(tmp_path / "merged"), "-q"]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()

    # resume the stopped study; its trial count grows to the budget
    page.click("#resume")
    page.wait_for_selector("#msg")
    assert "Resumed locally" in page.inner_text("#msg")
    deadline = time.monotonic() + 180
    done = 5
    while time.monotonic() < deadline:
        page.reload()
        done = int(re.match(r"(\d+)", page.inner_text("#progress")).group(1))
        if done == 12 and "stopped (budget)" in page.inner_text("#driver"):
            break
        time.sleep(2)
    log = Path(stopped_study[0]) / "dash" / "resume.log"
    assert done == 12, log.read_text() if log.exists() else "no resume log"
    page.goto(dashboard + "/")
    assert "12 / 12" in page.locator("#studies tbody tr", has_text="dash").inner_text()
    page.close()


def test_pareto_html_draws_the_clicked_point_heatmap(browser, stopped_study):
    """pareto.html (written by the search, no server): front plot, then the per-layer heatmap
    of the first front point; a click on another point redraws it for that trial."""
    html = Path(stopped_study[0]) / "dash" / "pareto.html"
    page = browser.new_page(viewport={"width": 1200, "height": 1300})
    page.goto(html.as_uri())
    page.wait_for_selector("#heatmap .main-svg", timeout=30_000)
    title = page.locator("#heatmap .gtitle").text_content()
    points = page.locator("#front .scatterlayer .trace:last-child .point")  # the front's trace
    assert points.count() >= 2 and title.startswith("trial ")
    points.nth(points.count() - 1).click(force=True)
    page.wait_for_function("t => document.querySelector('#heatmap .gtitle').textContent != t",
                           arg=title, timeout=10_000)
    assert page.locator("#heatmap .hm").count() == 2
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "pareto_html.png"), full_page=True)
    page.close()
