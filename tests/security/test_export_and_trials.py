"""Bullet: ``evomerge export -o`` never overwrites an existing file without ``--force`` and
says one sentence for a directory; ``--trials`` below 1 is refused and changes nothing."""

from __future__ import annotations

import pytest
from fuzz_inputs import run_cli

from evomerge.search.ledger import load_study, open_storage


def _export(root, out, *extra):
    return run_cli(["export", "dash", "--results", str(root), "--best", "-o", str(out), *extra])


def test_export_refuses_existing_files_and_directories(study_root, tiny, tmp_path):
    config = tmp_path / "model" / "config.json"  # e.g. a model's own config.json
    config.parent.mkdir()
    config.write_text('{"model_type": "llama"}')
    code, err = _export(study_root, config)
    assert code == 2 and "exists" in err and "--force" in err and "\n" not in err, err
    assert config.read_text() == '{"model_type": "llama"}'
    code, err = _export(study_root, tmp_path / "model")
    assert code == 2 and "is a directory" in err and "\n" not in err, err
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json"]
    out = tmp_path / "r.yaml"
    assert _export(study_root, out)[0] == 0 and "merge_method" in out.read_text()
    out.write_text("old")
    assert _export(study_root, out, "--force")[0] == 0 and "merge_method" in out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "r.yaml"]  # no temp left
    # a model build refused for its output directory writes no recipe either
    (tmp_path / "md").mkdir()
    (tmp_path / "md" / "x").write_text("")
    for extra in ([], ["--force"]):
        code, err = _export(study_root, tmp_path / "new.yaml", "--model-dir",
                            str(tmp_path / "md"), *extra)
        assert code == 2 and "exists" in err, err
        assert not (tmp_path / "new.yaml").exists()
    out.write_text("mine")
    code, err = _export(study_root, out, "--model-dir", str(tmp_path / "md"), "--force")
    assert code == 2 and out.read_text() == "mine"
    code, err = _export(study_root, out, "--model-dir", str(tmp_path / "m2"))
    assert code == 2 and "--force" in err and not (tmp_path / "m2").exists()
    assert out.read_text() == "mine"


@pytest.mark.parametrize("trials", ["0", "-3"])
@pytest.mark.parametrize("command", ["search", "resume"])
def test_a_budget_below_one_is_refused_and_changes_nothing(command, trials, study_root,
                                                           mini_zoo, tmp_path):
    url = f"sqlite:///{study_root / 'dash' / 'study.db'}"
    before = dict(load_study(open_storage(url), "dash").user_attrs)
    target = ["resume", "dash"] if command == "resume" else ["search", str(tmp_path / "s.yaml")]
    if command == "search":
        import yaml
        from search.spaces import space_dict

        (tmp_path / "s.yaml").write_text(yaml.safe_dump(space_dict(mini_zoo, name="dash")))
    code, err = run_cli([*target, "--results", str(study_root), "--trials", trials, "-q"])
    assert code == 2 and "--trials" in err and "at least 1" in err and "\n" not in err, err
    assert dict(load_study(open_storage(url), "dash").user_attrs) == before
