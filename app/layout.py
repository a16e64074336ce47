"""The page's components, in page order: one builder per part of the page, each returning a frozen dataclass of
what it made, so that a misspelled name fails the type check and the wiring (app/ui.py) names what it uses.

Layout only: what the components do is wired in app/ui.py. The order of each `*_out` list is the order of an
event's outputs, which is what gradio's API and its clients see; the handlers return {component: value}.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from app import handlers, photomap, search
from app.handlers import CLICK_MODES, LABEL_KEYS, OPEN_MODE
from app.labels import LABEL_RULE
from index.duplicates import LEVELS, SIMILAR_COSINE

if TYPE_CHECKING:
    from gradio.blocks import Block

    from app.page import Page


@dataclass(frozen=True)
class Status:
    """The page's header and the line saying how far reading the photos' facts has come."""
    header: gr.Markdown
    facts: gr.Markdown
    facts_timer: gr.Timer  # ticks while facts are being read


@dataclass(frozen=True)
class SelectionBar:
    """Above the tabs: what a click does, the selection and the ways to label it."""
    click_mode: gr.Radio
    label: gr.Dropdown  # the label "Assign to selected" gives
    assign_btn: gr.Button
    unassign_btn: gr.Button
    clear_btn: gr.Button
    keys: tuple[gr.Button, ...]  # number keys 1-9: each shows "N name"
    note: gr.Markdown
    gallery: gr.Gallery
    ids: gr.State  # the selected photo ids

    @property
    def out(self) -> list[Block]:
        return [self.gallery, self.ids, self.note]


@dataclass(frozen=True)
class PreviewBox:
    """One photo opened at 1024 px, its facts and nearest neighbours."""
    box: gr.Column
    id: gr.State  # the photo shown
    image: gr.Image
    facts: gr.Markdown
    search_btn: gr.Button
    select_btn: gr.Button
    close_btn: gr.Button
    near: gr.Gallery
    near_ids: gr.State

    @property
    def out(self) -> list[Block]:
        return [self.box, self.image, self.facts, self.near, self.near_ids, self.id]


@dataclass(frozen=True)
class SearchTab:
    upload: gr.Image
    note: gr.Markdown
    random_btn: gr.Button
    more_btn: gr.Button
    select_all_btn: gr.Button
    folder: gr.Dropdown  # the filters: sub-folder, labelled, predicted, taken from, taken to
    label: gr.Dropdown
    prediction: gr.Dropdown
    date_from: gr.Textbox
    date_to: gr.Textbox
    filter_note: gr.Markdown
    results: gr.Gallery
    ids: gr.State  # the ids of the results shown
    query: gr.State  # {"vec": [...]} | {"id": n} | {"random": True}: what "show more" continues

    @property
    def filters(self) -> list[Block]:
        """The filter fields in the order app.filters.Filter takes them."""
        return [self.folder, self.label, self.prediction, self.date_from, self.date_to]


@dataclass(frozen=True)
class Clicks:
    """What a click on a photo may change (the Search tab, the selection, the preview) and reads."""
    tabs: gr.Tabs
    search: SearchTab
    bar: SelectionBar
    preview: PreviewBox

    @property
    def search_out(self) -> list[Block]:
        """The Search tab's results, brought to the front."""
        s = self.search
        return [s.results, s.ids, s.query, s.note, self.tabs]

    @property
    def out(self) -> list[Block]:
        return self.search_out + self.bar.out + self.preview.out

    @property
    def inputs(self) -> list[Block]:
        """What a click reads besides the photo: the click mode, the selection, the filters."""
        return [self.bar.click_mode, self.bar.ids, *self.search.filters]


@dataclass(frozen=True)
class DuplicatesTab:
    level: gr.Radio
    threshold: gr.Slider
    find_btn: gr.Button
    export_btn: gr.Button
    note: gr.Markdown
    status: gr.Markdown
    file: gr.File
    groups: gr.State  # the groups found (app.review.Group), drawn by app/ui.py _duplicate_groups


