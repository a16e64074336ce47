"""Duplicate review: the groups (index/duplicates.py) with each photo's facts, why it is there, and keep / drop.

Each photo of a group comes with its facts (index/photoinfo.py): bytes, pixels, date taken, folder, and the
reason it is in the group, measured against the group's chosen photo (hash distance, pixel match, pixel sizes,
time apart, cosine). A group's kind is what was measured: "identical files" (same content hash), "the same
photo: resized / re-encoded / cropped" (verified from the pixels), "burst" (EXIF times of capture within
seconds), "similar" (embedding cosine alone).

Decisions live in INDEX_DIR/review.sqlite, one row per photo: decisions(image_id, sha256, decision, at).
A decision holds the photo's content hash and is ignored once the photo at that id has other content (an
edited photo is reviewed again). Defaults lose nothing: in a group of identical files or verified copies the
best photo (most pixels, then most bytes, then taken first, then the smaller id) is kept and the rest dropped;
burst and similar groups start "undecided", and the CSV says so. `export_csv` writes every member of every
group with its decision, whether a person made it and the reason, through app/csvfile.py (atomic; a name
that starts like a formula is written as text). Nothing is ever deleted.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from index import database
from index.duplicates import SIMILAR_COSINE, Found, Link, find_groups
from index.photoinfo import PhotoInfo, PhotoInfoCache

if TYPE_CHECKING:
    from index.store import Store

REVIEW_FILE = "review.sqlite"
DECISIONS = ("keep", "drop")
UNDECIDED = "undecided"  # a burst or similar photo nobody chose for: the CSV says so, and nothing is dropped
MAX_GROUPS = 60  # groups one request shows or exports (each at most index.duplicates.MAX_GROUP photos)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
  image_id INTEGER PRIMARY KEY,
  sha256 TEXT,  -- the photo's content when decided: a decision never carries over to other content
  decision TEXT NOT NULL CHECK (decision IN ('keep', 'drop')),
  at REAL NOT NULL);
"""
CSV_FIELDS = ("group", "id", "path", "decision", "decided_by", "similarity", "size_bytes", "width", "height",
              "date_taken", "date_source", "folder", "kind", "reason")


@dataclass(frozen=True)
class Member:
    id: int
    info: PhotoInfo  # name, folder, bytes, pixels, date taken (index.photoinfo)
    similarity: float | None  # embedding cosine to the group's chosen photo (1 for itself), None if not searched
    thumb: str  # thumbnail path (what the page shows beside a preview)
    sha256: str | None  # content hash from the index
    decision: str  # 'keep', 'drop' or 'undecided'
    decided: bool  # True when a person chose it, False for the default
    reason: str = ""  # why it is in the group, measured against the chosen photo


@dataclass(frozen=True)
class Group:
    number: int  # 1-based position in the list (copies first, then the largest groups)
    kind: str  # 'identical files', 'the same photo: resized / re-encoded / cropped', 'burst' or 'similar'
    members: tuple[Member, ...]  # the chosen photo first

    @property
    def ids(self) -> list[int]:
        return [m.id for m in self.members]


class Groups(list[Group]):
    """Groups as a list, and how many there were before the list was cut to what one request shows."""

    def __init__(self, groups: Iterable[Group] = (), total: int | None = None) -> None:
        super().__init__(groups)
        self.total = len(self) if total is None else total


def default_keep(members: Iterable[tuple[int, PhotoInfo]]) -> int:
    """The photo to keep when nobody chose: most pixels, then most bytes, then taken first, then smallest id."""
    def rank(item: tuple[int, PhotoInfo]) -> tuple[int, int, str, int]:
        i, info = item
        return (-(info.width or 0) * (info.height or 0), -(info.size or 0), info.taken or "9999", i)

    return min(members, key=rank)[0]


