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

Photos of the same pixel size are compared whole (`whole`): a copy that was cropped has fewer pixels, while
two frames of a burst, shot the same second with the camera moved a little, have the same size and match at
0.98 once one is shifted inside the other.

INDEX_DIR/photo_hash.sqlite holds, per photo id, what the duplicate review needs of its pixels, made at
`index` time from the decode the index already makes (`signature`): photos(id, sha256, size, mtime_ns, phash,
grey, gw, gh, taken, error), valid while the store's row has the same sha256 (the photo's content; size and
mtime where the row has no sha256): the hash, the grey image `contains` compares (uint8, longer side
CHECK_SIDE) and the EXIF time of capture (seconds, None without one). It also keeps the verdict of every pair
the pixels were checked for, checks(a, b, match, scale) keyed by the two contents (sha256), so a pair is
compared once: `index` checks every candidate pair of the collection (index/duplicates.copy_candidates) after
it saves, and the review reads the verdicts. Older indexes are signed once, from the files.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from index import database

if TYPE_CHECKING:
    from index.duplicates import Photo
    from index.store import Store

HASH_FILE = "photo_hash.sqlite"
HASH_BITS = 64
_DCT_SIDE = 32  # the grey image the DCT is taken of (imagehash: hash_size * 4)
_LOW = 8  # the 8x8 lowest frequencies make the 64 bits
CHECK_SIDE = 64  # the longer side of the grey images `contains` compares
SCALES = np.linspace(0.80, 1.0, 21)  # the smaller view's width as a fraction of the larger's (1% steps)
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


def whole(a: np.ndarray, b: np.ndarray) -> Match:
    """The normalised cross-correlation of two grey images taken whole (the larger resized to the smaller):
    the only placement a copy of the same pixel size may have."""
    if a.size < b.size:
        a, b = b, a
    if a.shape != b.shape:
        a = np.asarray(_img(a).resize((b.shape[1], b.shape[0]), Image.Resampling.BILINEAR), np.float32)
    x, y = a - a.mean(), b - b.mean()
    return Match(float((x * y).sum() / (np.sqrt((x * x).sum() * (y * y).sum()) + 1e-6)), 1.0)


class Signature(NamedTuple):
    """What the duplicate review needs of one photo's pixels, made once at index time."""

    phash: int  # 64-bit perceptual hash (signed)
    grey: np.ndarray  # the grey image `contains` compares: uint8, longer side CHECK_SIDE
    taken: float | None  # EXIF time of capture in seconds (index.photoinfo.taken_seconds), None without one


def signature(image: Image.Image, data: bytes | None = None) -> Signature:
    """The signature of a decoded, upright photo; `data` (its file's bytes) gives the EXIF time of capture."""
    from index.photoinfo import taken_seconds

    grey = np.clip(np.rint(check_image(image)), 0, 255).astype(np.uint8)
    return Signature(phash(image), grey, taken_seconds(data) if data is not None else None)


# ---------------------------------------------------------------- the stored signatures and verdicts
_SCHEMA = """
DROP TABLE IF EXISTS hashes;  -- the first layout (a hash alone): its photos are signed again, once
CREATE TABLE IF NOT EXISTS photos (
  id INTEGER PRIMARY KEY,  -- the photo's id in the index
  sha256 TEXT, size INTEGER, mtime_ns INTEGER,  -- the photo's content when signed: valid while they match
  phash INTEGER,  -- 64-bit perceptual hash (signed), NULL when the photo could not be read
  grey BLOB, gw INTEGER, gh INTEGER,  -- the grey image the pixel check compares (uint8, gh rows of gw)
  taken REAL,  -- EXIF time of capture (seconds), NULL without one
  error TEXT);  -- why it could not be read, else NULL
CREATE TABLE IF NOT EXISTS checks (
  a TEXT, b TEXT,  -- the two photos' content hashes, a < b
  match REAL, scale REAL,  -- index.photohash.Match of the pair; NULL when one could not be read
  PRIMARY KEY (a, b)) WITHOUT ROWID;
"""


def _key(row: dict[str, Any]) -> tuple[Any, Any, Any]:
    return (row.get("sha256"), row.get("size"), row.get("mtime_ns"))


def _same_content(stored: tuple[Any, Any, Any], row: dict[str, Any]) -> bool:
    """The content hash decides (a touched or moved photo keeps its hash); rows without one fall back to
    size and mtime."""
    if row.get("sha256"):
        return bool(stored[0] == row["sha256"])
    return stored == _key(row)


