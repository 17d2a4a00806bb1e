"""One driver per study: a lease taken atomically, before anything is written to the study.

A lease is a numbered generation per study, created with the storage's own "create if
absent" -- a primary-key insert in SQLite or PostgreSQL (table ``evomerge_leases`` beside
Optuna's tables), a hard link to a new name beside a journal file (atomic on local disks
and NFS) -- so of N drivers starting at the same instant exactly one creates generation
g + 1 and the others are refused, having written nothing::

    lease = take_lease("sqlite:///results/s/study.db", "s")   # ConfigError if held
    try:
        ...                                                   # create / load, search
        lease.check()                                         # False once taken over
    finally:
        lease.release()

The newest generation is held while it is not released and its holder lives: its heartbeat
in the study (or the lease itself, before a first beat) is younger than ``STALE_SECONDS``,
and on this host its process exists (a Slurm job's own earlier run, requeued, has ended).
A driver killed with ``kill -9`` leaves its lease unreleased; the next driver takes
generation g + 1 once it is stale, with the same atomic create.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError

__all__ = ["Lease", "take_lease", "Holder"]

STALE_SECONDS = 120.0  # as the heartbeat's (evomerge.search.ledger.STALE_SECONDS)


@dataclass(frozen=True)
class Holder:
    """Who holds a generation: host, pid, Slurm job, a random token, when it was taken."""

    host: str
    pid: int
    slurm_job: str | None
    token: str
    taken: float
    released: bool = False

    @staticmethod
    def me() -> Holder:
        return Holder(socket.gethostname(), os.getpid(), os.environ.get("SLURM_JOB_ID"),
                      uuid.uuid4().hex, time.time())

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @staticmethod
    def from_json(text: str) -> Holder:
        d = json.loads(text)
        return Holder(str(d["host"]), int(d["pid"]), d.get("slurm_job"), str(d["token"]),
                      float(d["taken"]), bool(d.get("released", False)))

    def alive(self, heartbeat: float | None, now: float) -> bool:
        """Whether this holder may still be driving: not released, its process existing when
        it ran on this host, and its last sign of life -- the lease itself or the study's
        heartbeat -- younger than ``STALE_SECONDS`` (so a reused pid does not keep a dead
        driver's lease)."""
        if self.released:
            return False
        if self.host == socket.gethostname():
            if self.pid == os.getpid():
                return False  # this process, searching again: its earlier run has ended
            job = os.environ.get("SLURM_JOB_ID")
            if job and self.slurm_job == job:
                return False  # a requeued Slurm job: its previous run has ended
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                pass
        return now - max(self.taken, heartbeat or 0.0) < STALE_SECONDS


class _Backend:
    """Generations of a storage's leases: ``latest(study)`` and ``create(study, gen, holder)``
    (False when that generation exists already), ``mark_released(study, gen, holder)``."""

    def latest(self, study: str) -> tuple[int, Holder | None]:
        raise NotImplementedError

    def create(self, study: str, gen: int, holder: Holder) -> bool:
        raise NotImplementedError

    def mark_released(self, study: str, gen: int, holder: Holder) -> None:
        raise NotImplementedError


class _SqlLeases(_Backend):
    """The ``evomerge_leases`` table (study, generation, holder JSON) of an SQL storage."""

    TABLE = "evomerge_leases"

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine

        args = {"timeout": 60} if url.startswith("sqlite") else {}
        self.engine = create_engine(url, connect_args=args, poolclass=_null_pool())
        self._create_table()

    def _create_table(self, attempts: int = 5) -> None:
        from sqlalchemy import text
        from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

        ddl = (f"CREATE TABLE IF NOT EXISTS {self.TABLE} (study_name VARCHAR(512) NOT NULL, "
               "generation INTEGER NOT NULL, holder TEXT NOT NULL, "
               "PRIMARY KEY (study_name, generation))")
        for attempt in range(attempts):
            try:
                with self.engine.begin() as conn:
                    conn.execute(text(ddl))
                return
            except (IntegrityError, OperationalError, ProgrammingError):
                # PostgreSQL: two "IF NOT EXISTS" at once may collide in its catalog;
                # SQLite: a locked database. The other one made it: look again.
                if attempt == attempts - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))

    def latest(self, study: str) -> tuple[int, Holder | None]:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            row = conn.execute(text(f"SELECT generation, holder FROM {self.TABLE} WHERE "
                                    "study_name = :s ORDER BY generation DESC LIMIT 1"),
                               {"s": study}).first()
        return (0, None) if row is None else (int(row[0]), Holder.from_json(row[1]))

    def create(self, study: str, gen: int, holder: Holder) -> bool:
        from sqlalchemy import text
        from sqlalchemy.exc import IntegrityError

        try:
            with self.engine.begin() as conn:
                conn.execute(text(f"INSERT INTO {self.TABLE} (study_name, generation, holder) "
                                  "VALUES (:s, :g, :h)"),
                             {"s": study, "g": gen, "h": holder.to_json()})
        except IntegrityError:
            return False
        return True

    def mark_released(self, study: str, gen: int, holder: Holder) -> None:
        from sqlalchemy import text

        done = dataclasses.replace(holder, released=True)
        with self.engine.begin() as conn:
            conn.execute(text(f"UPDATE {self.TABLE} SET holder = :h WHERE study_name = :s AND "
                              "generation = :g"), {"h": done.to_json(), "s": study, "g": gen})


