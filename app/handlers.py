"""What the page does when clicked: one plain function per event, of the shared state and the inputs.

Every handler takes the Page (app/page.py) first, then the event's inputs as plain values (ids, names,
numbers; a click's index rather than gradio's event object), and returns a view: a small dataclass
below (Gallery, Results, Selection, Vocabulary, MapView, Preview, Duplicates) or a tuple of them, never a gradio object. app/ui.py lays out
the page and turns each view into its components' values (one render function per view type), so these
functions run, and are tested (tests/test_handlers.py), without a browser, a server or gradio.

A user mistake is a ValueError (the page shows it as a warning and changes nothing). Toasts go through
`notify`, progress through `progress(fraction, description)`; both default to doing nothing.

A new view of the page: a handler here returning a view (a new dataclass if none fits), its render
function in app/ui.py if the view type is new, the components in build_app, and one `on(...)` line.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app import exports, filters, photomap, review, search
from app.files import UPLOAD_REFUSED, read_upload
from app.filters import Filter
from app.labels import Prediction, Progress, no_progress
from app.page import Page

# what clicking a photo does (in Search, Duplicates and Map)
OPEN_MODE, SEARCH_MODE, SELECT_MODE = "open it", "search from it", "add it to the selection"
CLICK_MODES = (OPEN_MODE, SEARCH_MODE, SELECT_MODE)
MAX_SELECTION = 20_000  # photos one selection may hold (a lasso over a whole map of 100k is refused)
SELECTION_SHOWN = 120  # thumbnails the selection bar shows; the rest are counted
LABEL_KEYS = 9  # number keys / buttons 1-9: the labels in the vocabulary's order
NEIGHBOURS = 8  # photos beside a preview
EXPORTS = ("CSV", "ImageFolder (links)", "ImageFolder (copies)", "HF datasets")
Notify = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


# ---------------------------------------------------------------- views
@dataclass
class Gallery:
    """A gallery's value, (thumbnail, caption) per photo, and the photo ids clicks on it map back to."""

    items: list[tuple[str, str]]
    ids: list[int]


@dataclass
class Results:
    """The Search tab: its gallery, the query that "Show more" continues, and the note above it."""

    gallery: Gallery
    query: dict  # {"vec": [...]} | {"id": n} | {"random": True}
    note: str


@dataclass
class Selection:
    """The selection bar: the selected photos (captioned with their labels), the count, and every selected id
    (the gallery shows the first SELECTION_SHOWN of them, in the same order, so a click's index maps back)."""

    gallery: Gallery
    note: str
    ids: list[int] = field(default_factory=list)


@dataclass
class Vocabulary:
    """The label names every label picker offers, and the table of counts."""

    names: list[str]
    counts: str  # markdown


def gallery(hits: list[search.Hit], captions: list[str] | None = None) -> Gallery:
    """Thumbnails with captions (the hits' own by default), and the ids clicks map back to."""
    caps = captions or [h.caption for h in hits]
    return Gallery([(h.thumb, c) for h, c in zip(hits, caps)], [h.id for h in hits])


def caption(name: str, label: str | None = None, prediction: Prediction | None = None,
            guess: bool = True) -> str:
    """A photo's caption wherever labels show: `[label] name` for a labelled photo, `label? 0.93 · name`
    for a prediction (`label 0.93 · name` where the label is not in question), else the file name."""
    if label is not None:
        return f"[{label}] {name}"
    if prediction is not None:
        return f"{prediction.label}{'?' if guess else ''} {prediction.confidence:.2f} · {name}"
    return name


def label_captions(page: Page, hits: list[search.Hit]) -> list[str]:
    """The hits' captions with their label, or else the probe's prediction."""
    labelled = page.labels.labels_of(h.id for h in hits)
    preds = page.labels.predictions(h.id for h in hits if h.id not in labelled)
    return [caption(h.name, labelled[h.id][0] if h.id in labelled else None, preds.get(h.id)) for h in hits]