class Decisions:
    """Keep / drop per photo in INDEX_DIR/review.sqlite. Thread-safe; every change is one transaction."""

    def __init__(self, index_dir: str | Path):
        self.db = Path(index_dir) / REVIEW_FILE
        self._lock = threading.RLock()
        self._conn = database.connect(self.db, wal=True)
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
        with self._lock, database.transaction(self._conn):
            self._conn.executemany("INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?)",
                                   [(int(r["id"]), r["sha256"], decision, now) for r in rows])
        return len(rows)

    def keep_only(self, store: Store, group_ids: Iterable[int], keep: Iterable[int]) -> None:
        """Keep `keep` and drop the rest of the group, in one transaction's worth of changes."""
        keep = {int(i) for i in keep}
        group_ids = [int(i) for i in group_ids]
        self.set(store, [i for i in group_ids if i in keep], "keep")
        self.set(store, [i for i in group_ids if i not in keep], "drop")

    def clear(self, ids: Iterable[int]) -> None:
        rows = [(int(i),) for i in ids]
        with self._lock, database.transaction(self._conn):
            self._conn.executemany("DELETE FROM decisions WHERE image_id = ?", rows)

    def get(self, store: Store, ids: Iterable[int]) -> dict[int, str]:
        """{id: decision} of the photos a person decided on, while their content is what it was."""
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        with self._lock:
            q = "SELECT image_id, sha256, decision FROM decisions WHERE image_id IN ({})"
            got = {i: (h, d) for i, h, d in database.select_in(self._conn, q, ids)}
        now = {int(r["id"]): r["sha256"] for r in store.rows(list(got))}
        return {i: d for i, (h, d) in got.items() if i in now and now[i] == h}


def review_groups(store: Store, infos: PhotoInfoCache, decisions: Decisions, level: str = "copies",
                  cosine: float = SIMILAR_COSINE, max_groups: int = MAX_GROUPS,
                  progress: Callable[[float, str], None] | None = None) -> Groups:
    """The first `max_groups` groups at `level` with each photo's facts, reason and decision (`.total`: how
    many groups there are in all). What `index` made ahead (each photo's signature and EXIF time, the verdict
    of every likely pair of copies) is read; what an older index lacks is made first (once)."""
    from index.photohash import PhotoHashes, PixelCheck, neighbours_of, photos_of

    with PhotoHashes(store.index_dir) as ph:
        photos = photos_of(store, ph, progress=progress)
        if progress is not None:
            progress(0.5, "comparing every photo with its neighbours")
        found = find_groups(list(photos.values()), neighbours_of(store), PixelCheck(ph, photos), level, cosine)
    shown = found[:max_groups]
    members = [i for f in shown for i in f.ids]
    rows = {int(r["id"]): r for r in store.rows(members)}
    facts = infos.get(members)
    chosen = decisions.get(store, members)
    out: list[Group] = []
    for f in shown:
        if any(i not in facts or i not in rows for i in f.ids):
            continue  # a photo left the index meanwhile
        _settle_identical(f, rows, facts)
        out.append(_group(len(out) + 1, f, facts, rows, chosen, lambda i: str(store.thumbs.path(i))))
    return Groups(out, len(found))


def _settle_identical(f: Found, rows: dict[int, dict[str, Any]], facts: dict[int, PhotoInfo]) -> None:
    """Copies whose bytes are the chosen photo's are identical files (content hashes an index row lacks are
    read from the file, only where the byte sizes agree)."""
    from dataclasses import replace

    from byol.fileio import file_sha256

    if f.kind != "the same photo":
        return

    def sha(i: int) -> str | None:
        if not rows[i].get("sha256") and facts[i].ok:
            try:
                rows[i] = {**rows[i], "sha256": file_sha256(facts[i].path)}
            except OSError:
                return None
        return rows[i].get("sha256")

    c = f.ids[0]
    for i, link in list(f.links.items()):
        if link.kind != "identical files" and facts[i].size == facts[c].size and sha(i) and sha(i) == sha(c):
            f.links[i] = replace(link, kind="identical files", bits=0, match=1.0)
    if all(lk.kind == "identical files" for lk in f.links.values()):
        f.kind = "identical files"


def _group(number: int, f: Found, facts: dict[int, PhotoInfo], rows: dict[int, dict[str, Any]],
           chosen: dict[int, str], thumb: Callable[[int], str]) -> Group:
    infos = [(i, facts[i]) for i in f.ids]
    drops = f.kind in ("identical files", "the same photo")
    best = default_keep(infos) if drops else None
    kind = f.kind if f.kind != "the same photo" else "the same photo: " + " / ".join(_edits(f, facts))
    members = []
    for i, info in infos:
        link = f.links.get(i)
        default = UNDECIDED if best is None else ("keep" if i == best else "drop")
        members.append(Member(i, info, 1.0 if link is None else link.cosine, thumb(i), rows[i].get("sha256"),
                              chosen.get(i, default), i in chosen,
                              "the group's chosen photo" if link is None else reason(link, info, facts[f.ids[0]])))
    return Group(number, kind, tuple(members))


