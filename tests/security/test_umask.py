"""Bullet: merged model directories (and stages, exported recipes) get the modes the umask
gives, as ``save_pretrained``'s do -- not ``drwx------`` from a temporary directory."""

from __future__ import annotations

import os
import stat

import pytest
import yaml
from fuzz_inputs import run_cli


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_follow_the_umask(umask, tiny, tmp_path):
    stage = {"name": "st", "merge_method": "linear", "models": [
        {"model": tiny["a"], "parameters": {"weight": 0.5}},
        {"model": tiny["b"], "parameters": {"weight": 0.5}}]}
    final = {"merge_method": "passthrough", "slices": [{"sources": [
        {"model": "st", "layer_range": [0, 4]}]}]}
    recipe = tmp_path / "chain.yaml"
    recipe.write_text(yaml.safe_dump_all([stage, final]))
    assert run_cli(["merge", str(recipe), str(tmp_path / "out"), "-q"])[0] == 0
    for d in (tmp_path / "out", tmp_path / "out-stages" / "st"):
        assert _mode(d) == 0o777 & ~umask
        for f in d.iterdir():
            assert _mode(f) == 0o666 & ~umask, f


def test_an_exported_recipe_follows_the_umask(umask, study_root, tmp_path):
    out = tmp_path / "r.yaml"
    assert run_cli(["export", "dash", "--results", str(study_root), "--best", "-o", str(out)])[0] == 0
    assert _mode(out) == 0o666 & ~umask
