"""Item 4: a small YAML document that stands for a huge one (alias bomb, deep nesting, a
huge file) or says one key twice is refused before it is built, in one sentence with exit
code 2, within a second, for every YAML evomerge reads: recipes (a parameter value, the
``evomerge:`` block), chained recipes, search spaces, and recipes stored in a study."""

from __future__ import annotations

import pytest
import yaml
from fuzz_inputs import run_cli_cpu
from search.spaces import space_dict


def alias_bomb(levels: int = 9, width: int = 9, indent: str = "") -> str:
    """``levels`` anchors, each a list of ``width`` aliases of the previous: ~600 bytes that
    expand to width**levels nodes (9**9 = 387 million); the last anchor is ``a8``."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "".join(f"{indent}{line}\n" for line in lines)


def _recipe(tiny, weight: str = "0.5", head: str = "") -> str:
    return (f"{head}merge_method: linear\nmodels:\n"
            f"- model: {tiny['a']}\n  parameters: {{weight: {weight}}}\n"
            f"- model: {tiny['b']}\n  parameters: {{weight: 0.5}}\n")


BOMB_BLOCK = "evomerge:\n  seed: 0\n  notes:\n" + alias_bomb(indent="    ")


def _text(case: str, tiny, mini_zoo) -> tuple[str, str]:
    """(command, document) of each case."""
    if case == "parameter value":  # pydantic would expand it; its error would quote it all
        return "merge", _recipe(tiny, "*a8", BOMB_BLOCK)
    if case == "evomerge: block":  # passes validation, expands when the recipe is written
        return "merge", _recipe(tiny, head=BOMB_BLOCK)
    if case == "duplicate key":
        return "merge", "merge_method: ties\n" + _recipe(tiny)
    if case == "deep nesting":
        return "merge", _recipe(tiny, "[" * 200 + "0.5" + "]" * 200)
    if case == "huge file":
        return "merge", _recipe(tiny) + "# " + "x" * 3_000_000 + "\n"
    if case == "chained stage":
        return "merge", ("name: st\n" + _recipe(tiny, "*a8", BOMB_BLOCK) + "---\n"
                         + _recipe(tiny).replace(tiny["a"], "st", 1))
    space = yaml.safe_dump(space_dict(mini_zoo), sort_keys=False)
    return "search", space.replace("budget:", "pinned: {x: *a8}\nbudget:", 1).replace(
        "evaluators:", "evaluators:\n  notes:\n    type: zoo\n" + alias_bomb(indent="    "), 1)


CASES = ["parameter value", "evomerge: block", "duplicate key", "deep nesting", "huge file",
         "chained stage", "search space"]


@pytest.mark.parametrize("case", CASES)
def test_small_yaml_that_expands_is_refused_fast(case, tiny, mini_zoo, tmp_path):
    command, text = _text(case, tiny, mini_zoo)
    if "*a8" in text:
        assert len(alias_bomb()) < 700
    path = tmp_path / "in.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    argv = (["merge", str(path), str(out), "-q"] if command == "merge" else
            ["search", str(path), "--results", str(out), "-q"])
    code, err, seconds = run_cli_cpu(argv)
    assert code == 2 and err.startswith("evomerge: error: ") and "\n" not in err, err[:500]
    assert len(err) < 400, err[:500]
    assert seconds < 1.5, seconds  # ~0.16 s here; an expanded bomb costs minutes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.yaml"]  # nothing written


def test_a_study_recorded_recipe_is_bounded_too(study_root, tmp_path):
    """A recipe stored in a study file (crafted with sqlite3, as anyone can) goes through the
    same limits when evomerge reads it (export)."""
    import json
    import sqlite3

    db = sqlite3.connect(study_root / "dash" / "study.db")
    row = "SELECT trial_id FROM trials WHERE state = 'COMPLETE' ORDER BY number LIMIT 1"
    (trial_id,) = db.execute(row).fetchone()
    (number,) = db.execute("SELECT number FROM trials WHERE trial_id = ?", (trial_id,)).fetchone()
    sql = "SELECT value_json FROM trial_user_attributes WHERE trial_id = ? AND key = 'recipe'"
    (original,) = db.execute(sql, (trial_id,)).fetchone()
    bombed = json.dumps(alias_bomb() + "merge_method: linear\nmodels: *a8\n")
    update = "UPDATE trial_user_attributes SET value_json = ? WHERE trial_id = ? AND key = 'recipe'"
    with db:
        db.execute(update, (bombed, trial_id))
    try:
        code, err, seconds = run_cli_cpu(["export", "dash", "--results", str(study_root),
                                          "--trial", str(number), "-o", str(tmp_path / "r.yaml")])
        assert code == 2 and "is refused before it is read" in err and "\n" not in err, err
        assert seconds < 1.5, seconds  # ~0.16 s here; an expanded bomb costs minutes
        assert not (tmp_path / "r.yaml").exists()
    finally:
        with db:
            db.execute(update, (original, trial_id))
        db.close()
