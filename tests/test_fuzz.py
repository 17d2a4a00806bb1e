"""Property-based fuzzing of the user-facing inputs: damaged recipes and search spaces either
run or end with exit code 2 and one line on stderr, never a traceback or a half-written output.

A longer run: ``EVOMERGE_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import itertools
import os
import shutil

import pytest
from fuzz_inputs import hostile_text, mutated, run_cli, run_cli_cpu, write_yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from search.spaces import space_dict

EXAMPLES = int(os.environ.get("EVOMERGE_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


def _recipes(tiny: dict[str, str]) -> list[dict]:
    base, a, b = tiny["base"], tiny["a"], tiny["b"]
    return [
        {"merge_method": "ties", "base_model": base, "dtype": "float32",
         "models": [{"model": a, "parameters": {"weight": [0.2, 0.9], "density": 0.5}},
                    {"model": b, "parameters": {"weight": [{"filter": "mlp", "value": 0.7},
                                                           {"value": 0.3}], "density": 0.7}}],
         "parameters": {"lambda": 1.1}},
        {"merge_method": "linear", "models": [{"model": a, "parameters": {"weight": 0.4}},
                                              {"model": b, "parameters": {"weight": 0.6}}]},
        {"merge_method": "slerp", "base_model": a, "models": [{"model": a}, {"model": b}],
         "parameters": {"t": [0.0, 0.5, 1.0]}},
        {"merge_method": "dare_ties", "base_model": base, "evomerge": {"seed": 3},
         "models": [{"model": a, "parameters": {"weight": 0.5, "density": 0.4}}]},
        {"merge_method": "passthrough",
         "slices": [{"sources": [{"model": a, "layer_range": [0, 2]}]},
                    {"sources": [{"model": b, "layer_range": [2, 4]}]}]},
    ]


def _one_line_error(code: int, err: str) -> None:
    assert code == 2, (code, err)
    assert err.startswith("evomerge: error: ") and "\n" not in err, err


@pytest.mark.slow
def test_damaged_recipes_merge_or_exit_2_with_nothing_written(tiny, tmp_path_factory):
    valid = _recipes(tiny)
    root = tmp_path_factory.mktemp("fuzz_recipes")
    case = itertools.count()
    ended = {0: 0, 2: 0}

    @FUZZ
    @given(st.integers(0, len(valid) - 1).flatmap(lambda i: mutated(valid[i])))
    @example(valid[0])  # the undamaged inputs must run
    @example(valid[4])
    def check(doc):
        d = root / f"c{next(case)}"
        d.mkdir()
        out = d / "out"
        code, err = run_cli(["merge", str(write_yaml(doc, d / "r.yaml")), str(out), "-q"])
        ended[code] = ended.get(code, 0) + 1
        if code == 0:
            assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
        else:
            _one_line_error(code, err)
            assert not out.exists()
        assert not [p for p in d.iterdir() if p.name.startswith(".out")]
        shutil.rmtree(d)

    check()
    assert ended[0] > 0 and ended[2] > 0  # the fuzzer reached both outcomes


@pytest.mark.slow
def test_damaged_spaces_search_or_exit_2_with_nothing_created(mini_zoo, tmp_path_factory):
    valid = space_dict(mini_zoo, budget={"trials": 2})
    root = tmp_path_factory.mktemp("fuzz_spaces")
    case = itertools.count()
    ended = {0: 0, 2: 0}

    @settings(FUZZ, max_examples=max(20, EXAMPLES // 3))
    @given(mutated(valid))
    @example(valid)  # the undamaged space must run
    def check(doc):
        d = root / f"c{next(case)}"
        d.mkdir()
        results = d / "results"
        code, err = run_cli(["search", str(write_yaml(doc, d / "s.yaml")), "--results",
                             str(results), "--trials", "2", "-q"])
        ended[code] = ended.get(code, 0) + 1
        if code == 0:
            assert list(results.glob("*/study.db"))
        else:
            _one_line_error(code, err)
            assert not list(results.glob("*/study.db"))
        shutil.rmtree(d)

    check()
    assert ended[0] > 0 and ended[2] > 0


def _nothing_outside(root, case_dir) -> None:
    """Nothing was written beside the case's own directory, nor at the hostile absolute path."""
    import pathlib

    assert [p.name for p in root.iterdir()] == [case_dir.name]
    assert not pathlib.Path("/tmp/evomerge-fuzz-abs").exists()


@pytest.mark.slow
def test_hostile_yaml_recipes_merge_or_exit_2_fast_with_nothing_written(tiny, tmp_path_factory):
    """Alias bombs, duplicate keys and hostile stage names: each recipe merges, or ends with
    one line and exit 2 within a second, with nothing written anywhere."""

    valid = _recipes(tiny)
    root = tmp_path_factory.mktemp("fuzz_hostile")
    case = itertools.count()
    ended = {0: 0, 2: 0}

    @settings(FUZZ, max_examples=max(30, EXAMPLES // 3))
    @given(st.integers(0, len(valid) - 1).flatmap(
        lambda i: hostile_text(valid[i], "evomerge", chain=True)))
    def check(text):
        d = root / f"c{next(case)}"
        (d / "work").mkdir(parents=True)
        (d / "work" / "r.yaml").write_text(text)
        out = d / "work" / "out"
        code, err, seconds = run_cli_cpu(["merge", str(d / "work" / "r.yaml"), str(out), "-q"])
        ended[code] = ended.get(code, 0) + 1
        if code != 0:
            _one_line_error(code, err)
            assert seconds < 1.5, seconds  # ~0.16 s here; an expanded bomb costs minutes
            assert sorted(p.name for p in (d / "work").iterdir()) == ["r.yaml"]
        _nothing_outside(d, d / "work")
        shutil.rmtree(d)

    check()
    assert ended[2] > 0


@pytest.mark.slow
def test_hostile_yaml_spaces_exit_2_with_nothing_created(mini_zoo, tmp_path_factory):
    valid = space_dict(mini_zoo, budget={"trials": 1})
    root = tmp_path_factory.mktemp("fuzz_hostile_spaces")
    case = itertools.count()

    @settings(FUZZ, max_examples=max(20, EXAMPLES // 10))
    @given(hostile_text(valid, "pinned"))
    def check(text):
        d = root / f"c{next(case)}"
        (d / "work").mkdir(parents=True)
        (d / "work" / "s.yaml").write_text(text)
        code, err = run_cli(["search", str(d / "work" / "s.yaml"), "--results",
                             str(d / "work" / "results"), "-q"])
        _one_line_error(code, err)
        assert sorted(p.name for p in (d / "work").iterdir()) == ["s.yaml"]
        _nothing_outside(d, d / "work")
        shutil.rmtree(d)

    check()