def _prediction_gallery(page: Page, preds: list[Prediction], guess: bool) -> Gallery:
    hits = search.hits(page.store, [p.id for p in preds])
    by_id = {p.id: p for p in preds}
    return gallery(hits, [caption(h.name, prediction=by_id[h.id], guess=guess) for h in hits])


def counts_markdown(page: Page) -> str:
    counts = page.labels.counts()
    if not counts:
        return "No labels yet: type a name and press **Create**, or type one in the selection bar."
    rows = ["| label | labelled | accepted | predicted |", "|---|---:|---:|---:|"]
    rows += [f"| {html.escape(n)} | {c['human']} | {c['accepted']} | {c['predicted']} |" for n, c in counts.items()]
    return "\n".join(rows)


def vocabulary(page: Page) -> Vocabulary:
    return Vocabulary(page.labels.names(), counts_markdown(page))


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


def header(page: Page) -> str:
    return "## byol-search\n" + page.summary()


# ---------------------------------------------------------------- search
def _allowed(page: Page, flt: Filter | None) -> filters.Allowed | None:
    """The photos a search may return under `flt`; None when no filter is set."""
    if flt is None or not flt.active:
        return None
    if ".." in flt.folder.replace("\\", "/").split("/"):
        raise ValueError("a folder filter names a sub-folder of the indexed folder, without '..'")
    labelled = page.labels.labelled() if flt.label else None
    predicted = page.labels.all_predictions() if flt.prediction else None
    return filters.allowed(page.store, flt, page.infos, labelled, predicted)


def _filtered_note(note: str, allowed: filters.Allowed | None) -> str:
    return note if allowed is None else f"{note} · {allowed.summary}"


def _search(page: Page, vec: np.ndarray, k: int, allowed: filters.Allowed | None) -> list[search.Hit]:
    return filters.search_filtered(page.store, vec, None if allowed is None else allowed.ids, k)


def filter_note(page: Page, flt: Filter) -> str:
    """How many photos the filter leaves (shown under the filter as it changes)."""
    page.require_photos()
    allowed = _allowed(page, flt)
    if allowed is None:
        return f"No filter: searches cover all {page.store.count:,} photos"
    facts = page.facts_status()
    return allowed.summary + (f" · {facts}" if facts and (flt.date_from or flt.date_to) else "")


def search_id(page: Page, image_id: int, k: int, flt: Filter | None = None) -> Results:
    """Photos like the photo `image_id` (a click, or the hidden search_id box), among those `flt` leaves."""
    page.require_photos()
    if not page.store.rows([int(image_id)]):
        raise ValueError(f"photo {int(image_id)} is not in the index")
    allowed = _allowed(page, flt)
    vec = page.store.get_vectors(np.array([int(image_id)], np.int64))
    hits = _search(page, vec, k, allowed)
    name = search.hits(page.store, [int(image_id)])[0].name
    return Results(gallery(hits), {"id": int(image_id)}, _filtered_note(f"Photos like **{html.escape(name)}**", allowed))


