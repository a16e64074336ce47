"""The IVF shards of an on-disk base (index/ondisk.py): what one is, who encodes it, how they become one
lists file.

A shard is a plain `ShardWork` (positions of rows in the base folder's ids.npy and vectors.npy, and the
quantizers in its trained.faiss) that `encode_shard` turns into one IVF file, anywhere the folder is visible.
A `Runner` maps a list of them: `run_here` on this machine, one after the other; the Ray engine offers its
own for the index it builds (`offer_runner`; index/ray_engine.py runs them as cluster tasks). `merge` then
writes every shard's lists, and those an older base keeps, into one OnDiskInvertedLists file.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.vectorfile import VectorFile

TRAINED = "trained.faiss"  # the quantizers, in the base's folder: what every shard is encoded with


@dataclass(frozen=True)
class ShardWork:
    """One IVF shard to encode: positions `rows` (ascending) of `folder`'s ids.npy and vectors.npy, encoded
    with `folder`'s trained.faiss, written to `out`. Plain values: it runs wherever the folder is visible."""

    folder: Path
    rows: np.ndarray
    out: Path


Runner = Callable[[list[ShardWork]], list[Path]]  # encodes every shard, returns their files in the same order


# -------------------------------------------------------------------- who encodes the shards
_runners: dict[Path, weakref.ref[Any]] = {}


def offer_runner(index_dir: Path, runner: Runner | None) -> None:
    """Encode the shards of the bases built in `index_dir` with `runner` from now on (None: here again).

    Held weakly (so it must be an object, not a function): an engine that offers its runner withdraws it by
    going away, however its run ended. The store calls `reshape` without a runner; this is how it gets one.
    """
    key = Path(index_dir).absolute()
    if runner is None:
        _runners.pop(key, None)
    else:
        _runners[key] = weakref.ref(runner)


def run_here(works: list[ShardWork]) -> list[Path]:
    """The shards encoded in this process, one after the other (one shard's vectors in memory)."""
    return [encode_shard(w) for w in works]


def runner_for(index_dir: Path) -> Runner:
    """The runner offered for `index_dir` while it lives, else `run_here`."""
    ref = _runners.get(Path(index_dir).absolute())
    runner: Runner | None = ref() if ref is not None else None
    return runner or run_here


def encode_shard(work: ShardWork) -> Path:
    """`work`'s vectors encoded with its folder's quantizers into `work.out`, written atomically (a task run
    twice, or killed, never leaves half a shard)."""
    shard = faiss.read_index(str(work.folder / TRAINED))
    rows = np.asarray(work.rows, np.int64)
    ids = np.load(work.folder / "ids.npy", mmap_mode="r")
    x = VectorFile(work.folder / "vectors.npy").rows(rows).astype(np.float32)
    shard.add_with_ids(x, np.ascontiguousarray(ids[rows], np.int64))
    tmp = work.out.with_name(f"{work.out.name}.{os.getpid()}.tmp")
    faiss.write_index(shard, str(tmp))
    os.replace(tmp, work.out)
    return work.out


# -------------------------------------------------------------------- one lists file
def merge(trained: Any, shards: list[Path], path: Path, old: tuple[Any, Path, np.ndarray] | None = None) -> Any:
    """`trained` over one OnDiskInvertedLists file at `path`: per list, the entries of `old` (an on-disk base's
    inverted lists, their file, the ids to drop) minus those dropped, then each shard's in order, every list contiguous (faiss's merge_ondisk layout). Written with
    pwrite, shards read one at a time: merge_ondisk maps every shard and the output, and every page it touches
    stays resident (at 10M with SQ8 codes, 2 x 2.6 GB); here memory holds one shard (10-66 MB at 250k)."""
    nlist, cs = int(trained.nlist), int(trained.code_size)
    sizes = np.zeros(nlist, np.uint64)
    for _, lists in _shard_lists(shards):
        sizes += np.array([lists.list_size(j) for j in range(nlist)], np.uint64)
    if old is not None:
        sizes += np.array([len(ids) for ids, _ in _old_entries(*old, cs, codes=False)], np.uint64)
    out = faiss.OnDiskInvertedLists(nlist, cs, str(path))
    out.set_all_lists_sizes(faiss.swig_ptr(sizes))
    total = int(sizes.sum())
    out.update_totsize(total * (cs + 8))  # as merge_from_multiple: the file sized, mapped, every list in place
    start = np.concatenate([[0], np.cumsum(sizes.astype(np.int64) * (cs + 8))[:-1]])
    filled = np.zeros(nlist, np.int64)
    fd = os.open(path, os.O_WRONLY)
    try:
        def put(j: int, ids: np.ndarray, codes: np.ndarray) -> None:  # a list: its codes, then its ids
            os.pwrite(fd, np.ascontiguousarray(codes).data, int(start[j] + filled[j] * cs))
            os.pwrite(fd, np.ascontiguousarray(ids).data, int(start[j] + int(sizes[j]) * cs + filled[j] * 8))
            filled[j] += len(ids)

        if old is not None:
            for j, (ids, codes) in enumerate(_old_entries(*old, cs, codes=True)):
                if len(ids):
                    put(j, ids, codes)
        for _, lists in _shard_lists(shards):
            for j in range(nlist):
                n = lists.list_size(j)
                if n:
                    put(j, faiss.rev_swig_ptr(lists.get_ids(j), n), faiss.rev_swig_ptr(lists.get_codes(j), n * cs))
    finally:
        os.close(fd)
    assert np.array_equal(filled, sizes.astype(np.int64)), "merge: lists not filled as sized"
    merged = faiss.clone_index(trained)
    merged.replace_invlists(out, True)
    out.this.disown()
    merged.ntotal = total
    return merged


def _shard_lists(shards: list[Path]) -> Iterator[tuple[Any, Any]]:
    """(index, its inverted lists) of each shard file, read whole, one at a time (never mapped)."""
    for s in shards:
        index = faiss.read_index(str(s))
        yield index, faiss.extract_index_ivf(index).invlists
        del index


def _old_entries(invlists: Any, file: Path, drop: np.ndarray, cs: int,
                 codes: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, codes) of each of an on-disk base's lists without the ids in `drop`, read with pread from its
    lists file (its map is the serving index's: touching it would make every page resident here)."""
    lists = faiss.downcast_InvertedLists(invlists)
    fd = os.open(file, os.O_RDONLY)
    try:
        for j in range(int(lists.nlist)):
            meta = lists.lists.at(j)
            n, at = int(meta.size), int(meta.offset)
            ids = np.frombuffer(os.pread(fd, n * 8, at + int(meta.capacity) * cs), np.int64)
            c = np.frombuffer(os.pread(fd, n * cs, at), np.uint8).reshape(n, cs) if codes else np.zeros((n, 0), np.uint8)
            if len(drop) and n:
                keep = ~np.isin(ids, drop)
                ids, c = ids[keep], c[keep]
            yield np.ascontiguousarray(ids), np.ascontiguousarray(c)
    finally:
        os.close(fd)
