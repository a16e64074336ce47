"""The page: `build_app(index_dir) -> gr.Blocks`, a thin layer over app/search.py and app/labels.py.

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
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import gradio as gr
import numpy as np

from app import exports, search
from app.files import (
    MAX_UPLOAD,
    UPLOAD_REFUSED,
    HostGuard,
    LoginThrottle,
    allowed_hosts,
    check_bind,
    read_upload,
    served_paths,
)
from app.labels import Labels

log = logging.getLogger("byol_search.page")
PAGE = 24  # results per page
SEARCH_MODE, SELECT_MODE = "search from it", "add it to the selection"
EXPORTS = ("CSV", "ImageFolder (links)", "ImageFolder (copies)", "HF datasets")
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
    caps = captions or [h.caption for h in hits]
    return [(h.thumb, c) for h, c in zip(hits, caps)], [h.id for h in hits]


class Page:
    """What all sessions share: the store, the label database and the encoder (loaded on first upload)."""

    def __init__(self, index_dir: str | Path, store=None, embedder=None, labels: Labels | None = None):
        self.index_dir = Path(index_dir)
        if store is None:
            from index.store import Store

            store = Store.open(self.index_dir)
        self.store = store
        self.labels = labels or Labels(self.index_dir)
        self._map_cache: dict = {}
        self._refreshed = 0.0
        self._encoder_lock = threading.Lock()
        # loaded now, so that a page whose encoder is not the index's never starts (EncoderMismatch)
        self._embedder = embedder if embedder is not None else self.load_encoder()
        self.check_encoder(self._embedder)

    def load_encoder(self):
        """The encoder file the index names, loaded (its hash is that of the bytes loaded)."""
        from index.embed import Embedder

        return Embedder(self.store.model_path)

    def check_encoder(self, embedder) -> None:
        """Refuse an encoder other than the one the index was built with, as the command line does."""
        sha = getattr(embedder, "sha256", None)  # stand-ins in tests have none
        if sha is None or sha == self.store.model_sha256:
            return
        from index.store import EncoderMismatch, rebuild_hint

        raise EncoderMismatch(
            f"{self.index_dir} was built with encoder {self.store.model_sha256[:12]}, but "
            f"{getattr(embedder, 'model_path', self.store.model_path)} holds encoder {sha[:12]}: the file changed "
            "after indexing, and searching by upload would give wrong results.\n" + rebuild_hint(self.index_dir))

    @property
    def embedder(self):
        """The encoder for uploads: the index's current one (reloaded after the index switched encoders)."""
        self.refresh()
        with self._encoder_lock:
            sha = getattr(self._embedder, "sha256", None)
            if sha is not None and sha != self.store.model_sha256:
                from index.store import EncoderMismatch

                try:
                    fresh = self.load_encoder()
                    self.check_encoder(fresh)
                except (EncoderMismatch, ValueError, OSError) as e:
                    log.warning("upload search refused: %s", e)
                    raise ValueError("the index is being updated with another encoder, so searching by upload "
                                     "is paused; try again when `byol-search index` (or `run`) has finished, "
                                     "or click a photo to search from it") from e
                self._embedder = fresh
        return self._embedder

    def refresh(self) -> None:
        """Pick up a newer saved generation of the index (an update run beside the page), at most once a second."""
        now = time.monotonic()
        if now - self._refreshed > 1.0 and hasattr(self.store, "refresh"):
            self._refreshed = now
            if self.store.refresh():
                self._map_cache.clear()

    def require_photos(self) -> None:
        self.refresh()
        if self.store.count == 0:
            raise ValueError("the index is empty: index a folder first (byol-search index FOLDER --model "
                             "encoder.onnx --out INDEX_DIR)")

    def summary(self) -> str:
        sha = str(getattr(self.store, "model_sha256", ""))[:12]
        model = Path(str(getattr(self.store, "model_path", "?"))).name
        return (f"**{self.store.count:,}** photos indexed · {self.store.dim}-d embeddings · encoder `{model}`"
                + (f" ({sha})" if sha else "") + f" · `{self.index_dir}`")

    # ------------------------------------------------------------ captions
    def label_captions(self, hits: list[search.Hit]) -> list[str]:
        labelled = self.labels.labels_of(h.id for h in hits)
        preds = self.labels.predictions(h.id for h in hits if h.id not in labelled)
        out = []
        for h in hits:
            if h.id in labelled:
                out.append(f"[{labelled[h.id][0]}] {h.name}")
            elif h.id in preds:
                out.append(f"{preds[h.id].label}? {preds[h.id].confidence:.2f} · {h.name}")
            else:
                out.append(h.name)
        return out

    def counts_markdown(self) -> str:
        counts = self.labels.counts()
        if not counts:
            return "No labels yet: type a name and press **Create**, or type one in the selection bar."
        rows = ["| label | labelled | accepted | predicted |", "|---|---:|---:|---:|"]
        rows += [f"| {html.escape(n)} | {c['human']} | {c['accepted']} | {c['predicted']} |" for n, c in counts.items()]
        return "\n".join(rows)

    def label_choices(self):
        names = self.labels.names()
        return (gr.Dropdown(choices=names), gr.Dropdown(choices=names), gr.Dropdown(choices=names),
                self.counts_markdown())

    def selection_view(self, ids: list[int]):
        hits = search.hits(self.store, ids)
        value, ids = _gallery(hits, self.label_captions(hits))
        note = f"**{len(ids)}** selected" + (" · click a photo here to drop it" if ids else "")
        return value, ids, note

    def map_for(self, method: str):
        key = (method, self.store.count, getattr(self.store, "generation", None))
        if key not in self._map_cache:
            include = list(self.labels.labelled())
            self._map_cache = {key: search.compute_map(self.store, method, include=include)}
        return self._map_cache[key]