def search_upload(page: Page, payload, upload_dir: str | Path, uploaded, k: int,
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
    allowed = _allowed(page, flt)
    return Results(gallery(_search(page, vec, k, allowed)), {"vec": vec[0].tolist()},
                   _filtered_note("Photos like your upload", allowed))


def random_photos(page: Page, k: int, flt: Filter | None = None) -> Results:
    page.require_photos()
    allowed = _allowed(page, flt)
    if allowed is None:
        hits = search.random_browse(page.store, k)
    else:
        pick = np.random.default_rng().choice(allowed.ids, size=min(k, allowed.count), replace=False)
        hits = search.hits(page.store, pick)
    return Results(gallery(hits), {"random": True},
                   _filtered_note("Random photos: click one to open it, search from it or select it", allowed))


def show_more(page: Page, query: dict | None, shown: list[int], k: int,
              flt: Filter | None = None) -> tuple[Gallery, str]:
    """The shown photos and k more of the same query (under the filter as it is now)."""
    if not query:
        raise ValueError("search first: upload a photo or press Random photos")
    st = page.store
    allowed = _allowed(page, flt)
    if query.get("random"):
        pool = search.random_browse(st, 2 * k) if allowed is None else search.hits(
            st, np.random.default_rng().choice(allowed.ids, size=min(2 * k, allowed.count), replace=False))
        extra = [h for h in pool if h.id not in set(shown)][:k]
        hits = search.hits(st, shown) + extra
    elif "id" in query:
        vec = st.get_vectors(np.array([int(query["id"])], np.int64))
        hits = _search(page, vec, len(shown) + k, allowed)
    else:
        vec = np.asarray(query["vec"], np.float32)
        if vec.ndim != 1 or vec.shape[0] != st.dim or not np.isfinite(vec).all():
            raise ValueError("search first: upload a photo or press Random photos")
        hits = _search(page, vec, len(shown) + k, allowed)
    g = gallery(hits)
    return g, f"Showing {len(g.ids)} photos"


def _clicked_id(ids: list[int], index, gone: str) -> int:
    if index is None or not (0 <= int(index) < len(ids)):
        raise ValueError(gone)
    return int(ids[int(index)])


def act(page: Page, image_id: int, mode: str, selected: list[int], k: int,
        flt: Filter | None = None) -> Results | Selection | Preview:
    """What a click on a photo does, by the page's click mode: open it, search from it, or toggle it."""
    if mode == SELECT_MODE:
        return toggle(page, selected, image_id)
    if mode == SEARCH_MODE:
        return search_id(page, image_id, k, flt)
    return open_photo(page, image_id)


def click(page: Page, ids: list[int], index, mode: str, selected: list[int], k: int,
          flt: Filter | None = None) -> Results | Selection | Preview:
    """A click on photo number `index` of a results gallery: open it, search from it, or toggle it in the selection."""
    image_id = _clicked_id(ids, index, "that photo is no longer shown: search again")
    return act(page, image_id, mode, selected, k, flt)


# ---------------------------------------------------------------- the selection
def toggle(page: Page, selected: list[int], image_id: int) -> Selection:
    selected = [i for i in selected if i != image_id] if image_id in selected else [*selected, image_id]
    return selection(page, selected)


def click_select(page: Page, ids: list[int], index, selected: list[int]) -> Selection:
    """A click in a gallery that always selects (Label tab, the selection bar itself)."""
    return toggle(page, selected, _clicked_id(ids, index, "that photo is no longer shown"))


def select_all(page: Page, shown: list[int], selected: list[int]) -> Selection:
    return selection(page, [*selected, *[i for i in shown if i not in set(selected)]])


def clear_selection(page: Page) -> Selection:
    return selection(page, [])


# ---------------------------------------------------------------- duplicates
@dataclass
class Duplicates:
    """The Duplicates tab: each group with its members' facts and keep / drop decisions, and the note above."""

    groups: list[review.Group]
    note: str


def duplicates(page: Page, threshold: float, progress: Progress = no_progress) -> Duplicates:
    """Near-duplicate groups at cosine >= threshold, each photo with its bytes, pixels, date and decision."""
    page.require_photos()
    threshold = _threshold(threshold)
    progress(0.1, "comparing every photo with its neighbours")
    groups = review.review_groups(page.store, page.infos, page.decisions, threshold)
    note = (f"{len(groups)} group(s) at cosine >= {threshold:.3f}: mark each photo keep or drop, then export "
            "the decisions (no photo is ever deleted here)" if groups
            else f"No near-duplicates at cosine >= {threshold:.3f}: lower the threshold to see looser matches")
    return Duplicates(groups, note)


def _threshold(value) -> float:
    t = float(value)
    if not 0.5 <= t <= 1.0:  # NaN fails too
        raise ValueError("the threshold is a cosine between 0.5 and 1")
    return t


def decide(page: Page, image_id: int, decision: str) -> str:
    """Record keep / drop for one photo of a group (kept in INDEX_DIR/review.sqlite)."""
    if decision not in review.DECISIONS:
        raise ValueError(f"mark a photo {' or '.join(review.DECISIONS)}")
    if page.decisions.set(page.store, [int(image_id)], decision) != 1:
        raise ValueError(f"photo {int(image_id)} is not in the index")
    return f"Marked photo {int(image_id)} {decision}"


def export_duplicates(page: Page, threshold: float, progress: Progress = no_progress,
                      stamp: str | None = None) -> tuple[str, Path]:
    """(what was written, the CSV) of every group's members with their decisions, into INDEX_DIR/exports/."""
    groups = duplicates(page, threshold, progress).groups
    if not groups:
        raise ValueError("no near-duplicate groups at this threshold: nothing to export")
    path = page.index_dir / "exports" / f"duplicates-{stamp or time.strftime('%Y%m%d-%H%M%S')}.csv"
    n = review.export_csv(groups, path)
    return f"Wrote {n:,} rows ({len(groups)} groups) to `{path}`; no photo was deleted or changed", path


# ---------------------------------------------------------------- labels
def create_label(page: Page, name: str) -> Vocabulary:
    page.labels.create(name)
    return vocabulary(page)


def rename_label(page: Page, old: str, new: str) -> Vocabulary:
    if not old:
        raise ValueError("pick the label to rename")
    page.labels.rename(old, new)
    return vocabulary(page)


def delete_label(page: Page, old: str, notify: Notify = _quiet) -> Vocabulary:
    if not old:
        raise ValueError("pick the label to delete")
    page.labels.delete(old)
    notify(f"Deleted label {old!r} with its assignments and predictions")
    return vocabulary(page)


def assign(page: Page, selected: list[int], label: str, notify: Notify = _quiet) -> tuple[Selection, Vocabulary]:
    """Label the selected photos (the selection is then emptied)."""
    if not selected:
        raise ValueError("select photos first: set 'Clicking a photo' to 'add it to the selection'")
    if not label:
        raise ValueError("pick or type a label")
    n = page.labels.assign(selected, label)
    notify(f"Labelled {n} photo(s) {label!r}")
    return selection(page, []), vocabulary(page)


def label_key(page: Page, number, selected: list[int], notify: Notify = _quiet) -> tuple[Selection, Vocabulary]:
    """Number key (or button) 1-9: label the selected photos with the label at that place in the vocabulary."""
    try:
        n = int(number)
    except (TypeError, ValueError):
        raise ValueError(f"label keys are 1 to {LABEL_KEYS}") from None
    names = page.labels.names()
    if not 1 <= n <= LABEL_KEYS:
        raise ValueError(f"label keys are 1 to {LABEL_KEYS}")
    if n > len(names):
        raise ValueError(f"there is no label {n}: create one in the Label tab (there are {len(names)})")
    return assign(page, selected, names[n - 1], notify)


def key_labels(v: Vocabulary) -> list[str | None]:
    """What each of the LABEL_KEYS buttons says ("1 cats"), None for a key with no label."""
    return [f"{j + 1} {v.names[j]}" if j < len(v.names) else None for j in range(LABEL_KEYS)]


def next_batch(page: Page, k: int) -> Gallery | None:
    """The label-next queue after an assignment; None when there are no predictions yet (nothing to refresh)."""
    preds = page.labels.label_next(k)
    return _prediction_gallery(page, preds, guess=True) if preds else None


def unassign(page: Page, selected: list[int]) -> tuple[Selection, Vocabulary]:
    if not selected:
        raise ValueError("select photos first")
    page.labels.unassign(selected)
    return selection(page, selected), vocabulary(page)


# ---------------------------------------------------------------- the probe
def train(page: Page, progress: Progress = no_progress) -> tuple[str, str]:
    """(the training report, the counts table) after fitting the probe and predicting every photo."""
    page.require_photos()
    r = page.labels.train(page.store, progress=progress)
    acc = ("not estimated yet (label at least 2 photos of one label and 3 in all)" if r.accuracy is None
           else f"**{r.accuracy:.1%}** (cross-validated on your {sum(r.counts.values())} labels)")
    per = ", ".join(f"{html.escape(n)}: {c}" for n, c in r.counts.items())
    report = (f"Probe v{r.version} trained on {per}. Estimated accuracy {acc}. "
              f"Predicted {r.predicted:,} photos in {r.seconds:.1f} s.")
    return report, counts_markdown(page)


def label_next(page: Page, k: int) -> Gallery:
    """The unlabelled photos the probe is least sure about."""
    preds = page.labels.label_next(k)
    if not preds:
        raise ValueError("no predictions yet: label two kinds of photos and press Train")
    return _prediction_gallery(page, preds, guess=True)


def show_labelled(page: Page, kind: str, label: str, order: str, k: int, notify: Notify = _quiet) -> Gallery:
    """Photos predicted (kind "predicted") or labelled as `label`, most or least confident first."""
    if not label:
        raise ValueError("pick a label to show")
    preds = page.labels.browse(label, predicted=kind == "predicted", most_confident=order.startswith("most"),
                               limit=4 * k)
    g = _prediction_gallery(page, preds, guess=False)
    if not g.ids:
        notify(f"No photos {kind} as {label!r} yet")
    return g


def accept(page: Page, min_confidence: float, notify: Notify = _quiet) -> str:
    n = page.labels.accept(min_confidence=float(min_confidence))
    notify(f"Accepted {n} prediction(s) at confidence >= {min_confidence:.2f}")
    return counts_markdown(page)


def accept_selected(page: Page, selected: list[int], notify: Notify = _quiet) -> tuple[str, Selection]:
    if not selected:
        raise ValueError("select photos first")
    n = page.labels.accept(ids=selected)
    notify(f"Accepted {n} prediction(s)")
    return counts_markdown(page), selection(page, [])


# ---------------------------------------------------------------- exports
def export(page: Page, kind: str, with_predictions: bool, min_confidence: float,
           progress: Progress = no_progress, stamp: str | None = None) -> tuple[str, Path | None]:
    """(what was written, the file to offer for download or None) for one of EXPORTS, into
    INDEX_DIR/exports/ under a name with the time (`stamp`, default now)."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    out = page.index_dir / "exports"
    conf = float(min_confidence) if with_predictions else 0.0
    if kind == "CSV":
        path = out / f"labels-{stamp}.csv"
        n = exports.export_csv(page.labels, page.store, path)
        return f"Wrote {n:,} rows to `{path}`", path
    if kind.startswith("ImageFolder"):
        path = out / f"imagefolder-{stamp}"
        counts = exports.export_imagefolder(page.labels, page.store, path, copy="copies" in kind,
                                            include_predictions=with_predictions, min_confidence=conf,
                                            progress=progress)
        per = ", ".join(f"{html.escape(k)}: {v}" for k, v in sorted(counts.items()))
        return f"Wrote `{path}` ({per})", None
    path = out / f"hf-dataset-{stamp}"
    progress(0.1, "building the dataset")
    n = exports.export_hf(page.labels, page.store, path, include_predictions=with_predictions,
                          min_confidence=conf)
    return f"Saved a `datasets` dataset of {n:,} photos to `{path}` (load it with `datasets.load_from_disk`)", None


# ---------------------------------------------------------------- the map
@dataclass
class MapView:
    """The Map tab: the payload for the map's script (app/photomap.py), the note above, and the layout
    (the server's truth for what a selection or a click in the browser may name)."""

    data: str
    note: str
    layout: photomap.PhotoMap


def draw_map(page: Page, colour_by: str, method: str, progress: Progress = no_progress,
             sheet_url=photomap.file_url) -> MapView:
    """The photo map: thumbnails at their 2-D places, framed by label (or prediction, thin frame)."""
    page.require_photos()
    method = "umap" if str(method).lower() == "umap" and search.umap_available() else "pca"
    progress(0.05, f"laying out the photos ({method.upper()})")
    labelled = page.labels.labelled()
    predicted = page.labels.all_predictions() if colour_by == "prediction" else None
    pm = photomap.build_map(page.store, method, include=sorted(labelled))
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
    predicted = page.labels.all_predictions() if colour_by == "prediction" else None
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


# ---------------------------------------------------------------- the preview
@dataclass
class Preview:
    """One photo opened: its 1024 px preview (never the original), its facts, and its nearest neighbours."""

    id: int
    image: str  # the preview JPEG; the thumbnail when the original cannot be read
    facts: str  # markdown
    neighbours: Gallery


def facts_markdown(info, problem: str | None = None) -> str:
    """File name, pixels, size, date taken (EXIF, or the file's date, said so) and folder, for a person."""
    from index.photoinfo import human_size

    lines = [f"**{html.escape(info.name)}**"]
    if info.width:
        lines.append(f"{info.width} × {info.height} pixels")
    if info.size is not None:
        lines.append(human_size(info.size))
    if info.taken:
        when = info.taken.replace("T", " ")
        lines.append(f"taken {when}" if info.taken_source == "exif" else f"file date {when} (no date taken in the photo)")
    lines.append(f"folder `{info.folder or '.'}`" if "`" not in info.folder else f"folder {html.escape(info.folder)}")
    if problem or info.error:
        lines.append(f"⚠ {html.escape(problem or info.error)}: showing the thumbnail")
    return "  \n".join(lines)


def open_photo(page: Page, image_id: int, k: int = NEIGHBOURS) -> Preview:
    """The preview of one photo, with its facts and its k nearest neighbours."""
    from byol.images import BadImage
    from index import preview

    page.require_photos()
    try:
        image_id = int(image_id)
    except (TypeError, ValueError):
        raise ValueError("no such photo") from None
    if not page.store.rows([image_id]):
        raise ValueError(f"photo {image_id} is not in the index (any more): search again")
    problem = None
    try:
        image = str(preview.preview(page.store, image_id))
    except KeyError:
        raise ValueError(f"photo {image_id} is not in the index (any more): search again") from None
    except BadImage as e:
        image, problem = str(page.store.thumbnail_path(image_id)), e.reason
    info = page.infos.one(image_id)
    if info is None:
        raise ValueError(f"photo {image_id} is not in the index (any more): search again")
    near = [h for h in search.search_id(page.store, image_id, k + 1) if h.id != image_id][:k]
    return Preview(image_id, image, facts_markdown(info, problem), gallery(near))


def folders(page: Page, limit: int = 2000) -> list[str]:
    """The sub-folders of the indexed folder that hold photos (and their parents), for the folder filter."""
    root = page.infos.root
    out: set[str] = set()
    for path in page.store.files():
        parent = os.path.dirname(path)
        if root and parent.startswith(root.rstrip("/") + "/"):
            rel = os.path.relpath(parent, root)
            parts = rel.split("/")
            out.update("/".join(parts[:j]) for j in range(1, len(parts) + 1))
        if len(out) >= limit:
            break
    return sorted(os.fsencode(f).decode("utf-8", "backslashreplace") for f in out)[:limit]


def facts_status(page: Page) -> str:
    """Progress of reading every photo's facts in the background (dates for the filters), or ''."""
    return page.facts_status()


def load(page: Page) -> tuple[str, Vocabulary]:
    """A fresh page: the index may have been updated, and labels made in another tab."""
    page.refresh()
    return header(page), vocabulary(page)
