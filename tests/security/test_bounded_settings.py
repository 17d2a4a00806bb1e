"""Bullet: a space, a study file or a command-line value never asks for unbounded memory,
never crashes the driver with a traceback, and a refused command writes nothing (regressions
of a hostile probe: each case below was a traceback, a runaway allocation or a stray file)."""

from __future__ import annotations

import math
import sqlite3

import pytest
import yaml
from fuzz_inputs import run_cli
from search.spaces import space_dict

from evomerge.search.archive import Grid

DFS = {"method": None, "parameters": {}, "dfs": {"repeats": 1, "scaling": "none"}}


@pytest.mark.parametrize("over, words", [
    ({"optimizer": {"name": "map_elites", "popsize": 4, "bins": 6000}}, "bins' input should be less than or equal to 1024 (got 6000)"),
    ({"optimizer": {"name": "map_elites", "popsize": 4, "bins": 300}}, "90000 cells"),
    ({"optimizer": {"name": "map_elites", "descriptors": ["add_l1/answer_nll"] * 2}},
     "names an objective twice"),
    ({"optimizer": {"name": "map_elites", "popsize": 10**9}},
     "popsize' input should be less than or equal to 10000 (got 1000000000)"),
    ({"optimizer": {"name": "cma", "popsize": 10**9}}, "optimizer.cma.popsize' input should be less"),
    ({"optimizer": {"name": "tpe", "seed": -1}}, "optimizer.tpe.seed' input should be greater"),
    ({"optimizer": {"name": "nsga2", "seed": 10**23}}, "seed' input should be less than 4294967296"),
    ({"fidelity": {"rungs": [0.5, 1.0], "seed": -1}}, "fidelity.seed"),
    ({"seed": -1}, "seed"),
    ({**DFS, "dfs": {"repeats": 20_000_000, "scaling": "slot"}}, "dfs.repeats"),
    ({**DFS, "optimizer": {"name": "path_ga", "popsize": 4, "max_shift": 10**20}},
     "max_shift' input should be less than or equal to 10000"),
    ({**DFS, "dfs": {"repeats": 1, "max_length": 1, "scaling": "none"},
      "optimizer": {"name": "path_ga", "popsize": 4}}, "dfs.max_length 1 is shorter"),
    ({**DFS, "dfs": {"repeats": 1, "max_length": 1, "scaling": "none"},
      "optimizer": {"name": "map_elites", "popsize": 4}}, "dfs.max_length 1 is shorter"),
])
def test_a_setting_out_of_bounds_is_one_sentence_before_anything_is_written(
        over, words, mini_zoo, tmp_path):
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump(space_dict(mini_zoo, **over)))
    code, err = run_cli(["search", str(space), "--results", str(tmp_path / "r"), "-q"])
    assert code == 2 and err.startswith("evomerge: error: ") and "\n" not in err, err
    assert words in err, err
    assert not (tmp_path / "r").exists()


def test_descriptor_values_far_out_of_range_land_in_the_edge_cells():
    """exp(-v) of a minimized objective below v = -709 overflowed and stopped the search
    (and every later resume and export of the study)."""
    grid = Grid(("a/x", "b/y"), (0, 1), ((0.0, 1.0), (0.0, 1.0)), 4, True, (True, False))
    assert grid.cell(grid.measures([-800.0, 0.5])) == (3, 2)
    assert grid.cell(grid.measures([-math.inf, math.inf])) == (3, 3)
    assert grid.cell(grid.measures([math.inf, -math.inf])) == (0, 0)
    assert grid.cell([math.nan, 0.999]) == (0, 3)


