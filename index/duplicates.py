"""Near-duplicate photos: copies decided from the pixels, bursts and similar shots from the embeddings.

Public API
    find_groups(photos, neighbours, check, level, cosine) -> [Found, ...]   the duplicate review's groups
    centre_groups(order, links, cap) -> [[id, ...], ...]                     groups that do not chain
    hash_pairs(ids, hashes, radius) -> {(a, b): bits}                         close perceptual hashes (FAISS)
    duplicate_groups(ids, neighbours, threshold, batch) -> [[id, ...], ...]  cosine pairs joined transitively
                                                                              (the store's `duplicates`)

Two questions, answered separately:
- **Copies** (the same photo resized, re-encoded, cropped, rotated by EXIF, converted, with or without its
  metadata): identical bytes, or candidates (perceptual hashes within HASH_RADIUS bits through a FAISS binary
  index, or embedding neighbours at cosine >= CROP_COSINE, where crops land) verified pair by pair from the
  pixels (index.photohash.contains >= SAME_SCORE). Two photos whose EXIF times of capture differ are two
  shots, never copies, however alike their pixels.
- **Bursts and similar shots**: embedding neighbours, a burst when both photos carry EXIF times of capture
  within BURST_S seconds (file dates never count: a copied folder gives every file the same one).

Groups do not chain: photos are taken best first (most pixels), each one not yet grouped becomes a group's
chosen photo and gathers the photos linked to IT, closest first, up to MAX_GROUP; A~B and B~C never put A
and C together through B. The search is the caller's (index/store.py's k-nearest-neighbour search; the
pixel check reads the index's thumbnails), so this module is the rule alone and is tested on constructed
inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

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


# ---------------------------------------------------------------- the duplicate review
HASH_RADIUS = 10  # bits of 64: every resize, re-encode, conversion and rotation of Imagenette fell within 4
CROP_COSINE = 0.88  # embedding neighbours this close are checked for crops (base encoder: crops >= 0.897)
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


Check = Callable[[int, int], "tuple[float, float] | None"]  # (a, b) -> (match, scale), None when unreadable


def hash_pairs(ids: Sequence[int], hashes: Sequence[int], radius: int = HASH_RADIUS) -> dict[tuple[int, int], int]:
    """{(a, b): Hamming distance} for a < b whose 64-bit hashes are within `radius` bits (FAISS binary index,
    exact range search)."""
    import faiss

    if len(ids) < 2:
        return {}
    codes = np.ascontiguousarray(np.asarray(hashes, ">i8").view(np.uint8).reshape(-1, 8))
    index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    lims, dist, found = index.range_search(codes, radius + 1)  # faiss keeps distances strictly below
    out: dict[tuple[int, int], int] = {}
    for q in range(len(ids)):
        for d, j in zip(dist[lims[q]:lims[q + 1]], found[lims[q]:lims[q + 1]]):
            a, b = int(ids[q]), int(ids[int(j)])
            if a < b:
                out[(a, b)] = int(d)
    return out


def neighbour_pairs(ids: np.ndarray, neighbours: Neighbours, min_cosine: float,
                    batch: int = 4096) -> dict[tuple[int, int], float]:
    """{(a, b): cosine} for a < b where one is among the other's neighbours at cosine >= min_cosine."""
    member = {int(i) for i in ids}
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


def _best_first(p: Photo) -> tuple[int, int]:
    w, h = p.pixels or (0, 0)
    return (-w * h, p.id)


Times = Callable[[list[int]], Mapping[int, float | None]]  # ids -> EXIF time of capture (None without one)


def find_groups(photos: Sequence[Photo], neighbours: Neighbours, check: Check, level: str = "copies",
                cosine: float = SIMILAR_COSINE, cap: int = MAX_GROUP, taken: Times | None = None) -> list[Found]:
    """The duplicate review's groups at `level` (one of LEVELS): copy groups first, then (from the photos
    left) bursts and similar shots; each group's members closest first, the largest groups first.

    `taken`, when given, is asked once for the EXIF times of the photos in candidate pairs (reading a photo's
    facts costs a file read, so only those are read); else Photo.taken is used.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, not {level!r}")
    by_id = {p.id: p for p in photos}
    ids = np.asarray(sorted(by_id), np.int64)
    floor = CROP_COSINE if level == "copies" else min(CROP_COSINE, BURST_COSINE, cosine)
    near = neighbour_pairs(ids, neighbours, floor)
    hashed = [p for p in photos if p.phash is not None]
    close = hash_pairs([p.id for p in hashed], [p.phash for p in hashed])  # type: ignore[misc]
    if taken is not None:
        involved = sorted({i for pair in (*near, *close) for i in pair})
        times = taken(involved)
        for i in involved:
            by_id[i] = replace(by_id[i], taken=times.get(i))
        photos = list(by_id.values())
    copies = _copy_links(by_id, near, close, check)
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
                close: Mapping[tuple[int, int], int], check: Check) -> dict[tuple[int, int], Link]:
    """Identical files, and candidates verified from the pixels; pairs shot at different times are not copies."""
    out: dict[tuple[int, int], Link] = {}
    by_sha: dict[str, list[int]] = {}
    for p in by_id.values():
        if p.sha256:
            by_sha.setdefault(p.sha256, []).append(p.id)
    for same in by_sha.values():
        for i, a in enumerate(sorted(same)):
            for b in sorted(same)[i + 1:]:
                out[(a, b)] = Link("identical files", near.get((a, b)), 0, 1.0, 1.0, None)
    candidates = set(close) | {k for k, c in near.items() if c >= CROP_COSINE}
    for a, b in sorted(candidates - set(out)):
        apart = _seconds_apart(by_id[a], by_id[b])
        if apart is not None and apart >= 1:
            continue  # two moments of capture: two shots (a burst at most)
        got = check(a, b)
        if got is not None and got[0] >= SAME_SCORE:
            out[(a, b)] = Link("the same photo", near.get((a, b)), close.get((a, b)), got[0], got[1], apart)
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