@dataclass(frozen=True)
class LabelTab:
    new_label: gr.Textbox
    create_btn: gr.Button
    pick: gr.Dropdown  # the label renamed or deleted
    rename_to: gr.Textbox
    rename_btn: gr.Button
    delete_btn: gr.Button
    counts: gr.Markdown
    train_btn: gr.Button
    next_btn: gr.Button
    select_batch_btn: gr.Button
    train_report: gr.Markdown
    next_gallery: gr.Gallery  # the least certain photos, to label next
    next_ids: gr.State
    view: gr.Radio  # predicted or labelled photos
    view_label: gr.Dropdown
    order: gr.Radio
    view_btn: gr.Button
    view_gallery: gr.Gallery
    view_ids: gr.State
    min_conf: gr.Slider
    accept_btn: gr.Button
    accept_sel_btn: gr.Button
    export_kind: gr.Radio
    include_preds: gr.Checkbox
    export_btn: gr.Button
    export_note: gr.Markdown
    export_file: gr.File


@dataclass(frozen=True)
class MapTab:
    colour_by: gr.Radio
    method: gr.Radio
    draw_btn: gr.Button
    note: gr.Markdown
    # the map's script and the server talk through these hidden boxes (app/photomap.py)
    data: gr.Textbox  # the payload drawn, server -> script
    picked: gr.Textbox  # a box or lasso selection, script -> server
    opened: gr.Textbox  # a photo clicked, script -> server
    keys: gr.Textbox  # new colours, server -> script
    layout: gr.State  # the layout drawn: what a selection or a click may name
    selected: gr.State  # the part of the page's selection made on the map


@dataclass(frozen=True)
class Layout:
    status: Status
    clicks: Clicks  # the selection bar, the preview, the tabs and the Search tab
    dups: DuplicatesTab
    label: LabelTab
    map: MapTab

    @property
    def vocab_out(self) -> list[Block]:
        """Every label picker, the counts, the filters' label choices and the number-key buttons."""
        c, t = self.clicks, self.label
        return [c.bar.label, t.pick, t.view_label, t.counts, c.search.label, c.search.prediction, *c.bar.keys]


def photo_gallery(label: str, elem_id: str | None = None, columns: int = 8, **kw: Any) -> gr.Gallery:
    return gr.Gallery(label=label, columns=columns, height="auto", allow_preview=False, object_fit="cover",
                      interactive=False, buttons=[], elem_id=elem_id, **kw)


def build(page: Page, draw_groups: Callable[[Clicks, DuplicatesTab], None]) -> Layout:
    """Every component of the page, in page order. draw_groups(clicks, tab) draws the duplicate groups inside
    the Duplicates tab (a gr.render: a click on a member acts as a click in any gallery)."""
    status = status_lines(page)
    bar = selection_bar(page)
    preview = preview_box()
    with gr.Tabs() as tabs:
        search_ = search_tab(page)
        clicks = Clicks(tabs, search_, bar, preview)
        dups = duplicates_tab(lambda tab: draw_groups(clicks, tab))
        label = label_tab(page)
        map_ = map_tab()
    return Layout(status, clicks, dups, label, map_)


def status_lines(page: Page) -> Status:
    return Status(gr.Markdown(handlers.header(page)), gr.Markdown(elem_id="facts-status"), gr.Timer(2.0))