@pytest.mark.parametrize("argv, words", [
    (["search", "s.yaml", "--workers", "-1"], "argument --workers: '-1' must be at least 0"),
    (["search", "s.yaml", "--timeout", "nan"], "argument --timeout: 'nan' must be a finite"),
    (["resume", "t", "--max-retries", "-3"], "argument --max-retries: '-3' must be at least 0"),
    (["resume", "t", "--num-gpus", "-1"], "argument --num-gpus: '-1' must be a finite"),
    (["merge", "r.yaml", "out", "--shard-size", "infGB"], "'infGB' is not a size"),
    (["merge", "r.yaml", "out", "--shard-size", "0"], "'0' must be at least 1 byte"),
    (["dashboard", "--port", "99999"], "'99999' must be from 1 to 65535"),
])
def test_a_bad_command_line_value_is_refused_by_the_parser(argv, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(argv)
    assert code == 2 and words in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
@pytest.mark.parametrize("command", [["status"], ["front"], ["resume"],
                                     ["export", "--best", "-o", "r.yaml"]])
def test_a_study_file_that_does_not_exist_is_not_created(kind, command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///st/a.db" if kind == "sqlite" else f"journal:///{tmp_path}/st/b.log"
    code, err = run_cli([command[0], "zz", "--storage", url, *command[1:]])
    last = err.splitlines()[-1]  # (resume's progress bar has started on stderr)
    assert code == 2 and last.startswith("evomerge: error: No study file at "), err
    assert list(tmp_path.iterdir()) == []


def test_a_search_refused_for_another_space_leaves_the_journal_as_it_was(mini_zoo, tmp_path):
    """The space is compared before the study's lease is taken (a lease generation, or a
    journal's create record, was written by the refused command before)."""
    journal = tmp_path / "j.log"
    url = f"journal:///{journal}"
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump(space_dict(mini_zoo, budget={"trials": 2})))
    assert run_cli(["search", str(space), "--storage", url, "--results", str(tmp_path / "r"),
                    "-q"])[0] == 0
    other = tmp_path / "o.yaml"
    other.write_text(yaml.safe_dump(space_dict(mini_zoo, parameters={
        "weight": [0.0, 0.5], "density": [0.2, 1.0]})))
    before = journal.read_bytes(), sorted(p.name for p in tmp_path.rglob("*"))
    code, err = run_cli(["search", str(other), "--storage", url, "--results",
                         str(tmp_path / "r"), "-q"])
    assert code == 2 and "exists with a different search space" in err, err
    assert (journal.read_bytes(), sorted(p.name for p in tmp_path.rglob("*"))) == before


def test_a_damaged_study_is_not_resumed_and_keeps_its_budget(mini_zoo, tmp_path):
    """A study file is data: a trial attribute edited into nonsense refuses the resume with
    one sentence, and the budget and launch the resume would set are not written."""
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump(space_dict(mini_zoo, budget={"trials": 4}, optimizer={
        "name": "map_elites", "popsize": 2, "bins": 4})))
    results = tmp_path / "r"
    assert run_cli(["search", str(space), "--results", str(results), "-q"])[0] == 0
    db = results / "t" / "study.db"
    with sqlite3.connect(db) as con:
        con.execute("UPDATE trial_user_attributes SET value_json = '\"a\"' WHERE key = 'x'")
        before = con.execute("SELECT key, value_json FROM study_user_attributes").fetchall()
        assert con.total_changes > 0
    code, err = run_cli(["resume", "t", "--results", str(results), "--trials", "9", "-q"])
    assert code == 2 and ("Study 't' could not be restored from its stored search state "
                          "(ValueError: could not convert string to float: 'a'); if its file "
                          "was not edited, report this with the traceback that -v prints.") in err
    assert "\n" not in err, err
    with sqlite3.connect(db) as con:
        after = con.execute("SELECT key, value_json FROM study_user_attributes").fetchall()
    assert sorted(after) == sorted(before)


def test_a_space_file_naming_a_study_outside_results_is_refused_by_the_schema(mini_zoo):
    """The space's own ``name`` check (pydantic's pattern searches: the safe-name pattern
    must be anchored), whoever loads the space."""
    from evomerge.errors import ConfigError
    from evomerge.search.space import load_space

    for name in ("../x", "a/b", "-x", "x y", "ab\n"):
        with pytest.raises(ConfigError, match="name"):
            load_space(space_dict(mini_zoo, name=name))


