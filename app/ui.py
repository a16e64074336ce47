"""The page: `build_app(index_dir) -> gr.Blocks`, the layout and its wiring to app/handlers.py.

What each event does lives in app/handlers.py (plain functions of the shared Page and the inputs, tested
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
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from app import exports, handlers, search
from app.files import MAX_UPLOAD, HostGuard, LoginThrottle, allowed_hosts, check_bind, served_paths
from app.handlers import EXPORTS, SEARCH_MODE, SELECT_MODE, Gallery, Results, Selection, Vocabulary
from app.labels import Labels, Progress
from app.page import Page

log = logging.getLogger("byol_search.page")
PAGE = 24  # results per page
__all__ = ["EXPORTS", "GRADIO_MIN", "PAGE", "SEARCH_MODE", "SELECT_MODE", "Page", "build_app", "check_gradio",
           "launch"]
# searches are short and read-only: several run at once (one queue slot each for training, exports, ...)
SEARCHES = {"concurrency_id": "search", "concurrency_limit": 4}
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


def _guard(n_out: int):
    """Turn user mistakes into a warning (and no change on the page), other failures into a short error."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except _user_errors() as e:
                reason = getattr(e, "reason", None)  # BadImage: the upload is not a photo we can decode
                gr.Warning(f"That file is not a photo I can read: {reason}" if reason else str(e))
                return gr.skip() if n_out == 1 else tuple(gr.skip() for _ in range(n_out))
            except Exception as e:
                log.exception("page handler %s failed", fn.__name__)
                raise gr.Error(f"Something went wrong ({type(e).__name__}: {e}); the server log has details.") from e

        return wrapper

    return deco


def _gallery(hits: list[search.Hit], captions: list[str] | None = None) -> tuple[list, list[int]]:
    """(gallery value, ids) from hits: thumbnails with captions, and the ids clicks map back to."""
    return _render_gallery(handlers.gallery(hits, captions))


# ---------------------------------------------------------------- views -> component values
def _render_gallery(g: Gallery) -> tuple[list, list[int]]:
    return g.items, g.ids


def _render_results(r: Results) -> tuple:
    """[results, res_ids, query, search_note, tabs]: the Search tab, brought to the front."""
    return r.gallery.items, r.gallery.ids, r.query, r.note, gr.Tabs(selected="search")


def _render_selection(s: Selection) -> tuple:
    """[sel_gallery, sel_ids, sel_note]."""
    return s.gallery.items, s.gallery.ids, s.note


def _render_vocabulary(v: Vocabulary) -> tuple:
    """[sel_label, label_pick, view_label, counts_md]: every label picker and the counts."""
    return (gr.Dropdown(choices=v.names), gr.Dropdown(choices=v.names), gr.Dropdown(choices=v.names), v.counts)


def _skips(n: int) -> tuple:
    return tuple(gr.skip() for _ in range(n))


def _progress(progress: gr.Progress) -> Progress:
    """gradio's progress bar as the handlers' progress(fraction, description)."""
    return lambda fraction, desc: progress(fraction, desc=desc)


def _index(evt: gr.SelectData | None):
    """The clicked item of a gallery ([x, y] in an image), or None."""
    return None if evt is None else evt.index


def _upload_dir(demo: gr.Blocks) -> str:
    """Where this app's gradio stores uploads."""
    server = getattr(demo, "server_app", None)
    return getattr(server, "uploaded_file_dir", None) or demo.GRADIO_CACHE


def build_app(index_dir: str | Path, store=None, embedder=None, labels: Labels | None = None,
              page_size: int = PAGE) -> gr.Blocks:
    """The page for one index. store/embedder/labels default to those of index_dir (tests inject fakes).

    Raises index.store.EncoderMismatch when the index's encoder file is not the encoder it was built with.
    """
    check_gradio()
    page = Page(index_dir, store, embedder, labels)
    with gr.Blocks(title="byol-search", analytics_enabled=False) as demo:
        c = _layout(page)
        c.search_out = [c.results, c.res_ids, c.query, c.search_note, c.tabs]
        c.sel_out = [c.sel_gallery, c.sel_ids, c.sel_note]
        c.vocab_out = [c.sel_label, c.label_pick, c.view_label, c.counts_md]
        _wire_search(demo, page, c, page_size)
        _wire_duplicates(page, c)
        _wire_labels(page, c, page_size)
        _wire_map(page, c, page_size)

        def on_load():
            title, v = handlers.load(page)
            return (title, *_render_vocabulary(v))

        _on(demo.load, on_load, None, [c.header, *c.vocab_out], api_visibility="private")
    demo.queue(default_concurrency_limit=2)
    demo.page = page  # for tests and scripts: the shared state behind the page
    return demo


