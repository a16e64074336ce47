"""The page: `build_app(index_dir) -> gr.Blocks`, the layout and its wiring to app/handlers/.

What each event does lives in app/handlers/ (plain functions of the shared Page and the inputs, tested
without a server); here each handler's view is turned into the values of its components (the render
functions below) and wrapped by _guard.

Every gallery carries a gr.State list of photo ids beside it; a click's index is looked up in that list,
so the browser only ever hands back ids, never paths. Bad input (a non-image upload, an empty index,
labels missing) becomes a warning toast; an unexpected failure becomes a short error message, never a
traceback on the page (the traceback goes to the server log).

The page's encoder is the index's: it is loaded when the page is built and refused when its hash differs
from the one in the index's manifest; when an index update beside the page switches the index to another
encoder, the page loads that one (and checks it the same way) before embedding the next upload.
"""

from __future__ import annotations

import functools
import html
import logging
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import gradio as gr

from app import exports, handlers, photomap, search
from app.files import (
    MAX_UPLOAD,
    HostGuard,
    LoginThrottle,
    UrlGuard,
    allowed_hosts,
    check_bind,
    forwarded_headers_from,
    refuse_url_fetches,
    served_paths,
)
from app.filters import Filter
from app.handlers import (
    CLICK_MODES,
    EXPORTS,
    LABEL_KEYS,
    OPEN_MODE,
    SEARCH_MODE,
    SELECT_MODE,
    Duplicates,
    Gallery,
    MapView,
    Preview,
    Results,
    Selection,
    Vocabulary,
)
from app.labels import LABEL_RULE, Labels, Progress
from app.limits import discard_after_search
from app.markup import plain
from app.page import Page
from app.review import Group, member_markdown
from index.duplicates import LEVELS, SIMILAR_COSINE

if TYPE_CHECKING:
    from gradio.events import Dependency
    from gradio.routes import App

    from index.embed import Embedder
    from index.store import Store

log = logging.getLogger("byol_search.page")
PAGE = 24  # results per page
__all__ = ["EXPORTS", "GRADIO_MIN", "OPEN_MODE", "PAGE", "SEARCH_MODE", "SELECT_MODE", "Page", "build_app",
           "check_gradio", "head_html", "launch"]
# searches are short and read-only: several run at once; each long action has a queue of its own, so that
# training, an export, the map or the duplicate search never holds up the rest of the page
SEARCHES = {"concurrency_id": "search", "concurrency_limit": 4}
# a photo opened by id (a script's way to make previews) waits in its own line, never in the searches'
PREVIEWS = {"concurrency_id": "preview", "concurrency_limit": 2}
TRAIN = {"concurrency_id": "train", "concurrency_limit": 1}
EXPORT = {"concurrency_id": "export", "concurrency_limit": 1}
MAP = {"concurrency_id": "map", "concurrency_limit": 2}
DUPLICATES = {"concurrency_id": "duplicates", "concurrency_limit": 1}
FILTER_TEXT_MAX = 500  # characters of a filter field read (a folder name, a date)
# Number keys 1-9 press the label buttons (#label-key-N) unless the user is typing somewhere.
KEYS_JS = r"""
(() => {
  if (window.byolLabelKeys) return;
  window.byolLabelKeys = true;
  document.addEventListener('keydown', e => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.repeat || !/^[1-9]$/.test(e.key)) return;
    const t = e.target;
    if (t && (t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName))) return;
    const b = document.getElementById('label-key-' + e.key);
    if (!b || b.offsetParent === null) return;
    e.preventDefault();
    b.click();
  });
})();
"""
CLEAR_MAP_JS = "() => { if (window.byolPhotoMap) window.byolPhotoMap.setSelection('photomap', []); }"
RECOLOUR_MAP_JS = "(d) => { if (window.byolPhotoMap) window.byolPhotoMap.recolour('photomap', d); }"


def head_html() -> str:
    """What the page needs in its <head> (gradio 6 takes it in launch): the map's script and the label keys."""
    return photomap.head_html() + f"\n<script>\n{KEYS_JS}\n</script>"
# The oldest gradio the page works with: launch(run_history=...) first came in 6.24, and with it every other
# gradio 6 API used here (buttons=[], api_visibility, footer_links). pyproject.toml says the same.
GRADIO_MIN = (6, 24)


def check_gradio(version: str | None = None) -> None:
    """Refuse a gradio older than GRADIO_MIN with the command that fixes it (instead of a TypeError later)."""
    version = version or gr.__version__
    have = tuple(int(n) for n in re.findall(r"\d+", version)[:2])
    if have < GRADIO_MIN:
        need = ".".join(map(str, GRADIO_MIN))
        raise ImportError(f"the page needs gradio {need} or newer, and gradio {version} is installed: "
                          f"pip install 'gradio>={need},<7'")


def _user_errors() -> tuple[type[BaseException], ...]:
    try:
        from byol.images import BadImage
    except ImportError:
        return (ValueError,)
    return (ValueError, BadImage)


