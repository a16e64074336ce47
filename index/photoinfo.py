"""Facts about each indexed photo for previews and filters: name, folder, bytes, pixels, date taken.

INDEX_DIR/photo_info.sqlite holds
  info(id, path, size, mtime_ns, width, height, taken, taken_source, error, read_at)
  one row per photo id, read from the original file's header (never its pixels).

A row is valid while the file's (path, size, mtime_ns) are those it was read at: `get` stats each photo and
reads again the ones that changed (or moved: the store keeps a moved photo's id), `fill` does the same for the
whole index as a background job with a progress callback, and `cached` answers from the database alone
(the filters over 100,000 photos, where a stat per photo would cost seconds).

Date taken: EXIF DateTimeOriginal (tag 0x9003, the moment the shutter fired, camera wall-clock time), else
the file's modification time in local time; `taken_source` says which ("exif" or "mtime"). Dates are kept as
ISO text 'YYYY-MM-DDTHH:MM:SS', which sorts and compares as dates do. Pixel size is the upright size (EXIF
orientations 5-8 swap width and height), as the page shows the photo.

A missing or unreadable file is a row with `error` (a reason for a person) and whatever could be read
(the name and folder always; size and mtime when the file exists), never an exception.
Writes are SQLite transactions (one per batch), so an interrupted fill keeps every batch it committed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

from index import database, folders
from index.database import db_path, path_from_db

if TYPE_CHECKING:
    from index.store import Store

INFO_FILE = "photo_info.sqlite"
_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 0x9003
_ORIENTATION = 0x0112
Progress = Callable[[float, str], None]  # (fraction done, description): app/labels.py's progress shape

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (
  id INTEGER PRIMARY KEY,  -- the photo's id in the index
  path,  -- as index.database.db_path stores it (text, or the bytes of a name that is not UTF-8)
  size INTEGER, mtime_ns INTEGER,  -- the file's stat when read: the row is valid while they match
  width INTEGER, height INTEGER,  -- upright pixel size
  taken TEXT, taken_source TEXT,  -- ISO date taken; 'exif' or 'mtime'
  error TEXT,  -- why the file could not be read, else NULL
  read_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS info_taken ON info(taken);
"""


def _no_progress(fraction: float, desc: str) -> None:
    pass


@dataclass(frozen=True)
class PhotoInfo:
    id: int  # the photo's id in the index
    path: str  # the original file (str as a folder scan gives it)
    name: str  # printable file name (bytes that are not UTF-8 shown as \\xNN)
    folder: str  # printable folder, relative to the indexed root ("" at the root), else absolute
    size: int | None  # bytes on disk; None when the file is missing
    mtime_ns: int | None  # modification time when read
    width: int | None  # upright pixels; None when unreadable
    height: int | None
    taken: str | None  # ISO 'YYYY-MM-DDTHH:MM:SS' (camera wall-clock time); None when unknown
    taken_source: str | None  # 'exif' (DateTimeOriginal) or 'mtime' (file modification time)
    error: str | None = None  # a reason for a person when the file could not be read

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def caption(self) -> str:
        """One line for the page: name, pixels, size, date and where the date comes from."""
        parts = [self.name]
        if self.width:
            parts.append(f"{self.width}×{self.height}")
        if self.size is not None:
            parts.append(human_size(self.size))
        if self.taken:
            parts.append(self.taken.replace("T", " ") + (" (file date)" if self.taken_source == "mtime" else ""))
        if self.error:
            parts.append(self.error)
        return " · ".join(parts)


def human_size(n: int) -> str:
    x: float = n
    for unit in ("B", "KB", "MB", "GB"):
        if x < 1000 or unit == "GB":
            return f"{x} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1000
    return f"{x} B"


