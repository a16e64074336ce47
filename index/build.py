"""Building, or updating, the index of a photo folder.

What counts as changed: a file whose path, size and mtime_ns match its row is unchanged and never read. A
file whose size or mtime changed is hashed (SHA-256 of its bytes): same content (a copy that kept its bytes,
a `touch`) only updates the row; new content is re-embedded in place, KEEPING its id (and so its labels;
the photo is still "that photo", edited). A new file whose content hash equals that of a file gone from the
folder is a move or rename: the row follows it, keeping id, vector and thumbnail. Other new files are
embedded and get new ids; rows of files gone from the folder are removed. Only files under FOLDER are
compared, so one index may hold several folders, each updated by its own run; a `rebuild` (new encoder)
re-embeds the photos of the other folders too, so none leaves the index. File names that are not UTF-8
are indexed like any other (stored as bytes) and reported in a printable form.

Unreadable files are reported by path and reason in INDEX_DIR/bad_files.jsonl (with their size and mtime,
so an unchanged bad file is not decoded again on the next run) and skipped; a file that turns bad leaves
the index. Progress is saved (atomically) every `save_every` embedded photos, or less often once saves grow
long (SAVE_RATIO), so an interrupted run resumes where it stopped; Ctrl-C saves what is done before exiting.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from byol.fileio import atomic_write_bytes, file_sha256
from byol.images import load_rgb
from index import folders, repair, reservations
from index.embed import EmbeddedBatch, Embedder
from index.photohash import PhotoHashes, Signature, check_ahead, signature
from index.preview import remove_stale
from index.store import EncoderMismatch, Store, check_encoder
from index.thumbs import THUMB_SIDE, thumbnail_jpeg

if TYPE_CHECKING:
    from PIL import Image

    from byol.data import BadFile
    from index.ray_engine import RayConfig, RayEngine

SAVE_EVERY = 5000  # embedded photos between intermediate saves (each save rewrites the vector file: ~1 s per 250k)
# ...and at least this many times a save's own duration of embedding between two saves: a save rewrites the
# in-memory index (4 GB at the default memory limit) or writes the on-disk index's delta and, now and then, a
# new base; at millions of photos saving every 5,000 would spend more time saving than embedding. Saves then
# take at most 1/(1+SAVE_RATIO) of the run, and a kill loses at most SAVE_RATIO save-durations of work; but a
# store whose unsaved vectors passed its memory bound (Store.outgrown) saves at once.
SAVE_RATIO = 9
LONG_SAVE_S = 1.0  # saves shorter than this are not long: they follow save_every alone
SPACED_FROM = 250_000  # photos in the index below which saves follow save_every alone (a save of fewer is
# long only when the disk is busy, and spacing it would only make a kill lose more)


def build_index(
    folder: str | Path,
    model_path: str | Path,
    index_dir: str | Path,
    batch_size: int = 64,
    workers: int | None = None,
    rebuild: bool = False,
    save_every: int = SAVE_EVERY,
    embedder: Embedder | None = None,
    log: Callable[[str], object] = print,
    memory_limit: int | None = None,
    ray: RayConfig | None = None,
) -> dict[str, Any]:
    """Build or update the index of `folder` in `index_dir` with the ONNX encoder `model_path`.

    Refuses (EncoderMismatch) an index made with another encoder unless `rebuild`, which re-embeds every
    photo with the new encoder in place, keeping each path's id. `memory_limit` (bytes; default: the index's
    own, index/ondisk.py's MEMORY_LIMIT when new) is what the in-memory index may take before it moves on
    disk. `ray` (index/ray_engine.py) embeds on a Ray cluster, in resumable shards, instead of on this
    machine's threads; the index is the same. Returns a summary: added, updated (new
    content, re-embedded), moved, touched (metadata only), removed, unchanged, bad (counts), bad_files
    (path, reason), count, generation, index_type, provider, seconds, embed_rate (photos/s), and with `ray`
    from_shards (photos taken from the shards an interrupted run had finished).
    """
    from byol.data import scan_paths

    t0 = time.perf_counter()
    folder, index_dir = Path(folder).absolute(), Path(index_dir).absolute()
    paths = scan_paths(folder)  # absolute, as `folder` is; ValueError for a missing folder
    embedder = embedder or Embedder(model_path)
    log(f"encoder {embedder.model_path.name}: {embedder.dim}-d, {embedder.preprocess.size} px, "
        f"on {embedder.provider}")
    store, others = _open_store(index_dir, embedder, rebuild, folder, log)
    if memory_limit is not None:
        store.set_memory_limit(memory_limit)
    meta = getattr(embedder, "metadata", {})
    store.set_encoder_info({"checkpoint_sha256": meta.get("checkpoint_sha256"), "step": meta.get("step"),
                            "init": meta.get("init", {"kind": "none"})})
    paths += [p for p in sorted(others) if os.path.isfile(p)]  # a rebuild keeps other folders' photos
    try:
        update = _Update(store, folder, index_dir, workers, log)
        update.compare(paths)
        update.keep_touched()
        update.follow_moves()
        update.remove_gone()
        reservations.release(store, keep_paths=update.stats, under=None if others else folder)
        engine = None if ray is None else _ray_engine(ray, index_dir, embedder, log)
        embed_seconds = update.embed(embedder, batch_size, save_every, engine)
        summary = update.finish(embedder, t0, embed_seconds)
        if engine is not None:
            engine.finished()  # the store has saved what the shards held
            summary["from_shards"] = engine.resumed
        return summary
    finally:
        store.close()


class _Known(NamedTuple):
    """An indexed photo's row as an update compares it with its file (a tuple: a dict per photo costs 3x)."""

    id: int
    size: int | None
    mtime_ns: int | None


