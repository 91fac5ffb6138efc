"""Optuna's journal storage kept in one PostgreSQL table: the fast storage for a cluster's driver.

Optuna's RDB storage maps a study onto a dozen ORM tables: asking, sampling and telling one trial takes
about 40 SQL statements, most inside their own transaction, and the ORM's CPU on top (measured in
docs/BENCHMARKS.md). Optuna's `JournalStorage` instead appends one small JSON record per operation to a log
and keeps the study's state in memory, replaying the log it has not seen yet before each operation. This
module gives that journal a PostgreSQL home, so a cluster's study lives in its server database as before:

* one table ``geonas_optuna_journal(seq bigint primary key, log text)``; ``seq`` numbers the records 0, 1, 2, ...
  without gaps, as the journal needs;
* an append is one ``INSERT ... SELECT max(seq) + 1`` statement: under READ COMMITTED a writer only sees
  committed records, so record k is inserted only after record k - 1 is visible to everyone, and two
  writers that pick the same number collide on the primary key; the loser retries with the next number;
* a read is one ``SELECT ... WHERE seq >= n``, except right after this process's own append when nothing
  was appended before it since the last read: Optuna's journal reads the log after every write, and then the
  records just written (numbered n, n + 1, ... by the append's ``RETURNING seq``) are the answer, without a
  round trip. Records others appended after them come with the next read, as if it had read a moment sooner.

Selected by the storage URL ``journal+postgresql://user:password@host:port/database`` (the rest of the URL
as libpq takes it). Several processes can share it (drivers, ``nas front``, ``nas sync``): every one
replays the log. A lost connection is reopened once per operation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from optuna.storages.journal import BaseJournalBackend

__all__ = ["JOURNAL_SCHEME", "PostgresJournalBackend", "is_journal_url", "libpq_url"]

JOURNAL_SCHEME = "journal+postgresql://"
TABLE = "geonas_optuna_journal"

_CREATE = f"CREATE TABLE IF NOT EXISTS {TABLE} (seq bigint PRIMARY KEY, log text NOT NULL)"
_READ = f"SELECT log FROM {TABLE} WHERE seq >= %s ORDER BY seq"
_FIND = f"SELECT 1 FROM {TABLE} WHERE log = %s LIMIT 1"
_APPEND = (f"INSERT INTO {TABLE} (seq, log) "
           f"SELECT base.next + item.ord - 1, item.log "
           f"FROM (SELECT coalesce(max(seq) + 1, 0) AS next FROM {TABLE}) AS base, "
           f"unnest(%s::text[]) WITH ORDINALITY AS item(log, ord) RETURNING seq")


def is_journal_url(url: str) -> bool:
    return url.startswith(JOURNAL_SCHEME)


def libpq_url(url: str) -> str:
    """``journal+postgresql://...`` as the plain ``postgresql://...`` URL that libpq and SQLAlchemy take."""
    return url[len("journal+"):] if is_journal_url(url) else url


class PostgresJournalBackend(BaseJournalBackend):
    """Optuna journal records in one PostgreSQL table (see the module docstring).

    Args:
        url: ``journal+postgresql://...`` or ``postgresql://...`` (libpq form: user, password, host, port,
            database and query options such as ``sslmode``).
        retries: how often an append retries after another writer took the same record number.
    """

    def __init__(self, url: str, retries: int = 50) -> None:
        self._url = libpq_url(url)
        self._retries = retries
        self._connection: Any = None
        # (first record number, records) of this process's last append, until the next read
        self._own: tuple[int, list[dict[str, Any]]] | None = None
        import psycopg

        try:
            self._run(lambda cursor: cursor.execute(_CREATE))
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
            pass  # another process created the table at the same moment (IF NOT EXISTS is not atomic)

    # A storage travels to other processes by pickling (Optuna does this for its own workers): drop the connection.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_connection"] = None
        return state

    def _connect(self) -> Any:
        import psycopg

        if self._connection is None or self._connection.closed:
            self._connection = psycopg.connect(self._url, autocommit=True)
        return self._connection

    def _run(self, work: Any, done: Any = None) -> Any:
        """Run `work(cursor)` in autocommit mode. A connection lost since the last call (a server restart, an
        idle timeout) is reopened once; `done(cursor)` then says whether the lost call had in fact completed."""
        import psycopg

        try:
            with self._connect().cursor() as cursor:
                return work(cursor)
        except psycopg.OperationalError:
            if self._connection is not None:
                self._connection.close()
            self._connection = None
        with self._connect().cursor() as cursor:
            if done is not None and done(cursor):
                return None
            return work(cursor)

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        own, self._own = self._own, None
        if own is not None and own[0] == log_number_from:
            return own[1]

        def read(cursor: Any) -> list[dict[str, Any]]:
            cursor.execute(_READ, (log_number_from,))
            return [json.loads(row[0]) for row in cursor.fetchall()]

        return self._run(read)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        import psycopg

        texts = [json.dumps(log, separators=(",", ":")) for log in logs]
        self._own = None
        for attempt in range(self._retries + 1):
            try:
                # After a lost connection the insert may have committed before the answer was lost: look first,
                # so that a record is never appended twice (its numbers are then unknown: the next read asks).
                numbers = self._run(lambda cursor: [row[0] for row in cursor.execute(_APPEND, (texts,)).fetchall()],
                                    done=lambda cursor: cursor.execute(_FIND, (texts[-1],)).fetchone() is not None)
                if numbers:
                    # What a read would return: the stored text, parsed.
                    self._own = (min(numbers), [json.loads(text) for text in texts])
                return
            except psycopg.errors.UniqueViolation:
                if attempt == self._retries:
                    raise
                time.sleep(0.001 * (attempt + 1))  # another writer took the number: take the next one

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
