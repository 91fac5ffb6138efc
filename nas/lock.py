"""One driver per study: a lock that the operating system or the database releases when the driver dies.

A second `nas search` on a study that a live driver holds refuses with `StudyInUseError`. A driver that
was killed (SIGKILL, a lost node) holds nothing any more, so the next run takes the lock and resumes.

* SQLite storage: an exclusive ``flock`` on a file beside the database (released by the kernel when the
  process ends, however it ends).
* PostgreSQL storage: a session-level advisory lock held on a dedicated connection (released by the
  server when the connection drops).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from nas.config import mask_secrets
from nas.errors import StudyInUseError

__all__ = ["StudyLock"]

log = logging.getLogger(__name__)


def _lock_key(study_name: str) -> int:
    # A signed 63-bit key for pg_try_advisory_lock(bigint), stable across processes and machines.
    return int.from_bytes(hashlib.sha256(f"geonas:{study_name}".encode()).digest()[:8], "big") & 0x3FFFFFFFFFFFFFFF


class StudyLock:
    """Exclusive ownership of a study by one driver process.

    Args:
        storage: the Optuna storage URL (secrets expanded).
        study_name: the study to lock.
    """

    def __init__(self, storage: str, study_name: str) -> None:
        self.storage = storage
        self.study_name = study_name
        self._file: Any = None
        self._connection: Any = None

    def _holder(self) -> str:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def acquire(self) -> "StudyLock":
        """Take the lock, or raise `StudyInUseError` naming who holds it."""
        if self.storage.startswith("sqlite:///"):
            self._acquire_file(Path(self.storage[len("sqlite:///"):]))
        elif self.storage.startswith(("postgresql", "journal+postgresql")):
            self._acquire_postgres()
        else:
            log.warning("no driver lock for %s storage: make sure one driver at a time runs study %r",
                        self.storage.split(":", 1)[0], self.study_name)
        return self

    def _refuse(self, holder: str) -> None:
        try:
            who = json.loads(holder)
            detail = f"pid {who['pid']} on {who['host']} since {who['since']}"
        except (ValueError, KeyError, TypeError):
            detail = "another process"
        raise StudyInUseError(
            f"study {self.study_name!r} in {mask_secrets(self.storage)} is being driven by {detail}; "
            f"a second driver would duplicate trials. Stop that driver first (when it has died, rerun this "
            f"command: the lock is released with it and the study resumes)")

    def _acquire_file(self, database: Path) -> None:
        database.parent.mkdir(parents=True, exist_ok=True)
        path = database.with_name(f"{database.name}.{self.study_name}.lock")
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read()
            handle.close()
            self._refuse(holder)
        handle.seek(0)
        handle.truncate()
        handle.write(self._holder())
        handle.flush()
        self._file = handle

    def _acquire_postgres(self) -> None:
        import sqlalchemy

        from nas.journal import libpq_url

        engine = sqlalchemy.create_engine(libpq_url(self.storage), poolclass=sqlalchemy.pool.NullPool)
        connection = engine.connect()
        key = _lock_key(self.study_name)
        got = connection.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        if not got:
            holder = connection.execute(sqlalchemy.text(
                "SELECT a.client_addr::text, a.pid, a.backend_start::text FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND "
                "((l.classid::bigint << 32) | l.objid::bigint) = :k LIMIT 1"), {"k": key}).first()
            connection.close()
            engine.dispose()
            detail = json.dumps({"host": str(holder[0] or "local"), "pid": f"server backend {holder[1]}",
                                 "since": holder[2]}) if holder else ""
            self._refuse(detail)
        connection.commit()
        self._connection = (engine, connection)

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        if self._connection is not None:
            engine, connection = self._connection
            try:
                import sqlalchemy

                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _lock_key(self.study_name)})
                connection.close()
            finally:
                engine.dispose()
            self._connection = None

    def __enter__(self) -> "StudyLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
