"""The neighbour graph of a whole index: every photo's nearest photos, found with the store's own search.

The page's few-shot classifier (byol/neighbours.py) averages each photo's embedding and probabilities over its
nearest photos. This finds them once per version of the index (the store's FAISS search: exact, or IVF for a
large collection) and keeps the result while the index stays the same.

Public API
    store_graph(store, k) -> (ids, Graph)     row i of the graph is the photo with id ids[i]
    GraphCache                                the last graph, rebuilt when the index changes
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from byol.neighbours import K_GRAPH, Graph, NeighbourClassifier

if TYPE_CHECKING:
    from index.store import Store

Progress = Callable[[float, str], None]


def _no_progress(fraction: float, desc: str) -> None:
    pass


def store_graph(store: Store, k: int = K_GRAPH, batch: int = 4096,
                progress: Progress = _no_progress) -> tuple[np.ndarray, Graph]:
    """(ids ascending, Graph) of every photo in the store: its k nearest photos by the store's search."""
    ids = np.asarray(store.all_ids(), np.int64)
    n = len(ids)
    vectors = np.zeros((n, int(store.dim)), np.float32)
    scores = np.full((n, min(k, max(n, 1))), -np.inf, np.float32)
    rows = np.full(scores.shape, -1, np.int32)
    for start in range(0, n, batch):
        vectors[start : start + batch] = store.get_vectors(ids[start : start + batch])
    for start in range(0, n, batch):
        s, nbr = store.search(vectors[start : start + batch], scores.shape[1])
        pos = np.searchsorted(ids, nbr).clip(max=max(n - 1, 0))
        found = (nbr >= 0) & (ids[pos] == nbr) if n else np.zeros_like(nbr, bool)
        scores[start : start + batch] = np.where(found, s, -np.inf)
        rows[start : start + batch] = np.where(found, pos, -1)
        progress(min(n, start + batch) / max(n, 1), f"found the neighbours of {min(n, start + batch)} of {n} photos")
    return ids, Graph(scores, rows, vectors)


class GraphCache:
    """The neighbour classifier of the store's current version: built on first use, rebuilt when the index
    changes (another generation, or a new index), shared by every caller (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[object, ...] | None = None
        self._value: tuple[np.ndarray, NeighbourClassifier] | None = None

    def get(self, store: Store, progress: Progress = _no_progress) -> tuple[np.ndarray, NeighbourClassifier]:
        """(ids, NeighbourClassifier) of the store as it is now; row i is the photo with id ids[i]."""
        key = (store.created_at, store.generation, store.count, store.model_sha256)
        with self._lock:
            if self._key != key or self._value is None:
                ids, graph = store_graph(store, progress=progress)
                self._value = (ids, NeighbourClassifier(graph))
                self._key = key
            return self._value
