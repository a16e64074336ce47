"""What the page shows, as plain data: search by photo or by id, paging, random browse, near-duplicates,
and the 2-D map of the embeddings. No gradio here; app/ui.py turns these into components.

A result is a `Hit`: the photo's stable id (what clicks carry), its cosine to the query, its file name
(printable: bytes of a name that is not UTF-8 shown as \\xNN) and the path of its thumbnail (the only
picture of it the page ever shows).

A query photo (an upload) is decoded by `load_query` exactly as the folder is (byol.images.load_rgb: photo
formats only, the decompression-bomb guard, JPEG draft mode and reduction to what the encoder needs, 16-bit
images converted a strip at a time), never at full size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from byol.images import Source
    from index.embed import Embedder
    from index.store import Store

UNLABELLED = "(none)"
# Tableau 10: distinct at a glance, and readable for the common colour-vision deficiencies
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#17becf")
GREY = "#c8c8c8"


@dataclass(frozen=True)
class Hit:
    id: int  # the photo's id in the index (FAISS id = SQLite primary key)
    score: float | None  # cosine similarity to the query; None where there is no query (random browse)
    name: str  # file name, for the caption
    thumb: str  # path of the cached thumbnail

    @property
    def caption(self) -> str:
        return self.name if self.score is None else f"{self.score:.3f} · {self.name}"


def hits(store: Store, ids: Iterable[int], scores: Iterable[float] | None = None) -> list[Hit]:
    """Hits for ids in the given order; ids that have left the index (or are -1 padding) are dropped."""
    ids = [int(i) for i in ids]
    values: list[float | None] = [None] * len(ids) if scores is None else [float(s) for s in scores]
    keep = [(i, s) for i, s in zip(ids, values) if i >= 0]
    rows = {int(r["id"]): r for r in store.rows([i for i, _ in keep])} if keep else {}
    from byol.data import display_path

    return [Hit(i, s, display_path(Path(str(rows[i]["path"])).name), str(store.thumbs.path(i)))
            for i, s in keep if i in rows]


def unit(v: np.ndarray) -> np.ndarray:
    """(d,) or (n, d) -> (n, d) float32 rows of unit length (what the store searches with)."""
    v = np.atleast_2d(np.ascontiguousarray(v, dtype=np.float32))
    return cast(np.ndarray, v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12))


def search_vector(store: Store, query: np.ndarray, k: int, offset: int = 0) -> list[Hit]:
    """Results offset .. offset+k of a search by one embedding; the next page is offset += k."""
    scores, ids = store.search(unit(query), offset + k)
    return hits(store, ids[0][offset:], scores[0][offset:])


def search_id(store: Store, image_id: int, k: int, offset: int = 0) -> list[Hit]:
    """Search from a photo already in the index; the photo itself comes first (cosine 1)."""
    return search_vector(store, store.get_vectors(np.array([int(image_id)], np.int64)), k, offset)


QUERY_MIN_SIDE = 256  # decode size for an embedder that does not say its own (the thumbnails' size)


def load_query(source: Source, embedder: Embedder | None = None) -> Image.Image:
    """An uploaded photo (path, bytes or file object) -> RGB PIL image, decoded with the folder's guards
    and only as large as the encoder needs; raises byol.images.BadImage with a reason for a person."""
    from byol.images import load_rgb

    pre = getattr(embedder, "preprocess", None)
    return load_rgb(source, min_side=int(getattr(pre, "resize", 0) or QUERY_MIN_SIDE))


def embed_photo(embedder: Embedder, image: Image.Image | Source) -> np.ndarray:
    """One photo -> (1, d) unit embedding, through the index's own encoder: a decoded RGB PIL image, or
    a path / bytes (an upload), which is decoded by `load_query`."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = load_query(image, embedder)
    return unit(embedder.embed_images([image]))


def random_browse(store: Store, n: int, rng: np.random.Generator | None = None) -> list[Hit]:
    ids = np.asarray(store.all_ids(), np.int64)
    rng = rng if rng is not None else np.random.default_rng()
    return hits(store, rng.choice(ids, size=min(n, len(ids)), replace=False)) if len(ids) else []