def selection_bar(page: Page) -> SelectionBar:
    with gr.Accordion("Selection and labelling", open=True):
        with gr.Row():
            click_mode = gr.Radio(list(CLICK_MODES), value=OPEN_MODE, label="Clicking a photo",
                                  info="in Search, Duplicates and Map; in Label it always selects", scale=2)
            label = gr.Dropdown(page.labels.names(), label="Label", allow_custom_value=True,
                                info="pick one, or type a new name", scale=2, elem_id="sel-label")
            assign_btn = gr.Button("Assign to selected", variant="primary", scale=1)
            unassign_btn = gr.Button("Remove their labels", scale=1)
            clear_btn = gr.Button("Clear selection", scale=1)
        with gr.Row(elem_id="label-keys"):
            names = page.labels.names()
            keys = tuple(gr.Button(f"{n} {names[n - 1]}" if n <= len(names) else "", size="sm", min_width=60,
                                   visible=n <= len(names), elem_id=f"label-key-{n}")
                         for n in range(1, LABEL_KEYS + 1))
        note = gr.Markdown("**0** selected · number keys 1-9 (or the buttons) label the selection",
                           elem_id="sel-note")
        gallery = gr.Gallery(label="Selected", columns=12, height=120, allow_preview=False,
                             object_fit="cover", interactive=False, buttons=[], elem_id="selection")
    return SelectionBar(click_mode, label, assign_btn, unassign_btn, clear_btn, keys, note, gallery, gr.State([]))


def preview_box() -> PreviewBox:
    with gr.Column(visible=False, elem_id="preview") as box:
        photo_id = gr.State(None)
        with gr.Row():
            image = gr.Image(label="Preview (1024 px)", type="filepath", interactive=False, height=460,
                             buttons=[], scale=3, elem_id="preview-image")
            with gr.Column(scale=2):
                facts = gr.Markdown(elem_id="preview-facts")
                with gr.Row():
                    search_btn = gr.Button("Search from it")
                    select_btn = gr.Button("Select it")
                    close_btn = gr.Button("Close", elem_id="preview-close")
                near = photo_gallery("Nearest neighbours", "preview-neighbours", columns=4)
                near_ids = gr.State([])
    return PreviewBox(box, photo_id, image, facts, search_btn, select_btn, close_btn, near, near_ids)


def search_tab(page: Page) -> SearchTab:
    with gr.Tab("Search", id="search"):
        with gr.Row():
            upload = gr.Image(label="Query photo: upload or paste", type="filepath", height=220,
                              sources=["upload", "clipboard"], scale=1)
            with gr.Column(scale=2):
                note = gr.Markdown("Upload a photo, or press **Random photos** and click one.")
                with gr.Row():
                    random_btn = gr.Button("Random photos")
                    more_btn = gr.Button("Show more")
                    select_all_btn = gr.Button("Select all shown")
        with gr.Accordion("Filter the results", open=False, elem_id="filters"):
            with gr.Row():
                folder = gr.Dropdown([""], value="", label="Sub-folder", allow_custom_value=True,
                                     info="and the folders inside it")
                label = gr.Dropdown(["", *page.labels.names()], value="", label="Labelled")
                prediction = gr.Dropdown(["", *page.labels.names()], value="", label="Predicted")
                date_from = gr.Textbox("", label="Taken from", placeholder="YYYY-MM-DD", elem_id="date-from")
                date_to = gr.Textbox("", label="Taken to", placeholder="YYYY-MM-DD", elem_id="date-to")
            filter_note = gr.Markdown(elem_id="filter-note")
        results = photo_gallery("Results (cosine · file)", "results", columns=6)
    return SearchTab(upload, note, random_btn, more_btn, select_all_btn, folder, label, prediction, date_from,
                     date_to, filter_note, results, gr.State([]), gr.State(None))


def duplicates_tab(draw_groups: Callable[[DuplicatesTab], None]) -> DuplicatesTab:
    with gr.Tab("Duplicates", id="duplicates"):
        with gr.Row():
            level = gr.Radio(list(LEVELS), value="copies and bursts", label="Find",
                             info="copies: the same photo (resized, re-encoded, cropped), from the "
                                  "pixels; bursts: shots seconds apart; similar: alike by the encoder")
            threshold = gr.Slider(0.80, 1.0, value=SIMILAR_COSINE, step=0.005, label="Similar photos: cosine",
                                  info="only for 'similar photos'; higher: closer photos")
            find_btn = gr.Button("Find near-duplicates")
            export_btn = gr.Button("Export decisions (CSV)")
        note = gr.Markdown(elem_id="dup-note")
        status = gr.Markdown(elem_id="dup-status")
        file = gr.File(label="Download", visible=False, elem_id="dup-file")
        tab = DuplicatesTab(level, threshold, find_btn, export_btn, note, status, file, gr.State([]))
        draw_groups(tab)
    return tab