# the page's handlers are wrapped and handed to gradio, which reads their annotations at run time
# (gr.SelectData, gr.Progress): every name they use is imported above, outside TYPE_CHECKING
Handler = Callable[..., Any]


def _guard(n_out: int) -> Callable[[Handler], Handler]:
    """Turn user mistakes into a warning (and no change on the page), other failures into a short error;
    both as text (gradio renders a toast's message as HTML, and a message may hold a file or label name)."""

    def deco(fn: Handler) -> Handler:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except _user_errors() as e:
                reason = getattr(e, "reason", None)  # BadImage: the upload is not a photo we can decode
                gr.Warning(_text(f"That file is not a photo I can read: {reason}" if reason else str(e)))
                return gr.skip() if n_out == 1 else tuple(gr.skip() for _ in range(n_out))
            except Exception as e:
                log.exception("page handler %s failed", fn.__name__)
                raise gr.Error(_text(f"Something went wrong ({type(e).__name__}: {e}); "
                                     "the server log has details.")) from e

        return wrapper

    return deco


def _text(message: str) -> str:
    """A toast's message shown as the text it is: gradio renders toasts as HTML, and the handlers' messages
    hold label and file names."""
    return html.escape(message, quote=False)


def _info(message: str) -> None:
    gr.Info(_text(message))


def _gallery(hits: list[search.Hit], captions: list[str] | None = None) -> tuple[list[tuple[str, str]], list[int]]:
    """(gallery value, ids) from hits: thumbnails with captions, and the ids clicks map back to."""
    return _render_gallery(handlers.gallery(hits, captions))


# ---------------------------------------------------------------- views -> component values
def _render_gallery(g: Gallery) -> tuple[list[tuple[str, str]], list[int]]:
    return g.items, g.ids


def _render_results(r: Results) -> tuple[Any, ...]:
    """[results, res_ids, query, search_note, tabs]: the Search tab, brought to the front."""
    return r.gallery.items, r.gallery.ids, r.query, r.note, gr.Tabs(selected="search")


def _render_selection(s: Selection) -> tuple[Any, ...]:
    """[sel_gallery, sel_ids, sel_note]."""
    return s.gallery.items, s.ids, s.note


def _render_vocabulary(v: Vocabulary) -> tuple[Any, ...]:
    """[sel_label, label_pick, view_label, counts_md, flt_label, flt_pred, key 1 .. key 9]: every label
    picker, the counts, the filters' label choices and the number-key buttons."""
    keys = [gr.Button(value=t or "", visible=t is not None) for t in handlers.key_labels(v)]
    any_name = ["", *v.names]
    return (gr.Dropdown(choices=v.names), gr.Dropdown(choices=v.names), gr.Dropdown(choices=v.names), v.counts,
            gr.Dropdown(choices=any_name), gr.Dropdown(choices=any_name), *keys)


def _render_preview(p: Preview) -> tuple[Any, ...]:
    """[preview_box, preview_img, preview_facts, preview_near, preview_near_ids, preview_id]."""
    return gr.Column(visible=True), p.image, p.facts, p.neighbours.items, p.neighbours.ids, p.id


def _filter(*values: object) -> Filter:
    """The filter fields' values (folder, label, prediction, from, to) as a Filter; None and junk as ''."""
    return Filter(*(str(v if v is not None else "").strip()[:FILTER_TEXT_MAX] for v in values))


def _skips(n: int) -> tuple[Any, ...]:
    return tuple(gr.skip() for _ in range(n))


def _progress(progress: gr.Progress) -> Progress:
    """gradio's progress bar as the handlers' progress(fraction, description)."""
    return lambda fraction, desc: progress(fraction, desc=desc)


def _index(evt: gr.SelectData | None) -> Any:
    """The clicked item of a gallery ([x, y] in an image), or None."""
    return None if evt is None else evt.index


def _upload_dir(demo: gr.Blocks) -> str:
    """Where this app's gradio stores uploads."""
    server = getattr(demo, "server_app", None)
    return getattr(server, "uploaded_file_dir", None) or demo.GRADIO_CACHE