@dataclass
class Known:
    """The stored signatures of some photos (PhotoHashes.get): what is valid, what failed, what is missing."""

    hashes: dict[int, int]  # id -> phash
    taken: dict[int, float]  # id -> EXIF time of capture (photos without one are left out)
    errors: dict[int, str]  # id -> why it could not be read
    missing: list[int]  # ids without a valid signature


Verdict = tuple[float, float] | None  # (match, scale), None when a photo of the pair could not be read


class PhotoHashes:
    """The signatures of a store's photos and the verdicts of checked pairs, in INDEX_DIR/photo_hash.sqlite.
    Thread-safe."""

    def __init__(self, index_dir: str | Path) -> None:
        self.db = Path(index_dir) / HASH_FILE
        self._lock = threading.RLock()
        self._conn = database.connect(self.db, wal=True)
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> PhotoHashes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, sql: str, vals: list[tuple[Any, ...]]) -> None:
        if not vals:
            return
        with self._lock, database.transaction(self._conn):
            self._conn.executemany(sql, vals)

    def put(self, rows: Iterable[tuple[int, dict[str, Any], Signature | None, str | None]]) -> None:
        """Store (id, the store's row of the photo, its signature or None, error or None), one transaction."""
        vals: list[tuple[Any, ...]] = []
        for i, r, sig, err in rows:
            if sig is None:
                vals.append((int(i), *_key(r), None, None, None, None, None, err))
            else:
                g = np.ascontiguousarray(sig.grey, np.uint8)
                vals.append((int(i), *_key(r), int(sig.phash), g.tobytes(), g.shape[1], g.shape[0], sig.taken, err))
        self._write("INSERT OR REPLACE INTO photos VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", vals)

    def _select(self, cols: str, ids: list[int]) -> list[tuple[Any, ...]]:
        with self._lock:
            return database.select_in(self._conn, f"SELECT {cols} FROM photos WHERE id IN ({{}})", ids)

    def get(self, store: Store, ids: Iterable[int]) -> Known:
        """The valid hashes and times of photos in the store, why some could not be read, which lack one."""
        rows = {int(r["id"]): r for r in store.rows([int(i) for i in ids])}
        stored = {int(i): ((s, size, m), h, t, err)
                  for i, s, size, m, h, t, err in self._select("id, sha256, size, mtime_ns, phash, taken, error",
                                                              sorted(rows))}
        known = Known({}, {}, {}, [])
        for i, r in rows.items():
            got = stored.get(i)
            if got is None or not _same_content(got[0], r):
                known.missing.append(i)
            elif got[1] is None:
                known.errors[i] = got[3] or "could not be read"
            else:
                known.hashes[i] = int(got[1])
                if got[2] is not None:
                    known.taken[i] = float(got[2])
        return known

    def greys(self, ids: Iterable[int]) -> dict[int, np.ndarray]:
        """{id: grey image} of the photos that have one (ids whose content changed are the caller's to skip)."""
        return {int(i): np.frombuffer(g, np.uint8).reshape(gh, gw).astype(np.float32)
                for i, g, gw, gh in self._select("id, grey, gw, gh", sorted({int(i) for i in ids})) if g is not None}

    def fill(self, store: Store, ids: Iterable[int] | None = None, progress: Progress | None = None,
             batch: int = 200) -> int:
        """Sign the photos (all by default) without a valid signature, from their files through the safe
        decoder; a file that cannot be read is stored with its reason. Returns how many were signed."""
        from byol.images import BadImage, load_rgb

        missing = self.get(store, store.all_ids() if ids is None else ids).missing
        for k in range(0, len(missing), batch):
            chunk = missing[k:k + batch]
            out: list[tuple[int, dict[str, Any], Signature | None, str | None]] = []
            for r in store.rows(chunk):
                try:
                    data = Path(str(r["path"])).read_bytes()
                    out.append((int(r["id"]), r, signature(load_rgb(data, min_side=_DCT_SIDE * 2), data), None))
                except BadImage as e:
                    out.append((int(r["id"]), r, None, e.reason))
                except OSError as e:
                    out.append((int(r["id"]), r, None, f"cannot read ({e.strerror or type(e).__name__})"))
            self.put(out)
            if progress is not None:
                progress((k + len(chunk)) / len(missing), f"signing photos: {k + len(chunk):,} of {len(missing):,}")
        return len(missing)

    def keep_only(self, ids: Iterable[int]) -> int:
        """Drop the rows of photos that left the index; returns how many were dropped."""
        keep = {int(i) for i in ids}
        with self._lock:
            gone = [(i,) for (i,) in self._conn.execute("SELECT id FROM photos") if i not in keep]
        self._write("DELETE FROM photos WHERE id = ?", gone)
        return len(gone)

    # -- verdicts of checked pairs, by content
    def verdicts(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Verdict]:
        """{(a, b): verdict} of the content pairs (a < b) checked before."""
        pairs = sorted(set(pairs))
        out: dict[tuple[str, str], Verdict] = {}
        with self._lock:
            for chunk in database.chunks(pairs, database.SQL_CHUNK // 2):  # two values a pair
                q = ("SELECT a, b, match, scale FROM checks WHERE (a, b) IN (VALUES "
                     + ",".join("(?, ?)" for _ in chunk) + ")")
                for a, b, m, sc in self._conn.execute(q, [x for pair in chunk for x in pair]):
                    out[(a, b)] = None if m is None else (float(m), float(sc))
        return out

    def put_verdicts(self, verdicts: dict[tuple[str, str], Verdict]) -> None:
        self._write("INSERT OR REPLACE INTO checks VALUES (?, ?, ?, ?)",
                    [(a, b, *(v if v is not None else (None, None))) for (a, b), v in verdicts.items()])


class PixelCheck:
    """index.duplicates.Check from the stored signatures: each pair's verdict read from the checks table, or
    made (`whole` for photos of the same pixel size, else `contains`) and stored, keyed by the contents."""

    def __init__(self, hashes: PhotoHashes, photos: dict[int, Photo]) -> None:
        self.hashes, self.photos = hashes, photos
        self.checked = 0  # pairs compared from the pixels (not read from the table)

    def __call__(self, pairs: list[tuple[int, int]]) -> dict[tuple[int, int], Verdict]:
        key = {p: self._key(*p) for p in pairs}
        known = self.hashes.verdicts(k for k in key.values() if k is not None)
        todo = [p for p in pairs if key[p] not in known]
        greys = self.hashes.greys({i for p in todo for i in p})
        made: dict[tuple[str, str], Verdict] = {}
        out: dict[tuple[int, int], Verdict] = {}
        for p in pairs:
            k = key[p]
            if k is not None and k in known:
                out[p] = known[k]
                continue
            a, b = greys.get(p[0]), greys.get(p[1])
            pa, pb = self.photos[p[0]].pixels, self.photos[p[1]].pixels
            m = None if a is None or b is None else (whole(a, b) if pa is not None and pa == pb else contains(a, b))
            out[p] = None if m is None else (m.score, m.scale)
            self.checked += 1
            if k is not None:
                made[k] = out[p]
        self.hashes.put_verdicts(made)
        return out

    def _key(self, a: int, b: int) -> tuple[str, str] | None:
        sa, sb = self.photos[a].sha256, self.photos[b].sha256
        return None if not sa or not sb else (min(sa, sb), max(sa, sb))


# ---------------------------------------------------------------- what the duplicate review reads of a store
def photos_of(store: Store, hashes: PhotoHashes, progress: Progress | None = None) -> dict[int, Photo]:
    """{id: index.duplicates.Photo} of every photo in the store, from its row and its stored signature
    (photos an older index did not sign are signed first, from their files)."""
    from index.duplicates import Photo

    ids = [int(i) for i in store.all_ids()]
    hashes.fill(store, progress=progress)
    known = hashes.get(store, ids)
    return {int(r["id"]): Photo(int(r["id"]), r.get("sha256"), known.hashes.get(int(r["id"])),
                                (int(r["width"]), int(r["height"])) if r.get("width") and r.get("height") else None,
                                known.taken.get(int(r["id"])))
            for r in store.rows(ids)}


def neighbours_of(store: Store) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """index.duplicates.Neighbours from the store's search (each photo's K_NEIGHBOURS nearest, and itself)."""
    from index.duplicates import K_NEIGHBOURS

    k = min(K_NEIGHBOURS + 1, max(store.count, 1))
    return lambda chunk: store.search(store.get_vectors(chunk), k)


def check_ahead(store: Store, hashes: PhotoHashes, progress: Progress | None = None, chunk: int = 2000) -> int:
    """At index time: the pixel verdict of every copy candidate of the collection (index.duplicates.
    copy_candidates) not checked before, so that the review only reads them. Returns how many were checked."""
    from index.duplicates import copy_candidates

    photos = photos_of(store, hashes)
    pairs, _, _ = copy_candidates(photos, neighbours_of(store))
    check = PixelCheck(hashes, photos)
    for k in range(0, len(pairs), chunk):
        check(pairs[k:k + chunk])
        if progress is not None:
            progress(min(1.0, (k + chunk) / len(pairs)), f"comparing likely copies: {min(k + chunk, len(pairs)):,} "
                     f"of {len(pairs):,} pairs")
    return check.checked