class _Update:
    """One run of build_index on an open, writable store: its phases, in the order build_index calls them.

    compare sorts the folder's files into unchanged, new, changed and gone; keep_touched and follow_moves
    settle by content hash the files that need no embedding; remove_gone drops the rest of the gone rows;
    embed re-embeds changed and embeds new photos, saving every `save_every`; finish saves and reports.
    """

    def __init__(self, store: Store, folder: Path, index_dir: Path, workers: int | None,
                 log: Callable[[str], object]) -> None:
        self.store, self.folder, self.index_dir, self.workers, self.log = store, folder, index_dir, workers, log
        self.summary: dict[str, Any] = dict(added=0, updated=0, moved=0, touched=0, removed=0, unchanged=0, bad=0)
        self.bad: dict[str, BadFile] = {}  # path -> why it could not be indexed
        self.prev_bad = _read_bad(index_dir)
        self.known: dict[str, _Known] = {}  # the index's rows of photos under `folder`, by path
        self.stats: dict[str, tuple[int, int]] = {}  # (size, mtime_ns) of every readable file to index
        self.new: list[str] = []  # paths without a row
        self.changed: list[str] = []  # paths whose row has another size or mtime
        self.gone: list[str] = []  # rows whose file is no longer in the folder

    # -- compare the folder with the index
    def compare(self, paths: list[str]) -> None:
        """Sort `paths` (absolute) into unchanged, new and changed, and the index's rows under the folder whose
        file is gone. Holds the paths' (size, mtime_ns) and the rows' (id, size, mtime_ns): ~0.5 KB a photo,
        read from the index in batches (a dict of every row took twice that)."""
        from byol.data import BadFile

        self.known = {p: _Known(i, size, mtime) for p, i, size, mtime in folders.rows_under(self.store, str(self.folder))}
        for path in paths:
            try:
                st = os.stat(path)
                self.stats[path] = (st.st_size, st.st_mtime_ns)
            except OSError as e:
                self.bad[path] = BadFile(path, f"cannot read ({e.strerror})")
        for p, (size, mtime) in self.stats.items():
            row = self.known.get(p)
            if row is None:
                old = self.prev_bad.get(p)
                if old and (old.get("size"), old.get("mtime_ns")) == (size, mtime):
                    self.bad[p] = BadFile(p, old["reason"])  # unchanged and still bad: not decoded again
                else:
                    self.new.append(p)
            elif (row.size, row.mtime_ns) == (size, mtime):
                self.summary["unchanged"] += 1
            else:
                self.changed.append(p)
        self.gone = [p for p in self.known if p not in self.stats]

    def _sha(self, paths: list[str]) -> dict[str, str | None]:
        """The content hash the index holds for each of `paths` (rows of `known`)."""
        by_id = {r["id"]: r["sha256"] for r in self.store.rows([self.known[p].id for p in paths])}
        return {p: by_id.get(self.known[p].id) for p in paths}

    # -- changed size/mtime: same bytes only need the row updated
    def keep_touched(self) -> None:
        if not self.changed:
            return
        known, changed = self.known, self.changed
        hashes, held = self._hash(changed, "hashing changed"), self._sha(changed)
        same = [p for p in changed if hashes.get(p) == held[p]]
        if same:
            self.store.update([known[p].id for p in same], [_stat_row(p, self.stats) for p in same])
            self.summary["touched"] = len(same)
        self.changed = [p for p in changed if p not in set(same)]

    # -- moves and renames: a new path with the bytes of a vanished one
    def follow_moves(self) -> None:
        if not (self.gone and self.new):
            return
        known = self.known
        by_hash: dict[str | None, list[str]] = {}  # rows without a hash share the key None
        for p, sha in self._sha(self.gone).items():
            by_hash.setdefault(sha, []).append(p)
        hashes = self._hash(self.new, "hashing new")
        moved: list[str] = []
        for p in self.new:
            olds = by_hash.get(hashes.get(p))
            if olds:
                was = olds.pop()
                moved.append(p)
                self.store.update([known[was].id], [{"path": p, **_stat_row(p, self.stats)}])
                self.gone.remove(was)
        self.summary["moved"] = len(moved)
        self.new = [p for p in self.new if p not in set(moved)]

    def remove_gone(self) -> None:
        if self.gone:
            self.summary["removed"] = self.store.remove([self.known[p].id for p in self.gone])

    def _hash(self, paths: list[str], desc: str) -> dict[str, str]:
        from byol.data import decode_many

        return _hash_files(paths, self.workers, decode_many, desc)

    # -- embed new and changed photos, pipelined, saving every `save_every`
    def embed(self, embedder: Embedder, batch_size: int, save_every: int, engine: RayEngine | None = None) -> float:
        """Embed changed then new photos, here or on `engine`; returns the seconds spent. Ctrl-C saves what
        is done, then raises."""
        todo = self.changed + self.new
        since_save, t_embed = 0, time.perf_counter()
        last_save, save_took = t_embed, 0.0
        batches = (engine.embed(todo, self.stats, batch_size, also=_hash_and_thumb) if engine is not None else
                   embedder.embed_paths(todo, batch_size=batch_size, workers=self.workers, also=_hash_and_thumb,
                                        desc="embedding"))
        try:
            for batch in batches:
                self._store_batch(batch, todo)
                since_save += len(batch.indices)
                long_save = save_took if save_took >= LONG_SAVE_S and self.store.count >= SPACED_FROM else 0.0
                if since_save >= save_every and (time.perf_counter() - last_save >= SAVE_RATIO * long_save
                                                 or self.store.outgrown):  # memory stays bounded
                    t = time.perf_counter()
                    self._save(engine)
                    last_save = time.perf_counter()
                    since_save, save_took = 0, last_save - t
        except KeyboardInterrupt:
            self._save(engine)
            self.log(f"interrupted: {self.summary['added'] + self.summary['updated']} photos embedded so far "
                     "are saved; run the same command again to finish")
            raise
        return time.perf_counter() - t_embed

    def _save(self, engine: RayEngine | None) -> None:
        self.store.save()
        if engine is not None:
            engine.saved()  # what its shards held so far is in the saved generation: they can go

    def _store_batch(self, batch: EmbeddedBatch, todo: list[str]) -> None:
        """Rows, vectors and thumbnails of one batch: todo[:len(changed)] keep their ids, the rest get new ones."""
        store, known, n_changed = self.store, self.known, len(self.changed)
        for i, b in batch.bad:
            self.bad[b.path] = b
            if i < n_changed:  # an indexed photo that turned unreadable: its old vector is stale
                self.summary["removed"] += store.remove([known[todo[i]].id])
        rows = [{**_stat_row(todo[i], self.stats), "path": todo[i], "sha256": ex[0], "width": w, "height": h}
                for i, (w, h), ex in zip(batch.indices, batch.sizes, batch.extras)]
        upd = [j for j, i in enumerate(batch.indices) if i < n_changed]
        add = [j for j, i in enumerate(batch.indices) if i >= n_changed]
        ids: list[int] = []
        if upd:
            ids = [known[todo[batch.indices[j]]].id for j in upd]
            store.update(ids, [rows[j] for j in upd], batch.vectors[upd])
            self.summary["updated"] += len(upd)
        if add:
            ids = list(ids) + store.add([rows[j] for j in add], batch.vectors[add]).tolist()
            self.summary["added"] += len(add)
        for image_id, j in zip(ids, upd + add):
            store.thumbs.put(image_id, batch.extras[j][1])
        with PhotoHashes(self.index_dir) as hashes:  # the duplicate review's signature, from the decode made here
            hashes.put((image_id, rows[j], batch.extras[j][2], None) for image_id, j in zip(ids, upd + add))

    # -- save and report
    def finish(self, embedder: Embedder, t0: float, embed_seconds: float) -> dict[str, Any]:
        from byol.data import display_path

        store, summary, bad = self.store, self.summary, self.bad
        store.save()
        with PhotoHashes(self.index_dir) as hashes:  # an index made before signatures existed gets them once
            hashes.keep_only(store.all_ids())
            hashes.fill(store)
            # the duplicate review's pixel checks, made here so that the review only reads them
            summary["pairs_checked"] = check_ahead(store, hashes) if store.count > 1 else 0
        # what a page served of the photos that left (their previews, and thumbnails a killed save left)
        remove_stale(store, thumbnails=True)
        summary.update(
            bad=len(bad), bad_files=[{"path": display_path(b.path), "reason": b.reason} for b in bad.values()],
            count=store.count, generation=store.generation, index_type=store.index_type,
            provider=embedder.provider, seconds=time.perf_counter() - t0,
            embed_rate=(summary["added"] + summary["updated"]) / embed_seconds if embed_seconds > 0 else 0.0,
        )
        _write_bad(self.index_dir, bad.values(), self.stats)
        return summary


