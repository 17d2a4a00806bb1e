"""The data-flow benchmark's miniature (bench/dfs.py on the mini zoo, a few evaluations per
search): every row is produced through the product's own path, the two PS+DFS rows start
from the pinned PS point, and the seeds table merges the per-seed files."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_dfs_bench_every_row_on_the_mini_zoo(mini_zoo, tmp_path):
    from dfs import PATH_ROWS, ROWS, run_seed, table

    doc = run_seed(str(mini_zoo), seed=0, evals=4, work=tmp_path / "w")
    assert list(doc["scores"]) == ROWS
    loss = doc["weighted_test_loss"]
    assert all(v == v and v > 0 for v in loss.values())  # finite, positive NLL sums
    # DFS paths run the experts' layers; PS+DFS paths may also run the pinned PS merge's
    for row, models in (("DFS", {"math", "lang"}), ("DFS (path_ga)", {"math", "lang"}),
                        ("PS+DFS", {"study:ps_s0", "math", "lang"}),
                        ("PS+DFS (path_ga)", {"study:ps_s0", "math", "lang"})):
        path = doc["best_paths"][row]
        assert path and {m for m, _, _ in path} <= models, (row, path)
        assert all(0 <= layer < 6 and 0.5 <= scale <= 2.0 for _, layer, scale in path)
    assert set(doc["search_seconds"]) == {"PS (2x)", *PATH_ROWS}

    import json
    paths = []
    for seed in (0, 1):
        p = tmp_path / f"dfs_seed{seed}.json"
        p.write_text(json.dumps({**doc, "seed": seed}))
        paths.append(p)
    merged = table(paths)
    assert merged["seeds"] == [0, 1] and set(merged["rows"]) == set(ROWS)
    assert merged["rows"]["DFS (path_ga)"]["per_seed_sum"] == [loss["DFS (path_ga)"]] * 2
    assert set(merged["best_path_lengths"]) == set(PATH_ROWS)
