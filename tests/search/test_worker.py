"""The resident worker's per-candidate bookkeeping, and options that would do nothing."""

from __future__ import annotations

import resource
import time

import numpy as np
import pytest
import yaml

from evomerge.cli import main
from evomerge.search.genome import genome_of_models
from evomerge.search.space import load_space
from evomerge.search.worker import Worker

from .spaces import space_dict


def test_peak_memory_is_the_candidates_own(mini_zoo):
    """A 600 MB spike before a candidate raises the process's lifetime peak, not the
    candidate's: its peak is measured from its own start."""
    space = load_space(space_dict(mini_zoo))
    worker = Worker(space)
    genome = genome_of_models(space)
    recipe = genome.recipe(genome.from_unit(np.full(genome.dim, 0.5))).to_yaml()
    first = worker.run(0, recipe)
    spike = np.ones(600 * 2**20 // 8)  # 600 MB, touched
    del spike
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    second = worker.run(1, recipe)
    assert first.values is not None and second.values == first.values
    assert lifetime - second.peak_memory_mb > 400, (lifetime, second.peak_memory_mb)
    assert second.peak_memory_mb > 50  # the resident models and the evaluation are counted


@pytest.mark.parametrize("flags,named", [
    (["--timeout", "5"], "--timeout only applies"),
    (["--num-gpus", "1", "--max-retries", "1"], "--num-gpus, --max-retries only apply"),
    (["--ray-address", "auto"], "--ray-address only applies"),
])
def test_ray_options_without_workers_are_refused(mini_zoo, tmp_path, capsys, flags, named):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(space_dict(mini_zoo)))
    code = main(["search", str(path), "--results", str(tmp_path / "r"), "-q", *flags])
    err = capsys.readouterr().err
    assert code == 2 and named in err and "--workers N" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # refused before any study or model


@pytest.mark.parametrize("flags,named", [
    (["--workers", "1", "--num-gpus", "64"], "--workers 1 with --num-gpus 64 each do not fit"),
    (["--workers", "1", "--num-cpus", "100000"], "--num-cpus 100000 each do not fit on this "
     "machine"),
    # no cluster there: Ray retried for over 5 minutes, after the study was made
    (["--workers", "1", "--ray-address", "127.0.0.1:1"], "--ray-address 127.0.0.1:1: no Ray "
     "cluster answers there"),
    (["--workers", "1", "--ray-address", "bad"], "--ray-address bad: could not join a Ray "
     "cluster (Invalid address format: bad)."),
])
def test_workers_that_cannot_start_are_refused(mini_zoo, tmp_path, capsys, flags,
                                                           named):
    """Ray waits forever for an actor nothing can hold (``--num-gpus 1`` without a GPU hung
    with 0 evaluations), and a cluster that cannot be joined was a traceback after the study
    was made: both are one sentence before the study exists."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(space_dict(mini_zoo)))
    code = main(["search", str(path), "--results", str(tmp_path / "r"), "-q", *flags])
    err = capsys.readouterr().err
    assert code == 2 and named in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_a_port_that_accepts_but_never_answers_is_no_ray_cluster(mini_zoo, tmp_path, capsys):
    """The TCP check passed such a port and Ray then retried for minutes (a second probe):
    Ray's GCS speaks gRPC, so an HTTP/2 preface must be answered."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    held = []
    threading.Thread(target=lambda: held.append(listener.accept()), daemon=True).start()
    port = listener.getsockname()[1]
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(space_dict(mini_zoo)))
    start = time.monotonic()
    code = main(["search", str(path), "--results", str(tmp_path / "r"), "-q", "--workers", "1",
                 "--ray-address", f"127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert code == 2 and "no Ray cluster answers there (nothing answered within 10 s)" in err
    assert time.monotonic() - start < 60 and not (tmp_path / "r").exists()
    listener.close()


@pytest.mark.parametrize("workers,cpus,gpus,have,fits", [
    (2, None, 1, (16, 2), True),
    (3, None, 1, (16, 2), False),
    (2, None, 0.5, (16, 1), True),     # two halves share one GPU
    (2, None, 0.6, (16, 1), False),    # 0.6 twice does not fit on one GPU
    (3, None, 0.6, (16, 2), False),    # nor three on two, though 1.8 < 2
    (3, None, 1 / 3, (16, 1), True),
    (1, None, 2, (16, 1), False),
    (4, 0.5, None, (2, 0), True),
    (5, 0.5, None, (2, 0), False),
    (1, None, None, (1, 0), True),
])
def test_capacity_packs_like_ray(workers, cpus, gpus, have, fits):
    from evomerge.errors import ConfigError
    from evomerge.search.ray_executor import check_capacity

    if fits:
        check_capacity(workers, cpus, gpus, *have, "here")
    else:
        with pytest.raises(ConfigError, match="do not fit on here"):
            check_capacity(workers, cpus, gpus, *have, "here")


def test_overlap_executor_scores_what_the_inline_one_scores(mini_zoo):
    """Two output models: the next candidate is merged by a second thread while one is
    scored; every result equals the one-at-a-time executor's, in submission order."""
    from evomerge.search.executors import InlineExecutor, OverlapExecutor

    space = load_space(space_dict(mini_zoo))
    genome = genome_of_models(space)
    recipes = [genome.recipe(genome.from_unit(np.full(genome.dim, x))).to_yaml()
               for x in (0.2, 0.5, 0.8, 0.35)]
    inline = InlineExecutor(space)
    want = []
    for i, r in enumerate(recipes):
        inline.submit(i, r)
        want.append(inline.next_result())
    ex = OverlapExecutor(space)
    ex.submit(0, recipes[0])
    ex.submit(1, recipes[1])
    got = [ex.next_result()]
    for i in (2, 3):
        ex.submit(i, recipes[i])  # merged into the slot the scored candidate freed
        got.append(ex.next_result())
    got.append(ex.next_result())
    ex.close()
    assert [g.trial for g in got] == [0, 1, 2, 3]
    assert [g.values for g in got] == [w.values for w in want]
    assert len({tuple(w.values) for w in want}) == 4  # distinct candidates, not one model
    assert ex.worker.materializer.resident_bytes()["model"] == \
        2 * inline.worker.materializer.resident_bytes()["model"]


def test_overlap_is_refused_with_ray_workers_and_data_flow_spaces(mini_zoo, tmp_path, capsys):
    from evomerge.errors import ConfigError
    from evomerge.search.executors import OverlapExecutor

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(space_dict(mini_zoo)))
    code = main(["search", str(path), "--results", str(tmp_path / "r"), "-q", "--overlap",
                 "--workers", "2"])
    assert code == 2 and "use it with --workers 0" in capsys.readouterr().err
    dfs = load_space(space_dict(mini_zoo, name="d", method=None, parameters={},
                                dfs={"repeats": 2, "scaling": "pair", "max_length": 6}))
    with pytest.raises(ConfigError, match="data-flow space"):
        OverlapExecutor(dfs)
    # from the command line: refused before the study exists (a refused command writes nothing)
    dfs_path = tmp_path / "d.yaml"
    dfs_path.write_text(yaml.safe_dump(space_dict(mini_zoo, name="d", method=None, parameters={},
                                                  dfs={"repeats": 2, "scaling": "pair",
                                                       "max_length": 6})))
    code = main(["search", str(dfs_path), "--results", str(tmp_path / "r"), "-q", "--overlap"])
    assert code == 2 and "data-flow space" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