@pytest.mark.parametrize("edit, words", [
    (lambda a: a["0"]["zoo"]["add_l1"][0].__setitem__(0, -5), "not indices below 16"),
    (lambda a: a["0"]["zoo"]["add_l1"][0].__setitem__(0, 16), "not indices below 16"),
    (lambda a: a["0"]["zoo"]["add_l1"][1].__setitem__(0, float("nan")), "positive weights"),
    (lambda a: a["0"]["zoo"].__setitem__("nope", [[0], [1.0]]), "name task zoo/nope"),
    (lambda a: a.__setitem__("7", a["0"]), "anchors name rungs"),
    # a second probe: a task left out was scored in full; empty or huge weights gave 0 or NaN
    (lambda a: a["0"]["zoo"].pop("add_l1"), "lack task zoo/add_l1"),
    (lambda a: a["0"]["zoo"].__setitem__("add_l1", [[], []]), "positive weights"),
    (lambda a: a["0"]["zoo"]["add_l1"].__setitem__(1, [1e308] * len(a["0"]["zoo"]["add_l1"][0])),
     "summing to at most 16"),
    (lambda a: a["0"]["zoo"]["add_l1"][1].__setitem__(0, True), "positive weights"),
], ids=["negative", "past-the-end", "nan-weight", "unknown-task", "unknown-rung",
        "missing-task", "empty", "huge-weights", "bool-weight"])
def test_stored_anchors_are_data(mini_zoo, tmp_path, edit, words):
    """The anchors a study stores are read back as data: an index outside its task (a
    negative one used to wrap around silently) refuses the resume and writes nothing."""
    import json

    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump(space_dict(mini_zoo, budget={"trials": 6}, fidelity={
        "rungs": [0.25], "estimator": "anchors", "warmup": 4})))
    results = tmp_path / "r"
    assert run_cli(["search", str(space), "--results", str(results), "-q"])[0] == 0
    db = results / "t" / "study.db"
    with sqlite3.connect(db) as con:
        (raw,) = con.execute("SELECT value_json FROM study_user_attributes "
                             "WHERE key = 'evomerge_anchors'").fetchone()
        anchors = json.loads(raw)
        edit(anchors)
        con.execute("UPDATE study_user_attributes SET value_json = ? WHERE key = "
                    "'evomerge_anchors'", (json.dumps(anchors),))
        before = con.execute("SELECT key, value_json FROM study_user_attributes").fetchall()
    code, err = run_cli(["resume", "t", "--results", str(results), "--trials", "9", "-q"])
    assert code == 2 and "could not be restored" in err and words in err, err
    with sqlite3.connect(db) as con:
        after = con.execute("SELECT key, value_json FROM study_user_attributes").fetchall()
    assert sorted(after) == sorted(before)


@pytest.mark.parametrize("over, words", [
    ({"merge_method": "karcher", "parameters": {"max_iter": 1e12, "tol": 0.0}},
     "parameters.max_iter = 1000000000000.0 is above the maximum 1000.0 for 'karcher'"),
    ({"tokenizer": {"source": "base", "pad_to_multiple_of": 20_000_000}},
     "'tokenizer.pad_to_multiple_of' input should be less than or equal to 65536"),
], ids=["karcher-max-iter", "pad-to-multiple-of"])
def test_a_recipe_asks_for_bounded_work(mini_zoo, tmp_path, over, words):
    """A recipe is data: karcher's iterations (1e12 ran past a minute; the default is 10)
    and the embedding padding (20,000,000 allocated 10 GB) are bounded, refused in one
    sentence before anything is built."""
    recipe = {"merge_method": "linear", "base_model": str(mini_zoo / "base"),
              "models": [{"model": str(mini_zoo / m), "parameters": {"weight": 0.5}}
                         for m in ("math", "lang")], **over}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, err = run_cli(["merge", str(path), str(tmp_path / "out")])
    assert code == 2 and words in err, err
    assert not (tmp_path / "out").exists()