def label_tab(page: Page) -> LabelTab:
    with gr.Tab("Label", id="label"):
        with gr.Row():
            new_label = gr.Textbox(label="New label", placeholder="e.g. cats", scale=2, info=LABEL_RULE)
            create_btn = gr.Button("Create", scale=1)
            pick = gr.Dropdown(page.labels.names(), label="Existing label", scale=2)
            rename_to = gr.Textbox(label="Rename to", scale=2)
            rename_btn = gr.Button("Rename", scale=1)
            delete_btn = gr.Button("Delete label", variant="stop", scale=1)
        counts = gr.Markdown(handlers.counts_markdown(page))
        with gr.Row():
            train_btn = gr.Button("Train probe and predict all", variant="primary")
            next_btn = gr.Button("Next batch to label")
            select_batch_btn = gr.Button("Select the whole batch")
        train_report = gr.Markdown(elem_id="train-report")
        next_gallery = photo_gallery("Least certain (click to select, then press a number key)", "label-next")
        next_ids = gr.State([])
        with gr.Row():
            view = gr.Radio(["predicted", "labelled"], value="predicted", label="Show photos")
            view_label = gr.Dropdown(page.labels.names(), label="as label", elem_id="view-label")
            order = gr.Radio(["most confident first", "least confident first"], value="most confident first",
                             label="Order")
            view_btn = gr.Button("Show")
        view_gallery = photo_gallery("Photos (click to select, then assign the right label)", "predictions")
        view_ids = gr.State([])
        with gr.Row():
            min_conf = gr.Slider(0.5, 1.0, value=0.9, step=0.01, label="Confidence at least")
            accept_btn = gr.Button("Accept all predictions at or above it")
            accept_sel_btn = gr.Button("Accept predictions of the selected")
        with gr.Row():
            export_kind = gr.Radio(list(handlers.EXPORTS), value="CSV", label="Export")
            include_preds = gr.Checkbox(label="Include predictions at or above the confidence", value=False)
            export_btn = gr.Button("Export")
        export_note = gr.Markdown()
        export_file = gr.File(label="Download", visible=False)
    return LabelTab(new_label, create_btn, pick, rename_to, rename_btn, delete_btn, counts, train_btn, next_btn,
                    select_batch_btn, train_report, next_gallery, next_ids, view, view_label, order, view_btn,
                    view_gallery, view_ids, min_conf, accept_btn, accept_sel_btn, export_kind, include_preds,
                    export_btn, export_note, export_file)


def map_tab() -> MapTab:
    with gr.Tab("Map", id="map"):
        with gr.Row():
            colour_by = gr.Radio(["label", "prediction"], value="label", label="Colour by")
            methods = ["PCA", "UMAP"] if search.umap_available() else ["PCA"]
            method = gr.Radio(methods, value="PCA", label="Projection",
                              info=None if len(methods) > 1 else "pip install umap-learn for UMAP")
            draw_btn = gr.Button("Draw map", elem_id="draw-map")
        note = gr.Markdown(elem_id="map-note")
        gr.HTML(photomap.container_html("photomap"))
        data = gr.Textbox(visible="hidden", elem_id="photomap-data")
        picked = gr.Textbox(visible="hidden", elem_id="photomap-selection")
        opened = gr.Textbox(visible="hidden", elem_id="photomap-open")
        keys = gr.Textbox(visible="hidden", elem_id="photomap-keys")
    return MapTab(colour_by, method, draw_btn, note, data, picked, opened, keys, gr.State(None), gr.State([]))