def build_app(index_dir: str | Path, store: Store | None = None, embedder: Embedder | None = None,
              labels: Labels | None = None, page_size: int = PAGE) -> gr.Blocks:
    """The page for one index. store/embedder/labels default to those of index_dir (tests inject fakes).

    Raises index.store.EncoderMismatch when the index's encoder file is not the encoder it was built with.
    """
    check_gradio()
    page = Page(index_dir, store, embedder, labels)
    with gr.Blocks(title="byol-search", analytics_enabled=False) as demo:
        c = SimpleNamespace(k=page_size)
        _layout(page, c)
        c.search_out = [c.results, c.res_ids, c.query, c.search_note, c.tabs]
        c.sel_out = [c.sel_gallery, c.sel_ids, c.sel_note]
        c.vocab_out = [c.sel_label, c.label_pick, c.view_label, c.counts_md, c.flt_label, c.flt_pred, *c.key_btns]
        c.preview_out = [c.preview_box, c.preview_img, c.preview_facts, c.preview_near, c.preview_near_ids,
                         c.preview_id]
        c.act_out = c.search_out + c.sel_out + c.preview_out
        _wire_search(demo, page, c, page_size)
        _wire_duplicates(page, c, page_size)
        _wire_labels(page, c, page_size)
        _wire_map(page, c, page_size)

        def on_load() -> tuple[Any, ...]:
            title, v = handlers.load(page)
            return (title, *_render_vocabulary(v), gr.Dropdown(choices=["", *handlers.folders(page)]))

        _on(demo.load, on_load, None, [c.header, *c.vocab_out, c.flt_folder], api_visibility="private")

        def on_tick() -> tuple[str, gr.Timer]:
            status = handlers.facts_status(page)
            return status, gr.Timer(active=bool(status))

        c.facts_timer.tick(on_tick, None, [c.facts_md, c.facts_timer], api_visibility="private",
                           show_progress="hidden")
    demo.queue(default_concurrency_limit=2)
    demo.page = page  # for tests and scripts: the shared state behind the page
    return cast(gr.Blocks, demo)


def _photo_gallery(label: str, elem_id: str | None = None, columns: int = 8, **kw: Any) -> gr.Gallery:
    return gr.Gallery(label=label, columns=columns, height="auto", allow_preview=False, object_fit="cover",
                      interactive=False, buttons=[], elem_id=elem_id, **kw)


