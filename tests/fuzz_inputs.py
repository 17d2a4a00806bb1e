"""Hypothesis strategies that damage valid recipes and search spaces, and a CLI runner that
reports how each ended (used by tests/test_fuzz.py and ``python tests/fuzz_inputs.py``)."""

from __future__ import annotations

import contextlib
import copy
import io
import math
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

WEIRD = [None, "", "x", "λ模型🙂", -1, 0, 1, 2**63, -(2**63), 1e308, -1e308, 1e-320,
         math.nan, math.inf, -math.inf, True, False, [], {}, [[[[[1.0]]]]],
         {"filter": "mlp"}, [{"value": 0.5}, 7], "0.5", "../../etc", {"a": {"b": {"c": {}}}}]


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _parent(doc: Any, path: tuple) -> tuple[Any, Any]:
    node = doc
    for key in path[:-1]:
        node = node[key]
    return node, path[-1]


@st.composite
def mutated(draw, valid: dict) -> dict:
    """``valid`` with 1-4 random mutations: drop, duplicate, retype, perturb, rename, nest."""
    doc = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _parent(doc, path)
        op = draw(st.sampled_from(["drop", "dup", "retype", "perturb", "rename", "nest"]))
        value = parent[key]
        if op == "drop":
            del parent[key]
        elif op == "dup" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(value))
        elif op == "dup":
            parent[f"{key}_copy"] = copy.deepcopy(value)
        elif op == "perturb" and isinstance(value, (int, float)) and not isinstance(value, bool):
            parent[key] = value * draw(st.sampled_from([-1, 0, 0.5, 2, 1e6, 1e-6])) + draw(
                st.sampled_from([0, 1, -1, 0.5]))
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["λ", "weight", "density", "models", "x" * 300]))] = \
                parent.pop(key)
        elif op == "nest":
            parent[key] = [[{"value": value}]]
        else:
            parent[key] = copy.deepcopy(draw(st.sampled_from(WEIRD)))
    return doc


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``evomerge ARGV`` in this process: (exit code, stderr). Any exception escapes."""
    from evomerge.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return code, err.getvalue().strip()


def write_yaml(doc: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))
    return path
