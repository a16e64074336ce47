"""The index that lives on disk: an inverted file of compressed codes, memory-mapped, re-ranked from disk.

For collections whose vectors do not fit the memory the user gives the index (`--memory-limit`), the store
keeps them in a *base* folder written once and never changed, plus a small in-memory *delta*:

    INDEX_DIR/ondisk.<gen>/      a base, named by the generation whose save built it
      trained.faiss              the quantizers (coarse centroids + PQ or SQ8), trained on a sample
      index.faiss, lists.ivfdata the inverted lists: per-shard IVF files merged (in faiss.contrib.ondisk's
                                 merge_ondisk layout, written with pwrite) into one OnDiskInvertedLists
                                 file, opened memory-mapped
      ids.npy, vectors.npy       every base id ascending, and its vector (float16, read with pread by
                                 index/vectorfile.py, never mapped): re-ranking and `get_vectors` read the
                                 rows they need, nothing else
      base.json                  codec, nlist, nprobe, rerank, measured recall@10, trained_on
    INDEX_DIR/vectors.<gen>.ondisk.npz   one generation: the base's name, the delta (ids and float32 vectors
                                 of photos added or re-embedded since), and the base ids removed since

Search = the base's IVF (removed ids filtered out by an IDSelector, so they never come back) asked for
k x rerank candidates, re-scored exactly from the float16 vectors, merged with an exact search of the delta.
A save writes only the small generation file; once the delta and the removals pass COMPACT_FRACTION of the
base, the save writes a new base: the old lists minus the removed ids plus the delta's lists (the same
quantizers, no re-encoding of the old codes), retraining everything when the collection has grown 4x.
A base is built in `.ondisk.<gen>.tmp/`, fsynced and renamed into place before the generation file that
names it is written, so a kill at any moment leaves the previous generation whole (index/store.py commits).

Memory while serving: the coarse centroids, the delta, the removed ids, and the pages of lists and ids that
searches touch (the kernel drops them under pressure); vectors are read row by row, never mapped. While
building: the ids, one shard of vectors, and the training sample (at most MAX_SAMPLE vectors); the vectors
file is written and read with ordinary file I/O and the lists are merged with pwrite, so the 5 GB of a 10M
base pass through the page cache, never through this process's resident memory (scripts/bench_scale.py
measures both).

Shards (index/ivfshards.py): encoded here one after the other, or by the runner offered for the index
folder (the Ray engine's cluster tasks), then merged into one lists file.

Codes: IVF-PQ (dim/8 bytes per vector) when re-ranking at most MAX_RERANK x k candidates reaches the target
recall@10 against exact search, else IVF-SQ8 (dim bytes); nprobe and rerank are tuned on stored vectors
against an exact search streamed over the vectors file, as index/ivf.py tunes the in-memory IVF.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from byol.fileio import atomic_write_bytes, fsync_dir
from index import vectorfile
from index.ivf import ivf_nlist, new_exact, recall_at_k, without_self
from index.ivfshards import TRAINED, Runner, ShardWork, merge, runner_for
from index.vectorfile import VectorFile

log = logging.getLogger(__name__)

MEMORY_LIMIT = 4 * 2**30  # bytes the in-memory index may take before the store puts it on disk (--memory-limit)
COMPACT_FRACTION = 0.1  # a new base once delta + removed ids pass this fraction of the base
SHARD = 250_000  # vectors per IVF shard while building: one shard in RAM (256 MB at 256-d)
# Coarse lists at most: k-means and assigning every vector cost time in proportion to nlist. Measured here (2
# shared cores, 40 points per centroid): 4.7 s per k-means iteration at 4,096 lists, 19 s at 8,192, so the
# ~16,384 that index/ivf.py's 4 sqrt(n) asks for at 10M would spend ~16 min training and ~19 min assigning
# per codec; with 4,096, lists of ~2,400 codes at 10M still scan in well under a millisecond per probe.
MAX_NLIST = 4096
MAX_SAMPLE = 1_000_000  # training vectors at most (40 per list below that): ~1 GB of float32 at 256-d
RERANKS = (4, 8, 16)  # candidates per result re-scored from the float16 vectors, tried in this order
MAX_NPROBE_SHARE = 8  # a configuration must reach the recall with nprobe <= nlist / this, or the next is tried
PLATEAU = 0.002  # recall@10 gained by the next nprobe below which a re-ranking depth is given up (not the last)
TUNE_QUERIES = 500  # stored vectors queried when tuning (as index/ivf.py)
PQ_MIN = 16 * 39  # vectors at least for PQ codes (16 centroids per sub-quantizer, 39 points each); else SQ8
_READ_FLAGS = faiss.IO_FLAG_ONDISK_SAME_DIR  # the lists file is found beside index.faiss, and mapped
# (OnDiskInvertedLists maps it itself; adding IO_FLAG_MMAP crashes faiss 1.15 on these lists)

Step = Callable[[str], None]
Fetch = Callable[[np.ndarray], np.ndarray]


def ram_bytes(n: int, dim: int) -> int:
    """What the in-memory index takes for n vectors: float32 vectors plus ids and the IVF's direct map."""
    return int(n) * (4 * int(dim) + 32)