def _layout(page: Page, c: SimpleNamespace) -> SimpleNamespace:
    """Every component of the page, in page order, into c (layout only: what they do is wired below)."""
    c.header = gr.Markdown(handlers.header(page))
    c.facts_md = gr.Markdown(elem_id="facts-status")
    c.facts_timer = gr.Timer(2.0)
    c.query = gr.State(None)  # {"vec": [...]} | {"id": n} | {"random": True}: what "show more" continues
    c.sel_ids = gr.State([])
    with gr.Accordion("Selection and labelling", open=True):
        with gr.Row():
            c.click_mode = gr.Radio(list(CLICK_MODES), value=OPEN_MODE, label="Clicking a photo",
                                    info="in Search, Duplicates and Map; in Label it always selects", scale=2)
            c.sel_label = gr.Dropdown(page.labels.names(), label="Label", allow_custom_value=True,
                                      info="pick one, or type a new name", scale=2, elem_id="sel-label")
            c.assign_btn = gr.Button("Assign to selected", variant="primary", scale=1)
            c.unassign_btn = gr.Button("Remove their labels", scale=1)
            c.clear_btn = gr.Button("Clear selection", scale=1)
        with gr.Row(elem_id="label-keys"):
            names = page.labels.names()
            c.key_btns = [gr.Button(f"{n} {names[n - 1]}" if n <= len(names) else "", size="sm", min_width=60,
                                    visible=n <= len(names), elem_id=f"label-key-{n}")
                          for n in range(1, LABEL_KEYS + 1)]
        c.sel_note = gr.Markdown("**0** selected · number keys 1-9 (or the buttons) label the selection",
                                 elem_id="sel-note")
        c.sel_gallery = gr.Gallery(label="Selected", columns=12, height=120, allow_preview=False,
                                   object_fit="cover", interactive=False, buttons=[], elem_id="selection")
    with gr.Column(visible=False, elem_id="preview") as c.preview_box:
        c.preview_id = gr.State(None)
        with gr.Row():
            c.preview_img = gr.Image(label="Preview (1024 px)", type="filepath", interactive=False, height=460,
                                     buttons=[], scale=3, elem_id="preview-image")
            with gr.Column(scale=2):
                c.preview_facts = gr.Markdown(elem_id="preview-facts")
                with gr.Row():
                    c.preview_search_btn = gr.Button("Search from it")
                    c.preview_select_btn = gr.Button("Select it")
                    c.preview_close_btn = gr.Button("Close", elem_id="preview-close")
                c.preview_near = _photo_gallery("Nearest neighbours", "preview-neighbours", columns=4)
                c.preview_near_ids = gr.State([])
    with gr.Tabs() as c.tabs:
        with gr.Tab("Search", id="search"):
            with gr.Row():
                c.upload = gr.Image(label="Query photo: upload or paste", type="filepath", height=220,
                                    sources=["upload", "clipboard"], scale=1)
                with gr.Column(scale=2):
                    c.search_note = gr.Markdown("Upload a photo, or press **Random photos** and click one.")
                    with gr.Row():
                        c.random_btn = gr.Button("Random photos")
                        c.more_btn = gr.Button("Show more")
                        c.select_all_btn = gr.Button("Select all shown")
            with gr.Accordion("Filter the results", open=False, elem_id="filters"):
                with gr.Row():
                    c.flt_folder = gr.Dropdown([""], value="", label="Sub-folder", allow_custom_value=True,
                                               info="and the folders inside it")
                    c.flt_label = gr.Dropdown(["", *page.labels.names()], value="", label="Labelled")
                    c.flt_pred = gr.Dropdown(["", *page.labels.names()], value="", label="Predicted")
                    c.flt_from = gr.Textbox("", label="Taken from", placeholder="YYYY-MM-DD", elem_id="date-from")
                    c.flt_to = gr.Textbox("", label="Taken to", placeholder="YYYY-MM-DD", elem_id="date-to")
                c.filter_note = gr.Markdown(elem_id="filter-note")
            c.flt = [c.flt_folder, c.flt_label, c.flt_pred, c.flt_from, c.flt_to]
            c.results = _photo_gallery("Results (cosine · file)", "results", columns=6)
            c.res_ids = gr.State([])
        with gr.Tab("Duplicates", id="duplicates"):
            with gr.Row():
                c.dup_level = gr.Radio(list(LEVELS), value="copies and bursts", label="Find",
                                       info="copies: the same photo (resized, re-encoded, cropped), from the "
                                            "pixels; bursts: shots seconds apart; similar: alike by the encoder")
                c.threshold = gr.Slider(0.80, 1.0, value=SIMILAR_COSINE, step=0.005, label="Similar photos: cosine",
                                        info="only for 'similar photos'; higher: closer photos")
                c.dup_btn = gr.Button("Find near-duplicates")
                c.dup_export_btn = gr.Button("Export decisions (CSV)")
            c.dup_note = gr.Markdown(elem_id="dup-note")
            c.dup_status = gr.Markdown(elem_id="dup-status")
            c.dup_file = gr.File(label="Download", visible=False, elem_id="dup-file")
            c.dup_groups = gr.State([])
            _duplicate_groups(page, c)
        with gr.Tab("Label", id="label"):
            with gr.Row():
                c.new_label = gr.Textbox(label="New label", placeholder="e.g. cats", scale=2, info=LABEL_RULE)
                c.create_btn = gr.Button("Create", scale=1)
                c.label_pick = gr.Dropdown(page.labels.names(), label="Existing label", scale=2)
                c.rename_to = gr.Textbox(label="Rename to", scale=2)
                c.rename_btn = gr.Button("Rename", scale=1)
                c.delete_btn = gr.Button("Delete label", variant="stop", scale=1)
            c.counts_md = gr.Markdown(handlers.counts_markdown(page))
            with gr.Row():
                c.train_btn = gr.Button("Train probe and predict all", variant="primary")
                c.next_btn = gr.Button("Next batch to label")
                c.select_batch_btn = gr.Button("Select the whole batch")
            c.train_md = gr.Markdown(elem_id="train-report")
            c.next_gallery = _photo_gallery("Least certain (click to select, then press a number key)",
                                            "label-next")
            c.next_ids = gr.State([])
            with gr.Row():
                c.view = gr.Radio(["predicted", "labelled"], value="predicted", label="Show photos")
                c.view_label = gr.Dropdown(page.labels.names(), label="as label", elem_id="view-label")
                c.order = gr.Radio(["most confident first", "least confident first"], value="most confident first",
                                   label="Order")
                c.view_btn = gr.Button("Show")
            c.view_gallery = _photo_gallery("Photos (click to select, then assign the right label)", "predictions")
            c.view_ids = gr.State([])
            with gr.Row():
                c.min_conf = gr.Slider(0.5, 1.0, value=0.9, step=0.01, label="Confidence at least")
                c.accept_btn = gr.Button("Accept all predictions at or above it")
                c.accept_sel_btn = gr.Button("Accept predictions of the selected")
            with gr.Row():
                c.export_kind = gr.Radio(list(handlers.EXPORTS), value="CSV", label="Export")
                c.include_preds = gr.Checkbox(label="Include predictions at or above the confidence", value=False)
                c.export_btn = gr.Button("Export")
            c.export_md = gr.Markdown()
            c.export_file = gr.File(label="Download", visible=False)
        with gr.Tab("Map", id="map"):
            with gr.Row():
                c.colour_by = gr.Radio(["label", "prediction"], value="label", label="Colour by")
                methods = ["PCA", "UMAP"] if search.umap_available() else ["PCA"]
                c.method = gr.Radio(methods, value="PCA", label="Projection",
                                    info=None if len(methods) > 1 else "pip install umap-learn for UMAP")
                c.map_btn = gr.Button("Draw map", elem_id="draw-map")
            c.map_note = gr.Markdown(elem_id="map-note")
            gr.HTML(photomap.container_html("photomap"))
            # the map's script and the server talk through these (app/photomap.py)
            c.map_data = gr.Textbox(visible="hidden", elem_id="photomap-data")
            c.map_picked = gr.Textbox(visible="hidden", elem_id="photomap-selection")
            c.map_opened = gr.Textbox(visible="hidden", elem_id="photomap-open")
            c.map_keys = gr.Textbox(visible="hidden", elem_id="photomap-keys")  # new colours, server -> page
            c.map_state = gr.State(None)  # the layout drawn: what a selection or a click may name
            c.map_sel = gr.State([])  # the part of the page's selection made on the map
    return c


