"""The study is the ledger: every candidate is an Optuna trial in an Optuna storage (SQLite,
a journal file, PostgreSQL). What evomerge stores in it, and how to read it, is
:mod:`evomerge.search.records`. A trial that was RUNNING when its driver died is failed on
resume as interrupted and does not count as an evaluation; its candidate is asked again.
"""

from __future__ import annotations

import json
import os
import socket
import time
import weakref
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError
from evomerge.names import check_name
from evomerge.search.records import INTERRUPTED, StudyRecord, T, TrialRecord, counted, told_values
from evomerge.search.space import SearchSpace

__all__ = ["results_dir", "default_storage", "open_storage", "create_or_load", "load_study",
           "counted", "fail_interrupted", "space_of", "INTERRUPTED", "driver_state",
           "shown", "STALE_SECONDS", "told_values", "sql_url", "last_heartbeat", "close_storages",
           "storage_file", "default_journal", "default_storages", "default_files", "existing_default",
           "open_existing", "refuse_other_space"]

def results_dir(study: str, root: str | Path = "results") -> Path:
    """``root/<study>``; the study name is a safe name (:mod:`evomerge.names`), so this is
    always a directory directly under ``root``."""
    return Path(root) / check_name(study, "study name")


def last_heartbeat(storage: Any, name: str) -> float | None:
    """The time of study ``name``'s last driver heartbeat, or None (no such study, never
    driven); read only."""
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    beat = StudyRecord(study).driver.get("heartbeat")
    return float(beat) if isinstance(beat, (int, float)) else None


def default_storage(study: str, root: str | Path = "results") -> str:
    """SQLite file under ``results/<study>/`` (use a journal file on NFS, see ``open_storage``)."""
    return f"sqlite:///{_layout(study, root)[0]}"


def default_journal(study: str, root: str | Path = "results") -> str:
    """The journal file under ``results/<study>/`` that a Slurm job's study lives in (an
    absolute URL: the job's nodes read it from another working directory)."""
    return f"journal://{_layout(study, root)[1].resolve()}"


def default_storages(study: str, root: str | Path = "results") -> list[str]:
    """Where the default layout keeps ``study``: a local search's SQLite file, then a Slurm
    job's journal file (:func:`default_storage`, :func:`default_journal`)."""
    return [default_storage(study, root), default_journal(study, root)]


def default_files(study: str, root: str | Path = "results") -> str:
    """The files of :func:`default_storages`, as an error names them: ``results/NAME/study.db
    or results/NAME/journal.log``."""
    return " or ".join(map(str, _layout(study, root)))


def existing_default(study: str, root: str | Path = "results", choose: bool = True
                     ) -> str | None:
    """The storage URL of ``study``'s file in the default layout, the SQLite database or the
    journal, whichever exists; None when neither does.

    Raises:
        ConfigError: both exist (a local search and a Slurm job run under one name): two
            studies, and which one is meant is the user's to say, not this lookup's; with
            ``choose`` the message offers ``--storage`` (the command's own study is meant).
    """
    found = [url for url in default_storages(study, root) if storage_file(url).is_file()]
    if len(found) > 1:
        db, journal = _layout(study, root)
        how = f"pass --storage {found[0]} or --storage {found[1]}, or move one aside" \
            if choose else "move one of them aside"
        raise ConfigError(f"Study {study!r} has two files, {db} (a local search) and {journal} "
                          f"(a Slurm job); {how}.")
    return found[0] if found else None


def _layout(study: str, root: str | Path) -> tuple[Path, Path]:
    """The default layout's two files of ``study``: a local search's SQLite database and a
    Slurm job's journal, both in ``results/<study>/``."""
    folder = results_dir(study, root)
    return folder / "study.db", folder / "journal.log"


def storage_file(url: str) -> Path | None:
    """The file behind a journal or SQLite storage URL (a SQLite URL's options, ``?timeout=30``,
    left out); None for a database server."""
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:").removeprefix("//"))
    if url.startswith("sqlite:///"):
        from sqlalchemy.engine import make_url

        return Path(make_url(url).database)
    return None


