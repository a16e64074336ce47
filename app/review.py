"""Duplicate review: each group of near-duplicates side by side with the facts that tell a copy from a burst,
a keep / drop decision per photo, and a CSV of the decisions. Never deletes, moves or changes a photo.

Groups come from the store's near-duplicate search (app.search.duplicate_groups: cosine >= threshold, joined
transitively) and each member carries its index.photoinfo facts: bytes, pixels, date taken, folder. A
group's `kind` is a hint for a person: "identical files" (same content hash), "same photo, other sizes"
(taken at the same second, or same date and pixels differ: an export or a resize), "burst" (different files
taken within BURST_S seconds of each other), else "similar".

Decisions live in INDEX_DIR/review.sqlite, one row per photo: decisions(image_id, sha256, decision, at).
A decision holds the photo's content hash and is ignored once the photo at that id has other content (an
edited photo is reviewed again). Undecided photos get the default: keep the best of the group (most pixels,
then most bytes, then taken first, then the smaller id), drop the rest. `export_csv` writes every member of
every group with its decision (and whether a person made it), atomically (byol.fileio).
"""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from byol.fileio import atomic_write_bytes
from index.photoinfo import PhotoInfo, PhotoInfoCache

if TYPE_CHECKING:
    from index.store import Store

REVIEW_FILE = "review.sqlite"
DECISIONS = ("keep", "drop")
BURST_S = 10.0  # seconds between shots that a camera's burst or a quick reframing spans
_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
  image_id INTEGER PRIMARY KEY,
  sha256 TEXT,  -- the photo's content when decided: a decision never carries over to other content
  decision TEXT NOT NULL CHECK (decision IN ('keep', 'drop')),
  at REAL NOT NULL);
"""
CSV_FIELDS = ("group", "id", "path", "decision", "decided_by", "similarity", "size_bytes", "width", "height",
              "date_taken", "date_source", "folder", "kind")


@dataclass(frozen=True)
class Member:
    id: int
    info: PhotoInfo  # name, folder, bytes, pixels, date taken (index.photoinfo)
    similarity: float  # cosine to the group's first photo
    thumb: str  # thumbnail path (what the page shows beside a preview)
    sha256: str | None  # content hash from the index
    decision: str  # 'keep' or 'drop'
    decided: bool  # True when a person chose it, False for the default


@dataclass(frozen=True)
class Group:
    number: int  # 1-based position in the list (largest groups first)
    kind: str  # 'identical files', 'same photo, other sizes', 'burst' or 'similar'
    members: tuple[Member, ...]

    @property
    def ids(self) -> list[int]:
        return [m.id for m in self.members]


def default_keep(members: Iterable[tuple[int, PhotoInfo]]) -> int:
    """The photo to keep when nobody chose: most pixels, then most bytes, then taken first, then smallest id."""
    def rank(item: tuple[int, PhotoInfo]) -> tuple[int, int, str, int]:
        i, info = item
        return (-(info.width or 0) * (info.height or 0), -(info.size or 0), info.taken or "9999", i)

    return min(members, key=rank)[0]


def group_kind(infos: list[PhotoInfo], hashes: list[str | None]) -> str:
    if len(set(hashes)) == 1 and hashes[0]:
        return "identical files"
    times = sorted(t for t in (_seconds(i.taken) for i in infos) if t is not None)
    pixels = {(i.width, i.height) for i in infos}
    if len(times) == len(infos) and times[-1] - times[0] < 1 and len(pixels) > 1:
        return "same photo, other sizes"
    if len(times) == len(infos) and all(i.taken_source == "exif" for i in infos) and times[-1] - times[0] <= BURST_S:
        return "burst"
    return "similar"


def _seconds(iso: str | None) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso).timestamp() if iso else None
    except ValueError:
        return None


class Decisions:
    """Keep / drop per photo in INDEX_DIR/review.sqlite. Thread-safe; every change is one transaction."""

    def __init__(self, index_dir: str | Path):
        self.db = Path(index_dir) / REVIEW_FILE
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(self.db), isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def set(self, store: Store, ids: Iterable[int], decision: str) -> int:
        """Record `decision` ('keep' or 'drop') for photos; returns how many were recorded."""
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
        rows = store.rows(list(ids))
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?)",
                                       [(int(r["id"]), r["sha256"], decision, now) for r in rows])
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return len(rows)

    def keep_only(self, store: Store, group_ids: Iterable[int], keep: Iterable[int]) -> None:
        """Keep `keep` and drop the rest of the group, in one transaction's worth of changes."""
        keep = {int(i) for i in keep}
        group_ids = [int(i) for i in group_ids]
        self.set(store, [i for i in group_ids if i in keep], "keep")
        self.set(store, [i for i in group_ids if i not in keep], "drop")

    def clear(self, ids: Iterable[int]) -> None:
        rows = [(int(i),) for i in ids]
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.executemany("DELETE FROM decisions WHERE image_id = ?", rows)
            self._conn.execute("COMMIT")

    def get(self, store: Store, ids: Iterable[int]) -> dict[int, str]:
        """{id: decision} of the photos a person decided on, while their content is what it was."""
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        with self._lock:
            q = f"SELECT image_id, sha256, decision FROM decisions WHERE image_id IN ({','.join('?' * len(ids))})"
            got = {i: (h, d) for i, h, d in self._conn.execute(q, ids)}
        now = {int(r["id"]): r["sha256"] for r in store.rows(list(got))}
        return {i: d for i, (h, d) in got.items() if i in now and now[i] == h}


