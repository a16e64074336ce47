"""Near-duplicate photos: copies decided from the pixels, bursts and similar shots from the embeddings.

Public API
    find_groups(photos, neighbours, check, level, cosine) -> [Found, ...]   the duplicate review's groups
    copy_candidates(photos, neighbours) -> (pairs, cosines, bits)           the pairs whose pixels are checked
    centre_groups(order, links, cap) -> [[id, ...], ...]                     groups that do not chain
    similar_groups(ids, neighbours, threshold) -> [[id, ...], ...]          cosine groups that do not chain
                                                                              (the store's `duplicates`)
    hash_pairs(ids, hashes, radius) -> {(a, b): bits}                         close perceptual hashes

Two questions, answered separately:
- **Copies** (the same photo resized, re-encoded, cropped, rotated by EXIF, converted, with or without its
  metadata): identical bytes, or candidates (perceptual hashes within HASH_RADIUS bits, found by
  multi-index hashing, or embedding neighbours at cosine >= CROP_COSINE, where crops land) verified pair by
  pair from the pixels (index.photohash: match >= SAME_SCORE). Two photos whose EXIF times of capture differ
  are two shots, never copies, however alike their pixels; two of the same pixel size are copies only whole
  (a cropped copy has fewer pixels; two frames of a burst shot the same second have the same).
- **Bursts and similar shots**: embedding neighbours, a burst when both photos carry EXIF times of capture
  within BURST_S seconds (file dates never count: a copied folder gives every file the same one).

Groups do not chain: photos are taken best first (most pixels), each one not yet grouped becomes a group's
chosen photo and gathers the photos linked to IT, closest first, up to MAX_GROUP; A~B and B~C never put A
and C together through B. The search is the caller's (index/store.py's k-nearest-neighbour search; the
pixel check, index.photohash.PixelCheck, reads the signatures and verdicts stored at index time), so this
module is the rule alone and is tested on constructed inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# chunk of ids -> (scores (n,k), neighbour ids (n,k)), best first; missing slots have id -1
Neighbours = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


# ---------------------------------------------------------------- the duplicate review
HASH_RADIUS = 6  # bits of 64: every resize, re-encode, conversion and rotation of Imagenette fell within 4
CROP_COSINE = 0.92  # embedding neighbours this close are checked (base encoder: 3 of 1,800 copy pairs below,
#                     and 2,876 pairs of other photos above against 19,250 above 0.88: each costs a check)
K_NEIGHBOURS = 6  # neighbours per photo searched (every crop copy of the benchmark was in its photo's top 3)
SAME_SCORE = 0.95  # pixel match (index.photohash.contains) of a copy: copies >= 0.958, distinct <= 0.914
BURST_COSINE = 0.90  # embedding cosine of two frames of a burst (benchmark bursts >= 0.95)
BURST_S = 10.0  # seconds between EXIF times of capture that a burst or a quick reframing spans
SIMILAR_COSINE = 0.95  # default cosine of "similar photos"
MAX_GROUP = 12  # photos in one group, the chosen one included: a group is something a person can compare
LEVELS = ("copies", "copies and bursts", "similar photos")
KINDS = ("identical files", "the same photo", "burst", "similar")


@dataclass(frozen=True)
class Photo:
    """What the finder knows of one photo (the caller reads it from the index and the photo facts)."""

    id: int
    sha256: str | None = None  # content hash of the file
    phash: int | None = None  # 64-bit perceptual hash (index.photohash), None when it could not be read
    pixels: tuple[int, int] | None = None  # upright (width, height)
    taken: float | None = None  # EXIF time of capture (seconds), None without one (file dates never count)


@dataclass(frozen=True)
class Link:
    """Why two photos are in one group: what was measured between a photo and its group's chosen photo."""

    kind: str  # one of KINDS
    cosine: float | None = None  # embedding cosine, when the pair was among the neighbours
    bits: int | None = None  # perceptual hash distance (of 64)
    match: float | None = None  # pixel match (index.photohash.Match.score)
    scale: float | None = None  # the narrower view's width as a fraction of the wider's (< 1: cropped)
    seconds: float | None = None  # EXIF times of capture apart

    @property
    def closeness(self) -> float:
        order = {"identical files": 3.0, "the same photo": 2.0, "burst": 1.0, "similar": 0.0}[self.kind]
        return order + (self.match if self.match is not None else (self.cosine or 0.0))


