"""What the page does when clicked: one plain function per event, of the shared state and the inputs.

Every handler takes the Page (app/page.py) first, then the event's inputs as plain values (ids, names,
numbers; a click's index rather than gradio's event object), and returns a view: a small dataclass
below (Gallery, Results, Selection, Vocabulary) or a tuple of them, never a gradio object. app/ui.py lays out
the page and turns each view into its components' values (one render function per view type), so these
functions run, and are tested (tests/test_handlers.py), without a browser, a server or gradio.

A user mistake is a ValueError (the page shows it as a warning and changes nothing). Toasts go through
`notify`, progress through `progress(fraction, description)`; both default to doing nothing.

A new view of the page: a handler here returning a view (a new dataclass if none fits), its render
function in app/ui.py if the view type is new, the components in build_app, and one `on(...)` line.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app import exports, search
from app.files import UPLOAD_REFUSED, read_upload
from app.labels import Prediction, Progress, no_progress
from app.page import Page

SEARCH_MODE, SELECT_MODE = "search from it", "add it to the selection"  # what clicking a photo does
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
    """The selection bar: the selected photos (captioned with their labels) and the count."""

    gallery: Gallery
    note: str


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
    hits = search.hits(page.store, ids)
    g = gallery(hits, label_captions(page, hits))
    return Selection(g, f"**{len(g.ids)}** selected" + (" · click a photo here to drop it" if g.ids else ""))


def header(page: Page) -> str:
    return "## byol-search\n" + page.summary()


# ---------------------------------------------------------------- search
def search_id(page: Page, image_id: int, k: int) -> Results:
    """Photos like the photo `image_id` (a click, or the hidden search_id box)."""
    page.require_photos()
    hits = search.search_id(page.store, image_id, k)
    name = hits[0].name if hits else f"#{image_id}"
    return Results(gallery(hits), {"id": int(image_id)}, f"Photos like **{html.escape(name)}**")


def search_upload(page: Page, payload, upload_dir: str | Path, uploaded, k: int) -> Results | None:
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
    return Results(gallery(search.search_vector(page.store, vec, k)), {"vec": vec[0].tolist()},
                   "Photos like your upload")


def random_photos(page: Page, k: int) -> Results:
    page.require_photos()
    return Results(gallery(search.random_browse(page.store, k)), {"random": True},
                   "Random photos: click one to search from it")


def show_more(page: Page, query: dict | None, shown: list[int], k: int) -> tuple[Gallery, str]:
    """The shown photos and k more of the same query."""
    if not query:
        raise ValueError("search first: upload a photo or press Random photos")
    st = page.store
    if query.get("random"):
        extra = [h for h in search.random_browse(st, 2 * k) if h.id not in set(shown)][:k]
        hits = search.hits(st, shown) + extra
    elif "id" in query:
        hits = search.search_id(st, query["id"], len(shown) + k)
    else:
        hits = search.search_vector(st, np.asarray(query["vec"], np.float32), len(shown) + k)
    g = gallery(hits)
    return g, f"Showing {len(g.ids)} photos"


def _clicked_id(ids: list[int], index, gone: str) -> int:
    if index is None or not (0 <= int(index) < len(ids)):
        raise ValueError(gone)
    return int(ids[int(index)])


def click(page: Page, ids: list[int], index, mode: str, selected: list[int], k: int) -> Results | Selection:
    """A click on photo number `index` of a results gallery: search from it, or toggle it in the selection."""
    image_id = _clicked_id(ids, index, "that photo is no longer shown: search again")
    return toggle(page, selected, image_id) if mode == SELECT_MODE else search_id(page, image_id, k)


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
def duplicates(page: Page, threshold: float, progress: Progress = no_progress) -> tuple[Gallery, str]:
    page.require_photos()
    progress(0.1, "comparing every photo with its neighbours")
    groups = search.duplicate_groups(page.store, threshold)
    flat = [h for g in groups for h in g]
    g = gallery(flat, [f"group {j + 1} · {h.caption}" for j, grp in enumerate(groups) for h in grp])
    note = (f"{len(groups)} group(s) at cosine >= {threshold:.3f}" if groups
            else f"No near-duplicates at cosine >= {threshold:.3f}: lower the threshold to see looser matches")
    return g, note


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
def draw_map(page: Page, colour_by: str, method: str, progress: Progress = no_progress):
    """(the map image, its legend as HTML, the map for clicks): photos coloured by label or prediction."""
    page.require_photos()
    progress(0.1, f"projecting embeddings ({method})")
    m = page.map_for(method.lower())
    keys_by = page.labels.labelled()
    if colour_by == "prediction":
        keys_by = {**page.labels.all_predictions(), **keys_by}
    keys = search.colour_keys(m.ids, keys_by)
    swatches = " ".join(
        f'<span style="white-space:nowrap"><span style="display:inline-block;width:12px;height:12px;'
        f'background:{c};border-radius:6px"></span> {html.escape(n)} ({k:,})</span>'
        for n, c, k in search.legend(keys))
    note = f"{len(m.ids):,} photos, {m.method.upper()}"
    return search.render_map(m, keys), f"<div>{note} &nbsp; {swatches}</div>", m


def map_click(page: Page, m, index, k: int) -> Gallery:
    """The photos nearest to the dot at `index` ([x, y] in the image) of the map `m`."""
    if m is None:
        raise ValueError("draw the map first")
    if not index or len(index) != 2:
        raise ValueError("no photo there: click on a dot")
    x, y = index
    image_id = m.point_at(float(x), float(y))
    if image_id is None:
        raise ValueError("no photo there: click on a dot")
    return gallery(search.search_id(page.store, image_id, k))


def load(page: Page) -> tuple[str, Vocabulary]:
    """A fresh page: the index may have been updated, and labels made in another tab."""
    page.refresh()
    return header(page), vocabulary(page)
