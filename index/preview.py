"""A larger picture of one photo than its 256 px thumbnail, for deciding on a label or a duplicate.

`preview(store, id)` returns the path of a JPEG of the photo, PREVIEW_SIDE (1024) pixels on its longest side
(never enlarged), upright, made on demand from the original through the project's one safe decoder
(byol.images.load_rgb: photo formats only, EXIF orientation, the decompression-bomb guard, JPEG draft mode)
and cached at

    INDEX_DIR/previews/<id // 1000>/<id>.jpg

The page serves only this file, never the original. Each preview carries, in a JPEG comment, the size and
mtime of the original it was made from and its side; a preview whose original has changed since (or that was
made at another side) is made again. Written atomically (byol.fileio, temporary file then rename) without
fsync: a preview lost in a power cut is simply made again.

The cache is bounded: past PREVIEW_CACHE_BYTES (2 GB, ~13,000 previews of a 12 MP camera's photos) the
least recently opened previews are deleted as new ones are made (an opened preview is marked used by its
mtime, so the order survives a restart). Previews and thumbnails of photos that left the index are deleted
by `index` after it saves (`remove_stale`) and by the page when it picks up that generation
(`remove_pictures`), so what the page serves of a photo leaves with the photo.

Cost (scripts/bench_app.py, 2 busy cores): a 12 MP JPEG takes ~0.1-0.2 s cold (draft-mode decode at 1/2
scale, resize, encode); a cached preview is two stats and a 128-byte read, well under a millisecond.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from byol.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from index.store import Store

PREVIEW_SIDE = 1024  # longest side in pixels: a photo's detail at a glance on a laptop screen
PREVIEW_QUALITY = 85
PREVIEW_DIR = "previews"
PREVIEW_CACHE_BYTES = 2 * 1000**3  # disk the previews may use; least recently opened ones leave first
_TAG = b"byol-search preview "  # starts the JPEG comment: b"byol-search preview <size>:<mtime_ns>:<side>"
_HEAD_BYTES = 128  # SOI, APP0 (JFIF) and the comment all lie within the first bytes

_locks_guard = threading.Lock()
_locks: dict[Path, threading.Lock] = {}  # one maker per preview: two clicks on a photo decode it once


def preview_file(index_dir: str | Path, image_id: int) -> Path:
    """Where the preview of `image_id` is cached (it may not exist yet)."""
    image_id = int(image_id)
    return Path(index_dir) / PREVIEW_DIR / str(image_id // 1000) / f"{image_id}.jpg"


def _source_tag(path: str, side: int) -> bytes:
    st = os.stat(path)  # FileNotFoundError for a photo gone since it was indexed
    return _TAG + f"{st.st_size}:{st.st_mtime_ns}:{int(side)}".encode()


def _cached_tag(preview: Path) -> bytes | None:
    try:
        with open(preview, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError:
        return None
    at = head.find(_TAG)
    if at < 4:
        return None
    n = int.from_bytes(head[at - 2:at], "big") - 2  # the COM segment's length counts its own two bytes
    return head[at:at + n]


def is_fresh(store: Store, image_id: int, side: int = PREVIEW_SIDE) -> bool:
    """True when the cached preview exists and was made from the original as it is now."""
    rows = store.rows([int(image_id)])
    if not rows:
        return False
    try:
        return _cached_tag(preview_file(store.index_dir, image_id)) == _source_tag(rows[0]["path"], side)
    except OSError:
        return False


def make_preview_jpeg(path: str, side: int = PREVIEW_SIDE, comment: bytes = b"") -> bytes:
    """JPEG bytes of the photo at `path`, `side` px on its longest side (never enlarged), upright.

    Raises byol.images.BadImage with a reason for a person.
    """
    import io

    from PIL import Image

    from byol.images import load_rgb, photo_formats

    # the shorter side the decoder must keep for the longer one to reach `side`: lets a JPEG decode at the
    # smallest draft scale that still covers it (the header is read here, the file's size may have changed
    # since it was indexed); load_rgb reads the header again and makes every safety check itself
    min_side = side
    try:
        with Image.open(path, formats=photo_formats()) as head:
            w, h = head.size
        if w > 0 and h > 0:
            min_side = max(1, math.ceil(side * min(w, h) / max(w, h)))
    except Exception:  # load_rgb names the reason
        pass
    img = load_rgb(path, min_side=min_side)
    # PIL's bilinear filter is antialiased (its support scales with the reduction); from the draft decode
    # (at most ~2x the side) it looks like Lanczos at a fifth of the cost (45 ms against 220 ms on 3 MP)
    img.thumbnail((side, side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=PREVIEW_QUALITY, comment=comment)
    return buf.getvalue()


def preview(store: Store, image_id: int, side: int = PREVIEW_SIDE) -> Path:
    """The path of the photo's cached preview, made (or made again, when the original changed) first.

    Raises KeyError for an id not in the index, and byol.images.BadImage (with a reason for a person: no
    such file, truncated, too large, ...) when the original cannot be decoded; the page then keeps the
    thumbnail.
    """
    image_id = int(image_id)
    rows = store.rows([image_id])
    if not rows:
        raise KeyError(f"photo {image_id} is not in the index")
    row = rows[0]
    out = preview_file(store.index_dir, image_id)
    try:
        tag = _source_tag(row["path"], side)
    except OSError as e:
        from byol.images import BadImage

        raise BadImage(row["path"], "no such file (moved or deleted since it was indexed)"
                       if isinstance(e, FileNotFoundError) else f"cannot read the file ({e.strerror})") from e
    if _cached_tag(out) == tag:
        _cache(store.index_dir).used(out)
        return out
    with _locks_guard:
        lock = _locks.setdefault(out, threading.Lock())
    try:
        with lock:
            if _cached_tag(out) == tag:  # made by the request we waited for
                return out
            data = make_preview_jpeg(row["path"], side, comment=tag)
            atomic_write_bytes(out, data, durable=False)
            _cache(store.index_dir).added(out, len(data))
    finally:
        with _locks_guard:
            _locks.pop(out, None)
    return out


class PreviewCache:
    """The previews of one index, least recently used first, and their bytes: a preview made past the
    limit (PREVIEW_CACHE_BYTES, read at each addition) deletes the least recently used ones. The folder is
    read once, on first use, ordered by mtime (set on every use)."""

    def __init__(self, root: Path):
        self.root = root
        self._lock = threading.Lock()
        self._sizes: OrderedDict[Path, int] | None = None
        self.total = 0

    def _load(self) -> OrderedDict[Path, int]:
        if self._sizes is None:
            found = []
            for f in self.root.glob("*/*.jpg") if self.root.is_dir() else ():
                try:
                    st = f.stat()
                except OSError:
                    continue
                found.append((st.st_mtime_ns, f, st.st_size))
            self._sizes = OrderedDict((f, n) for _, f, n in sorted(found))
            self.total = sum(self._sizes.values())
        return self._sizes

    def used(self, path: Path) -> None:
        with self._lock:
            sizes = self._load()
            if path in sizes:
                sizes.move_to_end(path)
        try:
            os.utime(path)  # the order survives a restart
        except OSError:
            pass

    def added(self, path: Path, size: int, limit: int | None = None) -> int:
        """Count a new preview, then delete the least recently used others while past the limit; returns
        how many were deleted."""
        limit = PREVIEW_CACHE_BYTES if limit is None else limit
        removed = 0
        with self._lock:
            sizes = self._load()
            self.total += size - sizes.pop(path, 0)
            sizes[path] = size
            while self.total > limit and len(sizes) > 1:
                old, n = sizes.popitem(last=False)
                old.unlink(missing_ok=True)
                self.total -= n
                removed += 1
        return removed

    def forget(self, paths: Iterable[Path]) -> None:
        with self._lock:
            if self._sizes is not None:
                for p in paths:
                    self.total -= self._sizes.pop(p, 0)


_caches: dict[Path, PreviewCache] = {}


def _cache(index_dir: str | Path) -> PreviewCache:
    root = (Path(index_dir) / PREVIEW_DIR).absolute()
    with _locks_guard:
        return _caches.setdefault(root, PreviewCache(root))


def cache_bytes(index_dir: str | Path) -> int:
    """Bytes of previews the cache counts for this index (reading the folder on first use)."""
    c = _cache(index_dir)
    with c._lock:
        c._load()
        return c.total


def remove_pictures(store: Store, ids: Iterable[int]) -> int:
    """Delete the previews and thumbnails of photos that left the index (`ids`: the ones that did); returns
    how many files. For a page that picked up a generation without them: only these ids, since `index` may
    be writing the thumbnails of new photos meanwhile."""
    removed, gone = 0, []
    for i in ids:
        for f in (preview_file(store.index_dir, int(i)), Path(store.thumbs.path(int(i)))):
            try:
                f.unlink()
                removed += 1
            except FileNotFoundError:
                pass
        gone.append(preview_file(store.index_dir, int(i)))
    _cache(store.index_dir).forget(gone)
    return removed


def remove_stale(store: Store, thumbnails: bool = False) -> int:
    """Delete cached previews (and with `thumbnails`, thumbnails) of photos no longer in the index; returns
    how many. Thumbnails only from the index's writer, right after it saved: no other process makes them.
    The originals are never touched: only files under INDEX_DIR/previews and INDEX_DIR/thumbs."""
    import numpy as np

    keep = np.asarray(store.all_ids(), np.int64)  # ascending: searched, never made into a set (10M ints: 0.5 GB)
    roots = [Path(store.index_dir) / PREVIEW_DIR]
    if thumbnails:
        roots.append(Path(store.thumbs.path(0)).parent.parent)
    removed = []
    for root in roots:
        for sub in root.iterdir() if root.is_dir() else ():
            if not sub.is_dir():
                continue
            files = [f for f in sub.glob("*.jpg") if f.stem.isdigit()]
            ids = np.fromiter((int(f.stem) for f in files), np.int64, len(files))
            for f, known in zip(files, np.isin(ids, keep).tolist()):
                if not known:
                    f.unlink(missing_ok=True)
                    removed.append(f)
    _cache(store.index_dir).forget(removed)
    return len(removed)