def review_groups(store: Store, infos: PhotoInfoCache, decisions: Decisions, threshold: float,
                  max_groups: int = 60) -> list[Group]:
    """Near-duplicate groups (largest first) with each photo's facts and its decision (chosen or default)."""
    from app.search import duplicate_groups

    raw = duplicate_groups(store, threshold, max_groups)
    ids = [h.id for g in raw for h in g]
    facts = infos.get(ids)
    hashes = {int(r["id"]): r["sha256"] for r in store.rows(ids)}
    chosen = decisions.get(store, ids)
    out: list[Group] = []
    for g in raw:
        g = [h for h in g if h.id in facts]
        if len(g) < 2:
            continue
        _fill_hashes(hashes, [(h.id, facts[h.id]) for h in g])
        best = default_keep([(h.id, facts[h.id]) for h in g])
        members = tuple(
            Member(h.id, facts[h.id], float(cast(float, h.score)), h.thumb, hashes.get(h.id),
                   chosen.get(h.id, "keep" if h.id == best else "drop"), h.id in chosen)
            for h in g)
        kind = group_kind([m.info for m in members], [m.sha256 for m in members])
        out.append(Group(len(out) + 1, kind, members))
    return out


def _fill_hashes(hashes: dict[int, str | None], members: list[tuple[int, PhotoInfo]]) -> None:
    """Content hashes the index lacks, read only for members whose byte size another member shares (only
    those can be identical files)."""
    from collections import Counter

    from byol.fileio import file_sha256

    sizes = Counter(info.size for _, info in members if info.size is not None)
    for i, info in members:
        if not hashes.get(i) and info.ok and info.size is not None and sizes.get(info.size, 0) > 1:
            try:
                hashes[i] = file_sha256(info.path)
            except OSError:
                pass


def csv_rows(groups: Iterable[Group]) -> list[dict[str, Any]]:
    return [{"group": g.number, "id": m.id, "path": m.info.path, "decision": m.decision,
             "decided_by": "person" if m.decided else "default", "similarity": f"{m.similarity:.4f}",
             "size_bytes": m.info.size if m.info.size is not None else "", "width": m.info.width or "",
             "height": m.info.height or "", "date_taken": m.info.taken or "", "date_source": m.info.taken_source or "",
             "folder": m.info.folder, "kind": g.kind}
            for g in groups for m in g.members]


def export_csv(groups: Iterable[Group], path: str | Path) -> int:
    """Write every member of every group with its decision to a CSV (atomically); returns the row count.

    Paths are written as text (a name that is not UTF-8 shows its bytes as \\xNN). Nothing is deleted:
    the CSV is for the person (or their own script) to act on.
    """
    rows = csv_rows(groups)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        r["path"] = os.fsencode(r["path"]).decode("utf-8", "backslashreplace")
        w.writerow(r)
    atomic_write_bytes(path, buf.getvalue())
    return len(rows)
