"""index/duplicates.py: which photos are grouped, and which stay out, on constructed neighbour lists."""

from __future__ import annotations

import numpy as np

from index.duplicates import similar_groups


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
    (5, 8): 0.97,   # 5 is close to both 3 and 8, while 3~8 is far below: 5 is chosen and gathers both
    (3, 8): 0.50,
    (20, 21): 0.95,  # exactly at the threshold: grouped
    (30, 40): 0.949,  # just below: not grouped
    (11, 30): 0.30,  # unrelated
}


def test_groups_exactly_the_linked_photos():
    groups = similar_groups(np.array(IDS, np.int64), table(IDS, PAIRS), threshold=0.95)
    assert groups == [[3, 5, 8], [20, 21]]  # 5 (two links) is the chosen photo: 3 and 8 are both close to it
    grouped = {i for g in groups for i in g}
    assert {11, 30, 40}.isdisjoint(grouped)  # unrelated photos and the pair below the threshold stay out


def test_a_chain_is_cut_at_the_chosen_photo():
    """1~2~3~4~5 in a line: the old single linkage made one group of five; around a chosen photo no member
    is more than one link from it."""
    ids = [1, 2, 3, 4, 5]
    pairs = {(1, 2): 0.99, (2, 3): 0.98, (3, 4): 0.97, (4, 5): 0.96}
    groups = similar_groups(np.array(ids, np.int64), table(ids, pairs), threshold=0.95)
    assert groups == [[1, 2, 3], [4, 5]]  # 2 chosen (two links, smaller id than 3): 1 and 3; then 4 with 5
    for g in groups:
        assert any(all((min(c, m), max(c, m)) in pairs for m in g if m != c) for c in g)


def test_groups_are_capped():
    ids = list(range(40))
    pairs = {(a, b): 0.99 for a in ids for b in ids if a < b}
    groups = similar_groups(np.array(ids, np.int64), table(ids, pairs), threshold=0.95, cap=12)
    assert [len(g) for g in groups] == [12, 12, 12, 4]
    assert sorted(i for g in groups for i in g) == ids


def test_a_higher_threshold_splits_the_chain():
    groups = similar_groups(np.array(IDS, np.int64), table(IDS, PAIRS), threshold=0.98)
    assert groups == [[3, 5]]


def test_the_same_groups_in_any_batch_size():
    ids = np.array(IDS, np.int64)
    want = similar_groups(ids, table(IDS, PAIRS), threshold=0.95)
    for batch in (1, 2, 3, 100):
        assert similar_groups(ids, table(IDS, PAIRS), threshold=0.95, batch=batch) == want


def test_neighbours_outside_the_ids_are_ignored():
    """A neighbour the caller did not ask about (e.g. an id a refresh dropped) is never put in a group."""
    ids = np.array([1, 2], np.int64)
    pairs = {(1, 99): 0.999, (2, 99): 0.999}
    assert similar_groups(ids, table([1, 2, 99], pairs), threshold=0.9) == []


def test_largest_group_first_then_smallest_first_id():
    ids = [1, 2, 3, 4, 5, 6, 7]
    pairs = {(6, 7): 1.0, (1, 2): 1.0, (3, 4): 1.0, (4, 5): 1.0}
    assert similar_groups(np.array(ids, np.int64), table(ids, pairs), threshold=0.9) == [[3, 4, 5], [1, 2], [6, 7]]


def test_no_ids_no_groups():
    assert similar_groups(np.zeros(0, np.int64), table([], {}), threshold=0.5) == []


# ---------------------------------------------------------------- the duplicate review's groups
from index.duplicates import MAX_GROUP, Photo, centre_groups, find_groups, hash_pairs  # noqa: E402


def each(fn):
    """A batch Check from a check of one pair."""
    return lambda pairs: {p: fn(*p) for p in pairs}


def no_pixels(pairs):
    return {p: None for p in pairs}


def test_groups_do_not_chain():
    """A~B and B~C with A far from C: C is not put with A through B."""
    links = {1: {2: 0.9}, 2: {1: 0.9, 3: 0.9}, 3: {2: 0.9}}
    assert centre_groups([1, 2, 3], links) == [[1, 2]]
    assert centre_groups([2, 1, 3], links) == [[2, 1, 3]]  # B chosen first: both are close to it


def test_a_crowd_of_alike_photos_makes_capped_groups():
    ids = list(range(50))
    pairs = {(a, b): 0.99 for a in ids for b in ids if a < b}
    photos = [Photo(i, pixels=(100, 100)) for i in ids]
    groups = find_groups(photos, table(ids, pairs), no_pixels, "similar photos", cosine=0.95)
    assert groups and max(len(g.ids) for g in groups) <= MAX_GROUP
    assert {g.kind for g in groups} == {"similar"}
    assert sorted(i for g in groups for i in g.ids) == ids  # each photo in one group


