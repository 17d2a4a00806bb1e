"""Item 3: one driver per study holds under a race, and a refused command writes nothing.

N ``evomerge search`` processes released at the same instant on one new study: exactly one
drives it (the others exit 2 with one sentence), and the study ends with exactly its budget
of evaluations -- on SQLite, a journal file and PostgreSQL. A second ``search`` or
``resume`` refused while a driver runs leaves the study's records (budget, launch, space)
as they were.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from search.spaces import space_dict
from search.test_postgres import pg_url  # noqa: F401 -- the fixture

from evomerge.search.ledger import counted, load_study, open_storage

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

# `evomerge ARGV...` started now, released at time.time() >= AT (so every process has
# imported everything and reaches the study at the same instant)
AT_START = """
import sys, time
from evomerge.cli import main
at = float(sys.argv[1])
time.sleep(max(0.0, at - time.time()))
sys.exit(main(sys.argv[2:]))
"""


def _storage(kind: str, tmp_path, pg: str | None) -> str:
    return {"sqlite": f"sqlite:///{tmp_path / 'study.db'}",
            "journal": f"journal://{tmp_path / 'journal.log'}", "postgres": pg}[kind]


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgres"])
def test_simultaneous_starts_make_exactly_one_driver(kind, mini_zoo, tmp_path, request):
    url = _storage(kind, tmp_path, request.getfixturevalue("pg_url") if kind == "postgres"
                   else None)
    budget, n = 6, 3
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump(space_dict(mini_zoo, budget={"trials": budget})))
    at = time.time() + 25
    procs = [subprocess.Popen([sys.executable, "-c", AT_START, str(at), "search", str(space),
                               "--storage", url, "--results", str(tmp_path / f"r{i}"), "-q"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(n)]
    ended = [(p.wait(timeout=600), p.stderr.read().strip()) for p in procs]
    assert sorted(code for code, _ in ended) == [0] + [2] * (n - 1), ended
    for code, err in ended:
        if code == 2:
            assert "is being searched by another driver" in err and "\n" not in err, err
    trials = load_study(open_storage(url), "t").get_trials()
    assert sum(counted(t) for t in trials) == budget  # not 2x, not 3x
    assert not [t for t in trials if t.state.name == "RUNNING"]


def _take(url: str, at: float, queue, done) -> None:  # noqa: ANN001 -- multiprocessing objects
    from evomerge.errors import ConfigError
    from evomerge.search.lease import take_lease

    time.sleep(max(0.0, at - time.time()))
    try:
        lease = take_lease(url, "t")
        queue.put(("held", lease.gen))
        done.wait(120)  # hold it until every other process has tried (not a guessed time)
        lease.release()
    except ConfigError as exc:
        queue.put(("refused", str(exc)))


@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgres"])
def test_the_lease_is_taken_by_exactly_one_of_many(kind, tmp_path, request):
    """Eight processes take the lease at one instant: one holds generation 1, seven are
    refused; after its release the next taker gets generation 2."""
    import multiprocessing

    from evomerge.search.lease import take_lease

    url = _storage(kind, tmp_path, request.getfixturevalue("pg_url") if kind == "postgres"
                   else None)
    if kind == "sqlite":
        from evomerge.search.ledger import open_storage

        open_storage(url)  # Optuna's schema first, as a search does
    ctx = multiprocessing.get_context("fork")
    queue, done = ctx.Queue(), ctx.Event()
    at = time.time() + 2
    procs = [ctx.Process(target=_take, args=(url, at, queue, done)) for _ in range(8)]
    for p in procs:
        p.start()
    try:
        got = sorted(queue.get(timeout=60) for _ in procs)
    finally:  # a child that died unanswered must not keep the holder waiting
        done.set()
        for p in procs:
            p.join(timeout=60)
    assert [g for g in got if g[0] == "held"] == [("held", 1)], got
    assert all("being searched by another driver" in g[1] for g in got if g[0] == "refused")
    lease = take_lease(url, "t")
    assert lease.gen == 2 and lease.check()
    lease.release()


def _records(url: str) -> dict:
    attrs = load_study(open_storage(url), "t").user_attrs
    return {k: attrs.get(k) for k in ("evomerge_trials", "evomerge_launch", "evomerge_space",
                                      "evomerge_num_layers")}


def test_a_refused_search_or_resume_changes_nothing(mini_zoo, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump(space_dict(mini_zoo, budget={"trials": 400})))
    first = subprocess.Popen([sys.executable, "-m", "evomerge", "search", str(space), "--storage",
                              url, "--results", str(tmp_path / "r"), "-q"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if sum(counted(t) for t in load_study(open_storage(url), "t").get_trials()) >= 2:
                    break
            except Exception:  # noqa: BLE001 -- not created yet
                pass
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.3)
        before = _records(url)
        other = tmp_path / "elsewhere"
        other.mkdir()
        for argv in (["search", str(space), "--trials", "5"], ["resume", "t", "--trials", "5"]):
            proc = subprocess.run([sys.executable, "-m", "evomerge", *argv, "--storage", url,
                                   "--results", str(other / "r"), "-q"], cwd=other,
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 2 and "another driver" in proc.stderr, proc.stderr
            assert _records(url) == before  # budget 400 and the first launch, unchanged
        assert before["evomerge_trials"] == 400 and first.poll() is None
        assert not (other / "r").exists()
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    assert _records(url)["evomerge_trials"] == 400
    assert os.path.exists(tmp_path / "study.db")