def duplicate_groups(store: Store, threshold: float, max_groups: int = 60) -> list[list[Hit]]:
    """Groups of photos at cosine >= `threshold` that do not chain (Store.duplicates: each around a chosen
    photo, at most index.duplicates.MAX_GROUP photos), largest groups first; each hit's score is its cosine
    to the group's first photo."""
    groups = sorted(store.duplicates(float(threshold)), key=len, reverse=True)[:max_groups]
    out = []
    for g in groups:
        v = np.asarray(store.get_vectors(np.asarray(g, np.int64)), np.float32)
        out.append(hits(store, g, unit(v) @ unit(v[0])[0]))  # cosine to the group's first photo
    return [g for g in out if len(g) > 1]


# ---------------------------------------------------------------- the map
@dataclass
class EmbeddingMap:
    """A 2-D layout of (a sample of) the index: app/photomap.py turns it into the page's photo map."""

    ids: np.ndarray  # n int64
    xy: np.ndarray  # n, 2 float32: the projection (y up)
    method: str  # "pca" or "umap"


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Project rows onto their top two principal components (eigenvectors of the d x d covariance).

    The n x d work is float32 (the embeddings' own precision; half the memory and twice the BLAS speed of
    float64: the centring and the covariance product were ~3 s of a first 100k map): the mean is summed in
    float64, and only the small d x d eigenproblem runs in float64, where the two top eigenvectors of a
    float32-accumulated covariance agree with float64's to ~1e-5 (tests/test_search.py: against an SVD).
    """
    x = np.asarray(x, np.float32)
    xc = x - x.mean(0, dtype=np.float64).astype(np.float32)  # n, d
    _, vecs = np.linalg.eigh((xc.T @ xc).astype(np.float64))  # ascending eigenvalues
    return cast(np.ndarray, xc @ vecs[:, ::-1][:, :2].astype(np.float32))  # n, 2


def umap_available() -> bool:
    try:
        import umap  # noqa: F401
    except Exception:
        return False
    return True


def compute_map(store: Store, method: str = "pca", max_points: int = 20000, include: Sequence[int] = (),
                seed: int = 0) -> EmbeddingMap:
    """Lay out up to max_points photos (always including `include`, e.g. the labelled ones) in 2-D.

    PCA is exact and takes a fraction of a second at 100k photos; UMAP (McInnes et al. 2018, with
    umap-learn installed) separates clusters better but takes tens of seconds on a CPU.
    """
    ids = np.asarray(store.all_ids(), np.int64)
    if len(ids) > max_points:
        keep = np.intersect1d(ids, np.asarray(list(include), np.int64))[:max_points]
        rest = np.setdiff1d(ids, keep)
        rng = np.random.default_rng(seed)
        ids = np.concatenate([keep, rng.choice(rest, max_points - len(keep), replace=False)])
    if len(ids) < 2:
        raise ValueError("the map needs at least two indexed photos")
    x = np.asarray(store.get_vectors(ids), np.float32)
    if method == "umap":
        import umap

        xy = umap.UMAP(n_components=2, metric="cosine", random_state=seed).fit_transform(x).astype(np.float32)
    else:
        xy, method = pca_2d(x), "pca"
    return EmbeddingMap(ids, xy, method)


def colour_keys(ids: np.ndarray, by: dict[int, str]) -> list[str]:
    return [by.get(int(i), UNLABELLED) for i in ids]


def legend(keys: Sequence[str]) -> list[tuple[str, str, int]]:
    """(name, hex colour, count) per key: labels in name order with palette colours, '(none)' grey last."""
    names = sorted(set(keys) - {UNLABELLED})
    counts = {k: 0 for k in [*names, UNLABELLED]}
    for k in keys:
        counts[k] += 1
    out = [(n, PALETTE[j % len(PALETTE)], counts[n]) for j, n in enumerate(names)]
    return out + ([(UNLABELLED, GREY, counts[UNLABELLED])] if counts[UNLABELLED] else [])
