"""The Map tab: drawing the photo map, its colours after labels change, and box / lasso selections and
clicks coming back from the browser (app/photomap.py holds the map itself)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app import photomap, search
from app.filters import Filter
from app.handlers.previews import Preview
from app.handlers.results import act
from app.handlers.selections import MAX_SELECTION, selection
from app.handlers.views import Results, Selection
from app.labels import Progress, no_progress
from app.page import Page

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


@dataclass
class MapView:
    """The Map tab: the payload for the map's script (app/photomap.py), the note above, and the layout
    (the server's truth for what a selection or a click in the browser may name)."""

    data: str
    note: str
    layout: photomap.PhotoMap


def draw_map(page: Page, colour_by: str, method: str, progress: Progress = no_progress,
             sheet_url: Callable[[Path], str] = photomap.file_url) -> MapView:
    """The photo map: thumbnails at their 2-D places, framed by label (or prediction, thin frame)."""
    page.require_photos()
    page.wait_map()  # the default map, prepared since launch: the same layout and sheets as below
    method = "umap" if str(method).lower() == "umap" and search.umap_available() else "pca"
    progress(0.05, f"laying out the photos ({method.upper()})")
    labelled = page.labels.labelled()
    pm = photomap.build_map(page.store, method, include=sorted(labelled))
    predicted = page.labels.predicted_labels(pm.ids) if colour_by == "prediction" else None  # the map's photos
    progress(0.5, "making the thumbnail sheets")
    atlas = photomap.build_atlas(page.store, pm.sample)
    progress(0.9, "sending the map")
    data = photomap.payload_json(pm, atlas, labelled, predicted, sheet_url)
    note = (f"{len(pm.ids):,} photos, {pm.method.upper()} · drag to pan, wheel to zoom, shift-drag a box or "
            "alt-drag a lasso to select (ctrl adds), click a photo to open it")
    return MapView(data, note, pm)


def map_colours(page: Page, layout: photomap.PhotoMap | None, colour_by: str) -> str | None:
    """The colours of the map shown, after labels or predictions changed (an assignment, number key, accept,
    training): only the colour keys and the legend, no new layout or atlas; None when no map is shown."""
    if layout is None:
        return None
    labelled = page.labels.labelled()
    predicted = page.labels.predicted_labels(layout.ids) if colour_by == "prediction" else None
    return photomap.colours_json(layout, labelled, predicted)


def map_select(page: Page, layout: photomap.PhotoMap | None, text: str, selected: list[int],
               from_map: list[int]) -> tuple[Selection, list[int]]:
    """A box or lasso on the map -> the page's selection: the photos selected on the map replace those the
    map had put there before (`from_map`); photos selected elsewhere stay. Returns the map's part too."""
    if layout is None:
        raise ValueError("draw the map first")
    text = text or ""
    if len(text) > 12 * (MAX_SELECTION + 1):
        raise ValueError(f"more photos than one selection holds ({MAX_SELECTION:,}): select a smaller region")
    ids = photomap.parse_ids(text, layout, limit=MAX_SELECTION + 1)  # only ids on the map
    if len(ids) > MAX_SELECTION:
        raise ValueError(f"more photos than one selection holds ({MAX_SELECTION:,}): select a smaller region")
    before = {int(i) for i in from_map or []}
    kept = [int(i) for i in selected if int(i) not in before]
    return selection(page, [*kept, *ids]), ids


def map_open(page: Page, layout: photomap.PhotoMap | None, text: str, mode: str, selected: list[int], k: int,
             flt: Filter | None = None) -> Results | Selection | Preview:
    """A click on a photo of the map ("id:n"), by the page's click mode."""
    if layout is None:
        raise ValueError("draw the map first")
    image_id = photomap.parse_open((text or "")[:40], layout)
    if image_id is None:
        raise ValueError("that photo is not on the map: draw the map again")
    return act(page, image_id, mode, selected, k, flt)