def _duplicate_groups(page: Page, c: SimpleNamespace) -> None:
    """The Duplicates tab's groups, drawn again whenever the list of groups changes: each photo with its
    facts and a keep / drop choice, saved as soon as it changes."""
    @gr.render(inputs=[c.dup_groups])  # type: ignore[untyped-decorator]  # gradio leaves render() unannotated
    def groups(gs: list[Group] | None) -> None:
        for g in gs or []:
            with gr.Group():
                gr.Markdown(f"**Group {g.number}** · {plain(g.kind)} · {len(g.members)} photos")
                with gr.Row():
                    for m in g.members:
                        with gr.Column(min_width=170, elem_classes="dup-member"):
                            img = gr.Image(m.thumb, show_label=False, height=160, interactive=False, buttons=[],
                                           elem_id=f"dup-img-{m.id}")
                            gr.Markdown(member_markdown(m))
                            choice = gr.Radio(["keep", "drop"], value=m.decision if m.decided or m.decision
                                              in ("keep", "drop") else None, show_label=False, interactive=True,
                                              elem_id=f"dup-{m.id}")
                            _on(choice.input, lambda d, _i=m.id: handlers.decide(page, _i, d), [choice],
                                [c.dup_status], api_visibility="private")
                            _on(img.select, functools.partial(_act_fn(page, c, c.k), m.id),
                                [c.click_mode, c.sel_ids, *c.flt], c.act_out, api_visibility="private")


def _act_fn(page: Page, c: SimpleNamespace, k: int = PAGE) -> Handler:
    def run(image_id: int, mode: str, selected: list[int], *flt: Any) -> tuple[Any, ...]:
        return _render_act(c, handlers.act(page, image_id, mode, selected, k, _filter(*flt)))

    return run


def _render_act(c: SimpleNamespace, r: Results | Selection | Preview) -> tuple[Any, ...]:
    """A click's view (Results, Selection or Preview) as the values of c.act_out (the rest skipped)."""
    n_search, n_sel, n_prev = len(c.search_out), len(c.sel_out), len(c.preview_out)
    if isinstance(r, Selection):
        return (*_skips(n_search), *_render_selection(r), *_skips(n_prev))
    if isinstance(r, Preview):
        return (*_skips(n_search + n_sel), *_render_preview(r))
    return (*_render_results(r), *_skips(n_sel + n_prev))


def _on(event: Callable[..., Dependency], fn: Handler, inputs: Any, outputs: list[Any], **kw: Any) -> Dependency:
    """Wire fn to event, with user mistakes shown as warnings (_guard)."""
    return event(_guard(len(outputs))(fn), inputs, outputs, **kw)


