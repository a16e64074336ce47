"""The search filters (sub-folder, label, prediction, date range): the photos they leave, the count shown
under them, the folders offered, and the background reading of photo facts that the dates come from."""

from __future__ import annotations

import os

import numpy as np

from app import filters, search
from app.filters import Filter
from app.page import Page


def allowed_by(page: Page, flt: Filter | None) -> filters.Allowed | None:
    """The photos a search may return under `flt`; None when no filter is set."""
    if flt is None or not flt.active:
        return None
    if ".." in flt.folder.replace("\\", "/").split("/"):
        raise ValueError("a folder filter names a sub-folder of the indexed folder, without '..'")
    labelled = page.labels.labelled() if flt.label else None
    # the photos predicted as the filter's label only (not a dict of every photo's prediction)
    predicted = dict.fromkeys(page.labels.predicted_ids(flt.prediction).tolist(), flt.prediction) \
        if flt.prediction else None
    return filters.allowed(page.store, flt, page.infos, labelled, predicted)


def filtered_note(note: str, allowed: filters.Allowed | None) -> str:
    return note if allowed is None else f"{note} · {allowed.summary}"


def filtered_search(page: Page, vec: np.ndarray, k: int, allowed: filters.Allowed | None) -> list[search.Hit]:
    return filters.search_filtered(page.store, vec, None if allowed is None else allowed.ids, k)


def filter_note(page: Page, flt: Filter) -> str:
    """How many photos the filter leaves (shown under the filter as it changes)."""
    page.require_photos()
    allowed = allowed_by(page, flt)
    if allowed is None:
        return f"No filter: searches cover all {page.store.count:,} photos"
    facts = page.facts_status()
    return allowed.summary + (f" · {facts}" if facts and (flt.date_from or flt.date_to) else "")


def folders(page: Page, limit: int = 2000) -> list[str]:
    """The sub-folders of the indexed folder that hold photos (and their parents), for the folder filter: found
    once per version of the index (Page.folders), a batched scan of the paths (~1.4 s per million photos)."""
    return [os.fsencode(f).decode("utf-8", "backslashreplace") for f in page.folders(limit)]


def facts_status(page: Page) -> str:
    """Progress of reading every photo's facts in the background (dates for the filters), or ''."""
    return page.facts_status()
