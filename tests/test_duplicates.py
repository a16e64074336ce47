"""index/duplicates.py: which photos are grouped, and which stay out, on constructed neighbour lists."""

from __future__ import annotations

import numpy as np

from index.duplicates import duplicate_groups


def table(ids: list[int], pairs: dict[tuple[int, int], float]):
    """A neighbours() over a symmetric cosine table: every id finds itself at 1.0, then the given pairs,
    best first, then nothing (-1)."""
    def neighbours(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = len(ids)
        scores, nbrs = np.full((len(chunk), k), -np.inf, np.float32), np.full((len(chunk), k), -1, np.int64)
        for r, a in enumerate(chunk.tolist()):
            found = [(1.0, a)] + sorted(((s, b if x == a else x) for (x, b), s in pairs.items() if a in (x, b)),
                                        reverse=True)
            for c, (s, b) in enumerate(found):
                scores[r, c], nbrs[r, c] = s, b
        return scores, nbrs
    return neighbours


IDS = [3, 5, 8, 11, 20, 21, 30, 40]
PAIRS = {
    (3, 5): 0.99,   # a pair
    (5, 8): 0.97,   # 8 joins 3 and 5 through 5 (single linkage) although 3~8 is far below
    (3, 8): 0.50,
    (20, 21): 0.95,  # exactly at the threshold: grouped
    (30, 40): 0.949,  # just below: not grouped
    (11, 30): 0.30,  # unrelated
}


def test_groups_exactly_the_linked_photos():
    groups = duplicate_groups(np.array(IDS, np.int64), table(IDS, PAIRS), threshold=0.95)
    assert groups == [[3, 5, 8], [20, 21]]
    grouped = {i for g in groups for i in g}
    assert {11, 30, 40}.isdisjoint(grouped)  # unrelated photos and the pair below the threshold stay out


def test_a_higher_threshold_splits_the_chain():
    groups = duplicate_groups(np.array(IDS, np.int64), table(IDS, PAIRS), threshold=0.98)
    assert groups == [[3, 5]]


def test_the_same_groups_in_any_batch_size():
    ids = np.array(IDS, np.int64)
    want = duplicate_groups(ids, table(IDS, PAIRS), threshold=0.95)
    for batch in (1, 2, 3, 100):
        assert duplicate_groups(ids, table(IDS, PAIRS), threshold=0.95, batch=batch) == want


def test_neighbours_outside_the_ids_are_ignored():
    """A neighbour the caller did not ask about (e.g. an id a refresh dropped) is never put in a group."""
    ids = np.array([1, 2], np.int64)
    pairs = {(1, 99): 0.999, (2, 99): 0.999}
    assert duplicate_groups(ids, table([1, 2, 99], pairs), threshold=0.9) == []


def test_largest_group_first_then_smallest_first_id():
    ids = [1, 2, 3, 4, 5, 6, 7]
    pairs = {(6, 7): 1.0, (1, 2): 1.0, (3, 4): 1.0, (4, 5): 1.0}
    assert duplicate_groups(np.array(ids, np.int64), table(ids, pairs), threshold=0.9) == [[3, 4, 5], [1, 2], [6, 7]]


def test_no_ids_no_groups():
    assert duplicate_groups(np.zeros(0, np.int64), table([], {}), threshold=0.5) == []
