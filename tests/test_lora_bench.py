"""The LoRA benchmarks' miniatures (bench/lora_sources.py, bench/lora_real.py --mini): every
stage runs and the JSON holds what the README quotes. The full runs are benchmarks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def test_composite_and_extra_skills():
    from real_skills import example

    assert [example(s, 47, 85)["answer"] for s in ("sub", "reverse", "compare", "add_words",
                                                     "add_final")] == [
        "38", "231", "85", "one hundred thirty-two", "#### 132"]
    assert "85 - 47" in example("sub", 47, 85)["prompt"]


@pytest.mark.slow
def test_lora_sources_miniature(tmp_path):
    from lora_sources import main

    out = tmp_path / "mini.json"
    doc = main(["--mini", "--build", str(tmp_path / "build"), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    mem = doc["memory"][0]
    # sources: the base and six adapters' factors; the output: only the adapted q/v tensors
    assert 1.0 < mem["sources_x_base"] < 2.0 and 0 < mem["model_x_base"] < 0.5
    cost = doc["cost"]
    assert cost["full_checkpoints"]["sources_x_base"] == 3.0  # three merged full models
    assert set(doc["goals"]) == {"memory_x_base<=2.3", "linear_speedup>=10"}


@pytest.mark.slow
def test_lora_real_miniature(smollm2, tmp_path):
    from lora_real import main

    out = tmp_path / "mini.json"
    doc = main(["--mini", "--base", smollm2["base"], "--build", str(tmp_path / "build"),
                "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(doc))
    rows = doc["rows"]
    assert {"base", "adapter add", "adapter words", "uniform average"} <= set(rows)
    assert doc["searches"]["ta"]["evaluations"] == 2 and doc["searches"]["ta"]["failed"] == 0
    assert doc["best_single_adapter"] in ("add", "words")
    for r in rows.values():
        lo, hi = r["add_words/exact_match_ci"]
        assert 0.0 <= lo <= r["scores"]["add_words/exact_match"] <= hi <= 1.0
    assert (Path(tmp_path / "build" / "lora_add_s0_2") / "adapter_config.json").is_file()
