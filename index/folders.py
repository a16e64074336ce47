"""Where the indexed photos are, asked of the index's `images.path` column without holding every row in memory.

  root(store)               the deepest folder holding every photo: the first and last paths in the path
                            index's order (a few index seeks), since every path between them shares their prefix
  ids_under(store, folder)  the ids of the photos in a folder and the folders inside it: one range of the path
                            index (text paths, then the BLOB paths of names that are not UTF-8)
  rows_under(store, folder) the same photos' (path, id, size, mtime_ns), read in batches along that range: what
                            an update compares the folder with (index/build.py)
  folders(store, root)      the folders below `root` that hold photos, and their parents: the paths read in
                            batches of ids (the store's lock is held per batch, so searches go on meanwhile)

At 10,000,000 photos a dict of every path (what an update compared a folder with before) takes ~5 GB;
these take what their answer takes. Paths are stored as text, or as BLOBs of the name's bytes
(index/database.py db_path); SQLite orders every text before every BLOB, and both by their bytes, so a folder's
paths are one range of each kind: from "folder/" up to "folder0" ("0" follows "/").
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from index.database import path_from_db

if TYPE_CHECKING:
    from index.store import Store

BATCH = 50_000  # paths read per batch by `folders`


def root(store: Store) -> str:
    """The deepest folder holding every indexed photo ("" when there are none, or no folder is common)."""
    with store.reading() as conn:
        ends = [conn.execute("SELECT min(path) FROM images").fetchone()[0],
                conn.execute("SELECT max(path) FROM images WHERE path < x''").fetchone()[0],  # the last text
                conn.execute("SELECT min(path) FROM images WHERE path >= x''").fetchone()[0],  # the first BLOB
                conn.execute("SELECT max(path) FROM images").fetchone()[0]]
    parents = sorted({os.path.dirname(path_from_db(p)) for p in ends if p is not None})
    try:
        return os.path.commonpath(parents) if parents else ""
    except ValueError:  # relative and absolute paths mixed: no common folder
        return ""


def _ranges(folder: str) -> list[tuple[str | bytes, str | bytes, str | bytes]]:
    """(from, up to, the folder itself) of the paths under `folder`: text paths, then BLOB paths."""
    folder = folder.rstrip("/") or "/"
    inside = folder if folder == "/" else folder + "/"
    b = os.fsencode(inside)
    ranges: list[tuple[str | bytes, str | bytes, str | bytes]] = [(b, b[:-1] + b"0", os.fsencode(folder))]
    try:
        folder.encode("utf-8")
        ranges.insert(0, (inside, inside[:-1] + "0", folder))
    except UnicodeEncodeError:  # a folder name that is not UTF-8: its photos are all BLOB paths
        pass
    return ranges


def ids_under(store: Store, folder: str) -> np.ndarray:
    """Ids (ascending) of the photos whose path is `folder` itself or lies below it (`folder` absolute)."""
    out: list[int] = []
    with store.reading() as conn:
        for lo, hi, exact in _ranges(folder):
            out += [r[0] for r in conn.execute("SELECT id FROM images WHERE (path >= ? AND path < ?) OR path = ?",
                                               (lo, hi, exact))]
    return np.unique(np.asarray(out, np.int64))


def rows_under(store: Store, folder: str, batch: int = BATCH) -> Iterator[tuple[str, int, int | None, int | None]]:
    """(path, id, size, mtime_ns) of every photo below `folder` (absolute), in the path index's order, read
    `batch` rows at a time (each batch one range read under the store's lock)."""
    for lo, hi, _ in _ranges(folder):
        after, strict = lo, False
        while True:
            with store.reading() as conn:
                rows = conn.execute(f"SELECT path, id, size, mtime_ns FROM images WHERE path {'>' if strict else '>='} ? "
                                    "AND path < ? ORDER BY path LIMIT ?", (after, hi, batch)).fetchall()
            for path, i, size, mtime in rows:
                yield path_from_db(path), i, size, mtime
            if len(rows) < batch:
                break
            after, strict = rows[-1][0], True


def folders(store: Store, top: str, limit: int = 2000) -> list[str]:
    """The folders below `top` that hold photos, and their parents, relative to `top` (at most `limit`, sorted;
    the scan stops once it has found that many)."""
    out: set[str] = set()
    top = top.rstrip("/") + "/" if top else ""
    last_id, current = -1, None
    while len(out) < limit:
        with store.reading() as conn:
            rows = conn.execute("SELECT id, path FROM images WHERE id > ? ORDER BY id LIMIT ?", (last_id, BATCH)).fetchall()
        if not rows:
            break
        last_id = rows[-1][0]
        for _, p in rows:
            p = path_from_db(p)
            if current is not None and p.startswith(current) and p.find("/", len(current)) < 0:
                continue  # the folder of the photo before (photos of a folder mostly have consecutive ids)
            parent = os.path.dirname(p)
            current = parent + "/"
            if top and parent.startswith(top):
                parts = parent[len(top):].split("/")
                out.update("/".join(parts[:j]) for j in range(1, len(parts) + 1))
            if len(out) >= limit:
                break
    return sorted(out)[:limit]