@dataclass
class Found:
    kind: str  # one of KINDS: what was measured between every member and the chosen photo
    ids: list[int]  # the chosen photo first, then the others, closest first
    links: dict[int, Link] = field(default_factory=dict)  # member id (not the chosen one) -> its link


# pairs (a, b) -> {pair: (match, scale), or None when a photo could not be read}
Check = Callable[[list[tuple[int, int]]], Mapping[tuple[int, int], "tuple[float, float] | None"]]


def hash_pairs(ids: Sequence[int], hashes: Sequence[int], radius: int = HASH_RADIUS) -> dict[tuple[int, int], int]:
    """{(a, b): Hamming distance} for a < b whose 64-bit hashes are within `radius` bits, exactly.

    Multi-index hashing (Norouzi et al. 2012): the 64 bits cut into radius + 1 pieces; two hashes within
    `radius` bits agree on at least one piece, so only hashes that share a piece are compared. An exhaustive
    search of 100,000 hashes (FAISS IndexBinaryFlat range search) took 20 s on 2 cores; this takes 0.5 s.
    """
    n = len(ids)
    if n < 2:
        return {}
    h = np.asarray(hashes, np.int64).view(np.uint64)
    cuts = np.linspace(0, 64, radius + 2).astype(np.uint64)
    firsts, seconds = [], []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        piece = (h >> lo) & np.uint64((1 << int(hi - lo)) - 1)
        order = np.argsort(piece, kind="stable")
        run = piece[order]
        starts = np.flatnonzero(np.r_[True, run[1:] != run[:-1]])
        ends = np.r_[starts[1:], n]
        for s, e in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
            a, b = _close_in_run(order[s:e], h, radius)
            firsts.append(a)
            seconds.append(b)
    if not firsts:
        return {}
    a, b = np.concatenate(firsts), np.concatenate(seconds)
    a, b = np.minimum(a, b), np.maximum(a, b)
    a, b = np.unique(np.stack([a, b]), axis=1)  # a pair sharing several pieces was found once per piece
    bits = np.bitwise_count(h[a] ^ h[b])
    keep = bits <= radius
    idv = np.asarray(ids, np.int64)
    out: dict[tuple[int, int], int] = {}
    for x, y, d in zip(idv[a[keep]].tolist(), idv[b[keep]].tolist(), bits[keep].tolist()):
        out[(min(x, y), max(x, y))] = int(d)
    return out