def _null_pool() -> Any:
    from sqlalchemy.pool import NullPool

    return NullPool  # a connection per operation: nothing held open between checks


class _FileLeases(_Backend):
    """``<journal>.leases/<study>.<generation>`` files, each created by an atomic link."""

    def __init__(self, journal: Path) -> None:
        self.dir = journal.with_name(journal.name + ".leases")

    def _gens(self, study: str) -> list[int]:
        if not self.dir.is_dir():
            return []
        prefix = f"{study}."
        return sorted(int(p.name[len(prefix):]) for p in self.dir.iterdir()
                      if p.name.startswith(prefix) and p.name[len(prefix):].isdigit())

    def latest(self, study: str) -> tuple[int, Holder | None]:
        gens = self._gens(study)
        if not gens:
            return 0, None
        path = self.dir / f"{study}.{gens[-1]}"
        for _ in range(50):  # a file just created may not hold its JSON yet
            try:
                return gens[-1], Holder.from_json(path.read_text())
            except (ValueError, KeyError):
                time.sleep(0.02)
        return gens[-1], Holder("?", -1, None, "?", time.time())  # unreadable: presume fresh

    def create(self, study: str, gen: int, holder: Holder) -> bool:
        """Write the holder to a file of our own, then hard-link it to the generation's name:
        ``link`` fails if the name exists (atomic on NFS too), and the file is whole
        whenever it is visible."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{study}.{gen}"
        tmp = self.dir / f".{study}.{gen}.{holder.token}"
        with open(tmp, "w") as fh:
            fh.write(holder.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def mark_released(self, study: str, gen: int, holder: Holder) -> None:
        path = self.dir / f"{study}.{gen}"
        tmp = self.dir / f".{study}.{gen}.{holder.token}"
        tmp.write_text(dataclasses.replace(holder, released=True).to_json())
        os.replace(tmp, path)


def _backend(url: str) -> _Backend:
    from evomerge.search.ledger import sql_url, storage_file

    if url.startswith("journal:"):
        return _FileLeases(storage_file(url))

    return _SqlLeases(sql_url(url))


@dataclass
class Lease:
    """Generation ``gen`` of study ``study``'s lease, held by this process."""

    backend: _Backend
    study: str
    gen: int
    holder: Holder
    released: bool = field(default=False)

    def check(self) -> bool:
        """Whether this lease is still the study's newest (another driver that took the
        study over, believing this one dead, makes it False)."""
        gen, holder = self.backend.latest(self.study)
        return gen == self.gen and holder is not None and holder.token == self.holder.token

    def release(self) -> None:
        """Give the study up (idempotent); a lease taken over since is left alone."""
        if not self.released and self.check():
            self.backend.mark_released(self.study, self.gen, self.holder)
        self.released = True


def take_lease(url: str, study: str, heartbeat: Any = None) -> Lease:
    """Take study ``study``'s lease in storage ``url``, or refuse with nothing written.

    Args:
        url: the study's storage URL (``sqlite:///``, ``postgresql://``, ``journal://``).
        study: the study's name.
        heartbeat: ``() -> float | None``, the time of the study's last driver heartbeat
            (how a holder on another host shows it is alive).

    Raises:
        ConfigError: a live driver holds the study, or another took it at the same instant.
    """
    backend = _backend(url)
    gen, holder = backend.latest(study)
    now = time.time()
    if holder is not None and holder.alive(heartbeat() if heartbeat else None, now):
        raise ConfigError(_held(study, holder, now))
    me = Holder.me()
    if not backend.create(study, gen + 1, me):
        _, other = backend.latest(study)
        raise ConfigError(_held(study, other, now) if other else
                          f"Study {study!r} was taken by another driver at the same instant.")
    return Lease(backend, study, gen + 1, me)


def _held(study: str, holder: Holder, now: float) -> str:
    return (f"Study {study!r} is being searched by another driver (host {holder.host}, pid "
            f"{holder.pid}, since {now - holder.taken:.0f} s ago); nothing was changed. Stop "
            f"it first, or if it died on another host, resume once its heartbeat is "
            f"{STALE_SECONDS:.0f} s old.")