def _edits(f: Found, facts: dict[int, PhotoInfo]) -> list[str]:
    """Which edits the copies of a group show against the chosen photo: resized, re-encoded, cropped."""
    c = facts[f.ids[0]]
    out = set()
    for i, link in f.links.items():
        if link.kind != "identical files":  # a byte copy beside the edits adds no edit of its own
            out.add(_edit(link, facts[i], c))
    return [e for e in ("resized", "re-encoded", "cropped") if e in out]


def _edit(link: Link, a: PhotoInfo, c: PhotoInfo) -> str:
    if (link.scale or 1.0) < 0.97 or not _same_aspect(a, c):
        return "cropped"
    return "re-encoded" if (a.width, a.height) == (c.width, c.height) else "resized"


def _same_aspect(a: PhotoInfo, c: PhotoInfo) -> bool:
    if not (a.width and a.height and c.width and c.height):
        return True
    return abs(a.width / a.height - c.width / c.height) <= 0.02 * (c.width / c.height)


def reason(link: Link, info: PhotoInfo, chosen: PhotoInfo) -> str:
    """Why a photo is in its group, measured against the chosen photo, in words."""
    sizes = f"{info.width or '?'}×{info.height or '?'} vs {chosen.width or '?'}×{chosen.height or '?'}"
    if link.kind == "identical files":
        return "identical file (the same bytes)"
    if link.kind == "the same photo":
        parts = [f"{_edit(link, info, chosen)}: {sizes}", f"pixels match {link.match:.3f}"]
        if link.scale is not None and link.scale < 0.97:
            parts.append(f"{link.scale:.0%} of the width")
        if link.bits is not None:
            parts.append(f"hash {link.bits} bits apart")
        return " · ".join(parts)
    parts = [f"cosine {link.cosine:.3f}"] if link.cosine is not None else []
    if link.seconds is not None:
        parts.insert(0, f"{link.seconds:.0f} s apart (EXIF)")
    return " · ".join(parts + [sizes])


def csv_rows(groups: Iterable[Group]) -> list[dict[str, Any]]:
    return [{"group": g.number, "id": m.id, "path": os.fsencode(m.info.path).decode("utf-8", "backslashreplace"),
             "decision": m.decision, "decided_by": "person" if m.decided else "default",
             "similarity": "" if m.similarity is None else f"{m.similarity:.4f}",
             "size_bytes": m.info.size if m.info.size is not None else "", "width": m.info.width or "",
             "height": m.info.height or "", "date_taken": m.info.taken or "", "date_source": m.info.taken_source or "",
             "folder": m.info.folder, "kind": g.kind, "reason": m.reason}
            for g in groups for m in g.members]


def export_csv(groups: Iterable[Group], path: str | Path) -> int:
    """Write every member of every group with its decision to a CSV (atomically); returns the row count.

    Written by app/csvfile.py: a path, folder or reason that starts like a formula (`=`, `+`, `-`, `@`, tab,
    CR) gets a leading `'`, so a spreadsheet shows it as text. A name that is not UTF-8 shows its bytes as
    \\xNN. Nothing is deleted: the CSV is for the person (or their own script) to act on; an undecided photo
    says "undecided".
    """
    from app.csvfile import write

    return write(path, CSV_FIELDS, csv_rows(groups))


def member_markdown(m: Member) -> str:
    """One photo of a group as the page's Markdown: its name, facts and reason, every name shown as text
    (app.markup.plain: a folder named like a link or an image stays text)."""
    from app.markup import plain
    from index.photoinfo import human_size

    i = m.info
    facts = [f"**{plain(i.name)}**", f"{i.width or '?'}×{i.height or '?'}",
             human_size(i.size) if i.size is not None else "missing"]
    if i.taken:
        facts.append(i.taken.replace("T", " ") + (" (file date)" if i.taken_source == "mtime" else ""))
    facts.append(f"folder {plain(i.folder or '.')}")
    facts.append(f"*{plain(m.reason)}*" if m.reason else "")
    return "  \n".join(f for f in facts if f)
