"""The FAISS index a store searches: exact below a size, an inverted file above it, with nprobe tuned.

Public API
    TARGET_RECALL                    the recall@10 against exact search that nprobe is tuned to
    new_exact(dim) -> index          exact inner-product search with arbitrary int64 ids
    ivf_nlist(n) -> int              inverted lists for n vectors
    build_ivf(x, ids, ...) -> (index, nprobe, recall)
    reshape(index, ids, ...) -> (index, meta updates) or None    exact <-> IVF as the collection grows and shrinks
    recall_at_k(approx_ids, exact_ids, k) -> float
    without_self(found, own, k) -> ids
    gpu_copy(index, kind) -> index or None           a copy to search on the GPU, when there is one
    omp_threads(n)                                   a context searching on n threads

IVF rather than HNSW because the store must delete and replace vectors (HNSW cannot remove), and because it
trains and adds a million vectors in seconds on a small CPU (see scripts/bench_index.py for both). Pure
functions of the vectors: index/store.py owns when they run and where the result is saved.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

import faiss
import numpy as np

log = logging.getLogger(__name__)

TARGET_RECALL = 0.96  # nprobe is tuned to this on 500 stored vectors: ~3 standard errors above the required 0.95


def new_exact(dim: int) -> faiss.Index:
    """An empty exact inner-product index (cosine on unit vectors) that keeps the ids it is given."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def ivf_nlist(n: int) -> int:
    """Inverted lists for n vectors: about 4 sqrt(n) (the FAISS guideline), a power of two, with at least 39
    training points per centroid (FAISS's own minimum)."""
    nlist = 2 ** round(math.log2(max(4 * math.sqrt(max(n, 1)), 1)))
    return int(max(1, min(nlist, n // 39)))


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k."""
    hits = [len(set(a[:k].tolist()) & set(e[:k].tolist()) - {-1}) for a, e in zip(approx_ids, exact_ids)]
    return float(np.mean(hits) / k)


def build_ivf(x: np.ndarray, ids: np.ndarray, target_recall: float = TARGET_RECALL, n_queries: int = 500,
              seed: int = 0) -> tuple[faiss.Index, int, float]:
    """An IVF-Flat inner-product index over unit vectors x with `ids`, and the smallest nprobe whose recall@10
    against exact search reaches `target_recall` on `n_queries` stored vectors. Returns (index, nprobe, recall)."""
    n, d = x.shape
    rng = np.random.default_rng(seed)
    nlist = ivf_nlist(n)
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.spherical = True  # centroids on the unit sphere: the right k-means for cosine
    index.cp.seed = seed
    # 12 k-means iterations on 40 points per centroid (FAISS asks for >= 39): recall after nprobe tuning is
    # the same as with FAISS's 25 x 256 here, at a tenth of the training time (3 minutes at 1M on 2 cores)
    index.cp.niter = 12
    sample = x[rng.choice(n, nlist * 40, replace=False)] if n > nlist * 40 else x
    index.train(sample)
    index.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct and remove by arbitrary id
    index.add_with_ids(x, ids)
    # tune nprobe against exact search, querying with stored vectors (a click on a photo, what the page does
    # most) and leaving each query's own id out of both result lists: it is always found, a free hit
    pick = rng.choice(n, min(n, n_queries), replace=False)
    q, own = x[pick], ids[pick]
    k = min(10, n - 1)
    if k < 1:
        return index, 1, 1.0
    exact = faiss.IndexFlatIP(d)
    exact.add(x)
    gt = without_self(ids[exact.search(q, k + 1)[1]], own, k)
    recall, nprobe = 0.0, 1
    for nprobe in _nprobe_steps(nlist):
        index.nprobe = nprobe
        recall = recall_at_k(without_self(index.search(q, k + 1)[1], own, k), gt, k)
        if recall >= target_recall:
            break
    return index, nprobe, recall


def reshape(index: faiss.Index, ids: np.ndarray, dim: int, kind: str, trained_on: int, exact_limit: int,
            target_recall: float = TARGET_RECALL) -> tuple[faiss.Index, dict[str, str]] | None:
    """The index for the vectors `index` holds now, or None to keep it.

    `kind` is the current type ('exact' or 'ivf'), `trained_on` how many vectors the IVF centroids were
    trained on, `ids` every id in `index`. Exact becomes IVF at `exact_limit` vectors; IVF is retrained when
    the collection has grown 4x since its centroids were trained, and goes back to exact below half the
    limit (the gap between the two is hysteresis: a collection near the limit does not flip back and
    forth). Returns (new index, the store's meta entries that change).
    """
    n = int(index.ntotal)
    if kind == "exact" and n >= exact_limit or kind == "ivf" and n > 4 * trained_on:
        x = index.reconstruct_batch(ids) if n else np.zeros((0, dim), np.float32)
        ivf, nprobe, recall = build_ivf(x, ids, target_recall=target_recall)
        log.info("index: IVF with %d lists, nprobe %d, recall@10 %.3f on %d vectors", ivf.nlist, nprobe, recall, n)
        return ivf, {"index_type": "ivf", "nprobe": str(nprobe), "trained_on": str(n),
                     "ivf_recall_at_10": f"{recall:.4f}"}
    if kind == "ivf" and n < exact_limit // 2:
        x = index.reconstruct_batch(ids) if n else np.zeros((0, dim), np.float32)
        exact = new_exact(dim)
        if n:
            exact.add_with_ids(x, ids)
        return exact, {"index_type": "exact", "nprobe": "0", "trained_on": "0"}
    return None


def without_self(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Each row's first k ids other than its own query's id."""
    return np.stack([r[r != o][:k] for r, o in zip(found, own)])


def _nprobe_steps(nlist: int) -> Iterator[int]:
    p = 1
    while p < nlist:
        yield p
        yield from ([int(p * 1.5)] if p >= 2 and int(p * 1.5) < nlist else [])
        p *= 2
    yield nlist


def gpu_copy(index: faiss.Index, kind: str) -> faiss.Index | None:
    """A copy of `index` on the first GPU faiss sees, for searching; None without a GPU, or when this build of
    faiss cannot put the index type there (searches then stay on the CPU)."""
    if kind == "ondisk" or faiss.get_num_gpus() == 0:
        return None
    try:
        gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        if kind == "ivf":
            faiss.GpuParameterSpace().set_index_parameter(gpu, "nprobe", index.nprobe)
        log.info("searching on the GPU (%d vectors)", index.ntotal)
        return gpu
    except Exception as e:  # a GPU build without support for this index type: search on the CPU
        log.warning("GPU search unavailable (%s); searching on the CPU", e)
        return None


@contextlib.contextmanager
def omp_threads(n: int | None) -> Iterator[None]:
    """Run a few queries on `n` threads (None: as many as faiss uses). A single query has nothing to share
    between threads, and OpenMP's waiting threads only slow it down (3x measured on a busy 2-core machine)
    while other requests run."""
    if n is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
