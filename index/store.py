"""The store: one INDEX_DIR holding FAISS vectors, SQLite metadata, thumbnails and a manifest, and the protocol
that changes them together (open, create, save, refresh; search; add, update, remove, reset).

Layout (artifacts are the contract: FAISS id == SQLite `images.id` == thumbnail name):

    INDEX_DIR/
      meta.sqlite          images(id, path, size, mtime_ns, sha256, width, height, added_at), meta(key, value),
                           reserved(path, id) (index/reservations.py)
      vectors.<gen>.faiss  the vectors of generation <gen> (unit vectors, inner product = cosine)
      manifest.json        a readable mirror of `meta` (index/manifest.py)
      thumbs/<id // 1000>/<id>.jpg   thumbnails, 256 px on the longest side (index/thumbs.py)
      .writer.lock         held (flock) by the one process allowed to change the index

Atomic saves. SQLite is the commit point. `save()` writes `vectors.<gen+1>.faiss` (temporary file, fsync,
rename), then commits the row changes together with `meta.generation = gen+1` in one SQLite transaction, then
rewrites the manifest, then deletes vector files older than the previous generation (kept for readers that
opened it a moment ago). A process killed before the commit leaves generation <gen> untouched (SQLite rolls
the open transaction back; the stray new file is ignored and overwritten later); killed after it, generation
<gen+1> is complete and the next open rewrites the lagging manifest.

Paths are stored as text, or as a BLOB of the name's bytes when they are not UTF-8 (index/database.py
`db_path`), so any file name round-trips. A read-only store (the page) keeps the ids of the generation it
loaded, so its ids always match its vectors while `index` saves newer generations beside it; after
`refresh()` it still answers for ids of the generation before for a while (a request that began just before
the refresh).

Ids are stable: SQLite AUTOINCREMENT never reuses an id, an image that changes keeps its id (`update`), and
`reset` (re-embedding everything with a new encoder) reserves each path's id so the path gets it back
(index/reservations.py; index/repair.py opens an index for that even when `open` refuses it). The page's
labels (INDEX_DIR/labels.sqlite) hold each photo's id, content hash and path, so they survive updates,
re-encoding, and even an index built again from nothing (app/labels.py).

Index type follows the collection's size: exact search (IndexIDMap2 over IndexFlatIP) below `exact_limit`
vectors, and an inverted file (IndexIVFFlat, inner product, spherical k-means) at or above it, with `nprobe`
raised until recall@10 against exact search, measured on the stored vectors, reaches `target_recall`
(index/ivf.py builds and tunes it; the store decides when and saves it). When the in-memory index would take
more than the store's memory limit (`memory_limit`, `--memory-limit`), it moves on disk (index/ondisk.py:
compressed codes and float16 vectors, memory-mapped; a generation is then `vectors.<gen>.ondisk.npz`, a
small file naming a base folder written before the commit). Near-duplicate groups are index/duplicates.py's
rule over the store's search.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, cast

import faiss
import numpy as np
import numpy.typing as npt

from byol import __version__
from byol.data import mark_artifact_folder
from byol.fileio import atomic_write_path
from index import database, manifest, reservations
from index.database import db_path, path_from_db
from index.dropped import Dropped
from index.duplicates import similar_groups
from index.ivf import TARGET_RECALL, gpu_copy, new_exact, omp_threads, reshape
from index.ondisk import MEMORY_LIMIT, OnDiskIndex, generation_file, outgrown
from index.ondisk import clean as clean_ondisk
from index.ondisk import reshape as reshape_ondisk
from index.thumbs import Thumbnails

log = logging.getLogger(__name__)

STORE_FORMAT = "byol-search/index/1"
EXACT_LIMIT = 50_000  # below this many vectors, exact search is fast enough (~5 ms per query on 2 cores at d=256)
_ROW_FIELDS = ("path", "size", "mtime_ns", "sha256", "width", "height", "added_at")
_LOAD_ATTEMPTS = 40  # reads of the newest generation while a writer replaces vector files under us
_DROPPED_KEPT_S = 60.0  # seconds a read-only store still answers get_vectors for ids a refresh dropped

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT UNIQUE NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    sha256 TEXT,
    width INTEGER,
    height INTEGER,
    added_at REAL
);
CREATE INDEX IF NOT EXISTS images_sha256 ON images(sha256);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reserved (path TEXT PRIMARY KEY, id INTEGER NOT NULL);
"""


