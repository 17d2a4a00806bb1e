"""A stopped study on the mini zoo (5 of 12 evaluations, layer-swap genes), for the dashboard."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from search.spaces import space_dict

from evomerge.commands import search
from evomerge.search.ledger import default_storage


def make_stopped_study(zoo: Path, root: Path, name: str = "dash", stop_after: int = 5) -> str:
    space = space_dict(zoo, name=name, budget={"trials": 12},
                       layer_swap={"choices": ["merge", "math", "lang"]})
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space))

    def stop(info: dict) -> None:
        if info["done"] >= stop_after:
            raise KeyboardInterrupt  # what Ctrl-C does: the driver stops cleanly

    outcome = search(str(path), results=str(root / "results"), progress=stop)
    assert outcome.stopped == "interrupted" and outcome.evaluations == stop_after
    return default_storage(name, root / "results")


@pytest.fixture()
def stopped_study(mini_zoo, tmp_path) -> tuple[Path, str]:
    """(results root, storage URL) of a study stopped after 5 of its 12 evaluations."""
    return tmp_path / "results", make_stopped_study(mini_zoo, tmp_path)
