"""Search filters: a sub-folder, a label or a prediction, a date range -> the allowed photos, and a search
whose k results all pass the filter.

`allowed(store, f, ...)` turns a `Filter` into the sorted ids it leaves (and how many: the page shows it).
Folders come from the index's paths, relative to the indexed root (index.photoinfo.PhotoInfoCache.root);
dates from the photo-facts cache as it is (`cached`: no file is read, so 100,000 photos filter in a fraction
of a second; photos not read yet have no date and fail a date filter, counted in `undated`). Labels and
predictions are passed in as {id: name} (app.labels.Labels.labelled(), predicted_ids()), which keeps
this module free of the label database.

`search_filtered` answers with hits that all pass: when the filter leaves few photos (at most EXACT_MAX, or
under a fifth of the index) it scores exactly those vectors (one matrix product: exact, and cheaper than
asking FAISS for many results); otherwise it over-fetches from the index by 1/fraction and widens k until
enough results pass, falling back to the exact scoring when the index runs out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import TYPE_CHECKING

import numpy as np

from app.search import Hit, hits, unit
from index import folders

if TYPE_CHECKING:
    from index.photoinfo import PhotoInfoCache
    from index.store import Store

EXACT_MAX = 50_000  # allowed photos scored exactly: 50k x 256 floats is a ~10 ms product on 2 cores
OVERFETCH = 2.0  # k asked of the index = wanted / (fraction allowed) * OVERFETCH, doubled per retry


@dataclass(frozen=True)
class Filter:
    folder: str = ""  # sub-folder, relative to the indexed root ("trips/2021" keeps trips/2021/**); "" any
    label: str = ""  # a person's (or accepted) label; "" any
    prediction: str = ""  # the probe's predicted label; "" any
    date_from: str = ""  # ISO date or date-time, inclusive; "" open
    date_to: str = ""  # ISO date (through the end of that day) or date-time, inclusive; "" open

    @property
    def active(self) -> bool:
        return any((self.folder.strip("/ "), self.label, self.prediction, self.date_from, self.date_to))


@dataclass(frozen=True)
class Allowed:
    ids: np.ndarray | None  # sorted int64 ids that pass; None: no filter (every photo)
    count: int  # photos that pass
    total: int  # photos in the index
    undated: int = 0  # photos left out by a date filter because their date is not read yet

    @property
    def summary(self) -> str:
        if self.ids is None:
            return f"{self.total:,} photos"
        text = f"{self.count:,} of {self.total:,} photos pass the filter"
        return text + (f" ({self.undated:,} without a date yet)" if self.undated else "")


def _bound(text: str, end: bool) -> str:
    """An ISO date or date-time -> comparable 'YYYY-MM-DDTHH:MM:SS'; a bare date's end is 23:59:59."""
    text = text.strip()
    try:
        return datetime.fromisoformat(text).isoformat(timespec="seconds") if "T" in text or " " in text else \
            datetime.combine(date.fromisoformat(text), time.max if end else time.min).isoformat(timespec="seconds")
    except ValueError as e:
        raise ValueError(f"{text!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM") from e


def allowed(store: Store, f: Filter, infos: PhotoInfoCache | None = None,
            labelled: dict[int, str] | None = None, predicted: dict[int, str] | None = None) -> Allowed:
    """The photos of `store` that pass `f`. infos: an index.photoinfo.PhotoInfoCache (needed for dates, and
    to name folders relative to its root); labelled / predicted: {id: name}."""
    ids = np.asarray(store.all_ids(), np.int64)
    if not f.active:
        return Allowed(None, len(ids), len(ids))
    keep = np.ones(len(ids), bool)
    undated = 0
    folder = f.folder.strip().strip("/")
    if folder:
        root = infos.root if infos is not None else folders.root(store)
        prefix = os.path.join(root, folder) if root else folder
        keep &= np.isin(ids, folders.ids_under(store, prefix))  # the index's own paths: no file is touched
    for name, by in ((f.label, labelled), (f.prediction, predicted)):
        if name:
            keep &= np.isin(ids, np.fromiter((i for i, n in (by or {}).items() if n == name), np.int64))
    if f.date_from or f.date_to:
        if infos is None:
            raise ValueError("a date filter needs the photo facts (index.photoinfo.PhotoInfoCache)")
        lo = _bound(f.date_from, end=False) if f.date_from else ""
        hi = _bound(f.date_to, end=True) if f.date_to else "~"
        known = infos.cached()
        in_range = np.fromiter((i for i, v in known.items() if v.taken and lo <= v.taken <= hi), np.int64)
        undated = int((keep & ~np.isin(ids, np.fromiter(known, np.int64))).sum())
        keep &= np.isin(ids, in_range)
    out = ids[keep]
    return Allowed(out, len(out), len(ids), undated)


def search_filtered(store: Store, query: np.ndarray, allowed_ids: np.ndarray | None, k: int,
                    offset: int = 0) -> list[Hit]:
    """Results offset .. offset+k of a search by one embedding among `allowed_ids` only (None: all).

    Every hit passes the filter; fewer than k come back only when fewer photos pass.
    """
    q = unit(query)
    want = offset + k
    if allowed_ids is None:
        scores, ids = store.search(q, want)
        return hits(store, ids[0][offset:], scores[0][offset:])
    allowed_ids = np.asarray(allowed_ids, np.int64)
    n_all = max(store.count, 1)
    if len(allowed_ids) == 0:
        return []
    if len(allowed_ids) <= EXACT_MAX or len(allowed_ids) < n_all / 5:
        return _exact(store, q, allowed_ids, want, offset)
    ask = int(min(n_all, max(want * 2, want / (len(allowed_ids) / n_all) * OVERFETCH)))
    while True:
        scores, ids = store.search(q, ask)
        ok = np.isin(ids[0], allowed_ids) & (ids[0] >= 0)
        if ok.sum() >= want or ask >= n_all:
            break
        ask = min(n_all, ask * 2)
    if ok.sum() < min(want, len(allowed_ids)):  # an approximate index that returned fewer than asked
        return _exact(store, q, allowed_ids, want, offset)
    return hits(store, ids[0][ok][offset:want], scores[0][ok][offset:want])


def _exact(store: Store, q: np.ndarray, allowed_ids: np.ndarray, want: int, offset: int, chunk: int = 65536) -> list[Hit]:
    best_s, best_i = np.empty(0, np.float32), np.empty(0, np.int64)
    for s in range(0, len(allowed_ids), chunk):
        part = allowed_ids[s:s + chunk]
        sc = store.get_vectors(part) @ q[0]
        top = np.argsort(-sc, kind="stable")[:want]
        best_s, best_i = np.concatenate([best_s, sc[top]]), np.concatenate([best_i, part[top]])
    order = np.argsort(-best_s, kind="stable")[:want]
    return hits(store, best_i[order][offset:], best_s[order][offset:])