class StoreError(Exception):
    """An index that cannot be used as asked; the message says what to do."""


class EncoderMismatch(StoreError):
    """The index was built with another encoder than the one given."""


class StoreInconsistent(StoreError):
    """The index files disagree with each other (not produced by an interrupted save)."""


class StoreLocked(StoreError):
    """Another process is updating the index."""


def _save_step(stage: str) -> None:
    """Called at each stage of `save()`; tests replace it to kill the process at that exact point."""


def rebuild_hint(index_dir: Path) -> str:
    return (
        "To index with the new encoder, build a new index:\n"
        "  byol-search index FOLDER --model NEW.onnx --out NEW_DIR\n"
        "or re-embed this one in place (image ids, and so labels, are kept):\n"
        f"  byol-search index FOLDER --model NEW.onnx --out {index_dir} --rebuild"
    )


class Built(Protocol):
    """What an index says of the encoder it was built with (a Store, or a stand-in with these two)."""

    @property
    def model_sha256(self) -> str: ...

    @property
    def model_path(self) -> str: ...


def check_encoder(index: Built, index_dir: Path, sha256: str, path: str | Path | None = None, why: str = "") -> None:
    """Refuse (EncoderMismatch) an encoder other than the one `index` was built with: the message names the
    encoder given by its hash (and file, when known), why it matters to the caller, and how to rebuild."""
    if sha256 == index.model_sha256:
        return
    given = sha256[:12] + ("" if path is None else f" ({path})")
    raise EncoderMismatch(f"{index_dir} was built with encoder {index.model_sha256[:12]} ({index.model_path}), "
                          f"not {given}" + (f": {why}" if why else "") + ".\n" + rebuild_hint(index_dir))


def new_meta(dim: int, model_sha256: str, model_path: str, preprocess: dict[str, Any],
             exact_limit: int = EXACT_LIMIT, target_recall: float = TARGET_RECALL,
             memory_limit: int = MEMORY_LIMIT) -> dict[str, str]:
    """The `meta` table of an empty index (generation 0, exact search)."""
    now = repr(time.time())
    return {
        "format": STORE_FORMAT, "generation": "0", "vectors_file": "vectors.0.faiss", "dim": str(int(dim)),
        "model_sha256": model_sha256, "model_path": model_path, "preprocess": json.dumps(preprocess),
        "index_type": "exact", "nprobe": "0", "trained_on": "0", "exact_limit": str(int(exact_limit)),
        "target_recall": repr(float(target_recall)), "memory_limit": str(int(memory_limit)), "created_at": now,
        "updated_at": now, "version": __version__,
    }


