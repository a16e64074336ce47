"""Copies found from the pixels: a perceptual hash per photo, and a pair-by-pair check of two photos.

pHash (Zauner 2010, as imagehash computes it): the upright photo in grey, resized to 32x32 (Lanczos), its 2-D
DCT, the 8x8 lowest frequencies, one bit per coefficient above their median: 64 bits. Resizing, re-encoding
(JPEG quality 40), PNG / WebP conversion, EXIF rotation (decoded upright), stripped metadata and a +-8%
brightness change leave it within 4 bits of the original on Imagenette, while 3 of 6.2 million pairs of
distinct photos fall within 8 (scripts/bench_duplicates.py). It is imagehash's pHash to the bit pattern's
statistics, computed here with numpy (a fixed DCT matrix) in half the time and without scipy.

A crop moves every DCT coefficient (a 5-15% crop is 10-30 bits away), so `contains` checks a pair from the
pixels: the smaller view placed inside the larger at every scale from 80% to 100% of its width and every
offset, the best normalised cross-correlation of the grey 64 px images. A crop, a resize or a re-encode of
the same photo scores >= 0.95; the nearest distinct photos of Imagenette <= 0.91.

INDEX_DIR/photo_hash.sqlite holds hashes(id, sha256, size, mtime_ns, phash, error): one row per photo id,
valid while the store's row has the same sha256 (the photo's content; size and mtime where the row has
no sha256). `index` writes the
hash of every photo it embeds (from the decode it already made) and hashes, once, those an older index lacks.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

if TYPE_CHECKING:
    from index.store import Store

HASH_FILE = "photo_hash.sqlite"
HASH_BITS = 64
_DCT_SIDE = 32  # the grey image the DCT is taken of (imagehash: hash_size * 4)
_LOW = 8  # the 8x8 lowest frequencies make the 64 bits
CHECK_SIDE = 64  # the longer side of the grey images `contains` compares
SCALES = np.linspace(0.80, 1.0, 21)  # the smaller view's width as a fraction of the larger's (1% steps)
_SQL_CHUNK = 900
Progress = Callable[[float, str], None]


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)
    d = np.sqrt(2 / n) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))
    d[0] /= np.sqrt(2)
    out: np.ndarray = d.astype(np.float64)
    return out


_DCT = _dct_matrix(_DCT_SIDE)


def phash(image: Image.Image) -> int:
    """The 64-bit perceptual hash of an (upright, decoded) photo, as a signed 64-bit integer."""
    g = np.asarray(image.convert("L").resize((_DCT_SIDE, _DCT_SIDE), Image.Resampling.LANCZOS), np.float64)
    c = (_DCT @ g @ _DCT.T)[:_LOW, :_LOW].ravel()
    bits = (c > np.median(c)).astype(np.uint8)
    return int(np.packbits(bits).view(">i8")[0])


def hamming(a: int, b: int) -> int:
    return int(((a ^ b) & (2**64 - 1)).bit_count())


def hash_bytes(hashes: np.ndarray) -> np.ndarray:
    """int64 hashes -> (n, 8) uint8 codes, the layout faiss's binary indexes take."""
    return np.ascontiguousarray(np.asarray(hashes, ">i8").view(np.uint8).reshape(-1, 8))


# ---------------------------------------------------------------- the pixel check of one pair
def check_image(source: Any) -> np.ndarray:
    """A photo (path, bytes or a decoded PIL image) as the grey float32 image `contains` compares: longer
    side CHECK_SIDE. Paths and bytes go through byol.images.load_rgb (BadImage with a reason)."""
    from byol.images import load_rgb

    img = source if isinstance(source, Image.Image) else load_rgb(source, min_side=CHECK_SIDE)
    w, h = img.size
    s = CHECK_SIDE / max(w, h)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(img.convert("L").resize(size, Image.Resampling.BILINEAR), np.float32)


@dataclass(frozen=True)
class Match:
    score: float  # the best normalised cross-correlation (1 = the same pixels)
    scale: float  # the smaller view's width / the larger's at the best placement (1: the whole photo)


def _inside(outer: np.ndarray, inner_img: Image.Image, aspect: float, scales: Iterable[float]) -> Match:
    oh, ow = outer.shape
    best = Match(-1.0, 1.0)
    for fw in scales:
        iw = round(ow * fw)
        ih = round(iw * aspect)
        if not (0.75 * oh <= ih <= oh) or iw < 4:
            continue
        inner = np.asarray(inner_img.resize((iw, ih), Image.Resampling.BILINEAR), np.float32)
        inner = inner - inner.mean()
        norm = float(np.sqrt((inner * inner).sum())) + 1e-6
        win = sliding_window_view(outer, (ih, iw))  # (oy, ox, ih, iw)
        num = np.einsum("abij,ij->ab", win, inner)  # sum(win * inner) = sum((win - mean) * inner): inner sums to 0
        var = (win * win).sum(axis=(2, 3)) - win.sum(axis=(2, 3)) ** 2 / (ih * iw)
        score = float((num / (np.sqrt(np.maximum(var, 0)) * norm + 1e-6)).max())
        if score > best.score:
            best = Match(score, float(fw))
    return best


def _img(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8), "L")


def _half(x: np.ndarray) -> np.ndarray:
    h, w = x.shape
    return np.asarray(_img(x).resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BOX), np.float32)