def open_existing(url: str):
    """The storage at ``url``; None for a SQLite or journal file that does not exist (it
    holds no study, and opening it would create it: a refused command changes nothing)."""
    path = storage_file(url)
    if path is not None and not path.is_file():
        return None
    return open_storage(url)


def open_storage(url: str):
    """An Optuna storage from a URL: ``sqlite:///file.db``, ``postgresql://...``, or
    ``journal:///path/file.log`` (JournalFileStorage, safe on NFS / for Slurm jobs).

    Raises:
        ConfigError: the storage cannot be opened or reached.
    """
    import optuna

    try:
        path = storage_file(url)
        if url.startswith("journal:"):
            path.parent.mkdir(parents=True, exist_ok=True)
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("sqlite:///"):
            path.parent.mkdir(parents=True, exist_ok=True)
            _fast_sqlite()
        rdb = _postgres_url(url) if url.startswith(("postgresql", "postgres:")) else url
        return _rdb_storage(rdb)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 -- any driver error means "unreachable"
        raise ConfigError(_unreachable(url, exc)) from None


# The engines of the SQL storages this process opened, so a command can close them when it
# ends: an engine outlives its storage in a reference cycle, and its pool keeps connections
# (and SQLite's -wal/-shm files) until the garbage collector finds it, which for a command run
# in-process (tests, notebooks, the benchmarks) is at some unrelated later moment.
_ENGINES: weakref.WeakSet[Any] = weakref.WeakSet()


def close_storages() -> None:
    """Close the pooled connections of every SQL storage this process opened; a storage used
    again afterwards reconnects. ``evomerge``'s commands call it when they end."""
    for engine in list(_ENGINES):
        engine.dispose()


def sql_url(url: str) -> str:
    """The SQLAlchemy URL of an SQL storage URL (a PostgreSQL one with an installed
    driver), for evomerge's own table beside Optuna's (:mod:`evomerge.search.lease`)."""
    return _postgres_url(url) if url.startswith(("postgresql", "postgres:")) else url


