"""The page: `build_app(index_dir) -> gr.Blocks`, its components (app/layout.py) wired to app/handlers/.

What each event does lives in app/handlers/ (plain functions of the shared Page and the inputs, tested
without a server); here each handler's view is turned into {component: value} (the render functions below:
gradio leaves an event's other outputs as they are) and wrapped by _guard.

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
from typing import TYPE_CHECKING, Any, cast

import gradio as gr
from gradio.blocks import Block

from app import exports, handlers, layout, photomap, search
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
    EXPORTS,
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
from app.labels import Labels, Progress
from app.layout import Clicks, DuplicatesTab, Layout, MapTab, PreviewBox, SearchTab, SelectionBar
from app.limits import discard_after_search
from app.markup import plain
from app.page import Page
from app.review import Group, member_markdown

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
# the JavaScript the page's events run (js=) and its number keys, in app/static/ (package data)
KEYS_JS, LOAD_MAP_JS, CLEAR_MAP_JS, RECOLOUR_MAP_JS = (
    "labelkeys.js", "map_load.js", "map_clear.js", "map_recolour.js")


def _js(name: str) -> str:
    """One of app/static/'s scripts as gradio runs it: an event's js= is one function expression, so the file's
    own comment lines are left out."""
    lines = photomap.static_text(name).splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("//")).strip()


def head_html() -> str:
    """What the page needs in its <head> (gradio 6 takes it in launch): the map's script and the label keys."""
    return photomap.head_html() + f"\n<script>\n{_js(KEYS_JS)}\n</script>"
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
# what a handler returns: each component it changes with its new value (gradio leaves the other outputs as
# they are), so a handler never depends on the order of its event's outputs
Updates = dict[Block, Any]


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
    g = handlers.gallery(hits, captions)
    return g.items, g.ids


# ---------------------------------------------------------------- views -> component values
def _render_gallery(gallery: gr.Gallery, ids: gr.State, g: Gallery) -> Updates:
    return {gallery: g.items, ids: g.ids}


def _render_results(c: Clicks, r: Results) -> Updates:
    """The Search tab's results, brought to the front."""
    s = c.search
    return {**_render_gallery(s.results, s.ids, r.gallery), s.query: r.query, s.note: r.note,
            c.tabs: gr.Tabs(selected="search")}


def _render_selection(bar: SelectionBar, s: Selection) -> Updates:
    return {bar.gallery: s.gallery.items, bar.ids: s.ids, bar.note: s.note}


def _render_vocabulary(ui: Layout, v: Vocabulary) -> Updates:
    """Every label picker, the counts, the filters' label choices and the number-key buttons."""
    bar, flt, tab = ui.clicks.bar, ui.clicks.search, ui.label
    keys: Updates = {btn: gr.Button(value=t or "", visible=t is not None)
                     for btn, t in zip(bar.keys, handlers.key_labels(v), strict=True)}
    any_name = ["", *v.names]
    return {bar.label: gr.Dropdown(choices=v.names), tab.pick: gr.Dropdown(choices=v.names),
            tab.view_label: gr.Dropdown(choices=v.names), tab.counts: v.counts,
            flt.label: gr.Dropdown(choices=any_name), flt.prediction: gr.Dropdown(choices=any_name), **keys}


def _render_preview(p: PreviewBox, v: Preview) -> Updates:
    return {p.box: gr.Column(visible=True), p.image: v.image, p.facts: v.facts,
            **_render_gallery(p.near, p.near_ids, v.neighbours), p.id: v.id}


def _render_act(c: Clicks, r: Results | Selection | Preview) -> Updates:
    """A click's view (Results, Selection or Preview) as the values of c.out (the rest left as they are)."""
    if isinstance(r, Selection):
        return _render_selection(c.bar, r)
    if isinstance(r, Preview):
        return _render_preview(c.preview, r)
    return _render_results(c, r)


def _filter(*values: object) -> Filter:
    """The filter fields' values (folder, label, prediction, from, to) as a Filter; None and junk as ''."""
    return Filter(*(str(v if v is not None else "").strip()[:FILTER_TEXT_MAX] for v in values))


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
        ui = layout.build(page, functools.partial(_duplicate_groups, page, k=page_size))
        _wire_search(demo, page, ui.clicks, page_size)
        _wire_clicks(page, ui, page_size)
        _wire_duplicates(page, ui.dups)
        _wire_labels(page, ui, page_size)
        _wire_map(page, ui, page_size)
        _wire_status(demo, page, ui)
    demo.queue(default_concurrency_limit=2)
    demo.page = page  # for tests and scripts: the shared state behind the page
    return cast(gr.Blocks, demo)