def test_copies_come_from_the_pixels_and_shots_from_the_times():
    ids = [1, 2, 3, 4, 5, 6]
    pairs = {(1, 2): 0.99, (3, 4): 0.99, (5, 6): 0.97}
    photos = [Photo(1, "x", 0, (200, 100), 1000.0), Photo(2, "y", 1, (100, 50), 1000.0),  # a resize
              Photo(3, "z", 0x3333333333333333, (100, 50), 2000.0),  # a burst: two times of capture
              Photo(4, "w", 0x5555555555555555, (100, 50), 2003.0),
              Photo(5, "v", 0x0F0F0F0F0F0F0F0F, (100, 50)), Photo(6, "u", 0x00FF00FF00FF00FF, (100, 50))]

    def pixels(a, b):  # every pair looks the same: only the times tell shots apart
        return (0.99, 1.0)

    copies = find_groups(photos, table(ids, pairs), each(pixels), "copies")
    assert [(g.kind, g.ids) for g in copies] == [("the same photo", [1, 2]), ("the same photo", [5, 6])]
    bursts = find_groups(photos, table(ids, pairs), each(pixels), "copies and bursts")
    assert ("burst", [3, 4]) in [(g.kind, g.ids) for g in bursts] and bursts[-1].links[4].seconds == 3.0
    refused = find_groups(photos, table(ids, pairs), each(lambda a, b: (0.90, 1.0)), "similar photos", cosine=0.98)
    assert [(g.kind, g.ids) for g in refused] == [("burst", [1, 2]), ("burst", [3, 4])]  # 5~6 below 0.98


def test_file_dates_never_make_a_burst():
    ids = [1, 2]
    photos = [Photo(1, pixels=(10, 10)), Photo(2, pixels=(10, 10))]  # no EXIF time: only file dates
    assert find_groups(photos, table(ids, {(1, 2): 0.99}), no_pixels, "copies and bursts") == []


def test_identical_files_and_close_hashes():
    photos = [Photo(1, "same", 0), Photo(2, "same", 2**63 - 1), Photo(3, None, 0b111)]
    groups = find_groups(photos, table([1, 2, 3], {}), each(lambda a, b: (1.0, 1.0)), "copies")
    assert [(g.kind, sorted(g.ids)) for g in groups] == [("the same photo", [1, 2, 3])]
    assert groups[0].links[2].kind == "identical files" and groups[0].links[3].bits == 3
    assert hash_pairs([1, 2, 3], [0, 0b1111, -1], radius=4) == {(1, 2): 4}


def test_the_same_size_is_a_copy_only_whole():
    """Two frames of a burst shot the same second: same pixel size, matched only shifted (scale < 1): not
    copies. A crop (fewer pixels) matched at 0.9 of the width is."""
    photos = [Photo(1, "a", None, (200, 150), 50.0), Photo(2, "b", None, (200, 150), 50.0),  # burst frames
              Photo(3, "c", None, (400, 300)), Photo(4, "d", None, (360, 270))]  # a photo and its crop
    pairs = {(1, 2): 0.99, (3, 4): 0.99}
    groups = find_groups(photos, table([1, 2, 3, 4], pairs), each(lambda a, b: (0.98, 0.95)), "copies")
    assert [(g.kind, g.ids) for g in groups] == [("the same photo", [3, 4])]
    whole = find_groups(photos, table([1, 2, 3, 4], pairs), each(lambda a, b: (0.99, 1.0)), "copies")
    assert sorted(g.ids for g in whole) == [[1, 2], [3, 4]]  # re-encoded at the same size: whole, a copy


def test_hash_pairs_are_exactly_the_pairs_within_the_radius():
    """Multi-index hashing against every pair compared: the same pairs, on hashes with many near ones."""
    rng = np.random.default_rng(0)
    base = rng.integers(-2**63, 2**63 - 1, 60, dtype=np.int64)
    flips = [np.int64(0)]
    hashes = []
    for h in base:
        for n in (0, 3, 6, 7, 12):  # copies 0 to 12 bits away
            bits = rng.choice(64, n, replace=False)
            m = 0
            for b in bits:
                m |= 1 << int(b)
            hashes.append(int(h) ^ int(np.uint64(m).view(np.int64)))
    del flips
    ids = list(range(100, 100 + len(hashes)))
    for radius in (0, 4, 6, 10):
        want = {(ids[i], ids[j]): bin((hashes[i] ^ hashes[j]) & (2**64 - 1)).count("1")
                for i in range(len(ids)) for j in range(i + 1, len(ids))
                if bin((hashes[i] ^ hashes[j]) & (2**64 - 1)).count("1") <= radius}
        assert hash_pairs(ids, hashes, radius) == want