def _open_store(index_dir: Path, embedder: Embedder, rebuild: bool, folder: Path,
                log: Callable[[str], object]) -> tuple[Store, list[str]]:
    """The store, writable, and on a rebuild the rows it held outside `folder` (re-embedded as well)."""
    meta = (embedder.dim, embedder.sha256, embedder.model_path, embedder.preprocess.to_dict())
    if not Store.exists(index_dir):
        return Store.create(index_dir, *meta), []
    if rebuild:
        store = repair.open_for_rebuild(index_dir, *meta)  # also opens the indexes Store.open refuses
        others = [p for p in reservations.paths(store) if not _under(p, folder)]
        log(f"rebuilding {index_dir} with {embedder.model_path.name}: every photo is embedded again "
            "(ids, and so labels, are kept)" + (f", including {len(others)} from other folders" if others else ""))
        return store, others
    store = Store.open(index_dir, writable=True)
    try:
        check_encoder(store, index_dir, embedder.sha256, embedder.model_path)
    except EncoderMismatch:
        store.close()
        raise
    return store, []


def _ray_engine(cfg: RayConfig, index_dir: Path, embedder: Embedder, log: Callable[[str], object]) -> RayEngine:
    from index.ray_engine import RayEngine  # loaded only when the Ray engine is asked for

    return RayEngine(cfg, index_dir, embedder, log)