def _close_in_run(members: np.ndarray, h: np.ndarray, radius: int,
                  cells: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of `members` (positions in `h`) whose hashes are within `radius` bits, each pair once.

    Filtered here, run by run, so that only close pairs are kept: 100,000 hashes share pieces in some 70
    million pairs, nearly all far apart. Rows are compared in blocks of at most `cells` distances, so a run
    of many alike photos stays within about 32 MB.
    """
    m = len(members)
    hm = h[members]
    step = max(1, cells // m)
    firsts, seconds = [], []
    for lo in range(0, m - 1, step):
        hi = min(m - 1, lo + step)
        d = np.bitwise_count(hm[lo:hi, None] ^ hm[None, lo + 1:])  # (rows lo..hi) x (columns lo+1..m)
        r, c = np.nonzero(d <= radius)
        r, c = r + lo, c + lo + 1
        keep = c > r
        firsts.append(members[r[keep]])
        seconds.append(members[c[keep]])
    return np.concatenate(firsts), np.concatenate(seconds)


def neighbour_pairs(ids: np.ndarray, neighbours: Neighbours, min_cosine: float,
                    batch: int = 4096) -> dict[tuple[int, int], float]:
    """{(a, b): cosine} for a < b where one is among the other's neighbours at cosine >= min_cosine."""
    member = {int(i) for i in ids}
    min_cosine = float(np.float32(min_cosine))  # scores are float32: 0.95 means float32's 0.95
    out: dict[tuple[int, int], float] = {}
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        scores, nbrs = neighbours(chunk)
        for a, srow, nrow in zip(chunk.tolist(), scores, nbrs):
            for s, b in zip(srow.tolist(), nrow.tolist()):
                if b < 0 or s < min_cosine:
                    break  # neighbours come best first
                if b != a and b in member:
                    key = (min(a, b), max(a, b))
                    out[key] = max(out.get(key, -1.0), float(s))
    return out


def centre_groups(order: Iterable[int], links: Mapping[int, Mapping[int, float]],
                  cap: int = MAX_GROUP) -> list[list[int]]:
    """Groups that do not chain: each photo, in `order` (best first), not yet grouped becomes a chosen photo
    and takes the ungrouped photos linked to it (links[a][b] = closeness, symmetric), closest first, until
    the group holds `cap`. Groups of one are left out."""
    taken: set[int] = set()
    out = []
    for c in order:
        if c in taken or not links.get(c):
            continue
        near = sorted(((s, b) for b, s in links[c].items() if b not in taken and b != c), key=lambda x: (-x[0], x[1]))
        group = [c] + [b for _, b in near[:cap - 1]]
        if len(group) > 1:
            taken.update(group)
            out.append(group)
    return out


def similar_groups(ids: np.ndarray, neighbours: Neighbours, threshold: float = SIMILAR_COSINE,
                   cap: int = MAX_GROUP, batch: int = 4096) -> list[list[int]]:
    """Groups of photos at cosine >= threshold that do not chain: the photo with the most such neighbours
    (then the smaller id) is chosen first and gathers those close to IT, closest first, up to `cap`.

    `neighbours(chunk)` returns each id's nearest neighbours, best first (the id itself may be among them);
    neighbours not in `ids` are ignored. Groups have at least two ids, each sorted ascending; the largest
    group comes first (ties: the group with the smaller first id).
    """
    links: dict[int, dict[int, float]] = {}
    for (a, b), c in neighbour_pairs(np.asarray(ids, np.int64), neighbours, threshold, batch).items():
        links.setdefault(a, {})[b] = links.setdefault(b, {})[a] = c
    order = sorted(links, key=lambda i: (-len(links[i]), i))
    groups = [sorted(g) for g in centre_groups(order, links, cap)]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def _best_first(p: Photo) -> tuple[int, int]:
    w, h = p.pixels or (0, 0)
    return (-w * h, p.id)


def copy_candidates(photos: Mapping[int, Photo], neighbours: Neighbours, floor: float = CROP_COSINE,
                    ) -> tuple[list[tuple[int, int]], dict[tuple[int, int], float], dict[tuple[int, int], int]]:
    """(the pairs whose pixels decide whether they are copies, the neighbour pairs at cosine >= floor, the
    hash pairs): candidates from the hashes or the neighbours, less identical files (decided by their bytes)
    and pairs whose EXIF times of capture are a second or more apart (two shots). What `index` checks ahead
    and what the review asks the check for."""
    ids = np.asarray(sorted(photos), np.int64)
    near = neighbour_pairs(ids, neighbours, floor)
    hashed = [p for p in photos.values() if p.phash is not None]
    close = hash_pairs([p.id for p in hashed], [p.phash for p in hashed])  # type: ignore[misc]
    out = []
    for a, b in sorted(set(close) | {k for k, c in near.items() if c >= CROP_COSINE}):
        pa, pb = photos[a], photos[b]
        apart = _seconds_apart(pa, pb)
        if (pa.sha256 and pa.sha256 == pb.sha256) or (apart is not None and apart >= 1):
            continue
        out.append((a, b))
    return out, near, close


def find_groups(photos: Sequence[Photo], neighbours: Neighbours, check: Check, level: str = "copies",
                cosine: float = SIMILAR_COSINE, cap: int = MAX_GROUP) -> list[Found]:
    """The duplicate review's groups at `level` (one of LEVELS): copy groups first, then (from the photos
    left) bursts and similar shots; each group's members closest first, the largest groups first.
    `check` is asked once, for every candidate pair (copy_candidates)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
    by_id = {p.id: p for p in photos}
    floor = CROP_COSINE if level == "copies" else min(CROP_COSINE, BURST_COSINE, cosine)
    candidates, near, close = copy_candidates(by_id, neighbours, floor)
    copies = _copy_links(by_id, near, close, candidates, check)
    groups = _collect(photos, copies, cap)
    if level != "copies":
        grouped = {i for f in groups for i in f.ids}
        shots: dict[int, dict[int, Link]] = {}
        for (a, b), cos in near.items():
            if a in grouped or b in grouped or (a, b) in copies:
                continue
            link = _shot_link(by_id[a], by_id[b], cos, level, cosine)
            if link is not None:
                shots.setdefault(a, {})[b] = shots.setdefault(b, {})[a] = link
        groups += _collect(photos, {(a, b): lk for a, d in shots.items() for b, lk in d.items() if a < b}, cap)
    return sorted(groups, key=lambda f: (KINDS.index(f.kind) > 1, -len(f.ids), f.ids[0]))


def _seconds_apart(a: Photo, b: Photo) -> float | None:
    return None if a.taken is None or b.taken is None else abs(a.taken - b.taken)


def _copy_links(by_id: Mapping[int, Photo], near: Mapping[tuple[int, int], float],
                close: Mapping[tuple[int, int], int], candidates: list[tuple[int, int]],
                check: Check) -> dict[tuple[int, int], Link]:
    """Identical files, and candidates verified from the pixels: a match of SAME_SCORE, and whole when the
    two have the same pixel size (a cropped copy has fewer pixels; two frames of a burst the same)."""
    out: dict[tuple[int, int], Link] = {}
    by_sha: dict[str, list[int]] = {}
    for p in by_id.values():
        if p.sha256:
            by_sha.setdefault(p.sha256, []).append(p.id)
    for same in by_sha.values():
        for i, a in enumerate(sorted(same)):
            for b in sorted(same)[i + 1:]:
                out[(a, b)] = Link("identical files", near.get((a, b)), 0, 1.0, 1.0, None)
    verdicts = check(candidates) if candidates else {}
    for a, b in candidates:
        got = verdicts.get((a, b))
        if got is None or got[0] < SAME_SCORE:
            continue
        pa, pb = by_id[a], by_id[b]
        if pa.pixels is not None and pa.pixels == pb.pixels and got[1] < 1.0:
            continue  # the same size, matched only shifted or cut: two frames, not a copy
        out[(a, b)] = Link("the same photo", near.get((a, b)), close.get((a, b)), got[0], got[1],
                           _seconds_apart(pa, pb))
    return out


def _shot_link(a: Photo, b: Photo, cos: float, level: str, cosine: float) -> Link | None:
    apart = _seconds_apart(a, b)
    if cos >= BURST_COSINE and apart is not None and apart <= BURST_S:
        return Link("burst", cos, seconds=apart)
    if level == "similar photos" and cos >= cosine:
        return Link("similar", cos, seconds=apart)
    return None


def _collect(photos: Sequence[Photo], links: Mapping[tuple[int, int], Link], cap: int) -> list[Found]:
    table: dict[int, dict[int, Link]] = {}
    for (a, b), lk in links.items():
        table.setdefault(a, {})[b] = table.setdefault(b, {})[a] = lk
    order = [p.id for p in sorted(photos, key=_best_first)]
    closeness = {a: {b: lk.closeness for b, lk in d.items()} for a, d in table.items()}
    out = []
    for g in centre_groups(order, closeness, cap):
        found = {b: table[g[0]][b] for b in g[1:]}
        kinds = {lk.kind for lk in found.values()}
        kind = next(k for k in reversed(KINDS) if k in kinds)  # the loosest link names the group
        out.append(Found(kind, g, found))
    return out
