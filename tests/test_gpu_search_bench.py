"""bench/gpu_search.py, the one prepared GPU run, at its CI size (--mini: a tiny Llama with
SmolLM2's tokenizer on the CPU), with the packages the GPU machine lacks hidden, so that its
first run there finds every stage working and nothing missing but what it names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# on the GPU machine's image: not these (gpu_search carries pydantic, optuna, ... as wheels)
ABSENT = ["lm_eval", "ray", "mergekit", "gguf", "flask", "waitress", "psycopg", "datasets",
          "evaluate"]


def run_hidden(tmp_path: Path, hidden: list[str], *args: str) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        f"HIDDEN = {hidden!r}\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in HIDDEN:\n"
        "            raise ImportError(f'{name} is hidden (not on the GPU machine)')\n"
        "sys.meta_path.insert(0, Hide())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_search.py"), *args],
                          capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_mini_run_fills_every_stage(tmp_path, smollm2):
    out = tmp_path / "g.json"
    proc = run_hidden(tmp_path, ABSENT, "--mini", "--out", str(out), "--work",
                      str(tmp_path / "work"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    stages = doc["stages"]
    assert set(stages) == {"experts", "search_1", "search_overlap", "search_2",
                           "merge_kernels", "generation"}
    for name, stage in stages.items():
        assert "error" not in stage["result"], (name, stage["result"])
    for name in ("search_1", "search_overlap"):
        row = stages[name]["result"]
        assert row["candidates"] == 2 and row["failed"] == 0
        assert row["merge_s_per_candidate"] > 0 and row["eval_s_per_candidate"] > 0
    two = stages["search_2"]["result"]
    assert [w["candidates"] for w in two["workers"]] == [2, 2] and two["candidates"] == 4
    kernels = stages["merge_kernels"]["result"]
    assert kernels["smollm2_grouped"]["host_syncs_per_candidate"] == 1
    assert kernels["smollm2_per_tensor"]["host_syncs_per_candidate"] >= 1  # one sampled tensor
    gen = stages["generation"]["result"]
    assert all(m["equal_outputs"] == m["outputs"] == 4 for m in gen["methods"].values())
    assert "lm_eval_generate_until" in gen["skipped"]  # hidden, as on the GPU machine


def test_missing_packages_are_named(tmp_path):
    proc = run_hidden(tmp_path, ["pydantic", "optuna"], "--mini", "--out",
                      str(tmp_path / "g.json"))
    assert proc.returncode == 1 and not (tmp_path / "g.json").exists()
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("gpu_search needs pydantic, optuna: pass --wheels DIR")