def _wire_status(demo: gr.Blocks, page: Page, ui: Layout) -> None:
    """On load: the header, the vocabulary and the folders; then the facts' progress until it is done."""
    status = ui.status
    folder = ui.clicks.search.folder

    def on_load() -> Updates:
        title, v = handlers.load(page)
        return {status.header: title, **_render_vocabulary(ui, v),
                folder: gr.Dropdown(choices=["", *handlers.folders(page)])}

    _on(demo.load, on_load, None, [status.header, *ui.vocab_out, folder], api_visibility="private")

    def on_tick() -> Updates:
        note = handlers.facts_status(page)
        return {status.facts: note, status.facts_timer: gr.Timer(active=bool(note))}

    status.facts_timer.tick(on_tick, None, [status.facts, status.facts_timer], api_visibility="private",
                            show_progress="hidden")


def _duplicate_groups(page: Page, c: Clicks, tab: DuplicatesTab, k: int = PAGE) -> None:
    """The Duplicates tab's groups, drawn again whenever the list of groups changes: each photo with its
    facts and a keep / drop choice, saved as soon as it changes."""
    @gr.render(inputs=[tab.groups])  # type: ignore[untyped-decorator]  # gradio leaves render() unannotated
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
                                [tab.status], api_visibility="private")
                            _on(img.select, functools.partial(_act_fn(page, c, k), m.id),
                                c.inputs, c.out, api_visibility="private")


def _act_fn(page: Page, c: Clicks, k: int = PAGE) -> Handler:
    def run(image_id: int, mode: str, selected: list[int], *flt: Any) -> Updates:
        return _render_act(c, handlers.act(page, image_id, mode, selected, k, _filter(*flt)))

    return run


def _on(event: Callable[..., Dependency], fn: Handler, inputs: Any, outputs: list[Any], **kw: Any) -> Dependency:
    """Wire fn to event, with user mistakes shown as warnings (_guard)."""
    return event(_guard(len(outputs))(fn), inputs, outputs, **kw)


def _wire_search(demo: gr.Blocks, page: Page, c: Clicks, k: int) -> None:
    """Upload, random photos, show more, search or open a photo by id (for scripts), the filters."""
    s, preview = c.search, c.preview

    def on_upload(payload: Any, *flt: Any) -> Updates | Any:
        try:
            r = handlers.search_upload(page, payload, _upload_dir(demo), demo.upload_file_set, k, _filter(*flt))
        finally:  # searched or refused, the upload has served: it leaves the disk once the query box shows it
            discard_after_search(payload.get("path") if isinstance(payload, dict) else None, _upload_dir(demo),
                                 demo.upload_file_set)
        return gr.skip() if r is None else _render_results(c, r)

    def on_more(q: dict[str, Any] | None, shown: list[int], *flt: Any) -> Updates:
        g, note = handlers.show_more(page, q, shown, k, _filter(*flt))
        return {**_render_gallery(s.results, s.ids, g), s.note: note}

    _on(s.upload.upload, on_upload, [s.upload, *s.filters], c.search_out, preprocess=False, **SEARCHES,
        api_name="upload_search")
    _on(s.random_btn.click, lambda *flt: _render_results(c, handlers.random_photos(page, k, _filter(*flt))),
        s.filters, c.search_out, **SEARCHES, api_name="random_photos")
    _on(s.more_btn.click, on_more, [s.query, s.ids, *s.filters], [s.results, s.ids, s.note],
        **SEARCHES, api_name="show_more")
    # click-to-search without a click, for scripts and tests: the same code path as a click
    search_id_box = gr.Number(visible=False, precision=0)
    _on(search_id_box.submit, lambda i: _render_results(c, handlers.search_id(page, int(i), k)), [search_id_box],
        c.search_out, **SEARCHES, api_name="search_id")
    open_box = gr.Number(visible=False, precision=0)
    _on(open_box.submit, lambda i: _render_preview(preview, handlers.open_photo(page, int(i))), [open_box],
        preview.out, **PREVIEWS, api_name="open_photo")
    _wire_filters(page, s)