def _wire_search(demo: gr.Blocks, page: Page, c: SimpleNamespace, k: int) -> None:
    """Upload, random photos, show more, filters, clicks in the result galleries, the preview, the selection bar."""

    def on_upload(payload: Any, *flt: Any) -> tuple[Any, ...]:
        try:
            r = handlers.search_upload(page, payload, _upload_dir(demo), demo.upload_file_set, k, _filter(*flt))
        finally:  # searched or refused, the upload has served: it leaves the disk once the query box shows it
            discard_after_search(payload.get("path") if isinstance(payload, dict) else None, _upload_dir(demo),
                                 demo.upload_file_set)
        return _skips(len(c.search_out)) if r is None else _render_results(r)

    def on_more(q: dict[str, Any] | None, shown: list[int], *flt: Any) -> tuple[Any, ...]:
        g, note = handlers.show_more(page, q, shown, k, _filter(*flt))
        return (*_render_gallery(g), note)

    _on(c.upload.upload, on_upload, [c.upload, *c.flt], c.search_out, preprocess=False, **SEARCHES,
        api_name="upload_search")
    _on(c.random_btn.click, lambda *flt: _render_results(handlers.random_photos(page, k, _filter(*flt))), c.flt,
        c.search_out, **SEARCHES, api_name="random_photos")
    _on(c.more_btn.click, on_more, [c.query, c.res_ids, *c.flt], [c.results, c.res_ids, c.search_note],
        **SEARCHES, api_name="show_more")
    # click-to-search without a click, for scripts and tests: the same code path as a click
    search_id_box = gr.Number(visible=False, precision=0)
    _on(search_id_box.submit, lambda i: _render_results(handlers.search_id(page, int(i), k)), [search_id_box],
        c.search_out, **SEARCHES, api_name="search_id")
    open_box = gr.Number(visible=False, precision=0)
    _on(open_box.submit, lambda i: _render_preview(handlers.open_photo(page, int(i))), [open_box], c.preview_out,
        **PREVIEWS, api_name="open_photo")

    def on_filter(*flt: Any) -> str:
        return handlers.filter_note(page, _filter(*flt))

    for box in (c.flt_folder, c.flt_label, c.flt_pred):
        _on(box.change, on_filter, c.flt, [c.filter_note], api_visibility="private", **SEARCHES)
    for box in (c.flt_from, c.flt_to):
        _on(box.submit, on_filter, c.flt, [c.filter_note], api_visibility="private", **SEARCHES)
        _on(box.blur, on_filter, c.flt, [c.filter_note], api_visibility="private", **SEARCHES)
    _on(gr.Button(visible=False).click, on_filter, c.flt, [c.filter_note], api_name="filter_count")

    def clicked(ids: list[int], mode: str, selected: list[int], folder: Any, label: Any, prediction: Any,
                date_from: Any, date_to: Any, evt: gr.SelectData) -> tuple[Any, ...]:
        flt = _filter(folder, label, prediction, date_from, date_to)
        return _render_act(c, handlers.click(page, ids, _index(evt), mode, selected, k, flt))

    def clicked_select(ids: list[int], selected: list[int], evt: gr.SelectData) -> tuple[Any, ...]:
        return _render_selection(handlers.click_select(page, ids, _index(evt), selected))

    for gallery, ids_state, name in ((c.results, c.res_ids, "click_result"),
                                     (c.preview_near, c.preview_near_ids, "click_neighbour")):
        _on(gallery.select, clicked, [ids_state, c.click_mode, c.sel_ids, *c.flt], c.act_out,
            **SEARCHES, api_name=name, api_visibility="undocumented")
    for gallery, ids_state, name in ((c.next_gallery, c.next_ids, "click_next"),
                                     (c.view_gallery, c.view_ids, "click_prediction")):
        _on(gallery.select, clicked_select, [ids_state, c.sel_ids], c.sel_out, api_name=name,
            api_visibility="undocumented")
    _on(c.sel_gallery.select, clicked_select, [c.sel_ids, c.sel_ids], c.sel_out, api_name="click_selected",
        api_visibility="undocumented")
    _on(c.select_all_btn.click, lambda shown, sel: _render_selection(handlers.select_all(page, shown, sel)),
        [c.res_ids, c.sel_ids], c.sel_out, api_name="select_all")
    _on(c.clear_btn.click, lambda: (*_render_selection(handlers.clear_selection(page)), []), None,
        [*c.sel_out, c.map_sel], api_name="clear_selection").then(None, None, None, js=CLEAR_MAP_JS)
    # the preview's own buttons
    _on(c.preview_search_btn.click,
        lambda i, *flt: _render_results(handlers.search_id(page, _opened(i), k, _filter(*flt))),
        [c.preview_id, *c.flt], c.search_out, **SEARCHES, api_visibility="private")
    _on(c.preview_select_btn.click, lambda i, sel: _render_selection(handlers.toggle(page, sel, _opened(i))),
        [c.preview_id, c.sel_ids], c.sel_out, api_visibility="private")
    c.preview_close_btn.click(lambda: gr.Column(visible=False), None, [c.preview_box], api_visibility="private")


def _opened(image_id: int | float | str | None) -> int:
    if image_id is None:
        raise ValueError("open a photo first")
    return int(image_id)


def _wire_duplicates(page: Page, c: SimpleNamespace, k: int) -> None:
    def on_duplicates(t: float, level: str = "copies and bursts",
                      progress: gr.Progress = gr.Progress()) -> tuple[list[Group], str]:
        d: Duplicates = handlers.duplicates(page, level, _progress(progress), cosine=t)
        return d.groups, d.note

    outputs = [c.dup_groups, c.dup_note]
    inputs = [c.threshold, c.dup_level]
    _on(c.dup_btn.click, on_duplicates, inputs, outputs, api_name="duplicates", **DUPLICATES)
    _on(c.threshold.release, on_duplicates, inputs, outputs, api_visibility="undocumented", **DUPLICATES)
    _on(c.dup_level.input, on_duplicates, inputs, outputs, api_visibility="undocumented", **DUPLICATES)

    def on_export(t: float, level: str = "copies and bursts",
                  progress: gr.Progress = gr.Progress()) -> tuple[str, gr.File]:
        note, path = handlers.export_duplicates(page, level, _progress(progress), cosine=t)
        return note, gr.File(value=str(_download_copy(path)), visible=True)

    _on(c.dup_export_btn.click, on_export, inputs, [c.dup_status, c.dup_file], api_name="export_duplicates",
        **EXPORT)

    def on_decide(image_id: float, decision: str) -> str:
        return handlers.decide(page, int(image_id), decision)

    box_id, box_decision = gr.Number(visible=False, precision=0), gr.Textbox(visible=False)
    _on(gr.Button(visible=False).click, on_decide, [box_id, box_decision], [c.dup_status], api_name="decide")


