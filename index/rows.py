"""The photo rows of an index without its vectors: what the label database follows photos by.

`Rows` reads INDEX_DIR/meta.sqlite (the store's table of photos: id, path, content hash) through a
connection of its own, without loading FAISS, so app/labels.py can match labels with photos by content and
path after any update or rebuild (see its module docstring).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from index import database
from index.database import db_path, path_from_db


class Rows:
    """The photo rows of INDEX_DIR/meta.sqlite without the vectors: a light, read-only view for the label
    database, which follows photos by content and path across updates and rebuilds (app/labels.py).

    Reopens the database when the file is replaced (an index deleted and built again), and reads the live
    rows: every saved generation's rows are there, under ids that stay the photo's own.
    """

    def __init__(self, index_dir: str | Path):
        self.db = Path(index_dir) / "meta.sqlite"
        self._conn: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None
        self._lock = threading.RLock()

    def _connection(self) -> sqlite3.Connection | None:
        try:
            st = os.stat(self.db)
        except OSError:
            self.close()
            return None
        if self._conn is None or self._inode != (st.st_dev, st.st_ino):
            self.close()
            # read-write mode though only read: a read-only connection cannot open a WAL database whose
            # -shm file is gone (the writer removes it on closing)
            self._conn = database.connect(self.db)
            self._inode = (st.st_dev, st.st_ino)
        return self._conn

    def state(self) -> tuple[float, int] | None:
        """(created_at, generation) of the index now, or None when there is no readable index."""
        with self._lock:
            try:
                conn = self._connection()
                if conn is None:
                    return None
                meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('created_at', 'generation')"))
                return float(meta["created_at"]), int(meta["generation"])
            except (sqlite3.Error, KeyError, ValueError):
                self.close()
                return None

    def by_id(self, ids: Iterable[int]) -> dict[int, tuple[str | None, str, float | None]]:
        """{id: (sha256, path, added_at)} of those ids in the index now."""
        out: dict[int, tuple[str | None, str, float | None]] = {}
        with self._lock:
            conn = self._connection()
            if conn is None:
                return out
            q = "SELECT id, sha256, path, added_at FROM images WHERE id IN ({})"
            out.update({i: (h, path_from_db(p), a)
                        for i, h, p, a in database.select_in(conn, q, sorted({int(i) for i in ids}))})
        return out

    def ids_of(self, sha256s: Iterable[str] = (),
               paths: Iterable[str] = ()) -> tuple[dict[str, list[tuple[int, str]]], dict[str, int]]:
        """({sha256: [(id, path), ...]}, {path: id}) of the rows with those contents or paths."""
        by_hash: dict[str, list[tuple[int, str]]] = {}
        by_path: dict[str, int] = {}
        with self._lock:
            conn = self._connection()
            if conn is None:
                return by_hash, by_path
            q = "SELECT sha256, id, path FROM images WHERE sha256 IN ({}) ORDER BY id"
            for h, i, p in database.select_in(conn, q, sorted(set(sha256s))):
                by_hash.setdefault(h, []).append((i, path_from_db(p)))
            q = "SELECT path, id FROM images WHERE path IN ({})"
            names = sorted({db_path(p) for p in paths}, key=repr)
            by_path.update({path_from_db(p): i for p, i in database.select_in(conn, q, names)})
        return by_hash, by_path

    def snapshot(self) -> _RowsSnapshot:
        """A context in which every read sees one committed state of the database."""
        return _RowsSnapshot(self)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn, self._inode = None, None


class _RowsSnapshot:
    def __init__(self, rows: Rows):
        self.rows = rows

    def __enter__(self) -> Rows:
        self.rows._lock.acquire()
        conn = self.rows._connection()
        self.began = conn is not None
        if conn is not None:
            conn.execute("BEGIN")
        return self.rows

    def __exit__(self, *exc: object) -> None:
        try:
            if self.began and self.rows._conn is not None and self.rows._conn.in_transaction:
                self.rows._conn.execute("COMMIT")
        finally:
            self.rows._lock.release()