class Store:
    """FAISS + SQLite + thumbnails in one folder. Open with `Store.create` or `Store.open`.

    A store opened with `writable=True` (or created) holds the folder's writer lock; changes (`add`,
    `update`, `remove`, `reset`) are visible to this object at once and to other processes after `save()`.
    Read-only stores (the page) call `refresh()` to pick up a newer saved generation.
    Methods are thread-safe (one lock; FAISS searches are fast enough to serialise).
    """

    # ---------------------------------------------------------------- opening
    def __init__(self, index_dir: Path, conn: sqlite3.Connection, writable: bool, lock_fd: int | None):
        self.index_dir = index_dir
        self.thumbs = Thumbnails(index_dir)
        self._conn = conn
        self._writable = writable
        self._lock_fd = lock_fd
        self._lock = threading.RLock()
        self._meta: dict[str, str] = {}
        self._index: faiss.Index = None  # set by _load(), or by create() through it
        self._gpu_index: faiss.Index | bool | None = None  # None: not tried; False: no GPU search
        self._dirty = False
        self._thumbs_to_delete: set[int] = set()
        self._ids: np.ndarray | None = None  # read-only stores: the ids of the loaded generation
        self._dropped = Dropped(_DROPPED_KEPT_S)  # read-only stores: vectors of ids refreshes dropped just now

    @classmethod
    def create(
        cls,
        index_dir: str | Path,
        dim: int,
        model_sha256: str,
        model_path: str | Path,
        preprocess: dict[str, Any],
        exact_limit: int = EXACT_LIMIT,
        target_recall: float = TARGET_RECALL,
        memory_limit: int = MEMORY_LIMIT,
    ) -> Store:
        """Create an empty index in `index_dir` (made if missing) and return it open for writing."""
        index_dir = Path(index_dir).absolute()
        if (index_dir / "meta.sqlite").exists():
            raise StoreError(f"{index_dir} already holds an index: open it, or rebuild it with --rebuild")
        index_dir.mkdir(parents=True, exist_ok=True)
        mark_artifact_folder(index_dir, "index")
        lock_fd = take_writer_lock(index_dir)
        try:
            conn = database.connect(index_dir / "meta.sqlite", wal=True, durable=True)
            conn.executescript(_SCHEMA)
            meta = new_meta(dim, model_sha256, str(Path(model_path).absolute()), preprocess, exact_limit,
                            target_recall, memory_limit)
            # the vectors file exists before the database says it does: a crash here leaves no half index
            _write_faiss(new_exact(int(dim)), index_dir / "vectors.0.faiss")
            with database.transaction(conn):
                conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", meta.items())
        except BaseException:
            os.close(lock_fd)
            raise
        store = cls(index_dir, conn, True, lock_fd)
        store._load()
        store._write_manifest()
        return store

    @classmethod
    def open(cls, index_dir: str | Path, model_sha256: str | None = None, writable: bool = False) -> Store:
        """Open an existing index; refuse it (EncoderMismatch) when `model_sha256` is given and differs.

        Checks consistency: the FAISS vector count equals the SQLite row count, and the manifest's
        generation equals SQLite's (a manifest one save behind, left by a save killed after its commit,
        is rewritten).
        """
        index_dir = Path(index_dir).absolute()
        db = index_dir / "meta.sqlite"
        if not db.is_file():
            raise StoreError(f"{index_dir}: not an index (no meta.sqlite); build one with "
                             f"`byol-search index FOLDER --model encoder.onnx --out {index_dir}`")
        lock_fd = take_writer_lock(index_dir) if writable else None
        try:
            conn = database.connect(db, durable=True)
            store = cls(index_dir, conn, writable, lock_fd)
            store._load()
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        if model_sha256 is not None:
            try:
                check_encoder(store, index_dir, model_sha256)
            except EncoderMismatch:
                store.close()
                raise
        store._check_manifest()
        return store

    @classmethod
    def without_vectors(cls, index_dir: Path, conn: sqlite3.Connection, lock_fd: int, meta: dict[str, str]) -> Store:
        """A writable store over an open database (whose writer lock `lock_fd` is held) with an empty index of
        meta's dimension in place of vectors that cannot be loaded: index/repair.py, before `reset`."""
        store = cls(index_dir, conn, True, lock_fd)
        store._meta = meta
        store._index = new_exact(int(meta["dim"]))
        return store

    @staticmethod
    def exists(index_dir: str | Path) -> bool:
        return (Path(index_dir) / "meta.sqlite").is_file()

    def _load(self) -> None:
        """Read the committed generation's metadata and vectors (a snapshot: both in one read transaction)."""
        ids = None
        for attempt in range(_LOAD_ATTEMPTS):
            with database.snapshot(self._conn):
                meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
                if self._writable:  # the writer reads live rows: its own changes are in its transaction
                    rows = self._conn.execute("SELECT count(*) FROM images").fetchone()[0]
                else:  # the ids of exactly this generation, read in the same snapshot as its file name
                    cur = self._conn.execute("SELECT id FROM images ORDER BY id")
                    ids = np.fromiter((r[0] for r in cur), np.int64)
                    rows = len(ids)
            if meta.get("format") != STORE_FORMAT:
                raise StoreError(f"{self.index_dir}: not a byol-search index (format {meta.get('format')!r}, "
                                 f"expected {STORE_FORMAT}); rebuild it with --rebuild")
            path = self.index_dir / meta["vectors_file"]
            try:
                index = OnDiskIndex.open(path) if meta["index_type"] == "ondisk" else faiss.read_index(str(path))
                break
            except RuntimeError:
                if path.exists() or attempt == _LOAD_ATTEMPTS - 1:  # present but unreadable, or truly missing
                    raise StoreInconsistent(
                        f"{self.index_dir}: vectors file {path.name} of generation {meta['generation']} is "
                        "missing or unreadable; rebuild the index with --rebuild") from None
                time.sleep(0.05)  # a writer removed it between our two reads: read the newer generation
        if index.ntotal != rows:
            raise StoreInconsistent(
                f"{self.index_dir}: {path.name} holds {index.ntotal} vectors but meta.sqlite {rows} images; "
                "the files come from different saves. Rebuild the index with --rebuild")
        if index.d != int(meta["dim"]):
            raise StoreInconsistent(f"{self.index_dir}: vectors have dimension {index.d}, metadata says {meta['dim']}")
        self._meta, self._index, self._gpu_index, self._ids = meta, index, None, ids
        if meta["index_type"] == "ivf":
            index.nprobe = int(meta["nprobe"])

    def _check_manifest(self) -> None:
        gen = manifest.generation(self.index_dir)
        # a save may have committed since we loaded: compare with the database now
        if gen > self.generation and gen > self._committed_generation():
            raise StoreInconsistent(
                f"{self.index_dir}: manifest.json is at generation {gen} but meta.sqlite at {self.generation}: "
                "the files come from different saves (a partial copy or restore?). Rebuild with --rebuild")
        if gen < self.generation:  # a save killed after its commit: the database is the truth
            if self._writable:
                self._write_manifest()
            else:
                log.warning("%s: manifest.json lags the database (interrupted save); using the database",
                            self.index_dir)

    def _committed_generation(self) -> int:
        with database.snapshot(self._conn):
            return int(self._conn.execute("SELECT value FROM meta WHERE key='generation'").fetchone()[0])

    def refresh(self) -> bool:
        """Reload when another process saved a newer generation; True when it did."""
        with self._lock:
            if self._writable or self._committed_generation() == self.generation:
                return False
            old_index, old_ids = self._index, self._ids
            try:
                self._load()
            except StoreInconsistent as e:  # mid-save of a fast writer: keep serving what we have
                log.warning("keeping generation %d: %s", self.generation, e)
                return False
            # a request that read ids a moment ago may still ask for the vectors of those just removed
            if old_ids is not None:
                dropped = np.setdiff1d(old_ids, cast(np.ndarray, self._ids), assume_unique=True)
                self._dropped.keep(dropped, old_index.reconstruct_batch(dropped) if len(dropped) else None)
            return True

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                self._conn.close()
                self._conn = None  # type: ignore[assignment]  # closed: any later use fails
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- properties
    @property
    def count(self) -> int:
        return int(self._index.ntotal)

    @property
    def created_at(self) -> float:
        """When this index was first created: a new value means a new index, whose ids mean other photos."""
        return float(self._meta["created_at"])

    @property
    def dim(self) -> int:
        return int(self._meta["dim"])

    @property
    def generation(self) -> int:
        return int(self._meta["generation"])

    @property
    def model_sha256(self) -> str:
        return self._meta["model_sha256"]

    @property
    def model_path(self) -> str:
        return self._meta["model_path"]

    @property
    def preprocess(self) -> dict[str, Any]:
        """Preprocess.to_dict() of the encoder (Preprocess.from_dict(store.preprocess) rebuilds it)."""
        return cast(dict[str, Any], json.loads(self._meta["preprocess"]))

    @property
    def index_type(self) -> str:
        """'exact' (IndexFlatIP), 'ivf' (IndexIVFFlat with the tuned nprobe) or 'ondisk' (index/ondisk.py)."""
        return self._meta["index_type"]

    @property
    def memory_limit(self) -> int:
        """Bytes the in-memory index may take; above it the index lives on disk (index/ondisk.py)."""
        return int(self._meta.get("memory_limit", MEMORY_LIMIT))

    @property
    def outgrown(self) -> bool:
        """The unsaved vectors held in memory have passed the memory limit (or, on disk, a tenth of the base):
        the next save() moves or compacts them (index/ondisk.py outgrown); `index` saves then."""
        with self._lock:
            return outgrown(self._index, self.index_type, self.memory_limit)

    @property
    def manifest(self) -> dict[str, Any]:
        """What manifest.json says (index/manifest.py), for the changes made so far."""
        ondisk = self._index.describe() if isinstance(self._index, OnDiskIndex) else None
        return manifest.describe(self._meta, self.count, ondisk, self.memory_limit)

    # ---------------------------------------------------------------- reading
    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The database connection for several SELECTs that see one state (under the store's lock); for the
        modules beside the store that read its tables (index/reservations.py)."""
        with self._lock, database.snapshot(self._conn) as conn:
            yield conn

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """queries (n,d) or (d,) -> (scores (n,k) float32 cosine, ids (n,k) int64); missing slots id -1, score -inf.

        Queries are L2-normalised here, so any embedding of the right dimension works.
        """
        q = self._as_queries(queries)
        with self._lock:
            k = max(1, int(k))
            if self.count == 0:
                return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
            with omp_threads(1 if len(q) <= 4 else None):
                scores, ids = self._searcher().search(q, k)
        scores[ids < 0] = -np.inf
        return scores, ids.astype(np.int64)

    def search_by_id(self, image_id: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest neighbours of a stored image, EXCLUDING the image itself: (scores (k,), ids (k,)).

        Exact copies of the image (other ids, cosine ~1) are included: they are what one wants to see.
        """
        vec = self.get_vectors([image_id])
        scores, ids = self.search(vec, k + 1)
        keep = ids[0] != int(image_id)
        s, i = scores[0][keep][:k], ids[0][keep][:k]
        return s, i

    def get_vectors(self, ids: npt.ArrayLike) -> np.ndarray:
        """The stored unit vectors of `ids` (n,d) float32; KeyError for an id not in the index."""
        ids = np.ascontiguousarray(np.atleast_1d(np.asarray(ids, dtype=np.int64)))
        with self._lock:
            if len(ids) == 0:
                return np.zeros((0, self.dim), np.float32)
            try:
                vectors: np.ndarray = self._index.reconstruct_batch(ids)
                return vectors
            except RuntimeError as e:
                out = self._vectors_across_refresh(ids)
                if out is not None:
                    return out
                missing = [int(i) for i in ids if not self._has(int(i))]
                raise KeyError(f"ids not in the index: {missing[:10]}") from e

    def _vectors_across_refresh(self, ids: np.ndarray) -> np.ndarray | None:
        """A read-only store that refreshed: ids removed by the refreshes of the last _DROPPED_KEPT_S seconds
        (read by a request a moment before) are answered with their last vectors; None when some id is
        neither in the index nor among those."""
        if self._writable or self._ids is None:
            return None
        here = np.isin(ids, self._ids)
        gone = self._dropped.vectors(ids[~here])
        if gone is None:
            return None
        out = np.empty((len(ids), self.dim), np.float32)
        if here.any():
            out[here] = self._index.reconstruct_batch(ids[here])
        out[~here] = gone
        return out

    def rows(self, ids: npt.ArrayLike) -> list[dict[str, Any]]:
        """Metadata of `ids` in the order given: dicts with id, path, width, height, size, mtime_ns, sha256,
        added_at. Ids not in the store (e.g. removed by an update saved since) are left out: match by r['id']."""
        ids = [int(i) for i in np.atleast_1d(np.asarray(ids, dtype=np.int64)) if i >= 0]
        q = f"SELECT id, {', '.join(_ROW_FIELDS)} FROM images WHERE id IN ({{}})"
        with self._lock:
            found = {r[0]: dict(zip(("id",) + _ROW_FIELDS, r), path=path_from_db(r[1]))
                     for r in database.select_in(self._conn, q, ids)}
        return [found[i] for i in ids if i in found]

    def all_ids(self) -> np.ndarray:
        """Every image id, ascending (int64): of the loaded generation for a read-only store (the ids its
        vectors hold, whatever `index` has saved since), the live ones for the writer."""
        with self._lock:
            if self._ids is not None and not self._writable:
                return self._ids.copy()
            return np.array([r[0] for r in self._conn.execute("SELECT id FROM images ORDER BY id")], np.int64)

    def duplicates(self, threshold: float = 0.95, k: int = 16, batch: int = 4096) -> list[list[int]]:
        """Groups of images at cosine >= threshold that do not chain (index/duplicates.py similar_groups: each
        around a chosen image, at most MAX_GROUP, ids ascending, largest group first) from each image's k
        nearest neighbours."""
        k1 = min(k + 1, max(self.count, 1))  # the image itself comes back too
        return similar_groups(self.all_ids(), lambda chunk: self.search(self.get_vectors(chunk), k1),
                              threshold, batch=batch)

    # ---------------------------------------------------------------- changing
    @contextlib.contextmanager
    def changing(self) -> Iterator[sqlite3.Connection]:
        """The database connection inside the writer's open transaction (under the store's lock), for the
        modules beside the store that change its tables (index/reservations.py); committed by the next save()."""
        with self._lock:
            self._begin()
            yield self._conn
            self._changed()

    def add(self, rows: list[dict[str, Any]], vectors: np.ndarray) -> np.ndarray:
        """Add images (rows: path plus any of size, mtime_ns, sha256, width, height) with their vectors.

        Returns the new ids (int64). A path reserved by `reset` gets its old id back. Paths are stored absolute.
        """
        x = self._as_vectors(vectors, len(rows))
        with self._lock:
            self._begin()
            ids = np.empty(len(rows), np.int64)
            now = time.time()
            for j, r in enumerate(rows):
                path = db_path(Path(r["path"]).absolute())
                vals = (path, r.get("size"), r.get("mtime_ns"), r.get("sha256"), r.get("width"), r.get("height"),
                        r.get("added_at", now))
                reserved = reservations.take(self._conn, path)
                if reserved is not None:
                    self._conn.execute(f"INSERT INTO images(id, {', '.join(_ROW_FIELDS)}) VALUES (?,?,?,?,?,?,?,?)",
                                       (reserved,) + vals)
                    ids[j] = reserved
                else:
                    cur = self._conn.execute(f"INSERT INTO images({', '.join(_ROW_FIELDS)}) VALUES (?,?,?,?,?,?,?)",
                                             vals)
                    ids[j] = cast(int, cur.lastrowid)  # an INSERT always sets it
            self._index.add_with_ids(x, ids)
            self._changed()
            self._thumbs_to_delete.difference_update(ids.tolist())
            return ids

    def update(self, ids: npt.ArrayLike, rows: list[dict[str, Any]], vectors: np.ndarray | None = None) -> None:
        """Change stored images in place, keeping their ids (so their labels): new metadata (any of path, size,
        mtime_ns, sha256, width, height) and, when given, new vectors."""
        ids = np.ascontiguousarray(np.atleast_1d(np.asarray(ids, dtype=np.int64)))
        if len(ids) != len(rows):
            raise ValueError(f"{len(ids)} ids but {len(rows)} rows")
        x = None if vectors is None else self._as_vectors(vectors, len(ids))
        with self._lock:
            self._begin()
            for i, r in zip(ids.tolist(), rows):
                r = {f: (db_path(Path(v).absolute()) if f == "path" else v) for f, v in r.items() if f in _ROW_FIELDS}
                if not self._has(i):
                    raise KeyError(f"id {i} is not in the index")
                if r:
                    sets = ", ".join(f"{f}=?" for f in r)
                    self._conn.execute(f"UPDATE images SET {sets} WHERE id=?", (*r.values(), i))
            if x is not None:
                self._index.remove_ids(ids)
                self._index.add_with_ids(x, ids)
            self._changed()

    def remove(self, ids: npt.ArrayLike) -> int:
        """Remove images (rows, vectors, and thumbnails after the next save); returns how many were removed."""
        ids = np.ascontiguousarray(np.atleast_1d(np.asarray(ids, dtype=np.int64)))
        with self._lock:
            self._begin()
            database.execute_in(self._conn, "DELETE FROM images WHERE id IN ({})", ids.tolist())
            n = self._index.remove_ids(ids)
            self._thumbs_to_delete.update(ids.tolist())
            self._changed()
            return int(n)

    def set_memory_limit(self, limit: int) -> None:
        """A new memory limit, applied (the index moved on disk or back) by the next save()."""
        with self._lock:
            self._require_writable()
            if int(limit) != self.memory_limit:
                self._meta["memory_limit"] = str(int(limit))
                self._changed()

    def set_encoder_info(self, info: dict[str, Any]) -> None:
        """Where the index's encoder came from (checkpoint sha256, step, init: byol.init), for the manifest;
        written by the next save()."""
        with self._lock:
            self._meta["encoder"] = json.dumps(info, sort_keys=True, default=str)

    def reset(self, dim: int, model_sha256: str, model_path: str | Path, preprocess: dict[str, Any]) -> None:
        """Empty the index for a new encoder, reserving every path's id: re-adding a path gives it its old id
        (index/reservations.py). Committed by the next `save()`; until then other processes still see the old
        encoder's index."""
        with self._lock:
            self._begin()
            reservations.reserve_all(self._conn)
            self._conn.execute("DELETE FROM images")
            self._meta.update(dim=str(int(dim)), model_sha256=model_sha256, index_type="exact", nprobe="0",
                              model_path=str(Path(model_path).absolute()), preprocess=json.dumps(preprocess),
                              trained_on="0")
            self._index = new_exact(int(dim))
            self._changed()

    def save(self) -> int:
        """Atomically persist every change since the last save; returns the generation now on disk."""
        with self._lock:
            self._require_writable()
            if not self._dirty:
                return self.generation
            self._reshape()
            gen = self.generation + 1
            name = generation_file(gen) if self.index_type == "ondisk" else f"vectors.{gen}.faiss"
            _save_step("begin")
            if isinstance(self._index, OnDiskIndex):
                self._index.write(self.index_dir / name)
            else:
                _write_faiss(self._index, self.index_dir / name)
            _save_step("faiss_written")
            self._begin()
            self._meta.update(generation=str(gen), vectors_file=name, updated_at=repr(time.time()), version=__version__)
            self._conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", self._meta.items())
            self._conn.execute("COMMIT")  # <- the commit point
            _save_step("committed")
            self._write_manifest()
            _save_step("manifest_written")
            self._dirty = False
            self.thumbs.remove(self._thumbs_to_delete)
            self._thumbs_to_delete.clear()
            self._clean_vector_files(gen)
            _save_step("done")
            return gen

    # ---------------------------------------------------------------- internals
    def _require_writable(self) -> None:
        if not self._writable:
            raise StoreError(f"{self.index_dir} is open read-only; open it with writable=True to change it")

    def _begin(self) -> None:
        """Open the writer's transaction, kept open across changes until save() commits it."""
        self._require_writable()
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN IMMEDIATE")

    def _changed(self) -> None:
        self._dirty = True
        self._gpu_index = None

    def _has(self, image_id: int) -> bool:
        return self._conn.execute("SELECT 1 FROM images WHERE id=?", (image_id,)).fetchone() is not None

    def _as_queries(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.atleast_2d(np.asarray(x, dtype=np.float32)))
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}), got {x.shape}")
        x = x.copy()
        faiss.normalize_L2(x)
        return x

    def _as_vectors(self, x: np.ndarray, n: int) -> np.ndarray:
        x = self._as_queries(x)
        if len(x) != n:
            raise ValueError(f"{n} rows but {len(x)} vectors")
        if not np.isfinite(x).all():
            raise ValueError("vectors contain NaN or infinity")
        return x

    def _searcher(self) -> faiss.Index:
        """The index to search: a GPU copy when faiss sees a GPU (made lazily, dropped on change), else the CPU one."""
        if self._gpu_index is None:
            gpu = gpu_copy(self._index, self.index_type)
            self._gpu_index = False if gpu is None else gpu
        return self._index if self._gpu_index is False else self._gpu_index

    def _reshape(self) -> None:
        """Switch between exact and IVF as the collection crosses `exact_limit` (with hysteresis), and retrain
        IVF when the collection has grown 4x since its centroids were trained (index/ivf.py: reshape); on disk
        above the memory limit (index/ondisk.py: reshape, which also writes a new base when one is due)."""
        m = self._meta
        new = reshape_ondisk(self._index, self.all_ids(), self.index_dir, self.generation + 1, self.index_type,
                             self.memory_limit, float(m["target_recall"]), lambda stage: _save_step(stage))
        if new is not None:
            self._index, changes = new
            m.update(changes)
        if self.index_type == "ondisk":
            return
        new = reshape(self._index, self.all_ids(), self.dim, self.index_type, int(m["trained_on"]),
                      int(m["exact_limit"]), float(m["target_recall"]))
        if new is not None:
            self._index, changes = new
            m.update(changes)

    def _write_manifest(self) -> None:
        manifest.write(self.index_dir, self.manifest)

    def _clean_vector_files(self, gen: int) -> None:
        """Delete vector files older than the previous generation, and temporary files of killed saves."""
        for p in self.index_dir.glob("vectors.*.faiss"):
            try:
                g = int(p.name.split(".")[1])
            except ValueError:
                continue
            if g < gen - 1 or g > gen:
                p.unlink(missing_ok=True)
        for p in self.index_dir.glob(".vectors.*.tmp"):
            p.unlink(missing_ok=True)
        clean_ondisk(self.index_dir, [self._meta["vectors_file"], generation_file(gen - 1)])


# -------------------------------------------------------------------- files
def take_writer_lock(index_dir: Path) -> int:
    """The folder's writer lock (flock on .writer.lock), held until its descriptor is closed; StoreLocked when
    another process holds it."""
    fd = os.open(index_dir / ".writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLocked(f"{index_dir} is being updated by another process (`byol-search index`?); "
                          "wait for it to finish") from None
    return fd


def _write_faiss(index: faiss.Index, path: Path) -> None:
    """Write a FAISS index to a temporary file, fsync it, rename it over `path`, fsync the folder."""

    def write(tmp: str) -> None:
        faiss.write_index(index, tmp)
        _save_step("faiss_tmp_written")

    atomic_write_path(path, write)
