"""The vectors of ids that a read-only store's refreshes dropped a moment ago.

The page's store follows the generations `index` saves beside it (`Store.refresh`). A request that read ids
just before a refresh (a page of results, a selection on the map) may still ask for the vectors of those the
new generation removed; for `kept_s` seconds after each refresh they are answered from here instead of with
a KeyError. Only the dropped ids' vectors are kept, not the old generation.
"""

from __future__ import annotations

import time

import numpy as np


class Dropped:
    """Ids dropped by the refreshes of the last `kept_s` seconds, with their last vectors."""

    def __init__(self, kept_s: float):
        self.kept_s = kept_s
        self._kept: list[tuple[np.ndarray, np.ndarray, float]] = []  # (ids, vectors (n,d), kept until)

    def keep(self, ids: np.ndarray, vectors: np.ndarray | None) -> None:
        """Keep `ids` and their `vectors` (dropped by a refresh now); forget those kept long enough."""
        now = time.monotonic()
        self._kept = [g for g in self._kept if g[2] > now]
        if len(ids) and vectors is not None:
            self._kept.append((ids, vectors, now + self.kept_s))

    def vectors(self, ids: np.ndarray) -> np.ndarray | None:
        """The kept vectors of `ids` (n,d), a later refresh's entry winning; None when some id is not kept."""
        if not self._kept:
            return None
        kept_ids = np.concatenate([g[0] for g in self._kept])
        kept_vecs = np.concatenate([g[1] for g in self._kept])
        pos = {int(i): j for j, i in enumerate(kept_ids)}
        if not all(int(i) in pos for i in ids):
            return None
        out: np.ndarray = kept_vecs[[pos[int(i)] for i in ids]]
        return out