def _wire_filters(page: Page, s: SearchTab) -> None:
    """The filter fields: the note saying how many photos pass them, as they change."""

    def on_filter(*flt: Any) -> str:
        return handlers.filter_note(page, _filter(*flt))

    for box in (s.folder, s.label, s.prediction):
        _on(box.change, on_filter, s.filters, [s.filter_note], api_visibility="private", **SEARCHES)
    for date in (s.date_from, s.date_to):
        _on(date.submit, on_filter, s.filters, [s.filter_note], api_visibility="private", **SEARCHES)
        _on(date.blur, on_filter, s.filters, [s.filter_note], api_visibility="private", **SEARCHES)
    _on(gr.Button(visible=False).click, on_filter, s.filters, [s.filter_note], api_name="filter_count")


def _wire_clicks(page: Page, ui: Layout, k: int) -> None:
    """Clicks in the galleries, the selection bar's buttons (but labelling: _wire_labels), the preview's."""
    c, tab = ui.clicks, ui.label
    s, bar, preview = c.search, c.bar, c.preview

    def clicked(ids: list[int], mode: str, selected: list[int], folder: Any, label: Any, prediction: Any,
                date_from: Any, date_to: Any, evt: gr.SelectData) -> Updates:
        flt = _filter(folder, label, prediction, date_from, date_to)
        return _render_act(c, handlers.click(page, ids, _index(evt), mode, selected, k, flt))

    def clicked_select(ids: list[int], selected: list[int], evt: gr.SelectData) -> Updates:
        return _render_selection(bar, handlers.click_select(page, ids, _index(evt), selected))

    for gallery, ids_state, name in ((s.results, s.ids, "click_result"),
                                     (preview.near, preview.near_ids, "click_neighbour")):
        _on(gallery.select, clicked, [ids_state, *c.inputs], c.out, **SEARCHES, api_name=name,
            api_visibility="undocumented")
    for gallery, ids_state, name in ((tab.next_gallery, tab.next_ids, "click_next"),
                                     (tab.view_gallery, tab.view_ids, "click_prediction")):
        _on(gallery.select, clicked_select, [ids_state, bar.ids], bar.out, api_name=name,
            api_visibility="undocumented")
    _on(bar.gallery.select, clicked_select, [bar.ids, bar.ids], bar.out, api_name="click_selected",
        api_visibility="undocumented")
    _on(s.select_all_btn.click, lambda shown, sel: _render_selection(bar, handlers.select_all(page, shown, sel)),
        [s.ids, bar.ids], bar.out, api_name="select_all")
    _on(bar.clear_btn.click, lambda: {**_render_selection(bar, handlers.clear_selection(page)), ui.map.selected: []},
        None, [*bar.out, ui.map.selected], api_name="clear_selection").then(None, None, None, js=_js(CLEAR_MAP_JS))
    # the preview's own buttons
    _on(preview.search_btn.click,
        lambda i, *flt: _render_results(c, handlers.search_id(page, _opened(i), k, _filter(*flt))),
        [preview.id, *s.filters], c.search_out, **SEARCHES, api_visibility="private")
    _on(preview.select_btn.click,
        lambda i, sel: _render_selection(bar, handlers.toggle(page, sel, _opened(i))),
        [preview.id, bar.ids], bar.out, api_visibility="private")
    preview.close_btn.click(lambda: gr.Column(visible=False), None, [preview.box], api_visibility="private")


def _opened(image_id: int | float | str | None) -> int:
    if image_id is None:
        raise ValueError("open a photo first")
    return int(image_id)


def _wire_duplicates(page: Page, d: DuplicatesTab) -> None:
    def on_duplicates(t: float, level: str = "copies and bursts",
                      progress: gr.Progress = gr.Progress()) -> Updates:
        found: Duplicates = handlers.duplicates(page, level, _progress(progress), cosine=t)
        return {d.groups: found.groups, d.note: found.note}

    outputs = [d.groups, d.note]
    inputs = [d.threshold, d.level]
    _on(d.find_btn.click, on_duplicates, inputs, outputs, api_name="duplicates", **DUPLICATES)
    _on(d.threshold.release, on_duplicates, inputs, outputs, api_visibility="undocumented", **DUPLICATES)
    _on(d.level.input, on_duplicates, inputs, outputs, api_visibility="undocumented", **DUPLICATES)

    def on_export(t: float, level: str = "copies and bursts",
                  progress: gr.Progress = gr.Progress()) -> Updates:
        note, path = handlers.export_duplicates(page, level, _progress(progress), cosine=t)
        return {d.status: note, d.file: gr.File(value=str(_download_copy(path)), visible=True)}

    _on(d.export_btn.click, on_export, inputs, [d.status, d.file], api_name="export_duplicates", **EXPORT)

    def on_decide(image_id: float, decision: str) -> str:
        return handlers.decide(page, int(image_id), decision)

    box_id, box_decision = gr.Number(visible=False, precision=0), gr.Textbox(visible=False)
    _on(gr.Button(visible=False).click, on_decide, [box_id, box_decision], [d.status], api_name="decide")


