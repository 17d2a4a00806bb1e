"""Hypothesis strategies that damage valid recipes and search spaces, and a CLI runner that
reports how each ended (used by tests/test_fuzz.py and ``python tests/fuzz_inputs.py``)."""

from __future__ import annotations

import contextlib
import copy
import gc
import io
import math
import time
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


HOSTILE_NAMES = ["..", ".", "../../escaped", "/tmp/evomerge-fuzz-abs", "a b", "--output=/tmp/x",
                 "x</title><script>alert(1)</script>", "%j%%", "-rf", "", "λ", "a\nb", "x" * 300,
                 5, None, True, ["a"]]


def alias_bomb(levels: int, width: int, indent: str = "") -> str:
    """YAML anchors ``a0``..``a{levels-1}``, each a list of ``width`` aliases of the one before:
    a few hundred bytes standing for ``width ** levels`` nodes."""
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "".join(f"{indent}{line}\n" for line in lines)


@st.composite
def hostile_text(draw, valid: dict, anchors_under: str, chain: bool = False) -> str:
    """``valid`` as YAML text, then damaged as text: an alias bomb (its anchors in the
    mapping ``anchors_under``, one value replaced by an alias of it), a duplicated key line,
    or a hostile ``name`` (with ``chain``: a recipe's stage name, used by a final stage)."""
    doc = copy.deepcopy(valid)
    op = draw(st.sampled_from(["bomb", "duplicate key", "name"]))
    if op == "name":
        name = draw(st.sampled_from(HOSTILE_NAMES))
        if not chain:
            return yaml.safe_dump({**doc, "name": name}, allow_unicode=True, sort_keys=False)
        final = {"merge_method": "passthrough",
                 "slices": [{"sources": [{"model": name, "layer_range": [0, 2]}]}]}
        return yaml.safe_dump_all([{"name": name, **doc}, final], allow_unicode=True,
                                  sort_keys=False)
    text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    lines = text.splitlines()
    if op == "duplicate key":
        keyed = [i for i, line in enumerate(lines) if ":" in line and not
                 line.lstrip().startswith("- ")]
        i = draw(st.sampled_from(keyed))
        lines.insert(i + 1, lines[i] + (" null" if lines[i].rstrip().endswith(":") else ""))
        return "\n".join(lines) + "\n"
    levels, width = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    scalars = [i for i, line in enumerate(lines) if line.split(": ", 1)[-1] not in ("", line)
               and ": " in line]
    i = draw(st.sampled_from(scalars))
    key = lines[i].split(": ", 1)[0]
    lines[i] = f"{key}: *a{levels - 1}"
    block = f"{anchors_under}:\n  notes:\n" + alias_bomb(levels, width, "    ")
    return block + "\n".join(lines) + "\n"


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


def run_cli_cpu(argv: list[str]) -> tuple[int, str, float]:
    """:func:`run_cli` and the CPU seconds this thread spent on it, the imports paid before
    (a ``--help`` call): CPU time, not wall time, because a loaded CI machine stretches the
    wall clock (1.15 s seen for 0.16 s of work), while a YAML bomb that expanded would cost
    minutes of CPU."""
    run_cli(["merge", "--help"])
    # this thread's CPU only (torch's or Ray's threads are not the refusal's work), and no
    # collection of garbage left by earlier tests inside the window (collecting it first cost
    # 0.7 s a call late in a full run)
    gc.disable()
    try:
        start = time.thread_time()
        code, err = run_cli(argv)
        return code, err, time.thread_time() - start
    finally:
        gc.enable()


def write_yaml(doc: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))
    return path