def _layout(page: Page) -> SimpleNamespace:
    """Every component of the page, in page order (layout only: what they do is wired below)."""
    c = SimpleNamespace()
    c.header = gr.Markdown(handlers.header(page))
    c.query = gr.State(None)  # {"vec": [...]} | {"id": n} | {"random": True}: what "show more" continues
    c.sel_ids = gr.State([])
    with gr.Accordion("Selection and labelling", open=True):
        with gr.Row():
            c.click_mode = gr.Radio([SEARCH_MODE, SELECT_MODE], value=SEARCH_MODE, label="Clicking a photo",
                                  info="in Search, Duplicates and Map; in Label it always selects", scale=2)
            c.sel_label = gr.Dropdown(page.labels.names(), label="Label", allow_custom_value=True,
                                    info="pick one, or type a new name", scale=2, elem_id="sel-label")
            c.assign_btn = gr.Button("Assign to selected", variant="primary", scale=1)
            c.unassign_btn = gr.Button("Remove their labels", scale=1)
            c.clear_btn = gr.Button("Clear selection", scale=1)
        c.sel_note = gr.Markdown("**0** selected")
        c.sel_gallery = gr.Gallery(label="Selected", columns=12, height=120, allow_preview=False,
                                 object_fit="cover", interactive=False, buttons=[], elem_id="selection")
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
            c.results = gr.Gallery(label="Results (cosine · file)", columns=6, height="auto", allow_preview=False,
                                 object_fit="cover", interactive=False, buttons=[], elem_id="results")
            c.res_ids = gr.State([])
        with gr.Tab("Duplicates", id="duplicates"):
            with gr.Row():
                c.threshold = gr.Slider(0.80, 1.0, value=0.95, step=0.005, label="Cosine threshold",
                                      info="higher: only near-identical photos")
                c.dup_btn = gr.Button("Find near-duplicates")
            c.dup_note = gr.Markdown()
            c.dup_gallery = gr.Gallery(label="Groups", columns=8, height="auto", allow_preview=False,
                                     object_fit="cover", interactive=False, buttons=[])
            c.dup_ids = gr.State([])
        with gr.Tab("Label", id="label"):
            with gr.Row():
                c.new_label = gr.Textbox(label="New label", placeholder="e.g. cats", scale=2)
                c.create_btn = gr.Button("Create", scale=1)
                c.label_pick = gr.Dropdown(page.labels.names(), label="Existing label", scale=2)
                c.rename_to = gr.Textbox(label="Rename to", scale=2)
                c.rename_btn = gr.Button("Rename", scale=1)
                c.delete_btn = gr.Button("Delete label", variant="stop", scale=1)
            c.counts_md = gr.Markdown(handlers.counts_markdown(page))
            with gr.Row():
                c.train_btn = gr.Button("Train probe and predict all", variant="primary")
                c.next_btn = gr.Button("What to label next")
            c.train_md = gr.Markdown(elem_id="train-report")
            c.next_gallery = gr.Gallery(label="Least certain (click to select)", columns=8, height="auto",
                                      allow_preview=False, object_fit="cover", interactive=False, buttons=[],
                                      elem_id="label-next")
            c.next_ids = gr.State([])
            with gr.Row():
                c.view = gr.Radio(["predicted", "labelled"], value="predicted", label="Show photos")
                c.view_label = gr.Dropdown(page.labels.names(), label="as label", elem_id="view-label")
                c.order = gr.Radio(["most confident first", "least confident first"], value="most confident first",
                                 label="Order")
                c.view_btn = gr.Button("Show")
            c.view_gallery = gr.Gallery(label="Photos (click to select, then assign the right label)",
                                      columns=8, height="auto", allow_preview=False, object_fit="cover",
                                      interactive=False, buttons=[], elem_id="predictions")
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
                c.map_btn = gr.Button("Draw map")
            c.map_legend = gr.HTML()
            c.map_img = gr.Image(label="Click a dot to search from that photo", interactive=False, type="pil",
                               buttons=[], elem_id="map")
            c.map_gallery = gr.Gallery(label="Nearest to the clicked photo", columns=8, height="auto",
                                     allow_preview=False, object_fit="cover", interactive=False, buttons=[])
            c.map_ids = gr.State([])
            c.map_state = gr.State(None)
    return c


def _on(event, fn, inputs, outputs, **kw):
    """Wire fn to event, with user mistakes shown as warnings (_guard)."""
    return event(_guard(len(outputs))(fn), inputs, outputs, **kw)