def _recolours(page: Page, m: MapTab) -> Callable[[Dependency], Dependency]:
    """After labels or predictions changed: the map shown gets its new colours (keys only)."""

    def on_recolour(layout: photomap.PhotoMap | None, by: str) -> Any:
        data = handlers.map_colours(page, layout, by)
        return gr.skip() if data is None else data

    def recolours(event: Dependency) -> Dependency:
        # gradio's .then is a functools.partial of an unannotated listener: the Dependency it returns is untyped
        return cast("Dependency", event.then(_guard(1)(on_recolour), [m.layout, m.colour_by], [m.keys],
                                             api_visibility="private", show_progress="hidden").then(
            None, [m.keys], None, js=_js(RECOLOUR_MAP_JS)))

    return recolours


def _wire_vocabulary(page: Page, ui: Layout) -> None:
    """Creating, renaming and deleting labels: every label picker follows."""
    tab, vocab_out = ui.label, ui.vocab_out

    def vocab(v: Vocabulary, *emptied: Block) -> Updates:
        return {**_render_vocabulary(ui, v), **{box: "" for box in emptied}}

    _on(tab.create_btn.click, lambda name: vocab(handlers.create_label(page, name), tab.new_label),
        [tab.new_label], [tab.new_label, *vocab_out], api_name="create_label")
    _on(tab.new_label.submit, lambda name: vocab(handlers.create_label(page, name), tab.new_label),
        [tab.new_label], [tab.new_label, *vocab_out], api_visibility="undocumented")
    _on(tab.rename_btn.click, lambda old, new: vocab(handlers.rename_label(page, old, new), tab.rename_to),
        [tab.pick, tab.rename_to], [tab.rename_to, *vocab_out], api_name="rename_label")
    _on(tab.delete_btn.click, lambda old: vocab(handlers.delete_label(page, old, _info)), [tab.pick],
        vocab_out, api_name="delete_label")


def _wire_assign(page: Page, ui: Layout, k: int) -> None:
    """Assignments (button or number key): the selection empties (on the map too), the label-next queue and
    the map's colours follow."""
    bar, tab = ui.clicks.bar, ui.label
    recolours = _recolours(page, ui.map)
    assigned_out = [*bar.out, *ui.vocab_out, ui.map.selected, tab.next_gallery, tab.next_ids]

    def after_assign(s: Selection, v: Vocabulary) -> Updates:
        batch = handlers.next_batch(page, k)
        queue = {} if batch is None else _render_gallery(tab.next_gallery, tab.next_ids, batch)
        return {**_render_selection(bar, s), **_render_vocabulary(ui, v), ui.map.selected: [], **queue}

    def on_assign(selected: list[int], label: str) -> Updates:
        return after_assign(*handlers.assign(page, selected, label, _info))

    def on_unassign(selected: list[int]) -> Updates:
        s, v = handlers.unassign(page, selected)
        return {**_render_selection(bar, s), **_render_vocabulary(ui, v)}

    recolours(_on(bar.assign_btn.click, on_assign, [bar.ids, bar.label], assigned_out, api_name="assign"
                  ).then(None, None, None, js=_js(CLEAR_MAP_JS)))

    def on_key(n: Any, name: str | None, selected: list[int]) -> Updates:
        """A number key labels with the name it showed; when that is no longer the label at its place (labels
        changed in another tab), nothing is labelled and the keys are shown again as they are now."""
        try:
            return after_assign(*handlers.label_key(page, n, name, selected, _info))
        except handlers.KeyMismatch as e:
            gr.Warning(_text(str(e)))
            return _render_vocabulary(ui, handlers.vocabulary(page))

    # the script's way: the key's number and the label name it means (both required)
    key_number, key_label = gr.Number(visible=False, precision=0), gr.Textbox(visible=False)
    recolours(_on(gr.Button(visible=False).click, on_key, [key_number, key_label, bar.ids], assigned_out,
                  api_name="label_key"))
    # a button (or its number key, app/static/labelkeys.js) sends its own text, "N name": the label it showed
    for n, btn in enumerate(bar.keys, 1):
        recolours(_on(btn.click, lambda shown, selected, _n=n: on_key(_n, handlers.key_name(_n, shown), selected),
                      [btn, bar.ids], assigned_out, api_visibility="private").then(None, None, None,
                                                                                   js=_js(CLEAR_MAP_JS)))
    recolours(_on(bar.unassign_btn.click, on_unassign, [bar.ids], bar.out + ui.vocab_out, api_name="unassign"))