def contains(a: np.ndarray, b: np.ndarray, coarse_min: float = 0.85) -> Match:
    """How well one of two grey images (`check_image`) is a view of the other: resized, re-encoded or cropped.

    Coarse to fine: at half size, each image is placed inside the other at every second scale of SCALES and
    every whole-pixel offset; a pair below `coarse_min` there is answered at once (the nearest distinct photos
    score 0.6 on the median), else the better direction is searched at full size around its best scale.
    """
    sa, sb = _half(a), _half(b)
    ab = _inside(sa, _img(sb), b.shape[0] / b.shape[1], SCALES[::2])
    ba = _inside(sb, _img(sa), a.shape[0] / a.shape[1], SCALES[::2])
    best, outer, inner = (ab, a, b) if ab.score >= ba.score else (ba, b, a)
    if best.score < coarse_min:
        return best
    near = SCALES[np.abs(SCALES - best.scale) <= 0.025]
    return _inside(outer, _img(inner), inner.shape[0] / inner.shape[1], near)


# ---------------------------------------------------------------- the stored hashes
_SCHEMA = """
CREATE TABLE IF NOT EXISTS hashes (
  id INTEGER PRIMARY KEY,  -- the photo's id in the index
  sha256 TEXT, size INTEGER, mtime_ns INTEGER,  -- the photo's content when hashed: valid while they match
  phash INTEGER,  -- 64-bit perceptual hash (signed), NULL when the photo could not be read
  error TEXT);  -- why it could not be read, else NULL
"""


def _key(row: dict[str, Any]) -> tuple[Any, Any, Any]:
    return (row.get("sha256"), row.get("size"), row.get("mtime_ns"))


def _same_content(stored: tuple[Any, Any, Any], row: dict[str, Any]) -> bool:
    """The content hash decides (a touched or moved photo keeps its hash); rows without one fall back to
    size and mtime."""
    if row.get("sha256"):
        return bool(stored[0] == row["sha256"])
    return stored == _key(row)


class PhotoHashes:
    """The perceptual hashes of a store's photos, in INDEX_DIR/photo_hash.sqlite. Thread-safe."""

    def __init__(self, index_dir: str | Path) -> None:
        self.db = Path(index_dir) / HASH_FILE
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(self.db), isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> PhotoHashes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, rows: Iterable[tuple[int, dict[str, Any], int | None, str | None]]) -> None:
        """Store (id, the store's row of the photo, phash or None, error or None), one transaction."""
        vals = [(int(i), *_key(r), h, err) for i, r, h, err in rows]
        if not vals:
            return
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?)", vals)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _stored(self, ids: list[int]) -> dict[int, tuple[tuple[Any, Any, Any], int | None, str | None]]:
        out = {}
        with self._lock:
            for k in range(0, len(ids), _SQL_CHUNK):
                chunk = ids[k:k + _SQL_CHUNK]
                q = (f"SELECT id, sha256, size, mtime_ns, phash, error FROM hashes "
                     f"WHERE id IN ({','.join('?' * len(chunk))})")
                for i, s, size, m, h, err in self._conn.execute(q, chunk):
                    out[int(i)] = ((s, size, m), h, err)
        return out

    def get(self, store: Store, ids: Iterable[int]) -> tuple[dict[int, int], dict[int, str], list[int]]:
        """({id: phash}, {id: why it could not be hashed}, [ids without a valid hash]) for photos in the store."""
        rows = {int(r["id"]): r for r in store.rows([int(i) for i in ids])}
        stored = self._stored(sorted(rows))
        hashes, errors, missing = {}, {}, []
        for i, r in rows.items():
            got = stored.get(i)
            if got is None or not _same_content(got[0], r):
                missing.append(i)
            elif got[1] is None:
                errors[i] = got[2] or "could not be read"
            else:
                hashes[i] = int(got[1])
        return hashes, errors, missing

    def fill(self, store: Store, ids: Iterable[int] | None = None, progress: Progress | None = None,
             batch: int = 200) -> int:
        """Hash the photos (all by default) without a valid hash, from their files through the safe decoder;
        a file that cannot be read is stored with its reason. Returns how many were hashed."""
        from byol.images import BadImage, load_rgb

        _, _, missing = self.get(store, store.all_ids() if ids is None else ids)
        for k in range(0, len(missing), batch):
            chunk = missing[k:k + batch]
            out: list[tuple[int, dict[str, Any], int | None, str | None]] = []
            for r in store.rows(chunk):
                try:
                    out.append((int(r["id"]), r, phash(load_rgb(str(r["path"]), min_side=_DCT_SIDE * 2)), None))
                except BadImage as e:
                    out.append((int(r["id"]), r, None, e.reason))
                except OSError as e:
                    out.append((int(r["id"]), r, None, f"cannot read ({e.strerror or type(e).__name__})"))
            self.put(out)
            if progress is not None:
                progress((k + len(chunk)) / len(missing), f"hashing photos: {k + len(chunk):,} of {len(missing):,}")
        return len(missing)

    def keep_only(self, ids: Iterable[int]) -> int:
        """Drop the rows of photos that left the index; returns how many were dropped."""
        keep = {int(i) for i in ids}
        with self._lock:
            gone = [i for (i,) in self._conn.execute("SELECT id FROM hashes") if i not in keep]
            if gone:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany("DELETE FROM hashes WHERE id = ?", [(i,) for i in gone])
                self._conn.execute("COMMIT")
        return len(gone)