def _wire_search(demo: gr.Blocks, page: Page, c: SimpleNamespace, k: int) -> None:
    """Upload, random photos, show more, clicks in the result galleries, the selection bar."""

    def on_upload(payload):
        r = handlers.search_upload(page, payload, _upload_dir(demo), demo.upload_file_set, k)
        return _skips(len(c.search_out)) if r is None else _render_results(r)

    def on_more(q, shown):
        g, note = handlers.show_more(page, q, shown, k)
        return (*_render_gallery(g), note)

    _on(c.upload.upload, on_upload, [c.upload], c.search_out, preprocess=False, **SEARCHES,
        api_name="upload_search")
    _on(c.random_btn.click, lambda: _render_results(handlers.random_photos(page, k)), None, c.search_out,
        **SEARCHES, api_name="random_photos")
    _on(c.more_btn.click, on_more, [c.query, c.res_ids], [c.results, c.res_ids, c.search_note], **SEARCHES,
        api_name="show_more")
    # click-to-search without a click, for scripts and tests: the same code path as a click
    search_id_box = gr.Number(visible=False, precision=0)
    _on(search_id_box.submit, lambda i: _render_results(handlers.search_id(page, int(i), k)), [search_id_box],
        c.search_out, **SEARCHES, api_name="search_id")

    def clicked(ids, mode, selected, evt: gr.SelectData):
        """A click in a results gallery: search from the photo, or toggle it in the selection."""
        r = handlers.click(page, ids, _index(evt), mode, selected, k)
        if isinstance(r, Selection):
            return (*_skips(len(c.search_out)), *_render_selection(r))
        return (*_render_results(r), *_skips(len(c.sel_out)))

    def clicked_select(ids, selected, evt: gr.SelectData):
        return _render_selection(handlers.click_select(page, ids, _index(evt), selected))

    for gallery, ids_state, name in ((c.results, c.res_ids, "click_result"),
                                     (c.dup_gallery, c.dup_ids, "click_duplicate"),
                                     (c.map_gallery, c.map_ids, "click_map_result")):
        _on(gallery.select, clicked, [ids_state, c.click_mode, c.sel_ids], c.search_out + c.sel_out,
            **SEARCHES, api_name=name, api_visibility="undocumented")
    for gallery, ids_state, name in ((c.next_gallery, c.next_ids, "click_next"),
                                     (c.view_gallery, c.view_ids, "click_prediction")):
        _on(gallery.select, clicked_select, [ids_state, c.sel_ids], c.sel_out, api_name=name,
            api_visibility="undocumented")
    _on(c.sel_gallery.select, clicked_select, [c.sel_ids, c.sel_ids], c.sel_out, api_name="click_selected",
        api_visibility="undocumented")
    _on(c.select_all_btn.click, lambda shown, sel: _render_selection(handlers.select_all(page, shown, sel)),
        [c.res_ids, c.sel_ids], c.sel_out, api_name="select_all")
    _on(c.clear_btn.click, lambda: _render_selection(handlers.clear_selection(page)), None, c.sel_out,
        api_name="clear_selection")


def _wire_duplicates(page: Page, c: SimpleNamespace) -> None:
    def on_duplicates(t, progress=gr.Progress()):
        g, note = handlers.duplicates(page, t, _progress(progress))
        return (*_render_gallery(g), note)

    outputs = [c.dup_gallery, c.dup_ids, c.dup_note]
    _on(c.dup_btn.click, on_duplicates, [c.threshold], outputs, api_name="duplicates")
    _on(c.threshold.release, on_duplicates, [c.threshold], outputs, api_visibility="undocumented")


