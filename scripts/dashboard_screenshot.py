"""Screenshot of the dashboard on a study (the README's picture), in headless Chromium.

    .venv/bin/python scripts/dashboard_screenshot.py --results results --study zoo_mixed \
        --out results/dashboard.png
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from urllib.parse import urlencode

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-quic", "--no-first-run", "--disable-sync"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default="results")
    ap.add_argument("--study", default="zoo_mixed")
    ap.add_argument("--out", default="results/dashboard.png")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "evomerge", "dashboard", "--results",
                               args.results, "--port", str(port)])
    try:
        from playwright.sync_api import sync_playwright

        from evomerge.commands import found_storage

        url = found_storage(args.study, args.results)
        if url.startswith("sqlite:///"):  # the dashboard lists absolute paths
            from pathlib import Path
            url = f"sqlite:///{Path(url.removeprefix('sqlite:///')).resolve()}"
        time.sleep(4)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/study?" + urlencode({"storage": url,
                                                                    "name": args.study}))
            page.wait_for_selector("#layers tbody tr", timeout=60_000)
            point = page.locator("#front .scatterlayer .trace").nth(1).locator(".point").nth(-1)
            box = point.bounding_box()
            if box:  # show one recipe's hover text
                page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                time.sleep(0.8)
            page.screenshot(path=args.out)
            browser.close()
        print(f"wrote {args.out}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
