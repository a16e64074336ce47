"""Near-duplicate photos: groups of images linked by cosine >= a threshold, joined transitively.

Public API
    duplicate_groups(ids, neighbours, threshold, batch) -> [[id, ...], ...]

The search is the caller's (index/store.py passes its own k-nearest-neighbour search), so this module is the
grouping rule alone and can be tested on constructed neighbour lists.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# chunk of ids -> (scores (n,k), neighbour ids (n,k)), best first; missing slots have id -1
Neighbours = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def duplicate_groups(ids: np.ndarray, neighbours: Neighbours, threshold: float = 0.95,
                     batch: int = 4096) -> list[list[int]]:
    """Groups of near-duplicates among `ids`: pairs with cosine >= threshold, merged with union-find.

    `neighbours(chunk)` returns each id's nearest neighbours, best first (the id itself may be among them);
    neighbours that are not in `ids` are ignored. Single linkage: A~B and B~C group A, B, C even when A and
    C are further apart. Groups have at least two ids, each sorted ascending; the largest group comes first
    (ties: the group with the smaller first id).
    """
    parent = {int(i): int(i) for i in ids}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        scores, nbrs = neighbours(chunk)
        for a, srow, nrow in zip(chunk, scores, nbrs):
            for s, b in zip(srow, nrow):
                if b < 0 or s < threshold:
                    break  # neighbours come best first
                if b != a and int(b) in parent:
                    ra, rb = find(int(a)), find(int(b))
                    if ra != rb:
                        parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in parent:
        groups.setdefault(find(i), []).append(i)
    out = [sorted(g) for g in groups.values() if len(g) > 1]
    return sorted(out, key=lambda g: (-len(g), g[0]))
