"""Bullet: every value from a study or a space is escaped in every file evomerge writes --
pareto.html opened in Chromium runs no script from a study name, and report.md / a model
card keep hostile names as literal text."""

from __future__ import annotations

import re

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

HOSTILE = "x</title><script>window.__pwned = 1</script><img src=q onerror='window.__pwned=2'>"


def _hostile_study(study_root, tmp_path):
    """A copy of study ``dash`` under a name no evomerge command would accept (a crafted
    study file), with its trials."""
    import optuna

    from evomerge.dashboard.catalog import Catalog

    [(_, src)] = Catalog(results=study_root).studies()
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'crafted.db'}")
    optuna.copy_study(from_study_name="dash", from_storage=src._storage,
                      to_storage=storage, to_study_name=HOSTILE)
    return optuna.load_study(study_name=HOSTILE, storage=storage)


def test_pareto_html_runs_no_script_from_a_study_name(browser, study_root, tmp_path):
    from evomerge.search.front import write_front
    from evomerge.search.ledger import space_of

    study = _hostile_study(study_root, tmp_path)
    write_front(study, space_of(study), tmp_path / "out")
    page = browser.new_page()
    page.goto((tmp_path / "out" / "pareto.html").as_uri())
    page.wait_for_selector("#front .main-svg", timeout=30_000)
    page.wait_for_timeout(500)
    assert page.evaluate("window.__pwned") is None
    assert page.title() == HOSTILE  # shown as text
    page.close()


def test_markdown_outputs_keep_names_literal():
    from evomerge.engine.outputs import markdown_text
    from evomerge.search.heldout import _markdown

    doc = {"study": HOSTILE, "objectives": [{"task": "t|<b>", "metric": "m", "direction":
                                             "minimize"}],
           "rows": [{"kind": "source", "name": "a`|[x](javascript:1)\n# H", "test": {"t|<b>/m": 1.0}}],
           "summary": {"reference_point": [1.0]}}
    text = _markdown(doc)
    assert "<script>" not in text and "<b>" not in text
    assert not re.search(r"(?<!\\)\]\(", text)  # no live link
    assert markdown_text(HOSTILE) in text
    table = [line for line in text.splitlines() if line.startswith("| source")]
    assert len(table) == 1 and table[0].count("|") - table[0].count("\\|") == 4  # 3 cells
