"""Bullet: a study name (``--study`` or the space's ``name``) is a safe name: ``..``, ``.``,
an absolute path, spaces, options are refused before anything is written, so nothing is
ever written outside ``--results``."""

from __future__ import annotations

import pytest
import yaml
from fuzz_inputs import run_cli
from search.spaces import space_dict

BAD = ["..", ".", "/tmp/evomerge-abs", "../escaped", "a/b", "x --output=/tmp/y", "-rf", "",
       "t\n"]


@pytest.mark.parametrize("name", BAD)
@pytest.mark.parametrize("where", ["--study", "space name"])
def test_a_study_name_never_leaves_results(mini_zoo, tmp_path, name, where):
    work = tmp_path / "work"
    work.mkdir()
    doc = space_dict(mini_zoo, budget={"trials": 1}, **({"name": name} if where != "--study" else {}))
    space = work / "space.yaml"
    space.write_text(yaml.safe_dump(doc))
    argv = ["search", str(space), "--results", str(work / "results"), "-q"]
    code, err = run_cli(argv + ([f"--study={name}"] if where == "--study" else []))
    assert code == 2 and err.startswith("evomerge: error: ") and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["space.yaml", "work"]


@pytest.mark.parametrize("command", [["status"], ["front"], ["resume"], ["report"],
                                     ["export", "--best", "-o", "r.yaml"]])
def test_commands_that_name_a_study_check_it(command, tmp_path):
    code, err = run_cli([command[0], "../../etc", "--results", str(tmp_path), *command[1:]])
    assert code == 2 and "study name" in err, err
