"""Quality diversity (map_elites): the archive as a function of the trials, the search on the
mini zoo (parameter and data-flow spaces), resume, export of a cell, pareto.html and the
dashboard."""

from __future__ import annotations

import json
import math

import pytest

from evomerge.errors import ConfigError
from evomerge.search.archive import archive_cells, archive_trial, grid_of
from evomerge.search.driver import run_search
from evomerge.search.executors import InlineExecutor
from evomerge.search.export import export_recipe
from evomerge.search.front import completed
from evomerge.search.ledger import counted, default_storage, load_study, open_storage
from evomerge.search.space import load_space

from .spaces import space_dict

pytest.importorskip("ribs")

QD = {"name": "map_elites", "popsize": 4, "bins": 4, "seed": 0}


def _space(zoo, **over):
    d = {"name": "q", "budget": {"trials": 12}, "optimizer": QD, **over}
    return load_space(space_dict(zoo, **d))


def _study(root, name="q"):
    return load_study(open_storage(default_storage(name, root)), name)


def test_grid_bins_descriptors_from_the_objectives(mini_zoo):
    space = _space(mini_zoo)
    grid = grid_of(space)
    assert grid.keys == ("add_l1/answer_nll", "maxmin_l2/answer_nll") and grid.bins == 4
    # minimized NLLs enter as exp(-v): the per-token probability of the answer
    assert grid.measures([0.0, math.log(2)]) == [1.0, 0.5]
    assert grid.cell([1.0, 0.5]) == (3, 2) and grid.cell([-1.0, 0.24]) == (0, 0)
    ranged = _space(mini_zoo, optimizer={**QD, "descriptors": ["maxmin_l2/answer_nll"],
                                         "ranges": [[0.0, 8.0]]})
    g = grid_of(ranged)
    assert g.measures([5.0, 3.0]) == [3.0] and g.cell([3.0]) == (1,)


@pytest.mark.parametrize("over, match", [
    ({"descriptors": ["nope/x"]}, "optimizer.descriptors 'nope/x' is not an objective"),
    ({"ranges": [[0, 1]]}, "optimizer.ranges needs one"),
    ({"descriptors": ["add_l1/answer_nll"], "ranges": [[1, 0]]}, "low < high"),
])
def test_bad_map_elites_settings_fail_fast(mini_zoo, over, match):
    with pytest.raises(ConfigError, match=match):
        _space(mini_zoo, optimizer={**QD, **over})


@pytest.mark.slow
def test_archive_search_export_and_pages(mini_zoo, tmp_path):
    """The archive the optimizer keeps (stored in the study) is the archive of the trials:
    per cell the lowest weighted loss; a cell's elite exports; pareto.json / .html show it."""
    # The mini zoo's NLLs are large (exp(-v) near 0 for all): ranges spanning generation 0's
    # values (a one-generation search draws the same points) spread it over the grid.
    run_search(_space(mini_zoo, name="q0", budget={"trials": 4}), results_root=tmp_path)
    values = [t.values for t in completed(_study(tmp_path, "q0"))]
    ranges = [[min(v[i] for v in values) - 1e-6, max(v[i] for v in values) + 1e-6]
              for i in range(2)]
    space = _space(mini_zoo, optimizer={**QD, "ranges": ranges,
                                        "descriptors": ["add_l1/answer_nll",
                                                        "maxmin_l2/answer_nll"]})
    out = run_search(space, results_root=tmp_path)
    assert out.evaluations == 12
    study = _study(tmp_path)
    cells = archive_cells(completed(study), space)
    assert len(cells) >= 2
    for c in cells:  # nobody in a cell beats its elite
        rivals = [t for t in completed(study)
                  if grid_of(space).cell(grid_of(space).measures(t.values)) == c.cell]
        assert c.loss == min(sum(t.values) for t in rivals)
    stored = study.user_attrs["evomerge_optimizer_checkpoint"]
    assert stored["generation"] == 3
    by_attrs = {(t.user_attrs["cma_gen"], t.user_attrs["cma_index"]): t.number
                for t in study.get_trials() if counted(t)}
    assert [(",".join(map(str, r["cell"])), by_attrs[r["gen"], r["index"]])
            for r in stored["cells"]] == [(c.name, c.trial) for c in cells]
    recipe = export_recipe(study, space, tmp_path / "cell.yaml", archive=cells[0].name)
    assert f"trial {cells[0].trial}." in recipe.read_text().splitlines()[0]
    with pytest.raises(ConfigError, match="is empty or not a cell; filled cells: "):
        archive_trial(completed(study), space, "9,9")
    front = json.loads((tmp_path / "q" / "pareto.json").read_text())
    assert [r["cell"] for r in front["archive"]] == [c.name for c in cells]
    html = (tmp_path / "q" / "pareto.html").read_text()
    assert 'id="archive"' in html and f"{len(cells)} cells" in html
    from evomerge.dashboard.server import study_payload
    assert [r["trial"] for r in study_payload(study)["archive"]] == [c.trial for c in cells]


def test_archive_is_refused_for_other_optimizers(mini_zoo, tmp_path):
    space = load_space(space_dict(mini_zoo, budget={"trials": 2}))
    run_search(space, results_root=tmp_path)
    with pytest.raises(ConfigError, match="--archive needs a study searched by 'map_elites'"):
        export_recipe(_study(tmp_path, "t"), space, tmp_path / "x.yaml", archive="0,0")


class _StopAt(InlineExecutor):
    calls, at = 0, 0

    def submit(self, trial, recipe_yaml, job=None):
        type(self).calls += 1
        if type(self).calls == type(self).at:
            raise KeyboardInterrupt
        super().submit(trial, recipe_yaml, job)


@pytest.mark.slow
def test_resume_mid_generation_matches_an_uninterrupted_search(mini_zoo, tmp_path):
    space = _space(mini_zoo)
    run_search(space, results_root=tmp_path / "ref")
    _StopAt.calls, _StopAt.at = 0, 6
    assert run_search(space, results_root=tmp_path / "r",
                      executor_factory=_StopAt).stopped == "interrupted"
    run_search(space, results_root=tmp_path / "r")

    def outcome(root):
        study = _study(root)
        return (sorted((t.user_attrs["cma_gen"], t.user_attrs["cma_index"],
                        t.user_attrs["recipe_hash"]) for t in study.get_trials() if counted(t)),
                study.user_attrs["evomerge_optimizer_checkpoint"])

    assert outcome(tmp_path / "r") == outcome(tmp_path / "ref")


@pytest.mark.slow
def test_data_flow_archive_starts_from_the_start_models_paths(mini_zoo, tmp_path):
    space = load_space(space_dict(mini_zoo, name="q", method=None, parameters={},
                                  dfs={"repeats": 2, "scaling": "pair"}, budget={"trials": 8},
                                  optimizer=QD))
    run_search(space, results_root=tmp_path)
    trials = sorted((t for t in _study(tmp_path).get_trials() if counted(t)),
                    key=lambda t: t.number)
    assert [t.user_attrs["path"] for t in trials[:2]] == ["math[0:2]", "lang[0:2]"]
    assert len({t.user_attrs["recipe_hash"] for t in trials}) == len(trials)
    assert archive_cells(completed(_study(tmp_path)), space)