def _wire_labels(page: Page, c: SimpleNamespace, k: int) -> None:
    """The vocabulary, assignments (button or number key), the probe, accepting predictions and the exports."""
    vocab, sel = _render_vocabulary, _render_selection
    new_vocab = [c.new_label, *c.vocab_out]
    _on(c.create_btn.click, lambda name: ("", *vocab(handlers.create_label(page, name))), [c.new_label],
        new_vocab, api_name="create_label")
    _on(c.new_label.submit, lambda name: ("", *vocab(handlers.create_label(page, name))), [c.new_label],
        new_vocab, api_visibility="undocumented")
    _on(c.rename_btn.click, lambda old, new: ("", *vocab(handlers.rename_label(page, old, new))),
        [c.label_pick, c.rename_to], [c.rename_to, *c.vocab_out], api_name="rename_label")
    _on(c.delete_btn.click, lambda old: vocab(handlers.delete_label(page, old, _info)), [c.label_pick],
        c.vocab_out, api_name="delete_label")

    def on_recolour(layout: photomap.PhotoMap | None, by: str) -> Any:
        data = handlers.map_colours(page, layout, by)
        return gr.skip() if data is None else data

    def recolours(event: Dependency) -> Dependency:
        """After labels or predictions changed: the map shown gets its new colours (keys only)."""
        # gradio's .then is a functools.partial of an unannotated listener: the Dependency it returns is untyped
        return cast("Dependency", event.then(_guard(1)(on_recolour), [c.map_state, c.colour_by], [c.map_keys],
                                             api_visibility="private", show_progress="hidden").then(
            None, [c.map_keys], None, js=RECOLOUR_MAP_JS))

    # an assignment empties the selection (on the map too), refreshes the label-next queue and the map's colours
    assigned_out = [*c.sel_out, *c.vocab_out, c.map_sel, c.next_gallery, c.next_ids]

    def after_assign(s: Selection, v: Vocabulary) -> tuple[Any, ...]:
        batch = handlers.next_batch(page, k)
        return (*sel(s), *vocab(v), [], *(_skips(2) if batch is None else _render_gallery(batch)))

    def on_assign(selected: list[int], label: str) -> tuple[Any, ...]:
        return after_assign(*handlers.assign(page, selected, label, _info))

    def on_unassign(selected: list[int]) -> tuple[Any, ...]:
        s, v = handlers.unassign(page, selected)
        return (*sel(s), *vocab(v))

    recolours(_on(c.assign_btn.click, on_assign, [c.sel_ids, c.sel_label], assigned_out, api_name="assign"
                  ).then(None, None, None, js=CLEAR_MAP_JS))
    def on_key(n: Any, name: str | None, selected: list[int]) -> tuple[Any, ...]:
        """A number key labels with the name it showed; when that is no longer the label at its place (labels
        changed in another tab), nothing is labelled and the keys are shown again as they are now."""
        try:
            return after_assign(*handlers.label_key(page, n, name, selected, _info))
        except handlers.KeyMismatch as e:
            gr.Warning(_text(str(e)))
            return (*_skips(len(c.sel_out)), *vocab(handlers.vocabulary(page)), *_skips(3))

    # the script's way: the key's number and the label name it means (both required)
    key_number, key_label = gr.Number(visible=False, precision=0), gr.Textbox(visible=False)
    recolours(_on(gr.Button(visible=False).click, on_key, [key_number, key_label, c.sel_ids], assigned_out,
                  api_name="label_key"))
    # a button (or its number key, KEYS_JS) sends its own text, "N name": the label it showed when pressed
    for n, btn in enumerate(c.key_btns, 1):
        recolours(_on(btn.click, lambda shown, selected, _n=n: on_key(_n, handlers.key_name(_n, shown), selected),
                      [btn, c.sel_ids], assigned_out, api_visibility="private").then(None, None, None,
                                                                                      js=CLEAR_MAP_JS))
    recolours(_on(c.unassign_btn.click, on_unassign, [c.sel_ids], c.sel_out + c.vocab_out, api_name="unassign"))

    def on_train(progress: gr.Progress = gr.Progress()) -> tuple[str, str]:
        return handlers.train(page, _progress(progress))

    def on_accept_selected(selected: list[int]) -> tuple[Any, ...]:
        counts, s = handlers.accept_selected(page, selected, _info)
        return (counts, *sel(s))

    recolours(_on(c.train_btn.click, on_train, None, [c.train_md, c.counts_md], api_name="train", **TRAIN))
    _on(c.next_btn.click, lambda: _render_gallery(handlers.label_next(page, k)), None,
        [c.next_gallery, c.next_ids], api_name="label_next")
    _on(c.select_batch_btn.click, lambda shown, s: _render_selection(handlers.select_all(page, shown, s)),
        [c.next_ids, c.sel_ids], c.sel_out, api_name="select_batch")
    _on(c.view_btn.click,
        lambda kind, label, order: _render_gallery(handlers.show_labelled(page, kind, label, order, k, _info)),
        [c.view, c.view_label, c.order], [c.view_gallery, c.view_ids], api_name="show_labelled")
    recolours(_on(c.accept_btn.click, lambda conf: handlers.accept(page, conf, _info), [c.min_conf],
                  [c.counts_md], api_name="accept"))
    recolours(_on(c.accept_sel_btn.click, on_accept_selected, [c.sel_ids], [c.counts_md, *c.sel_out],
                  api_name="accept_selected"))

    def on_export(kind: str, with_preds: bool, conf: float,
                  progress: gr.Progress = gr.Progress()) -> tuple[str, gr.File]:
        note, path = handlers.export(page, kind, with_preds, conf, _progress(progress))
        if path is None:
            return note, gr.File(visible=False)
        return note, gr.File(value=str(_download_copy(path)), visible=True)

    _on(c.export_btn.click, on_export, [c.export_kind, c.include_preds, c.min_conf], [c.export_md, c.export_file],
        api_name="export", **EXPORT)


