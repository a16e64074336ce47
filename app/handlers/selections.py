"""The selection bar: which photos are selected, and the clicks that change it."""

from __future__ import annotations

import numpy as np

from app import search
from app.handlers.views import Selection, gallery, label_captions
from app.page import Page

MAX_SELECTION = 20_000  # photos one selection may hold (a lasso over a whole map of 100k is refused)
SELECTION_SHOWN = 120  # thumbnails the selection bar shows; the rest are counted


def selection(page: Page, ids: list[int]) -> Selection:
    """The selection of `ids` (once each, in order; ids not in the index dropped), at most MAX_SELECTION."""
    ids = list(dict.fromkeys(int(i) for i in ids))
    if len(ids) > MAX_SELECTION:
        raise ValueError(f"{len(ids):,} photos is more than one selection holds ({MAX_SELECTION:,}): "
                         "select a smaller region")
    if len(ids) > SELECTION_SHOWN:
        arr = np.asarray(ids, np.int64)
        ids = arr[np.isin(arr, np.asarray(page.store.all_ids(), np.int64))].tolist()
    hits = search.hits(page.store, ids[:SELECTION_SHOWN])
    g = gallery(hits, label_captions(page, hits))
    if len(ids) <= SELECTION_SHOWN:
        ids = g.ids
    more = f" (showing {len(g.ids)})" if len(ids) > len(g.ids) else ""
    return Selection(g, f"**{len(ids):,}** selected{more}" + (" · click a photo here to drop it" if ids else ""), ids)


def clicked_id(ids: list[int], index: int | None, gone: str) -> int:
    if index is None or not (0 <= int(index) < len(ids)):
        raise ValueError(gone)
    return int(ids[int(index)])


def toggle(page: Page, selected: list[int], image_id: int) -> Selection:
    selected = [i for i in selected if i != image_id] if image_id in selected else [*selected, image_id]
    return selection(page, selected)


def click_select(page: Page, ids: list[int], index: int | None, selected: list[int]) -> Selection:
    """A click in a gallery that always selects (Label tab, the selection bar itself)."""
    return toggle(page, selected, clicked_id(ids, index, "that photo is no longer shown"))


def select_all(page: Page, shown: list[int], selected: list[int]) -> Selection:
    return selection(page, [*selected, *[i for i in shown if i not in set(selected)]])


def clear_selection(page: Page) -> Selection:
    return selection(page, [])