def _under(path: str, folder: Path) -> bool:
    return path.startswith(str(folder).rstrip("/") + "/")


def _stat_row(path: str, stats: dict[str, tuple[int, int]]) -> dict[str, Any]:
    size, mtime = stats[path]
    return {"size": size, "mtime_ns": mtime}


def _hash_and_thumb(path: Path, data: bytes, image: Image.Image) -> tuple[str, bytes, Signature]:
    """Run in the decode threads: the content hash, the thumbnail's JPEG bytes and the duplicate review's
    signature (index/photohash.py: perceptual hash, grey image for the pixel check, EXIF time of capture).

    The embedding is made from a decode at the encoder's size (draft mode), exactly as a query or an
    evaluation decodes the same file, so a photo searched for finds itself at cosine 1. When that decode is
    smaller than a thumbnail, the thumbnail gets a decode of its own.
    """
    if max(image.size) < THUMB_SIDE:
        image = load_rgb(data, min_side=THUMB_SIDE)
    return hashlib.sha256(data).hexdigest(), thumbnail_jpeg(image), signature(image, data)


def _hash_files(paths: list[str], workers: int | None,
                decode_many: Callable[..., Iterator[tuple[int, object]]], desc: str) -> dict[str, str]:
    """path -> sha256 on a thread pool (unreadable files are left out: they are dealt with when embedding)."""
    out: dict[str, str] = {}
    for i, h in decode_many(paths, file_sha256, workers, desc=desc):
        if isinstance(h, str):
            out[paths[i]] = h
    return out


def _read_bad(index_dir: Path) -> dict[str, dict[str, Any]]:
    from byol.data import record_path

    out: dict[str, dict[str, Any]] = {}
    try:
        for line in (index_dir / "bad_files.jsonl").read_text().splitlines():
            d = json.loads(line)
            out[record_path(d)] = d
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return out


def _write_bad(index_dir: Path, bad: Iterable[BadFile], stats: dict[str, tuple[int, int]]) -> None:
    from byol.data import bad_file_record

    lines = []
    for b in sorted(bad, key=lambda b: os.fsencode(b.path)):
        size, mtime = stats.get(b.path, (None, None))
        lines.append(json.dumps(bad_file_record(b.path, b.reason, size=size, mtime_ns=mtime)))
    atomic_write_bytes(index_dir / "bad_files.jsonl", ("\n".join(lines) + "\n" if lines else "").encode())

