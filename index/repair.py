"""Opening an index to re-embed it with an encoder (`index --rebuild`), repairing what `Store.open` refuses.

The advice 'rebuild it with --rebuild' must work on the very index that got it: vectors missing or from
another save, an older format, a database that is not an index at all. The rows (and so each path's id,
reserved by `Store.reset`: index/reservations.py) are kept when the database is readable; a database that is
not one of ours is moved aside to meta.sqlite.broken-<time> and a new index is made. Labels follow photos by
content (app/labels.py), so they survive either way.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from index import database
from index.store import (
    STORE_FORMAT,
    Store,
    StoreError,
    StoreLocked,
    new_meta,
    take_writer_lock,
)

log = logging.getLogger(__name__)


def open_for_rebuild(index_dir: str | Path, dim: int, model_sha256: str, model_path: str | Path,
                     preprocess: dict[str, Any]) -> Store:
    """Open (or create) an index to re-embed with an encoder, emptied by `Store.reset`, ready for writing."""
    index_dir = Path(index_dir).absolute()
    meta = (dim, model_sha256, model_path, preprocess)
    if not Store.exists(index_dir):
        return Store.create(index_dir, *meta)
    store: Store | None
    try:
        store = Store.open(index_dir, writable=True)
    except StoreLocked:
        raise
    except (StoreError, sqlite3.DatabaseError, ValueError, KeyError) as e:
        store = _salvage(index_dir, e)
        if store is None:
            return Store.create(index_dir, *meta)
    store.reset(*meta)
    return store


def _salvage(index_dir: Path, error: BaseException) -> Store | None:
    """A writable store over a database whose vectors cannot be loaded, or None after moving a database
    that is not ours aside."""
    lock_fd = take_writer_lock(index_dir)
    conn = None
    try:
        conn = database.connect(index_dir / "meta.sqlite", durable=True)
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        conn.execute("SELECT id, path, size, mtime_ns, sha256, width, height, added_at FROM images LIMIT 1")
        if meta.get("format") != STORE_FORMAT:
            raise StoreError(f"format {meta.get('format')!r}")
        log.warning("%s: %s; rebuilding it, keeping its rows", index_dir, error)
        return Store.without_vectors(index_dir, conn, lock_fd, {**new_meta(1, "", "", {}), **meta})
    except (StoreError, sqlite3.DatabaseError, ValueError) as e:
        if conn is not None:
            conn.close()
        os.close(lock_fd)
        _move_aside(index_dir, e)
        return None
    except BaseException:
        if conn is not None:
            conn.close()
        os.close(lock_fd)
        raise


def _move_aside(index_dir: Path, error: BaseException) -> None:
    aside = index_dir / f"meta.sqlite.broken-{time.strftime('%Y%m%d-%H%M%S')}"
    log.warning("%s: meta.sqlite is not a usable index (%s); moved to %s, building a new index",
                index_dir, error, aside.name)
    os.replace(index_dir / "meta.sqlite", aside)
    for suffix in ("-wal", "-shm"):
        (index_dir / f"meta.sqlite{suffix}").unlink(missing_ok=True)
