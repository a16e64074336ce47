"""The Search tab: photos like a photo or an upload, random photos, "show more", and what a click on a
photo does (open it, search from it, or select it)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any, cast

import numpy as np

from app import search
from app.files import UPLOAD_REFUSED, read_upload
from app.filters import Filter
from app.handlers.filtering import allowed_by, filtered_note, filtered_search
from app.handlers.previews import Preview, open_photo
from app.handlers.selections import clicked_id, toggle
from app.handlers.views import SEARCH_MODE, SELECT_MODE, Gallery, Results, Selection, gallery
from app.markup import plain
from app.page import Page


def search_id(page: Page, image_id: int, k: int, flt: Filter | None = None) -> Results:
    """Photos like the photo `image_id` (a click, or the hidden search_id box), among those `flt` leaves."""
    page.require_photos()
    found = search.hits(page.store, [int(image_id)])  # one row read: the photo is there, and its name
    if not found:
        raise ValueError(f"photo {int(image_id)} is not in the index")
    allowed = allowed_by(page, flt)
    vec = page.store.get_vectors(np.array([int(image_id)], np.int64))
    hits = filtered_search(page, vec, k, allowed)
    name = found[0].name
    return Results(gallery(hits), {"id": int(image_id)}, filtered_note(f"Photos like **{plain(name)}**", allowed))


def search_upload(page: Page, payload: Any, upload_dir: str | Path, uploaded: Collection[str], k: int,
                  flt: Filter | None = None) -> Results | None:
    """Photos like an uploaded one; None when the upload was cleared. The file is read only when gradio
    itself stored it from an upload (any other path, whether it exists or not, gets UPLOAD_REFUSED)."""
    page.require_photos()
    if payload is None:
        return None
    path = payload.get("path") if isinstance(payload, dict) else None
    if not path:
        raise ValueError(UPLOAD_REFUSED)
    img = search.load_query(read_upload(path, upload_dir, uploaded))  # load_rgb with the folder's guards
    vec = search.embed_photo(page.embedder, img)
    allowed = allowed_by(page, flt)
    return Results(gallery(filtered_search(page, vec, k, allowed)), {"vec": vec[0].tolist()},
                   filtered_note("Photos like your upload", allowed))


def random_photos(page: Page, k: int, flt: Filter | None = None) -> Results:
    page.require_photos()
    allowed = allowed_by(page, flt)
    if allowed is None:
        hits = search.random_browse(page.store, k)
    else:
        # an active filter's ids are never None
        pick = np.random.default_rng().choice(cast(np.ndarray, allowed.ids), size=min(k, allowed.count), replace=False)
        hits = search.hits(page.store, pick)
    return Results(gallery(hits), {"random": True},
                   filtered_note("Random photos: click one to open it, search from it or select it", allowed))


def show_more(page: Page, query: dict[str, Any] | None, shown: list[int], k: int,
              flt: Filter | None = None) -> tuple[Gallery, str]:
    """The shown photos and k more of the same query (under the filter as it is now)."""
    if not query:
        raise ValueError("search first: upload a photo or press Random photos")
    st = page.store
    allowed = allowed_by(page, flt)
    if query.get("random"):
        pool = search.random_browse(st, 2 * k) if allowed is None else search.hits(
            st, np.random.default_rng().choice(cast(np.ndarray, allowed.ids), size=min(2 * k, allowed.count),
                                               replace=False))
        extra = [h for h in pool if h.id not in set(shown)][:k]
        hits = search.hits(st, shown) + extra
    elif "id" in query:
        vec = st.get_vectors(np.array([int(query["id"])], np.int64))
        hits = filtered_search(page, vec, len(shown) + k, allowed)
    else:
        vec = np.asarray(query["vec"], np.float32)
        if vec.ndim != 1 or vec.shape[0] != st.dim or not np.isfinite(vec).all():
            raise ValueError("search first: upload a photo or press Random photos")
        hits = filtered_search(page, vec, len(shown) + k, allowed)
    g = gallery(hits)
    return g, f"Showing {len(g.ids)} photos"


def act(page: Page, image_id: int, mode: str, selected: list[int], k: int,
        flt: Filter | None = None) -> Results | Selection | Preview:
    """What a click on a photo does, by the page's click mode: open it, search from it, or toggle it."""
    if mode == SELECT_MODE:
        return toggle(page, selected, image_id)
    if mode == SEARCH_MODE:
        return search_id(page, image_id, k, flt)
    return open_photo(page, image_id)


def click(page: Page, ids: list[int], index: int | None, mode: str, selected: list[int], k: int,
          flt: Filter | None = None) -> Results | Selection | Preview:
    """A click on photo number `index` of a results gallery: open it, search from it, or toggle it in the selection."""
    image_id = clicked_id(ids, index, "that photo is no longer shown: search again")
    return act(page, image_id, mode, selected, k, flt)
