"""Ids held for their paths while an index is re-embedded with a new encoder, so each photo keeps its id.

`Store.reset` empties the index for a new encoder and reserves every path's id (the `reserved` table of
meta.sqlite); `Store.add` gives a reserved path its old id back (`take`), so labels keyed by id stay with
their photos (app/labels.py). A rebuild that finishes forgets the reservations of paths gone from the folder
(`release`); paths under other folders keep theirs until they are indexed. All of it is committed with the
rest of the store's changes by the next `save()`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from index.database import execute_in, path_from_db

if TYPE_CHECKING:
    from index.store import Store


def reserve_all(conn: sqlite3.Connection) -> None:
    """Reserve the id of every photo row (inside the writer's transaction, before the rows are deleted)."""
    conn.execute("INSERT OR REPLACE INTO reserved(path, id) SELECT path, id FROM images")


def take(conn: sqlite3.Connection, path: str | bytes) -> int | None:
    """The id reserved for `path` (as `db_path` stores it), no longer reserved; None when it has none."""
    row = conn.execute("SELECT id FROM reserved WHERE path=?", (path,)).fetchone()
    if row is None:
        return None
    conn.execute("DELETE FROM reserved WHERE path=?", (path,))
    return int(row[0])


def paths(store: Store) -> list[str]:
    """Paths whose ids `reset` holds for them until they are added again."""
    with store.reading() as conn:
        return [path_from_db(p) for (p,) in conn.execute("SELECT path FROM reserved")]


def release(store: Store, keep_paths: Iterable[str | Path] = (), under: str | Path | None = None) -> None:
    """Forget ids reserved by `reset` for paths other than `keep_paths` (files gone from the folder; a set or
    dict of absolute paths, else any paths); with `under`, only for paths inside that folder (other folders
    keep theirs until they are indexed)."""
    prefix = None if under is None else os.fsencode(str(Path(under).absolute()).rstrip("/") + "/")
    with store.reading() as conn:
        if conn.execute("SELECT 1 FROM reserved LIMIT 1").fetchone() is None:
            return  # nothing reserved (no reset): no set of the folder's paths is made
        # a set or dict of absolute paths is used as it is: at millions of photos a copy would cost GBs
        keep = keep_paths if isinstance(keep_paths, (set, frozenset, dict)) else \
            {str(Path(p).absolute()) for p in keep_paths}
        gone = [p for (p,) in conn.execute("SELECT path FROM reserved") if path_from_db(p) not in keep
                and (prefix is None or os.fsencode(path_from_db(p)).startswith(prefix))]
    if gone:
        with store.changing() as conn:
            execute_in(conn, "DELETE FROM reserved WHERE path IN ({})", gone)
