"""The README's bad-input table: every catalogued case ends in one sentence, exit 2, nothing
written (bench/bad_inputs.py, run here as a test)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.mark.slow
def test_every_catalogued_bad_input_is_handled(tmp_path):
    import bad_inputs

    models = bad_inputs._models(tmp_path / "models")
    failures = []
    n = 0
    for category, items in bad_inputs.cases(models, tmp_path).items():
        for name, doc in items:
            n += 1
            row = bad_inputs.run_case(category, doc, tmp_path, n)
            if not row["handled"]:
                failures.append((category, name, row["code"], row["error"], row.get("changed")))
    assert n >= 40
    assert failures == []