def _wire_map(page: Page, c: SimpleNamespace, k: int) -> None:
    """The photo map: drawing it (then handing the payload to its script), region selections, clicks."""

    def on_map(by: str, how: str, progress: gr.Progress = gr.Progress()) -> tuple[str, str, photomap.PhotoMap]:
        m: MapView = handlers.draw_map(page, by, how, _progress(progress))
        return m.data, m.note, m.layout

    _on(c.map_btn.click, on_map, [c.colour_by, c.method], [c.map_data, c.map_note, c.map_state],
        api_name="draw_map", **MAP).then(None, [c.map_data], None,
                                         js="(d) => { window.byolPhotoMap.load('photomap', d); }")

    def on_pick(layout: photomap.PhotoMap | None, text: str, selected: list[int],
                from_map: list[int]) -> tuple[Any, ...]:
        s, ids = handlers.map_select(page, layout, text, selected, from_map)
        return (*_render_selection(s), ids)

    # .change, not .input: the script's input event reaches gradio 6.31 as a change (app/photomap.py)
    _on(c.map_picked.change, on_pick, [c.map_state, c.map_picked, c.sel_ids, c.map_sel], [*c.sel_out, c.map_sel],
        api_name="map_select", api_visibility="undocumented")

    def on_open(layout: photomap.PhotoMap | None, text: str, mode: str, selected: list[int],
                *flt: Any) -> tuple[Any, ...]:
        return _render_act(c, handlers.map_open(page, layout, text, mode, selected, k, _filter(*flt)))

    _on(c.map_opened.change, on_open, [c.map_state, c.map_opened, c.click_mode, c.sel_ids, *c.flt], c.act_out,
        **SEARCHES, api_name="map_open", api_visibility="undocumented")


def _download_copy(path: Path) -> Path:
    """A copy of an export in the system temp folder (gradio hands out files only from there or the cwd);
    copies older than an hour are removed on the way (app.exports.download_copy)."""
    return exports.download_copy(path)


def launch(demo: gr.Blocks, index_dir: str | Path, host: str = "127.0.0.1", port: int | None = 7860,
           auth: tuple[str, str] | None = None, prevent_thread_lock: bool = False, quiet: bool = False,
           allow_hosts: Iterable[str] = (), trusted_proxies: Iterable[str] = ()) -> tuple[App, str, str]:
    """Serve the page: loopback unless auth is given; only the index's own pictures are served (thumbnails,
    the map's sheets, previews: app.files.served_paths). The photos' facts start filling in the background,
    and the default photo map starts being laid out, so that the first "Draw map" finds it ready.

    Requests are answered only when addressed to `host`, a loopback name or one of `allow_hosts`, and never
    when another web site sends them (app.files.HostGuard); failed logins are slowed down (LoginThrottle),
    per connection peer: X-Forwarded-For is believed only from `trusted_proxies`. No web address is ever
    fetched (UrlGuard, refuse_url_fetches); the queue and uploads are bounded (app/limits.py).
    Never a public share link, whatever GRADIO_SHARE or a notebook says.
    """
    from starlette.middleware import Middleware

    from app.limits import UploadLimit, bound_queue

    check_bind(host, auth)
    # the Page build_app set; gradio's own Blocks.page is a str (a page name) on any other Blocks
    page = getattr(demo, "page", None)
    page = page if isinstance(page, Page) else None
    allowed, blocked = served_paths(index_dir, page.store if page is not None else None)
    # served in place instead of copied into gradio's cache on every search
    gr.set_static_paths(allowed)
    allow_hosts = list(allow_hosts)
    hosts, any_ip = allowed_hosts(host, allow_hosts)
    middleware = [Middleware(HostGuard, hosts=hosts, any_ip=any_ip, origins=allow_hosts), Middleware(UrlGuard),
                  Middleware(UploadLimit, blocks=demo, upload_dir=lambda: _upload_dir(demo))]
    if auth is not None:
        middleware.append(Middleware(LoginThrottle))
    refuse_url_fetches(demo)
    bound_queue(demo)
    if page is not None:
        page.start_facts()
        page.start_map()
        page.start_neighbours()
    with forwarded_headers_from(trusted_proxies):  # uvicorn reads it when the server starts, in launch
        return demo.launch(server_name=host, head=head_html(), server_port=port, auth=auth, allowed_paths=allowed,
                           blocked_paths=blocked, max_file_size=MAX_UPLOAD, prevent_thread_lock=prevent_thread_lock,
                           quiet=quiet, share=False, app_kwargs={"middleware": middleware},
                           show_error=False, enable_monitoring=False, ssr_mode=False, mcp_server=False, pwa=False,
                           run_history=False, footer_links=["api"])
