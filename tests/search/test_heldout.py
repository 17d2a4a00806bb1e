"""The held-out report's summary: what it claims about the front against the sources."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from evomerge.search.heldout import _summary


def _rows(source: float, found: float) -> list[dict]:
    return [{"kind": "source", "name": "base", "test": {"t/m": 9.0}},
            {"kind": "source", "name": "a", "test": {"t/m": source}},
            {"kind": "search front", "name": "1", "test": {"t/m": found}},
            {"kind": "uniform front", "name": "u", "test": {"t/m": 5.0}}]


@pytest.mark.parametrize("direction, source, found, beats", [
    ("minimize", 0.18375366053916553, 0.1837536559992135, False),  # the demo's tie
    ("minimize", 0.5, 0.4, True),
    ("minimize", 0.4, 0.5, False),
    ("maximize", 0.5, 0.5 + 1e-9, False),
    ("maximize", 0.5, 0.6, True),
])
def test_a_found_recipe_beats_the_sources_only_beyond_float_noise(direction, source, found,
                                                                   beats):
    objs = [SimpleNamespace(key="t/m", direction=direction)]
    out = _summary(_rows(source, found), objs, None, 3)
    assert out["t/m: a found recipe beats every source"] is beats
    assert (out["t/m: best source model"], out["t/m: best search-front recipe"]) == \
        (source, found)