def _rdb_storage(url: str, attempts: int = 5):
    """``RDBStorage(url)``, which creates the schema of a new database. Two processes opening
    one new database at once (a search and the dashboard, ``status``, a second job step)
    race to create it, and the loser fails with "table ... already exists", a duplicate
    schema version or a locked database (measured: 28% of simultaneous pairs on SQLite); it
    then retries, and finds the schema the winner made."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            storage = optuna.storages.RDBStorage(url, heartbeat_interval=None)
            _ENGINES.add(storage.engine)
            return storage
        except (OperationalError, IntegrityError) as exc:
            text = str(exc)
            racing = any(s in text for s in ("already exists", "alembic_version", "is locked"))
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def shown(url: str) -> str:
    """``url`` with its password masked, for messages and listings."""
    if "://" not in url or "@" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 -- not an SQLAlchemy URL: show it as given
        return url


def _postgres_url(url: str) -> str:
    """A PostgreSQL URL with an installed driver: ``postgresql://`` means psycopg2 to
    SQLAlchemy; with only psycopg 3 installed (``evomerge[postgres]``) it is used instead."""
    import importlib.util

    scheme, rest = url.split("://", 1)
    if "+" in scheme:
        return url  # the user chose a driver
    if importlib.util.find_spec("psycopg2") is not None:
        return url
    if importlib.util.find_spec("psycopg") is not None:
        return f"postgresql+psycopg://{rest}"
    raise ConfigError(f"Storage {shown(url)!r} needs a PostgreSQL driver, and none is "
                      "installed: pip install 'evomerge[postgres]' (psycopg 3).")


def _unreachable(url: str, exc: Exception) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    if url.startswith(("postgresql", "postgres:")) and type(exc).__name__ == "OperationalError":
        from sqlalchemy.engine import make_url

        u = make_url(url)
        reason = first.split(":", 2)[-1].strip() or "connection failed"
        return (f"Cannot reach the PostgreSQL server of storage {shown(url)!r} at "
                f"{u.host or 'localhost'}:{u.port or 5432} ({reason}); is it running, and are "
                "the host, port, user and password right?")
    return f"Cannot open storage {shown(url)!r}: {type(exc).__name__}: {first}".rstrip(": ")


_PRAGMAS_SET = False


def _fast_sqlite() -> None:
    """WAL journaling with synchronous=NORMAL for SQLite studies.

    Optuna commits every parameter of a trial separately; with SQLite's default rollback
    journal each commit fsyncs, which measured 0.43 s of driver time per 40-gene trial here
    (more than evaluating a zoo candidate); WAL + NORMAL measured 0.13 s. A committed trial
    still survives a crash or ``kill -9`` of the process; only an OS crash can lose the last
    commits.
    """
    global _PRAGMAS_SET
    if _PRAGMAS_SET:
        return
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 -- SQLAlchemy callback
        if isinstance(dbapi_conn, sqlite3.Connection):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    _PRAGMAS_SET = True


def create_or_load(storage, name: str, space: SearchSpace, sampler: Any, num_layers: int):
    """Create the study (recording the space) or load it; a different space is refused."""
    import optuna

    directions = [o.direction for o in space.objectives]
    study = optuna.create_study(storage=storage, study_name=name, directions=directions,
                                sampler=sampler, load_if_exists=True)
    record = StudyRecord(study)
    if not record.is_evomerge:
        record.set_space(space, num_layers)
    else:
        _same_space(record, name, space)
    return study


def refuse_other_space(storage, name: str, space: SearchSpace):
    """The existing study ``name`` (None when there is none yet), after refusing ``space``
    if that study searches another one; reading only (a driver checks this before it takes
    the study's lease: a refused command changes nothing)."""
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    record = StudyRecord(study)
    if record.is_evomerge:
        _same_space(record, name, space)
    return study


def _same_space(record: StudyRecord, name: str, space: SearchSpace) -> None:
    if not record.space.same_search(space):
        raise ConfigError(f"Study {name!r} exists with a different search space; resume it with "
                          f"`evomerge resume {name}` or choose another --study name.")


def load_study(storage, name: str, sampler: Any = None):
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise ConfigError(f"No study {name!r} in this storage. Studies: "
                          f"{', '.join(names) or 'none'}.") from None


def space_of(study) -> SearchSpace:
    """The search space stored with ``study`` (ConfigError if evomerge did not create it)."""
    return StudyRecord(study).space


def fail_interrupted(study) -> list:
    """Fail every RUNNING trial (its driver is gone) as interrupted; returns them."""
    from optuna.trial import TrialState

    from evomerge.compat import set_trial_attr

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        set_trial_attr(study, t, T.INTERRUPTED, True)  # FrozenTrials have no setters
        set_trial_attr(study, t, T.FAIL_REASON, INTERRUPTED)
        study.tell(t.number, state=TrialState.FAIL)
    return stale


def summary(study, trials: list | None = None) -> dict[str, Any]:
    """Counts of a study's trials (``trials`` if already read) by outcome."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    recs = [TrialRecord(t) for t in trials]
    return {
        "evaluations": sum(r.counted for r in recs),
        "complete": sum(r.state == "COMPLETE" and r.counted for r in recs),
        "failed": sum(r.state == "FAIL" and r.counted for r in recs),
        "pruned": sum(r.state == "PRUNED" and r.counted for r in recs),
        "running": sum(r.state == "RUNNING" for r in recs),
        "duplicates": sum(r.is_duplicate for r in recs),
        "interrupted": sum(r.interrupted for r in recs),
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False)


STALE_SECONDS = 120.0  # a driver whose heartbeat is older than this is presumed dead


def driver_state(study: Any, now: float | None = None) -> str:
    """"running" (a live driver), "stopped (<reason>)", "dead" (a running driver stopped
    reporting: killed) or "never" (no evomerge driver has run)."""
    info = StudyRecord(study).driver
    if not info:
        return "never"
    if info.get("state") != "running":
        return f"stopped ({info.get('state')})"
    now = time.time() if now is None else now
    if info.get("host") == socket.gethostname():
        try:
            os.kill(int(info["pid"]), 0)
        except (ProcessLookupError, ValueError):
            return "dead"
        except PermissionError:
            pass
    return "running" if now - float(info.get("heartbeat", 0)) < STALE_SECONDS else "dead"
