"""Studies in a real PostgreSQL server (``scripts/postgres.sh start``; CI runs it): kill -9 and
resume, a second driver refused, the dashboard listing and resuming; and the two one-line
errors (no server, no driver), which need no server.

The server tests skip without ``EVOMERGE_TEST_POSTGRES`` (a URL whose role may create
databases), unless ``EVOMERGE_REQUIRE_POSTGRES=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest
import yaml
from optuna.trial import TrialState

from evomerge.cli import main
from evomerge.errors import ConfigError
from evomerge.search.ledger import counted, load_study, open_storage

from .spaces import space_dict

SERVER = os.environ.get("EVOMERGE_TEST_POSTGRES")


@pytest.fixture()
def pg_url():
    """A fresh database on the test server, dropped afterwards."""
    if not SERVER:
        if os.environ.get("EVOMERGE_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is required here: bash scripts/postgres.sh start")
        pytest.skip("no PostgreSQL server (EVOMERGE_TEST_POSTGRES)")
    import psycopg

    name = f"evomerge_t_{uuid.uuid4().hex[:10]}"
    conninfo = SERVER.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = re.sub(r"/[^/]*$", f"/{name}", SERVER)
    yield url
    if url in _STORES:
        _STORES.pop(url).engine.dispose()
    with psycopg.connect(conninfo, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# One storage per test database, reused by every poll: a storage opened per poll leaves its
# pooled connection open until the garbage collector finds the engine's reference cycle, and
# polling every 0.1 s in a long pytest process ran the server out of connections (CI: the
# polls then failed, the kill came after the search had finished, "assert 40 < 40").
_STORES: dict = {}


def _study(url, name="t"):
    if url not in _STORES:
        _STORES[url] = open_storage(url)
    return load_study(_STORES[url], name)


def _complete(url) -> int:
    try:
        study = _study(url)
    except ConfigError:  # the search has not created it yet
        return 0
    return sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))


def _cli_search(space_file, url, root, trials):
    return subprocess.Popen([sys.executable, "-m", "evomerge", "search", str(space_file),
                             "--storage", url, "--results", str(root), "--trials", str(trials),
                             "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait(url, n, proc, limit=180.0) -> None:
    """Until ``n`` trials are complete, with the search still running."""
    start = time.time()
    while (done := _complete(url)) < n and time.time() < start + limit and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, proc.stderr.read().decode()
    assert done >= n, f"{done} of {n} trials complete after {time.time() - start:.0f} s"


def _check_exact(url, budget) -> None:
    trials = _study(url).get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    evaluated = [t for t in trials if counted(t)]
    assert len(evaluated) == budget and all(t.state == TrialState.COMPLETE for t in evaluated)
    assert len({t.user_attrs["recipe_hash"] for t in evaluated}) == budget  # none twice


@pytest.mark.slow
@pytest.mark.e2e
def test_kill_9_then_resume_on_postgres(mini_zoo, tmp_path, pg_url):
    space_file = tmp_path / "s.yaml"
    space_file.write_text(yaml.safe_dump(space_dict(mini_zoo, budget={"trials": 40})))
    proc = _cli_search(space_file, pg_url, tmp_path / "r", 40)
    _wait(pg_url, 5, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _complete(pg_url)
    assert 5 <= killed_at < 40
    assert main(["resume", "t", "--storage", pg_url, "--results", str(tmp_path / "r"),
                 "-q"]) == 0
    _check_exact(pg_url, 40)


@pytest.mark.slow
@pytest.mark.e2e
def test_a_second_driver_is_refused_then_resume_completes(mini_zoo, tmp_path, pg_url, capsys):
    """Two drivers on one study would both spend its budget: the second is refused with one
    sentence while the first's heartbeat is fresh; after the first stops, resume finishes."""
    space_file = tmp_path / "s.yaml"
    space_file.write_text(yaml.safe_dump(space_dict(mini_zoo, budget={"trials": 30})))
    first = _cli_search(space_file, pg_url, tmp_path / "r", 30)
    _wait(pg_url, 3, first)
    code = main(["search", str(space_file), "--storage", pg_url, "--results",
                 str(tmp_path / "r2"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "is being searched by another driver" in err
    assert f"pid {first.pid}" in err and len(err.strip().splitlines()) == 1
    assert first.poll() is None  # the first driver was not disturbed
    first.send_signal(signal.SIGTERM)  # as Slurm or kill does: the study records it
    assert first.wait(timeout=60) == 130  # stopped cleanly (interrupted), not killed
    assert _study(pg_url).user_attrs["evomerge_driver"]["state"] == "interrupted"
    assert main(["resume", "t", "--storage", pg_url, "--results", str(tmp_path / "r"),
                 "-q"]) == 0
    _check_exact(pg_url, 30)


@pytest.mark.slow
@pytest.mark.e2e
def test_dashboard_lists_and_resumes_a_postgres_study(mini_zoo, tmp_path, pg_url):
    from evomerge.commands import search
    from evomerge.dashboard.catalog import Catalog, study_overview
    from evomerge.dashboard.server import create_app

    space_file = tmp_path / "s.yaml"
    space_file.write_text(yaml.safe_dump(space_dict(mini_zoo, budget={"trials": 10})))

    def stop(info):
        if info["done"] >= 4:
            raise KeyboardInterrupt

    search(str(space_file), storage=pg_url, results=str(tmp_path / "r"), progress=stop)
    catalog = Catalog(storages=[pg_url], results=tmp_path / "nothing")
    [(url, study)] = catalog.studies()
    row = study_overview(url, study)
    assert (row["name"], row["done"], row["budget"]) == ("t", 4, 10)
    app = create_app(catalog)
    c = app.test_client()
    page = c.get("/").get_data(as_text=True)
    assert "4 / 10" in page
    r = c.post("/resume", data={"storage": pg_url, "name": "t",
                                "csrf": app.config["CSRF_TOKEN"]})
    assert r.status_code == 303 and "Resumed+locally" in r.headers["Location"]
    deadline = time.time() + 180
    while time.time() < deadline:
        info = _study(pg_url).user_attrs.get("evomerge_driver", {})
        if info.get("state") == "budget":
            break
        time.sleep(1)
    _check_exact(pg_url, 10)


def test_unreachable_server_is_one_line(capsys):
    url = "postgresql://someone:s3cret@127.0.0.1:1/nowhere"
    assert main(["status", "t", "--storage", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("evomerge: error: Cannot reach the PostgreSQL server of storage "
                          "'postgresql://someone:***@127.0.0.1:1/nowhere' at 127.0.0.1:1 ")
    assert "s3cret" not in err and len(err.splitlines()) == 1


def test_missing_driver_is_one_line(capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("psycopg", "psycopg2") else real(name, *a))
    assert main(["status", "t", "--storage", "postgresql://u:pw@127.0.0.1/db"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("evomerge: error: Storage 'postgresql://u:***@127.0.0.1/db' needs a "
                   "PostgreSQL driver, and none is installed: pip install 'evomerge[postgres]' "
                   "(psycopg 3).")
