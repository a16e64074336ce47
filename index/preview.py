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

Cost (scripts/bench_app.py, 2 busy cores): a 12 MP JPEG takes ~0.1-0.2 s cold (draft-mode decode at 1/2
scale, resize, encode); a cached preview is two stats and a 128-byte read, well under a millisecond.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from byol.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from index.store import Store

PREVIEW_SIDE = 1024  # longest side in pixels: a photo's detail at a glance on a laptop screen
PREVIEW_QUALITY = 85
PREVIEW_DIR = "previews"
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
        return out
    with _locks_guard:
        lock = _locks.setdefault(out, threading.Lock())
    try:
        with lock:
            if _cached_tag(out) == tag:  # made by the request we waited for
                return out
            data = make_preview_jpeg(row["path"], side, comment=tag)
            atomic_write_bytes(out, data, durable=False)
    finally:
        with _locks_guard:
            _locks.pop(out, None)
    return out


def remove_stale(store: Store) -> int:
    """Delete cached previews of photos no longer in the index; returns how many (the originals are never
    touched: only files under INDEX_DIR/previews)."""
    import numpy as np

    root = Path(store.index_dir) / PREVIEW_DIR
    if not root.is_dir():
        return 0
    keep = set(np.asarray(store.all_ids(), np.int64).tolist())
    removed = 0
    for sub in root.iterdir():
        if not sub.is_dir():
            continue
        for f in sub.glob("*.jpg"):
            if f.stem.isdigit() and int(f.stem) not in keep:
                f.unlink(missing_ok=True)
                removed += 1
    return removed