def generation_file(gen: int) -> str:
    return f"vectors.{gen}.ondisk.npz"


# -------------------------------------------------------------------- the index
class OnDiskIndex:
    """The subset of a FAISS index the store uses (ntotal, d, search, reconstruct_batch, add_with_ids,
    remove_ids) over a memory-mapped base and an in-memory delta."""

    def __init__(self, base_dir: Path, delta_ids: np.ndarray, delta_vectors: np.ndarray, removed: np.ndarray):
        self.base_dir = base_dir
        self.info: dict[str, Any] = json.loads((base_dir / "base.json").read_text())
        self.d = int(self.info["dim"])
        self.nprobe = int(self.info["nprobe"])
        self.rerank = int(self.info["rerank"])
        lists = base_dir / "lists.ivfdata"
        # an index folder moved since it was built: FAISS finds the lists beside index.faiss (and says so)
        moved = self.info.get("lists_path") != str(lists)
        self.ivf = faiss.read_index(str(base_dir / "index.faiss"), _READ_FLAGS if moved else 0)
        self.base_ids: np.ndarray = np.load(base_dir / "ids.npy", mmap_mode="r")
        self.base_vectors = VectorFile(base_dir / "vectors.npy")
        self.removed = np.unique(np.asarray(removed, np.int64))  # base ids no longer (or no longer here) live
        self.delta = new_exact(self.d)
        if len(delta_ids):
            self.delta.add_with_ids(np.ascontiguousarray(delta_vectors, np.float32), np.asarray(delta_ids, np.int64))

    @classmethod
    def open(cls, path: Path) -> OnDiskIndex:
        """The generation saved in `path` (vectors.<gen>.ondisk.npz); RuntimeError when it or its base is missing
        (what faiss.read_index raises, which the store's loader expects)."""
        try:
            with np.load(path) as z:
                base, delta_ids, delta_vectors, removed = str(z["base"]), z["delta_ids"], z["delta_vectors"], z["removed"]
            return cls(path.parent / base, delta_ids, delta_vectors, removed)
        except (OSError, ValueError, KeyError) as e:
            raise RuntimeError(f"{path.name}: {e}") from e

    def write(self, path: Path) -> None:
        """Save this generation's small file atomically (the base folder is already on disk)."""
        buf = io.BytesIO()
        np.savez(buf, base=np.array(self.base_dir.name), delta_ids=self.delta_ids(),
                 delta_vectors=self.delta.reconstruct_batch(self.delta_ids()) if self.delta.ntotal
                 else np.zeros((0, self.d), np.float32), removed=self.removed)
        atomic_write_bytes(path, buf.getvalue())

    # -- sizes
    @property
    def ntotal(self) -> int:
        return len(self.base_ids) - len(self.removed) + int(self.delta.ntotal)

    def delta_ids(self) -> np.ndarray:
        ids: np.ndarray = faiss.vector_to_array(self.delta.id_map).astype(np.int64)
        return ids

    def needs_compaction(self) -> bool:
        return int(self.delta.ntotal) + len(self.removed) > COMPACT_FRACTION * max(len(self.base_ids), 1)

    def describe(self) -> dict[str, Any]:
        """For the manifest."""
        keys = ("codec", "nlist", "nprobe", "rerank", "recall_at_10", "trained_on", "bytes_per_vector")
        return {**{k: self.info[k] for k in keys}, "base": self.base_dir.name, "base_count": len(self.base_ids),
                "delta": int(self.delta.ntotal), "removed": len(self.removed)}

    # -- reading
    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k best of the re-ranked base candidates and the delta; -1 ids pad."""
        q = np.ascontiguousarray(q, np.float32)
        scores, ids = self._search_base(q, k)
        if self.delta.ntotal:
            ds, di = self.delta.search(q, min(k, int(self.delta.ntotal)))
            scores, ids = np.concatenate([scores, ds], 1), np.concatenate([ids, di], 1)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top_s, top_i = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
        if top_i.shape[1] < k:
            pad = k - top_i.shape[1]
            top_s = np.pad(top_s, ((0, 0), (0, pad)), constant_values=-np.inf)
            top_i = np.pad(top_i, ((0, 0), (0, pad)), constant_values=-1)
        return top_s, top_i

    def _search_base(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        params = faiss.SearchParametersIVF(nprobe=self.nprobe)
        if len(self.removed):
            batch = faiss.IDSelectorBatch(len(self.removed), faiss.swig_ptr(self.removed))
            params.sel = not_removed = faiss.IDSelectorNot(batch)
            not_removed.batch = batch  # keep the inner selector alive as long as the outer one
        # rerank was tuned for k = 10: fewer candidates than that would lose what the tuning measured
        _, cand = self.ivf.search(q, max(k, 10) * self.rerank, params=params)
        # re-score the candidates exactly from the float16 vectors: codes rank coarsely, vectors decide
        flat = cand.ravel()
        valid = flat >= 0
        rows = np.searchsorted(self.base_ids, flat[valid])
        vecs = np.zeros((len(flat), self.d), np.float32)
        vecs[valid] = self.base_vectors.rows(rows)  # those rows only, read from the file (not mapped)
        scores = np.einsum("qcd,qd->qc", vecs.reshape(len(q), -1, self.d), q).astype(np.float32)
        scores[cand < 0] = -np.inf
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, best, 1), np.take_along_axis(cand, best, 1)

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        """The vectors of `ids`; RuntimeError naming an id that is not here (as FAISS raises)."""
        ids = np.asarray(ids, np.int64)
        out = np.empty((len(ids), self.d), np.float32)
        in_delta = np.isin(ids, self.delta_ids())
        if in_delta.any():
            out[in_delta] = self.delta.reconstruct_batch(ids[in_delta])
        rest = ids[~in_delta]
        rows = np.minimum(np.searchsorted(self.base_ids, rest), max(len(self.base_ids) - 1, 0))
        ok = (len(self.base_ids) > 0) & (self.base_ids[rows] == rest) & ~np.isin(rest, self.removed) \
            if len(rest) else np.ones(0, bool)
        if not np.all(ok):
            raise RuntimeError(f"id {int(rest[~ok][0])} not found")
        out[~in_delta] = self.base_vectors.rows(rows)
        return out

    # -- changing
    def add_with_ids(self, x: np.ndarray, ids: np.ndarray) -> None:
        self.delta.add_with_ids(np.ascontiguousarray(x, np.float32), np.asarray(ids, np.int64))

    def remove_ids(self, ids: np.ndarray) -> int:
        """Remove from the delta, and mark base ids removed (filtered out of every search); returns how many
        live ids went (an id re-embedded since the base was written is in both, and counts once)."""
        ids = np.unique(np.asarray(ids, np.int64))
        in_delta = np.isin(ids, self.delta_ids())
        if in_delta.any():
            self.delta.remove_ids(ids[in_delta])
        rows = np.minimum(np.searchsorted(self.base_ids, ids), max(len(self.base_ids) - 1, 0))
        in_base = (self.base_ids[rows] == ids) & ~np.isin(ids, self.removed) if len(self.base_ids) else in_delta & False
        self.removed = np.union1d(self.removed, ids[in_base])
        return int(np.sum(in_delta | in_base))


# -------------------------------------------------------------------- when the store uses it
def reshape(index: Any, ids: np.ndarray, index_dir: Path, gen: int, kind: str, memory_limit: int,
            target_recall: float, step: Step) -> tuple[Any, dict[str, str]] | None:
    """The store's index for the vectors `index` holds, or None to keep it (index/ivf.py's reshape runs after).

    In memory -> on disk above `memory_limit`; on disk -> exact in memory below half of it (hysteresis);
    on disk -> a new base when the delta and removals have grown past COMPACT_FRACTION (or the collection 4x
    since its quantizers were trained). The new base is named for generation `gen`, the save about to be made.
    """
    n, dim = int(index.ntotal), int(index.d)
    if kind != "ondisk" and ram_bytes(n, dim) > memory_limit:
        return _to_disk(index, ids, index_dir, gen, target_recall, step, retrain=True)
    if kind != "ondisk":
        return None
    if ram_bytes(n, dim) < memory_limit // 2:
        exact = new_exact(dim)
        if n:
            exact.add_with_ids(index.reconstruct_batch(ids), ids)
        return exact, {"index_type": "exact", "nprobe": "0", "trained_on": "0"}
    retrain = n > 4 * int(index.info["trained_on"])
    if retrain or index.needs_compaction():
        return _to_disk(index, ids, index_dir, gen, target_recall, step, retrain=retrain)
    return None


def outgrown(index: Any, kind: str, memory_limit: int) -> bool:
    """True when the vectors held in memory have passed what `reshape` allows (the in-memory index over
    `memory_limit`, or the on-disk index's delta and removals over COMPACT_FRACTION of its base): a writer
    that adds fast saves now rather than later, so that memory stays bounded between saves."""
    if kind == "ondisk":
        return bool(index.needs_compaction())
    return ram_bytes(int(index.ntotal), int(index.d)) > memory_limit


def _to_disk(index: Any, ids: np.ndarray, index_dir: Path, gen: int, target_recall: float, step: Step,
             retrain: bool) -> tuple[OnDiskIndex, dict[str, str]]:
    name = f"ondisk.{gen}"
    ids = np.sort(np.asarray(ids, np.int64))
    if retrain or not isinstance(index, OnDiskIndex):
        new = build(index_dir, name, ids, index.reconstruct_batch, target_recall, step=step)
    else:
        new = compact(index, index_dir, name, ids, step=step)
    log.info("index on disk: %s", new.describe())
    return new, {"index_type": "ondisk", "nprobe": str(new.nprobe), "trained_on": str(new.info["trained_on"]),
                 "ivf_recall_at_10": f"{new.info['recall_at_10']:.4f}"}


def clean(index_dir: Path, keep: list[str]) -> None:
    """Delete generation files not named in `keep` (the store's current and previous vectors files), the bases
    none of those names, and the folders of killed builds."""
    keep_bases: set[str] = set()
    for p in index_dir.glob("vectors.*.ondisk.npz"):
        if p.name not in keep:
            p.unlink(missing_ok=True)
            continue
        try:
            with np.load(p) as z:
                keep_bases.add(str(z["base"]))
        except (OSError, ValueError, KeyError):
            pass
    for d in list(index_dir.glob("ondisk.*")) + list(index_dir.glob(".ondisk.*.tmp")):
        if d.is_dir() and d.name not in keep_bases:
            shutil.rmtree(d, ignore_errors=True)


# -------------------------------------------------------------------- building a base
def build(index_dir: Path, name: str, ids: np.ndarray, fetch: Fetch, target_recall: float,
          sample: int | None = None, step: Step = lambda s: None, chunk: int = SHARD,
          runner: Runner | None = None) -> OnDiskIndex:
    """A new base `index_dir/name` over `ids` (ascending), whose vectors `fetch(ids_chunk)` gives in chunks
    of `chunk` (never all at once): vectors file, quantizers trained on a sample, shards (encoded by `runner`,
    default: the one offered for `index_dir`, else here), merge, tuning."""
    runner = runner or runner_for(index_dir)
    tmp = _fresh_tmp(index_dir, name)
    vectors = _write_vectors(tmp, ids, fetch, chunk)
    info: dict[str, Any] = {}
    # PQ's sub-quantizers need at least 16 x 39 training vectors (2^4 centroids each); below, SQ8 alone
    for codec in ("pq", "sq8") if len(ids) >= PQ_MIN else ("sq8",):
        trained = _train(vectors, codec, sample)
        faiss.write_index(trained, str(tmp / TRAINED))
        shards = _add_shards(tmp, np.arange(len(ids)), chunk, runner, step)
        merged = merge(trained, shards, tmp / "lists.ivfdata")
        _write_lists_index(merged, tmp, index_dir / name)
        for s in shards:
            s.unlink()
        step("ondisk_merged")
        info = _tune(merged, ids, vectors, target_recall)
        if info["reached"]:
            break
        log.info("index on disk: PQ codes reach recall@10 %.3f only; SQ8 codes instead", info["recall_at_10"])
        del merged
        (tmp / "lists.ivfdata").unlink()
    info.update(codec=codec, nlist=int(trained.nlist), dim=int(vectors.shape[1]), trained_on=len(ids))
    return _publish(tmp, index_dir / name, info, step)


def compact(old: OnDiskIndex, index_dir: Path, name: str, ids: np.ndarray, step: Step = lambda s: None,
            chunk: int = SHARD, runner: Runner | None = None) -> OnDiskIndex:
    """A new base from `old`: its lists minus the removed ids, plus the delta's vectors encoded with the same
    quantizers (by `runner`, as in `build`); the vectors file rewritten in id order (a sequential copy)."""
    runner = runner or runner_for(index_dir)
    tmp = _fresh_tmp(index_dir, name)
    vectors = _write_vectors(tmp, ids, old.reconstruct_batch, chunk)
    shutil.copyfile(old.base_dir / TRAINED, tmp / TRAINED)
    trained = faiss.read_index(str(tmp / TRAINED))
    delta_ids = np.sort(old.delta_ids())
    delta_rows = np.searchsorted(ids, delta_ids)
    if len(delta_ids) and not np.array_equal(ids[np.minimum(delta_rows, len(ids) - 1)], delta_ids):
        raise ValueError("compact: the delta holds ids that are not among the live ids")
    shards = _add_shards(tmp, delta_rows, chunk, runner, step)
    # old codes are copied, never decoded and encoded again
    merged = merge(trained, shards, tmp / "lists.ivfdata", old=(old.ivf.invlists, old.base_dir / "lists.ivfdata", old.removed))
    _write_lists_index(merged, tmp, index_dir / name)
    for s in shards:
        s.unlink()
    step("ondisk_merged")
    info = {**_tune(merged, ids, vectors, old.info["recall_target"], reranks=(old.rerank, *RERANKS)),
            **{k: old.info[k] for k in ("codec", "nlist", "dim", "trained_on")}}
    return _publish(tmp, index_dir / name, info, step)


def _write_lists_index(merged: Any, tmp: Path, final: Path) -> None:
    """index.faiss naming its lists where they will be once the folder is renamed (opening then finds them
    without FAISS's IO_FLAG_ONDISK_SAME_DIR correction, which it reports on stderr)."""
    faiss.downcast_InvertedLists(merged.invlists).filename = str(final / "lists.ivfdata")
    faiss.write_index(merged, str(tmp / "index.faiss"))


def _fresh_tmp(index_dir: Path, name: str) -> Path:
    """An empty `.<name>.tmp/` (what a killed build left there is thrown away)."""
    tmp = index_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _write_vectors(tmp: Path, ids: np.ndarray, fetch: Fetch, chunk: int) -> VectorFile:
    """ids.npy and vectors.npy (float16, unit rows) written chunk by chunk; returns the vectors' reader."""
    np.save(tmp / "ids.npy", ids)
    first = np.asarray(fetch(ids[:chunk]), np.float32) if len(ids) else np.zeros((0, 1), np.float32)

    def unit_chunks() -> Iterator[np.ndarray]:
        for a in range(0, max(len(ids), 1), chunk):
            x = first if a == 0 else np.asarray(fetch(ids[a:a + chunk]), np.float32)
            yield x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    vectorfile.write(tmp / "vectors.npy", unit_chunks(), len(ids), first.shape[1])
    return VectorFile(tmp / "vectors.npy")


def _train(vectors: VectorFile, codec: str, sample: int | None, seed: int = 0) -> Any:
    """An empty IVF-PQ (dim/8 bytes) or IVF-SQ8 (dim bytes) index, spherical k-means on a sample."""
    n, d = vectors.shape
    nlist = min(ivf_nlist(n), MAX_NLIST)
    rng = np.random.default_rng(seed)
    take = min(n, sample or min(max(nlist * 40, 256 * 40), MAX_SAMPLE))
    rows = np.sort(rng.choice(n, take, replace=False)) if take < n else np.arange(n)
    x = np.ascontiguousarray(vectors.rows(rows), np.float32)
    quantizer = faiss.IndexFlatIP(d)
    if codec == "pq":
        m = max(k for k in range(1, d // 8 + 1) if d % k == 0)  # sub-quantizers: dim/8 bytes per vector
        nbits = int(max(4, min(8, math.floor(math.log2(max(take / 39, 16))))))
        index = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
    index.cp.spherical, index.cp.seed, index.cp.niter = True, seed, 12  # as index/ivf.py (measured there)
    index.train(x)
    return index


def _add_shards(tmp: Path, rows: np.ndarray, chunk: int, runner: Runner, step: Step) -> list[Path]:
    """One IVF file per `chunk` of `rows` (positions in tmp's files), encoded by `runner` with tmp's
    trained.faiss."""
    works = [ShardWork(tmp, rows[a:a + chunk], tmp / f"shard.{i}.faiss") for i, a in enumerate(range(0, len(rows), chunk))]
    shards = runner(works) if works else []
    if [Path(s) for s in shards] != [w.out for w in works] or not all(w.out.is_file() for w in works):
        raise RuntimeError(f"{tmp}: the shards were not all encoded")
    for _ in shards:
        step("ondisk_shard_written")
    return [w.out for w in works]


def _tune(merged: Any, ids: np.ndarray, vectors: VectorFile, target_recall: float,
          reranks: tuple[int, ...] = RERANKS, k: int = 10, seed: int = 0) -> dict[str, Any]:
    """The smallest nprobe (then rerank) whose recall@10 against exact search, on stored vectors as queries
    (leaving each query's own id out, as index/ivf.py), reaches `target_recall`."""
    n = len(ids)
    merged.nprobe = 1
    trial = OnDiskIndex.__new__(OnDiskIndex)  # the merged lists with the rows of the folder being built
    trial.ivf, trial.base_ids, trial.base_vectors, trial.d = merged, ids, vectors, vectors.shape[1]
    trial.removed = np.zeros(0, np.int64)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n, min(n, TUNE_QUERIES), replace=False))
    q, own = np.ascontiguousarray(vectors.rows(pick), np.float32), ids[pick]
    k = min(k, n - 1)
    best = {"nprobe": 1, "rerank": reranks[0], "recall_at_10": 1.0, "reached": True}
    if k >= 1:
        gt = without_self(_exact_top(q, ids, vectors, k + 1), own, k)
        best = {"recall_at_10": 0.0, "reached": False}
        reranks = tuple(dict.fromkeys(reranks))
        for rerank in reranks:  # a few candidates and nprobe <= nlist / 8, else more candidates; the last: any
            last = -1.0
            for nprobe in _nprobe_steps(int(merged.nlist), everything=rerank == reranks[-1]):
                trial.nprobe, trial.rerank = nprobe, rerank
                recall = recall_at_k(without_self(trial._search_base(q, k + 1)[1], own, k), gt, k)
                if recall >= target_recall:
                    best = {"nprobe": nprobe, "rerank": rerank, "recall_at_10": recall, "reached": True}
                    break
                if recall > best["recall_at_10"]:
                    best = {"nprobe": nprobe, "rerank": rerank, "recall_at_10": recall, "reached": False}
                if rerank != reranks[-1] and nprobe >= 8 and recall - last < PLATEAU:
                    break  # the codes' ranking, not the lists probed, limits it: more candidates next
                last = recall
            if best["reached"]:
                break
    best["recall_target"] = target_recall
    return best


def _exact_top(q: np.ndarray, ids: np.ndarray, vectors: VectorFile, k: int, chunk: int = 200_000) -> np.ndarray:
    """The ids of each query's k best by inner product, streamed over the vectors file (read, not mapped);
    faiss.knn per chunk (a full score matrix and its argpartition took 1.8 GB at 500 queries x 200k rows)."""
    q = np.ascontiguousarray(q, np.float32)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for a in range(0, len(ids), chunk):
        x = vectors.span(a, a + chunk).astype(np.float32)
        s, i = faiss.knn(q, x, min(k, len(x)), faiss.METRIC_INNER_PRODUCT)
        best_s = np.concatenate([best_s, s], 1)
        best_i = np.concatenate([best_i, ids[a + i]], 1)
        keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def _nprobe_steps(nlist: int, everything: bool) -> list[int]:
    top = nlist if everything else max(1, nlist // MAX_NPROBE_SHARE)
    out, p = [], 1
    while p < top:
        out += [p] + ([int(p * 1.5)] if p >= 2 and int(p * 1.5) < top else [])
        p *= 2
    return out + [top]


def _publish(tmp: Path, final: Path, info: dict[str, Any], step: Step) -> OnDiskIndex:
    """base.json, every file fsynced, then the folder renamed into place (the build's one visible change)."""
    files = sum(p.stat().st_size for p in tmp.iterdir())
    n = len(np.load(tmp / "ids.npy", mmap_mode="r"))
    info = {**info, "count": n, "bytes_per_vector": round((files + 200) / max(n, 1), 1),
            "lists_path": str(final / "lists.ivfdata")}
    (tmp / "base.json").write_text(json.dumps({k: v for k, v in info.items() if k != "reached"}, indent=2) + "\n")
    for p in tmp.iterdir():
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(tmp)
    shutil.rmtree(final, ignore_errors=True)  # a base of a save killed before its commit: never used
    os.replace(tmp, final)
    fsync_dir(final.parent)
    step("ondisk_base_written")
    return OnDiskIndex(final, np.zeros(0, np.int64), np.zeros((0, int(info["dim"])), np.float32),
                       np.zeros(0, np.int64))
