"""The SQLite habits every database of an index shares: meta.sqlite (index/store.py, index/rows.py),
photo_info.sqlite (index/photoinfo.py), review.sqlite and labels.sqlite (app/review.py, app/labels.py).

- `connect`: connections with explicit transactions (isolation_level=None), usable from any thread.
- `transaction`: BEGIN IMMEDIATE ... COMMIT, rolled back on any failure, a failed COMMIT included.
- `snapshot`: several SELECTs that see one committed state.
- `select_in` / `execute_in`: `WHERE x IN (...)` over any number of values, in batches of `SQL_CHUNK`.
- `db_path` / `path_from_db`: how a file name is stored, so that any name round-trips.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

_T = TypeVar("_T")

# values per `IN (...)` query: under SQLITE_MAX_VARIABLE_NUMBER of SQLite before 3.32 (999), the oldest limit
# a user's Python may be built with
SQL_CHUNK = 900


def connect(db: str | os.PathLike[str], wal: bool = False, durable: bool = False) -> sqlite3.Connection:
    """A connection whose transactions are explicit (`transaction`, or BEGIN ... COMMIT), shared by threads
    (callers hold their own lock), waiting up to 30 s for another process's write.

    wal: readers (the page) never block the one writer, nor it them. durable: a COMMIT is on disk when it
    returns (synchronous=FULL), for the commit that names a new generation of the index.
    """
    conn = sqlite3.connect(str(db), isolation_level=None, check_same_thread=False, timeout=30)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    if durable:
        conn.execute("PRAGMA synchronous=FULL")
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """All of the block's writes land, or none. BEGIN IMMEDIATE takes the write lock at once (no deadlock
    between two readers that both decide to write); a COMMIT that fails (disk full, a deferred constraint) is
    rolled back too, so the connection never stays inside a transaction that would make every later write
    fail."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One committed state for several SELECTs (a writer's own open transaction already is one)."""
    if conn.in_transaction:
        yield conn
        return
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


def chunks(seq: Sequence[_T], n: int = SQL_CHUNK) -> Iterator[Sequence[_T]]:
    """`seq` in consecutive slices of at most `n`."""
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def select_in(conn: sqlite3.Connection, sql: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
    """The rows of `sql`, whose `IN ({})` takes `values`, asked in batches of SQL_CHUNK (in batch order).

    >>> select_in(conn, "SELECT id, path FROM images WHERE id IN ({})", ids)
    """
    out: list[tuple[Any, ...]] = []
    for chunk in chunks(values):
        out += conn.execute(sql.format(",".join("?" * len(chunk))), chunk).fetchall()
    return out


def execute_in(conn: sqlite3.Connection, sql: str, values: Sequence[Any]) -> None:
    """Run `sql` (a DELETE or UPDATE whose `IN ({})` takes `values`) in batches of SQL_CHUNK; the caller holds
    the transaction that makes the batches one change."""
    for chunk in chunks(values):
        conn.execute(sql.format(",".join("?" * len(chunk))), chunk)


def db_path(path: str | os.PathLike[str]) -> str | bytes:
    """A path as the databases store it: text when it is UTF-8, else the name's bytes (a BLOB).

    Names that are not UTF-8 reach Python as lone surrogates, which SQLite refuses ("surrogates not
    allowed"); their bytes round-trip exactly (`path_from_db`), and never equal any text path.
    """
    path = str(path)
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def path_from_db(value: str | bytes) -> str:
    """The str (what a folder scan gives) of a path stored by `db_path`."""
    return os.fsdecode(value) if isinstance(value, bytes) else value