def _wire_labels(page: Page, ui: Layout, k: int) -> None:
    """The vocabulary, assignments, the probe, label-next, accepting predictions and the exports."""
    bar, tab = ui.clicks.bar, ui.label
    recolours = _recolours(page, ui.map)
    _wire_vocabulary(page, ui)
    _wire_assign(page, ui, k)

    def on_train(progress: gr.Progress = gr.Progress()) -> Updates:
        report, counts = handlers.train(page, _progress(progress))
        return {tab.train_report: report, tab.counts: counts}

    def on_accept_selected(selected: list[int]) -> Updates:
        counts, s = handlers.accept_selected(page, selected, _info)
        return {tab.counts: counts, **_render_selection(bar, s)}

    recolours(_on(tab.train_btn.click, on_train, None, [tab.train_report, tab.counts], api_name="train", **TRAIN))
    _on(tab.next_btn.click, lambda: _render_gallery(tab.next_gallery, tab.next_ids, handlers.label_next(page, k)),
        None, [tab.next_gallery, tab.next_ids], api_name="label_next")
    _on(tab.select_batch_btn.click, lambda shown, s: _render_selection(bar, handlers.select_all(page, shown, s)),
        [tab.next_ids, bar.ids], bar.out, api_name="select_batch")

    def on_view(kind: str, label: str, order: str) -> Updates:
        return _render_gallery(tab.view_gallery, tab.view_ids,
                               handlers.show_labelled(page, kind, label, order, k, _info))

    _on(tab.view_btn.click, on_view, [tab.view, tab.view_label, tab.order], [tab.view_gallery, tab.view_ids],
        api_name="show_labelled")
    recolours(_on(tab.accept_btn.click, lambda conf: handlers.accept(page, conf, _info), [tab.min_conf],
                  [tab.counts], api_name="accept"))
    recolours(_on(tab.accept_sel_btn.click, on_accept_selected, [bar.ids], [tab.counts, *bar.out],
                  api_name="accept_selected"))

    def on_export(kind: str, with_preds: bool, conf: float, progress: gr.Progress = gr.Progress()) -> Updates:
        note, path = handlers.export(page, kind, with_preds, conf, _progress(progress))
        file = gr.File(visible=False) if path is None else gr.File(value=str(_download_copy(path)), visible=True)
        return {tab.export_note: note, tab.export_file: file}

    _on(tab.export_btn.click, on_export, [tab.export_kind, tab.include_preds, tab.min_conf],
        [tab.export_note, tab.export_file], api_name="export", **EXPORT)


def _wire_map(page: Page, ui: Layout, k: int) -> None:
    """The photo map: drawing it (then handing the payload to its script), region selections, clicks."""
    m, c = ui.map, ui.clicks

    def on_map(by: str, how: str, progress: gr.Progress = gr.Progress()) -> Updates:
        v: MapView = handlers.draw_map(page, by, how, _progress(progress))
        return {m.data: v.data, m.note: v.note, m.layout: v.layout}

    _on(m.draw_btn.click, on_map, [m.colour_by, m.method], [m.data, m.note, m.layout],
        api_name="draw_map", **MAP).then(None, [m.data], None, js=_js(LOAD_MAP_JS))

    def on_pick(layout: photomap.PhotoMap | None, text: str, selected: list[int], from_map: list[int]) -> Updates:
        s, ids = handlers.map_select(page, layout, text, selected, from_map)
        return {**_render_selection(c.bar, s), m.selected: ids}

    # .change, not .input: the script's input event reaches gradio 6.31 as a change (app/photomap.py)
    _on(m.picked.change, on_pick, [m.layout, m.picked, c.bar.ids, m.selected], [*c.bar.out, m.selected],
        api_name="map_select", api_visibility="undocumented")

    def on_open(layout: photomap.PhotoMap | None, text: str, mode: str, selected: list[int], *flt: Any) -> Updates:
        return _render_act(c, handlers.map_open(page, layout, text, mode, selected, k, _filter(*flt)))

    _on(m.opened.change, on_open, [m.layout, m.opened, *c.inputs], c.out,
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