def _wire_labels(page: Page, c: SimpleNamespace, k: int) -> None:
    """The vocabulary, assignments, the probe, accepting predictions and the exports."""
    vocab, sel = _render_vocabulary, _render_selection
    new_vocab = [c.new_label, *c.vocab_out]
    _on(c.create_btn.click, lambda name: ("", *vocab(handlers.create_label(page, name))), [c.new_label],
        new_vocab, api_name="create_label")
    _on(c.new_label.submit, lambda name: ("", *vocab(handlers.create_label(page, name))), [c.new_label],
        new_vocab, api_visibility="undocumented")
    _on(c.rename_btn.click, lambda old, new: ("", *vocab(handlers.rename_label(page, old, new))),
        [c.label_pick, c.rename_to], [c.rename_to, *c.vocab_out], api_name="rename_label")
    _on(c.delete_btn.click, lambda old: vocab(handlers.delete_label(page, old, gr.Info)), [c.label_pick],
        c.vocab_out, api_name="delete_label")

    def on_assign(selected, label):
        s, v = handlers.assign(page, selected, label, gr.Info)
        return (*sel(s), *vocab(v))

    def on_unassign(selected):
        s, v = handlers.unassign(page, selected)
        return (*sel(s), *vocab(v))

    _on(c.assign_btn.click, on_assign, [c.sel_ids, c.sel_label], c.sel_out + c.vocab_out, api_name="assign")
    _on(c.unassign_btn.click, on_unassign, [c.sel_ids], c.sel_out + c.vocab_out, api_name="unassign")

    def on_train(progress=gr.Progress()):
        return handlers.train(page, _progress(progress))

    def on_accept_selected(selected):
        counts, s = handlers.accept_selected(page, selected, gr.Info)
        return (counts, *sel(s))

    _on(c.train_btn.click, on_train, None, [c.train_md, c.counts_md], api_name="train")
    _on(c.next_btn.click, lambda: _render_gallery(handlers.label_next(page, k)), None,
        [c.next_gallery, c.next_ids], api_name="label_next")
    _on(c.view_btn.click,
        lambda kind, label, order: _render_gallery(handlers.show_labelled(page, kind, label, order, k, gr.Info)),
        [c.view, c.view_label, c.order], [c.view_gallery, c.view_ids], api_name="show_labelled")
    _on(c.accept_btn.click, lambda conf: handlers.accept(page, conf, gr.Info), [c.min_conf], [c.counts_md],
        api_name="accept")
    _on(c.accept_sel_btn.click, on_accept_selected, [c.sel_ids], [c.counts_md, *c.sel_out],
        api_name="accept_selected")

    def on_export(kind, with_preds, conf, progress=gr.Progress()):
        note, path = handlers.export(page, kind, with_preds, conf, _progress(progress))
        if path is None:
            return note, gr.File(visible=False)
        return note, gr.File(value=str(_download_copy(path)), visible=True)

    _on(c.export_btn.click, on_export, [c.export_kind, c.include_preds, c.min_conf], [c.export_md, c.export_file],
        api_name="export")


def _wire_map(page: Page, c: SimpleNamespace, k: int) -> None:
    def on_map(by, how, progress=gr.Progress()):
        return handlers.draw_map(page, by, how, _progress(progress))

    def on_map_click(m, evt: gr.SelectData):
        return _render_gallery(handlers.map_click(page, m, _index(evt), k // 2))

    _on(c.map_btn.click, on_map, [c.colour_by, c.method], [c.map_img, c.map_legend, c.map_state],
        api_name="draw_map")
    _on(c.map_img.select, on_map_click, [c.map_state], [c.map_gallery, c.map_ids], **SEARCHES,
        api_name="click_map", api_visibility="undocumented")


def _download_copy(path: Path) -> Path:
    """A copy of an export in the system temp folder (gradio hands out files only from there or the cwd);
    copies older than an hour are removed on the way (app.exports.download_copy)."""
    return exports.download_copy(path)


def launch(demo: gr.Blocks, index_dir: str | Path, host: str = "127.0.0.1", port: int | None = 7860,
           auth: tuple[str, str] | None = None, prevent_thread_lock: bool = False, quiet: bool = False,
           allow_hosts: Iterable[str] = ()):
    """Serve the page: loopback unless auth is given; only the thumbnail folder is served.

    Requests are answered only when addressed to `host`, a loopback name or one of `allow_hosts`, and never
    when another web site sends them (app.files.HostGuard); failed logins are slowed down (LoginThrottle).
    Never a public share link, whatever GRADIO_SHARE or a notebook says.
    """
    from starlette.middleware import Middleware

    check_bind(host, auth)
    allowed, blocked = served_paths(index_dir, getattr(demo, "page", None) and demo.page.store)
    # served in place instead of copied into gradio's cache on every search
    gr.set_static_paths(allowed)
    allow_hosts = list(allow_hosts)
    hosts, any_ip = allowed_hosts(host, allow_hosts)
    middleware = [Middleware(HostGuard, hosts=hosts, any_ip=any_ip, origins=allow_hosts)]
    if auth is not None:
        middleware.append(Middleware(LoginThrottle))
    return demo.launch(server_name=host, server_port=port, auth=auth, allowed_paths=allowed, blocked_paths=blocked,
                       max_file_size=MAX_UPLOAD, prevent_thread_lock=prevent_thread_lock, quiet=quiet,
                       share=False, app_kwargs={"middleware": middleware},
                       show_error=False, enable_monitoring=False, ssr_mode=False, mcp_server=False, pwa=False,
                       run_history=False, footer_links=["api"])