def _printable(path: str) -> str:
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def exif_datetime(value: object) -> str | None:
    """EXIF 'YYYY:MM:DD HH:MM:SS' (often NUL-padded, sometimes blank or zero) -> ISO text, or None."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    value = value.strip().strip("\x00").strip()
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d %H:%M", "%Y:%m:%d"):
        try:
            return datetime.strptime(value[:19], fmt).isoformat(timespec="seconds")
        except ValueError:
            continue
    return None


def header_exif(img: Image.Image) -> Image.Exif:
    """The EXIF of an opened photo, read from its header (no pixel decoded)."""
    # PNG keeps EXIF in a chunk that may follow the pixels: getexif() would decode them to find it
    raw = img.info.get("exif")
    exif = Image.Exif()
    if raw:
        exif.load(raw)
    elif img.format != "PNG":
        exif = img.getexif()
    return exif


def exif_taken(exif: Image.Exif) -> str | None:
    """EXIF DateTimeOriginal as ISO text, or None without one."""
    return exif_datetime(exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL))


def taken_seconds(data: bytes) -> float | None:
    """The EXIF time of capture of a photo's bytes in seconds (the camera's clock read as UTC: only the time
    between two photos is used), None without one or when the header cannot be read. File dates never count."""
    import io

    from byol.images import photo_formats

    try:
        with Image.open(io.BytesIO(data), formats=photo_formats()) as img:
            iso = exif_taken(header_exif(img))
    except Exception:  # an unreadable header means "no time of capture", never an error of the photo
        return None
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() if iso else None


def read_header(path: str) -> dict[str, Any]:
    """Pixel size (upright), EXIF DateTimeOriginal and stat of one photo, from its header only.

    Returns {size, mtime_ns, width, height, taken, taken_source, error}; `error` is a reason for a person
    and the other fields hold what could be read.
    """
    from byol.images import photo_formats

    out: dict[str, Any] = {"size": None, "mtime_ns": None, "width": None, "height": None, "taken": None, "taken_source": None,
           "error": None}
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {**out, "error": "file not found (moved or deleted since it was indexed)"}
    except OSError as e:
        return {**out, "error": f"cannot read the file ({e.strerror or type(e).__name__})"}
    out.update(size=st.st_size, mtime_ns=st.st_mtime_ns,
               taken=datetime.fromtimestamp(st.st_mtime).isoformat(timespec="seconds"), taken_source="mtime")
    try:
        if str(path).lower().endswith((".heic", ".heif")):
            from byol.images import _register_heif  # registers pillow-heif once; slow to import, so only here

            _register_heif()
        with Image.open(path, formats=photo_formats()) as img:  # the header only: no pixel is decoded
            w, h = img.size
            exif = header_exif(img)
            if exif.get(_ORIENTATION) in (5, 6, 7, 8):
                w, h = h, w
            out.update(width=w, height=h)
            taken = exif_taken(exif)
            if taken:
                out.update(taken=taken, taken_source="exif")
    except Image.DecompressionBombError:
        out["error"] = "too large to open (decompression-bomb guard)"
    except UnidentifiedImageError:
        out["error"] = "not an image in a photo format"
    except PermissionError:
        out["error"] = "permission denied"
    except Exception as e:  # PIL and codecs raise many kinds; every one means "header unreadable"
        out["error"] = f"unreadable header ({type(e).__name__}: {e})"[:300]
    return out


@dataclass(frozen=True)
class FillReport:
    checked: int  # photos whose row was checked against the file
    read: int  # headers read (new or changed photos)
    errors: int  # photos with an error now
    seconds: float
    stopped: bool  # the stop event ended the fill early


class PhotoInfoCache:
    """The facts of a store's photos, cached in INDEX_DIR/photo_info.sqlite. Thread-safe.

    store: an index.store.Store (or anything with index_dir, rows(ids), all_ids() and reading()).
    root: the folder names are relative to; default: the deepest folder holding every indexed photo.
    """

    def __init__(self, store: Store, root: str | Path | None = None) -> None:
        self.store = store
        self.db = Path(store.index_dir) / INFO_FILE
        self._root = str(Path(root).absolute()) if root is not None else None
        self._lock = threading.RLock()
        self._conn = database.connect(self.db, wal=True)  # the page reads while a fill writes
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None  # type: ignore[assignment]  # closed: any later use fails

    def __enter__(self) -> PhotoInfoCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- names
    @property
    def root(self) -> str:
        """The folder names are given relative to (the common folder of every indexed photo by default)."""
        if self._root is None:
            self._root = folders.root(self.store)  # a few index seeks at any size
        return self._root

    def folder_of(self, path: str) -> str:
        """The printable folder of `path`, relative to `root` ("" for the root itself)."""
        parent, root = os.path.dirname(path), self.root
        if root and (parent == root or parent.startswith(root.rstrip("/") + "/")):
            parent = os.path.relpath(parent, root)
            parent = "" if parent == "." else parent
        return _printable(parent)

    def _info(self, image_id: int, path: str, facts: dict[str, Any]) -> PhotoInfo:
        return PhotoInfo(int(image_id), path, _printable(os.path.basename(path)), self.folder_of(path),
                         facts["size"], facts["mtime_ns"], facts["width"], facts["height"], facts["taken"],
                         facts["taken_source"], facts["error"])

    # ---------------------------------------------------------------- reading
    def cached(self, ids: Iterable[int] | None = None) -> dict[int, PhotoInfo]:
        """{id: PhotoInfo} from the database alone (no file is touched); ids never read are left out."""
        cols = "id, path, size, mtime_ns, width, height, taken, taken_source, error"
        with self._lock:
            if ids is None:
                rows = self._conn.execute(f"SELECT {cols} FROM info").fetchall()
            else:
                rows = database.select_in(self._conn, f"SELECT {cols} FROM info WHERE id IN ({{}})",
                                          sorted({int(i) for i in ids}))
        keys = ("size", "mtime_ns", "width", "height", "taken", "taken_source", "error")
        return {r[0]: self._info(r[0], path_from_db(r[1]), dict(zip(keys, r[2:]))) for r in rows}

    def get(self, ids: Iterable[int]) -> dict[int, PhotoInfo]:
        """{id: PhotoInfo} checked against the files now: changed, moved or new photos are read again.

        Ids not in the index are left out. One stat per photo: meant for what a page shows (a preview, a
        duplicate group), not for 100,000 photos at a time (`fill` in the background, then `cached`).
        """
        ids = [int(i) for i in ids]
        out, _ = self._check(ids)
        return {i: out[i] for i in ids if i in out}

    def _check(self, ids: list[int]) -> tuple[dict[int, PhotoInfo], int]:
        """`get` without the ordering, and how many headers it read (written in one transaction)."""
        rows = {int(r["id"]): r["path"] for r in self.store.rows(ids)}
        have = self.cached(rows)
        out, fresh = {}, []
        for i, path in rows.items():
            old = have.get(i)
            try:
                st = os.stat(path)
                key = (st.st_size, st.st_mtime_ns)
            except OSError:
                key = None
            if old is not None and old.path == path and key is not None and key == (old.size, old.mtime_ns):
                out[i] = old
                continue
            info = self._info(i, path, read_header(path))
            fresh.append(info)
            out[i] = info
        self._write(fresh)
        return out, len(fresh)

    def one(self, image_id: int) -> PhotoInfo | None:
        """The checked facts of one photo, or None when the id is not in the index."""
        return self.get([image_id]).get(int(image_id))

    def fill(self, ids: Iterable[int] | None = None, progress: Progress = _no_progress,
             stop: threading.Event | None = None, batch: int = 500) -> FillReport:
        """Check every photo (or `ids`) against its file and read those new or changed; rows of ids that left
        the index are dropped. Commits every `batch` photos, so it can run as a background job and be
        stopped (`stop.set()`) at any point without losing what it read."""
        t0 = time.perf_counter()
        all_ids = ids is None
        ids = [int(i) for i in (self.store.all_ids() if ids is None else ids)]
        checked = read = 0
        stopped = False
        for k in range(0, len(ids), batch):
            if stop is not None and stop.is_set():
                stopped = True
                break
            chunk = ids[k:k + batch]
            read += self._check(chunk)[1]
            checked += len(chunk)
            progress(checked / max(len(ids), 1), f"photo facts: {checked:,} of {len(ids):,}")
        if all_ids and not stopped:
            self._drop_except(ids)
        with self._lock:
            errors = self._conn.execute("SELECT count(*) FROM info WHERE error IS NOT NULL").fetchone()[0]
        return FillReport(checked, read, errors, time.perf_counter() - t0, stopped)

    def count(self) -> int:
        """Rows in the cache (photos read at least once)."""
        with self._lock:
            n: int = self._conn.execute("SELECT count(*) FROM info").fetchone()[0]
            return n

    # ---------------------------------------------------------------- writing
    def _write(self, infos: list[PhotoInfo]) -> None:
        if not infos:
            return
        now = time.time()
        rows = [(i.id, db_path(i.path), i.size, i.mtime_ns, i.width, i.height, i.taken, i.taken_source, i.error, now)
                for i in infos]
        with self._lock, database.transaction(self._conn):
            self._conn.executemany("INSERT OR REPLACE INTO info VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def _drop_except(self, keep: list[int]) -> None:
        with self._lock:
            have = [r[0] for r in self._conn.execute("SELECT id FROM info")]
            gone = sorted(set(have) - set(keep))
            if not gone:
                return
            with database.transaction(self._conn):
                database.execute_in(self._conn, "DELETE FROM info WHERE id IN ({})", gone)