def _upload_image(payload, upload_dir: str | Path, uploaded) -> object:
    """The uploaded query photo decoded with our guards; read only when gradio itself stored it from an upload
    (any other path, whether it exists or not, gets the same refusal: UPLOAD_REFUSED)."""
    path = payload.get("path") if isinstance(payload, dict) else None
    if not path:
        raise ValueError(UPLOAD_REFUSED)
    return search.load_query(read_upload(path, upload_dir, uploaded))  # load_rgb with the folder's guards


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
    st = page.store

    with gr.Blocks(title="byol-search", analytics_enabled=False) as demo:
        header = gr.Markdown("## byol-search\n" + page.summary())
        query = gr.State(None)  # {"vec": [...]} | {"id": n} | {"random": True}: what "show more" continues
        sel_ids = gr.State([])
        with gr.Accordion("Selection and labelling", open=True):
            with gr.Row():
                click_mode = gr.Radio([SEARCH_MODE, SELECT_MODE], value=SEARCH_MODE, label="Clicking a photo",
                                      info="in Search, Duplicates and Map; in Label it always selects", scale=2)
                sel_label = gr.Dropdown(page.labels.names(), label="Label", allow_custom_value=True,
                                        info="pick one, or type a new name", scale=2, elem_id="sel-label")
                assign_btn = gr.Button("Assign to selected", variant="primary", scale=1)
                unassign_btn = gr.Button("Remove their labels", scale=1)
                clear_btn = gr.Button("Clear selection", scale=1)
            sel_note = gr.Markdown("**0** selected")
            sel_gallery = gr.Gallery(label="Selected", columns=12, height=120, allow_preview=False,
                                     object_fit="cover", interactive=False, buttons=[], elem_id="selection")
        with gr.Tabs() as tabs:
            with gr.Tab("Search", id="search"):
                with gr.Row():
                    upload = gr.Image(label="Query photo: upload or paste", type="filepath", height=220,
                                      sources=["upload", "clipboard"], scale=1)
                    with gr.Column(scale=2):
                        search_note = gr.Markdown("Upload a photo, or press **Random photos** and click one.")
                        with gr.Row():
                            random_btn = gr.Button("Random photos")
                            more_btn = gr.Button("Show more")
                            select_all_btn = gr.Button("Select all shown")
                results = gr.Gallery(label="Results (cosine · file)", columns=6, height="auto", allow_preview=False,
                                     object_fit="cover", interactive=False, buttons=[], elem_id="results")
                res_ids = gr.State([])
            with gr.Tab("Duplicates", id="duplicates"):
                with gr.Row():
                    threshold = gr.Slider(0.80, 1.0, value=0.95, step=0.005, label="Cosine threshold",
                                          info="higher: only near-identical photos")
                    dup_btn = gr.Button("Find near-duplicates")
                dup_note = gr.Markdown()
                dup_gallery = gr.Gallery(label="Groups", columns=8, height="auto", allow_preview=False,
                                         object_fit="cover", interactive=False, buttons=[])
                dup_ids = gr.State([])
            with gr.Tab("Label", id="label"):
                with gr.Row():
                    new_label = gr.Textbox(label="New label", placeholder="e.g. cats", scale=2)
                    create_btn = gr.Button("Create", scale=1)
                    label_pick = gr.Dropdown(page.labels.names(), label="Existing label", scale=2)
                    rename_to = gr.Textbox(label="Rename to", scale=2)
                    rename_btn = gr.Button("Rename", scale=1)
                    delete_btn = gr.Button("Delete label", variant="stop", scale=1)
                counts_md = gr.Markdown(page.counts_markdown())
                with gr.Row():
                    train_btn = gr.Button("Train probe and predict all", variant="primary")
                    next_btn = gr.Button("What to label next")
                train_md = gr.Markdown(elem_id="train-report")
                next_gallery = gr.Gallery(label="Least certain (click to select)", columns=8, height="auto",
                                          allow_preview=False, object_fit="cover", interactive=False, buttons=[],
                                          elem_id="label-next")
                next_ids = gr.State([])
                with gr.Row():
                    view = gr.Radio(["predicted", "labelled"], value="predicted", label="Show photos")
                    view_label = gr.Dropdown(page.labels.names(), label="as label", elem_id="view-label")
                    order = gr.Radio(["most confident first", "least confident first"], value="most confident first",
                                     label="Order")
                    view_btn = gr.Button("Show")
                view_gallery = gr.Gallery(label="Photos (click to select, then assign the right label)",
                                          columns=8, height="auto", allow_preview=False, object_fit="cover",
                                          interactive=False, buttons=[], elem_id="predictions")
                view_ids = gr.State([])
                with gr.Row():
                    min_conf = gr.Slider(0.5, 1.0, value=0.9, step=0.01, label="Confidence at least")
                    accept_btn = gr.Button("Accept all predictions at or above it")
                    accept_sel_btn = gr.Button("Accept predictions of the selected")
                with gr.Row():
                    export_kind = gr.Radio(list(EXPORTS), value="CSV", label="Export")
                    include_preds = gr.Checkbox(label="Include predictions at or above the confidence", value=False)
                    export_btn = gr.Button("Export")
                export_md = gr.Markdown()
                export_file = gr.File(label="Download", visible=False)
            with gr.Tab("Map", id="map"):
                with gr.Row():
                    colour_by = gr.Radio(["label", "prediction"], value="label", label="Colour by")
                    methods = ["PCA", "UMAP"] if search.umap_available() else ["PCA"]
                    method = gr.Radio(methods, value="PCA", label="Projection",
                                      info=None if len(methods) > 1 else "pip install umap-learn for UMAP")
                    map_btn = gr.Button("Draw map")
                map_legend = gr.HTML()
                map_img = gr.Image(label="Click a dot to search from that photo", interactive=False, type="pil",
                                   buttons=[], elem_id="map")
                map_gallery = gr.Gallery(label="Nearest to the clicked photo", columns=8, height="auto",
                                         allow_preview=False, object_fit="cover", interactive=False, buttons=[])
                map_ids = gr.State([])
                map_state = gr.State(None)

        search_out = [results, res_ids, query, search_note, tabs]
        sel_out = [sel_gallery, sel_ids, sel_note]
        vocab_out = [sel_label, label_pick, view_label, counts_md]

        def on(event, fn, inputs, outputs, **kw):
            return event(_guard(len(outputs))(fn), inputs, outputs, **kw)

        # ------------------------------------------------------------ search
        def show_search(hits, q, note):
            value, ids = _gallery(hits)
            return value, ids, q, note, gr.Tabs(selected="search")

        def search_from_id(image_id: int, k: int = page_size):
            page.require_photos()
            hits = search.search_id(st, image_id, k)
            name = hits[0].name if hits else f"#{image_id}"
            return show_search(hits, {"id": int(image_id)}, f"Photos like **{html.escape(name)}**")

        def on_upload(payload):
            page.require_photos()
            if payload is None:
                return tuple(gr.skip() for _ in search_out)
            img = _upload_image(payload, _upload_dir(demo), demo.upload_file_set)
            vec = search.embed_photo(page.embedder, img)
            hits = search.search_vector(st, vec, page_size)
            return show_search(hits, {"vec": vec[0].tolist()}, "Photos like your upload")

        def on_random():
            page.require_photos()
            return show_search(search.random_browse(st, page_size), {"random": True},
                               "Random photos: click one to search from it")

        def on_more(q, shown):
            if not q:
                raise ValueError("search first: upload a photo or press Random photos")
            if q.get("random"):
                extra = [h for h in search.random_browse(st, 2 * page_size) if h.id not in set(shown)][:page_size]
                hits = search.hits(st, shown) + extra
            elif "id" in q:
                hits = search.search_id(st, q["id"], len(shown) + page_size)
            else:
                hits = search.search_vector(st, np.asarray(q["vec"], np.float32), len(shown) + page_size)
            value, ids = _gallery(hits)
            return value, ids, f"Showing {len(ids)} photos"

        on(upload.upload, on_upload, [upload], search_out, preprocess=False, **SEARCHES, api_name="upload_search")
        on(random_btn.click, on_random, None, search_out, **SEARCHES, api_name="random_photos")
        on(more_btn.click, on_more, [query, res_ids], [results, res_ids, search_note], **SEARCHES,
           api_name="show_more")
        # click-to-search without a click, for scripts and tests: the same code path as a click
        search_id_box = gr.Number(visible=False, precision=0)
        on(search_id_box.submit, lambda i: search_from_id(int(i)), [search_id_box], search_out,
           **SEARCHES, api_name="search_id")

        def clicked(ids, mode, selected, evt: gr.SelectData):
            """A click in a results gallery: search from the photo, or toggle it in the selection."""
            if evt is None or evt.index is None or not (0 <= int(evt.index) < len(ids)):
                raise ValueError("that photo is no longer shown: search again")
            image_id = int(ids[int(evt.index)])
            if mode == SELECT_MODE:
                return (*[gr.skip()] * len(search_out), *toggle(selected, image_id))
            return (*search_from_id(image_id), *[gr.skip()] * len(sel_out))

        def toggle(selected, image_id):
            selected = [i for i in selected if i != image_id] if image_id in selected else [*selected, image_id]
            return page.selection_view(selected)

        def clicked_select(ids, selected, evt: gr.SelectData):
            if evt is None or evt.index is None or not (0 <= int(evt.index) < len(ids)):
                raise ValueError("that photo is no longer shown")
            return toggle(selected, int(ids[int(evt.index)]))

        for gallery, ids_state, name in ((results, res_ids, "click_result"), (dup_gallery, dup_ids, "click_duplicate"),
                                         (map_gallery, map_ids, "click_map_result")):
            on(gallery.select, clicked, [ids_state, click_mode, sel_ids], search_out + sel_out,
               **SEARCHES, api_name=name, api_visibility="undocumented")
        for gallery, ids_state, name in ((next_gallery, next_ids, "click_next"),
                                         (view_gallery, view_ids, "click_prediction")):
            on(gallery.select, clicked_select, [ids_state, sel_ids], sel_out, api_name=name,
               api_visibility="undocumented")
        on(sel_gallery.select, clicked_select, [sel_ids, sel_ids], sel_out, api_name="click_selected",
           api_visibility="undocumented")

        def select_all(shown, selected):
            return page.selection_view([*selected, *[i for i in shown if i not in set(selected)]])

        on(select_all_btn.click, select_all, [res_ids, sel_ids], sel_out, api_name="select_all")
        on(clear_btn.click, lambda: page.selection_view([]), None, sel_out, api_name="clear_selection")

        # ------------------------------------------------------------ duplicates
        def on_duplicates(t, progress=gr.Progress()):
            page.require_photos()
            progress(0.1, desc="comparing every photo with its neighbours")
            groups = search.duplicate_groups(st, t)
            flat = [h for g in groups for h in g]
            caps = [f"group {j + 1} · {h.caption}" for j, g in enumerate(groups) for h in g]
            value, ids = _gallery(flat, caps)
            note = (f"{len(groups)} group(s) at cosine >= {t:.3f}" if groups
                    else f"No near-duplicates at cosine >= {t:.3f}: lower the threshold to see looser matches")
            return value, ids, note

        on(dup_btn.click, on_duplicates, [threshold], [dup_gallery, dup_ids, dup_note], api_name="duplicates")
        on(threshold.release, on_duplicates, [threshold], [dup_gallery, dup_ids, dup_note],
           api_visibility="undocumented")

        # ------------------------------------------------------------ labels
        def on_create(name):
            page.labels.create(name)
            return ("", *page.label_choices())

        def on_rename(old, new):
            if not old:
                raise ValueError("pick the label to rename")
            page.labels.rename(old, new)
            return ("", *page.label_choices())

        def on_delete(old):
            if not old:
                raise ValueError("pick the label to delete")
            page.labels.delete(old)
            gr.Info(f"Deleted label {old!r} with its assignments and predictions")
            return page.label_choices()

        def on_assign(selected, label):
            if not selected:
                raise ValueError("select photos first: set 'Clicking a photo' to 'add it to the selection'")
            if not label:
                raise ValueError("pick or type a label")
            n = page.labels.assign(selected, label)
            gr.Info(f"Labelled {n} photo(s) {label!r}")
            return (*page.selection_view([]), *page.label_choices())

        def on_unassign(selected):
            if not selected:
                raise ValueError("select photos first")
            page.labels.unassign(selected)
            return (*page.selection_view(selected), *page.label_choices())

        on(create_btn.click, on_create, [new_label], [new_label, *vocab_out], api_name="create_label")
        on(new_label.submit, on_create, [new_label], [new_label, *vocab_out], api_visibility="undocumented")
        on(rename_btn.click, on_rename, [label_pick, rename_to], [rename_to, *vocab_out], api_name="rename_label")
        on(delete_btn.click, on_delete, [label_pick], vocab_out, api_name="delete_label")
        on(assign_btn.click, on_assign, [sel_ids, sel_label], sel_out + vocab_out, api_name="assign")
        on(unassign_btn.click, on_unassign, [sel_ids], sel_out + vocab_out, api_name="unassign")

        def on_train(progress=gr.Progress()):
            page.require_photos()
            r = page.labels.train(st, progress=lambda f, d: progress(f, desc=d))
            acc = ("not estimated yet (label at least 2 photos of one label and 3 in all)" if r.accuracy is None
                   else f"**{r.accuracy:.1%}** (cross-validated on your {sum(r.counts.values())} labels)")
            per = ", ".join(f"{html.escape(n)}: {c}" for n, c in r.counts.items())
            report = (f"Probe v{r.version} trained on {per}. Estimated accuracy {acc}. "
                      f"Predicted {r.predicted:,} photos in {r.seconds:.1f} s.")
            return report, page.counts_markdown()

        def on_next():
            preds = page.labels.label_next(page_size)
            if not preds:
                raise ValueError("no predictions yet: label two kinds of photos and press Train")
            hits = search.hits(st, [p.id for p in preds])
            by_id = {p.id: p for p in preds}
            caps = [f"{by_id[h.id].label}? {by_id[h.id].confidence:.2f} · {h.name}" for h in hits]
            return _gallery(hits, caps)

        def on_view(kind, label, order_by):
            if not label:
                raise ValueError("pick a label to show")
            preds = page.labels.browse(label, predicted=kind == "predicted",
                                       most_confident=order_by.startswith("most"), limit=4 * page_size)
            hits = search.hits(st, [p.id for p in preds])
            by_id = {p.id: p for p in preds}
            caps = [f"{by_id[h.id].label} {by_id[h.id].confidence:.2f} · {h.name}" for h in hits]
            if not hits:
                gr.Info(f"No photos {kind} as {label!r} yet")
            return _gallery(hits, caps)

        def on_accept(conf):
            n = page.labels.accept(min_confidence=float(conf))
            gr.Info(f"Accepted {n} prediction(s) at confidence >= {conf:.2f}")
            return page.counts_markdown()

        def on_accept_selected(selected):
            if not selected:
                raise ValueError("select photos first")
            n = page.labels.accept(ids=selected)
            gr.Info(f"Accepted {n} prediction(s)")
            return (page.counts_markdown(), *page.selection_view([]))

        on(train_btn.click, on_train, None, [train_md, counts_md], api_name="train")
        on(next_btn.click, on_next, None, [next_gallery, next_ids], api_name="label_next")
        on(view_btn.click, on_view, [view, view_label, order], [view_gallery, view_ids], api_name="show_labelled")
        on(accept_btn.click, on_accept, [min_conf], [counts_md], api_name="accept")
        on(accept_sel_btn.click, on_accept_selected, [sel_ids], [counts_md, *sel_out], api_name="accept_selected")

        def on_export(kind, with_preds, conf, progress=gr.Progress()):
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = page.index_dir / "exports"
            conf = float(conf) if with_preds else 0.0
            if kind == "CSV":
                path = out / f"labels-{stamp}.csv"
                n = exports.export_csv(page.labels, st, path)
                return f"Wrote {n:,} rows to `{path}`", gr.File(value=str(_download_copy(path)), visible=True)
            if kind.startswith("ImageFolder"):
                path = out / f"imagefolder-{stamp}"
                counts = exports.export_imagefolder(page.labels, st, path, copy="copies" in kind, include_predictions=with_preds,
                                                        min_confidence=conf,
                                                        progress=lambda f, d: progress(f, desc=d))
                per = ", ".join(f"{html.escape(k)}: {v}" for k, v in sorted(counts.items()))
                return f"Wrote `{path}` ({per})", gr.File(visible=False)
            path = out / f"hf-dataset-{stamp}"
            progress(0.1, desc="building the dataset")
            n = exports.export_hf(page.labels, st, path, include_predictions=with_preds, min_confidence=conf)
            return (f"Saved a `datasets` dataset of {n:,} photos to `{path}` (load it with "
                    f"`datasets.load_from_disk`)", gr.File(visible=False))

        on(export_btn.click, on_export, [export_kind, include_preds, min_conf], [export_md, export_file],
           api_name="export")

        # ------------------------------------------------------------ map
        def on_map(by, how, progress=gr.Progress()):
            page.require_photos()
            progress(0.1, desc=f"projecting embeddings ({how})")
            m = page.map_for(how.lower())
            keys_by = page.labels.labelled()
            if by == "prediction":
                keys_by = {**page.labels.all_predictions(), **keys_by}
            keys = search.colour_keys(m.ids, keys_by)
            swatches = " ".join(
                f'<span style="white-space:nowrap"><span style="display:inline-block;width:12px;height:12px;'
                f'background:{c};border-radius:6px"></span> {html.escape(n)} ({k:,})</span>'
                for n, c, k in search.legend(keys))
            note = f"{len(m.ids):,} photos, {m.method.upper()}"
            return search.render_map(m, keys), f"<div>{note} &nbsp; {swatches}</div>", m

        def on_map_click(m, evt: gr.SelectData):
            if m is None:
                raise ValueError("draw the map first")
            if not evt.index or len(evt.index) != 2:
                raise ValueError("no photo there: click on a dot")
            x, y = evt.index
            image_id = m.point_at(float(x), float(y))
            if image_id is None:
                raise ValueError("no photo there: click on a dot")
            return _gallery(search.search_id(st, image_id, page_size // 2))

        on(map_btn.click, on_map, [colour_by, method], [map_img, map_legend, map_state], api_name="draw_map")
        on(map_img.select, on_map_click, [map_state], [map_gallery, map_ids], **SEARCHES,
           api_name="click_map", api_visibility="undocumented")

        def on_load():
            """A fresh page: the index may have been updated, and labels made in another tab."""
            page.refresh()
            return ("## byol-search\n" + page.summary(), *page.label_choices())

        on(demo.load, on_load, None, [header, *vocab_out], api_visibility="private")

    demo.queue(default_concurrency_limit=2)
    demo.page = page  # for tests and scripts: the shared state behind the page
    return demo


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
