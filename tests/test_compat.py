"""Private APIs of Optuna and lm-eval sit behind version-checked helpers."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest

from evomerge import compat
from evomerge.errors import EvomergeError


def test_installed_versions_are_supported():
    for dist in compat.SUPPORTED:
        compat.require(dist, "this test")


@pytest.mark.parametrize("fake", ["3.9.0", "6.0.0"])
def test_an_untested_optuna_is_one_sentence(monkeypatch, fake):
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda d: fake if d == "optuna" else real(d))
    with pytest.raises(EvomergeError, match=re.escape(
            f"Marking interrupted trials relies on optuna internals tested with 4.0 <= version "
            f"< 6, and optuna {fake} is installed: pip install 'optuna>=4.0,<6'.")):
        compat.set_trial_attr(object(), object(), "k", 1)


def test_pyproject_pins_the_same_ranges():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    for dist, (lo, hi) in compat.SUPPORTED.items():
        pypi = dist.replace("_", "-") + ("[hf]" if dist == "lm_eval" else "")
        assert f'"{pypi}>={lo},<{hi}"' in text, dist
