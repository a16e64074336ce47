"""What every session of the page shares: the store, the label database, the encoder for uploads, the photo
facts (index/photoinfo.py, filled in a background thread from page start), the duplicate decisions, the
default photo map (laid out with its thumbnail sheets in a background thread from page start), the probe
(app/probe.py) and, only while its newest probe is an old one fitted on neighbour-averaged embeddings, every
photo's neighbours (found in a background thread after the map).

The page's handlers (app/handlers/) take a Page as their first argument; app/ui.py builds one per page.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from app.labels import Labels
from app.probe import Probe

if TYPE_CHECKING:
    from app.review import Decisions
    from index.embed import Embedder
    from index.photoinfo import PhotoInfoCache
    from index.store import Store

log = logging.getLogger("byol_search.page")


class Page:
    """What all sessions share: the store, the label database, its probe and the encoder (loaded when the page is
    built)."""

    def __init__(self, index_dir: str | Path, store: Store | None = None, embedder: Embedder | None = None,
                 labels: Labels | None = None):
        self.index_dir = Path(index_dir)
        if store is None:
            from index.store import Store

            store = Store.open(self.index_dir)
        self.store: Store = store
        self.labels = labels or Labels(self.index_dir)
        self.probe = Probe(self.labels)
        self._infos: PhotoInfoCache | None = None
        self._decisions: Decisions | None = None
        self._lazy_lock = threading.Lock()
        self._fill_thread: threading.Thread | None = None
        self._fill_stop = threading.Event()
        self._fill_state = ""  # what the background fill of photo facts is doing, for the page
        self._map_thread: threading.Thread | None = None
        self._graph_thread: threading.Thread | None = None
        self._refreshed = 0.0
        self._folders: tuple[tuple[float, int, int] | None, list[str]] = (None, [])
        self._folders_lock = threading.Lock()
        # the ids of the generation the page shows: when a newer one drops some, their pictures leave too
        self._ids = store.all_ids() if hasattr(store, "all_ids") else None
        self._last_request = 0.0  # when a handler last asked for the photos (background work gives way)
        self._encoder_lock = threading.Lock()
        # loaded now, so that a page whose encoder is not the index's never starts (EncoderMismatch)
        self._embedder = embedder if embedder is not None else self.load_encoder()
        self.check_encoder(self._embedder)

    def load_encoder(self) -> Embedder:
        """The encoder file the index names, loaded (its hash is that of the bytes loaded)."""
        from index.embed import Embedder

        return Embedder(self.store.model_path)

    def check_encoder(self, embedder: Embedder) -> None:
        """Refuse an encoder other than the one the index was built with, as the command line does."""
        sha = getattr(embedder, "sha256", None)  # stand-ins in tests have none
        if sha is None:
            return
        from index.store import check_encoder

        check_encoder(self.store, self.index_dir, sha, getattr(embedder, "model_path", self.store.model_path),
                      "the file changed after indexing, and searching by upload would give wrong results")

    @property
    def embedder(self) -> Embedder:
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
        """Pick up a newer saved generation of the index (an update run beside the page), at most once a second;
        the neighbours of its photos are then found again in the background when the probe needs them."""
        now = time.monotonic()
        if now - self._refreshed > 1.0 and hasattr(self.store, "refresh"):
            self._refreshed = now
            if self.store.refresh():
                self._remove_pictures_of_gone()
                self._restart_neighbours()

    def _remove_pictures_of_gone(self) -> None:
        """The new generation dropped photos: their previews, thumbnails and the map sheets showing them are
        deleted, so the page serves nothing of a photo no longer in the index (`index` deletes the previews
        and thumbnails too; this covers a page that made previews since, and the map's sheets)."""
        if self._ids is None:
            return
        import numpy as np

        from app import photomap
        from index import preview

        ids = self.store.all_ids()
        gone = np.setdiff1d(self._ids, ids, assume_unique=True)
        self._ids = ids
        if len(gone):
            try:
                files = preview.remove_pictures(self.store, gone.tolist())
                sheets = photomap.remove_stale_atlases(self.index_dir, gone=gone.tolist())
                log.info("%d photos left the index: %d previews and thumbnails, %d map sheets removed",
                         len(gone), files, sheets)
            except OSError as e:  # the next generation or page start tries again; say why in the log
                log.warning("removing the pictures of photos gone from the index failed: %s", e)

    def remove_stale_pictures(self) -> None:
        """At page start: previews and map sheets of photos no longer in the index (left while no page ran)."""
        from app import photomap
        from index import preview

        try:
            preview.remove_stale(self.store)
            photomap.remove_stale_atlases(self.index_dir, keep=self.store.all_ids())
        except OSError as e:
            log.warning("removing stale previews and map sheets failed: %s", e)

    def _restart_neighbours(self) -> None:
        """The index changed: find the new version's neighbours in the background too (when launch started it)."""
        with self._lazy_lock:
            t = self._graph_thread
            if t is None or t.is_alive():  # never started, or still working: the next training finds the rest
                return
            self._graph_thread = None
        self.start_neighbours()

    def require_photos(self) -> None:
        self._last_request = time.monotonic()
        self.refresh()
        if self.store.count == 0:
            raise ValueError("the index is empty: index a folder first (byol-search index FOLDER --model "
                             "encoder.onnx --out INDEX_DIR)")

    def summary(self) -> str:
        """The page's header line (Markdown): the file and folder names in it shown as text."""
        from app.markup import plain

        sha = plain(str(getattr(self.store, "model_sha256", ""))[:12])
        model = plain(Path(str(getattr(self.store, "model_path", "?"))).name)
        return (f"**{self.store.count:,}** photos indexed · {self.store.dim}-d embeddings · encoder {model}"
                + (f" ({sha})" if sha else "") + f" · {plain(self.index_dir)}")

    @property
    def infos(self) -> PhotoInfoCache:
        """The photos' facts (index.photoinfo.PhotoInfoCache: name, folder, bytes, pixels, date taken)."""
        with self._lazy_lock:
            if self._infos is None:
                from index.photoinfo import PhotoInfoCache

                self._infos = PhotoInfoCache(self.store)
            return self._infos

    def folders(self, limit: int = 2000) -> list[str]:
        """The folders below the photos' root that hold photos, and their parents (index/folders.py), kept per
        version of the index: every page load asks for them, and at 10,000,000 photos they take a 6.6 s scan."""
        from index import folders

        key = (float(self.store.created_at), int(self.store.generation), int(limit))
        with self._folders_lock:  # one scan at a time; a second asker waits for it and shares its answer
            if self._folders[0] != key:
                self._folders = (key, folders.folders(self.store, self.infos.root, limit))
            return self._folders[1]

    def _find_folders(self) -> None:
        try:
            self.folders()
        except Exception as e:  # the first page load finds them instead; say why in the log
            log.warning("finding the photos' folders failed: %s", e)

    @property
    def decisions(self) -> Decisions:
        """Keep / drop decisions of the duplicate review (app.review.Decisions)."""
        with self._lazy_lock:
            if self._decisions is None:
                from app.review import Decisions

                self._decisions = Decisions(self.index_dir)
            return self._decisions

    def start_facts(self) -> threading.Thread:
        """Read every photo's facts in a background thread (daemon; `close` stops it between batches), so that
        date filters cover the whole index; the page keeps working meanwhile and shows `facts_status`."""
        with self._lazy_lock:
            if self._fill_thread is not None and self._fill_thread.is_alive():
                return self._fill_thread

            def run() -> None:
                def progress(fraction: float, desc: str) -> None:
                    self._fill_state = f"reading photo facts: {fraction:.0%} ({desc.split(': ', 1)[-1]})"
                    self.give_way(self._fill_stop)

                try:
                    r = self.infos.fill(progress=progress, stop=self._fill_stop)
                    self._fill_state = "" if not r.stopped else "reading photo facts: stopped"
                except Exception as e:  # a page without dates still searches; say why in the log
                    log.warning("reading photo facts failed: %s", e)
                    self._fill_state = f"reading photo facts failed ({type(e).__name__})"

            self._fill_state = "reading photo facts: starting"
            self._fill_thread = threading.Thread(target=run, name="photo-facts", daemon=True)
            self._fill_thread.start()
            return self._fill_thread

    def start_map(self) -> threading.Thread:
        """Lay out the default photo map (PCA, every labelled photo included) and make its thumbnail sheets in
        a background thread from launch, so that the first "Draw map" finds both ready (app/photomap.py keeps
        layouts per index generation and the sheets in INDEX_DIR/atlas/); `wait_map` joins it. The folder
        filter's choices are found after it, for the first page load."""
        with self._lazy_lock:
            if self._map_thread is not None:
                return self._map_thread

            def run() -> None:
                from app import photomap

                self.remove_stale_pictures()
                try:
                    if self.store.count >= 2:
                        pm = photomap.build_map(self.store, "pca", include=sorted(self.labels.labelled()))
                        photomap.build_atlas(self.store, pm.sample)
                except Exception as e:  # the map is then made on the first click instead; say why in the log
                    log.warning("preparing the photo map failed: %s", e)
                # then the folder filter's choices, which every page load asks for (no draw waits for them)
                threading.Thread(target=self._find_folders, name="photo-folders", daemon=True).start()

            self._map_thread = threading.Thread(target=run, name="photo-map", daemon=True)
            self._map_thread.start()
            return self._map_thread

    def start_neighbours(self) -> threading.Thread:
        """Find every photo's neighbours (index/neighbours.py) in a background thread from launch, after the map
        and giving way to requests between batches, when the newest probe needs them (`Probe.needs_graph`: one
        fitted on neighbour-averaged embeddings, from before the probe became plain logistic regression), so
        that its first prediction does not wait for them (21 s at 100,000 photos on 2 cores); a prediction made
        meanwhile waits for this same work instead of doing it twice. With a plain probe, or none, the thread
        ends at once: training a plain probe and predicting with it never need the graph."""
        with self._lazy_lock:
            if self._graph_thread is not None:
                return self._graph_thread

            class Stopped(Exception):
                pass

            def between_batches(fraction: float, desc: str) -> None:
                self.give_way(self._fill_stop)
                if self._fill_stop.is_set():
                    raise Stopped  # the page is closing: nothing is kept, the next training starts over

            def run() -> None:
                try:
                    if not self.probe.needs_graph():
                        return  # a plain probe predicts from the embeddings alone
                    self.wait_map()
                    if not self._fill_stop.is_set():
                        self.probe.prepare(self.store, progress=between_batches)
                except Stopped:
                    pass
                except Exception as e:  # the first training finds them instead; say why in the log
                    log.warning("finding the photos' neighbours failed: %s", e)

            self._graph_thread = threading.Thread(target=run, name="neighbour-graph", daemon=True)
            self._graph_thread.start()
            return self._graph_thread

    def wait_map(self, timeout: float = 120.0) -> None:
        """Wait for the map being prepared since launch, if it still is: its work is the first draw's own."""
        t = self._map_thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    def give_way(self, stop: threading.Event | None = None, quiet: float = 0.25, longest: float = 1.0) -> None:
        """Between two batches of background work: wait while the page answered a request in the last `quiet`
        seconds (at most `longest`), so that searches do not share the interpreter with the work. A page in
        constant use still reads one batch a `longest`."""
        end = time.monotonic() + longest
        while (time.monotonic() - self._last_request < quiet and time.monotonic() < end
               and not (stop is not None and stop.is_set())):
            time.sleep(0.02)

    def facts_status(self) -> str:
        """'' once every photo's facts are read (or no fill was started), else its progress."""
        return self._fill_state

    def close(self) -> None:
        """Stop the background fill and close the databases this page opened (not the store)."""
        self._fill_stop.set()
        for t in (self._fill_thread, self._map_thread, self._graph_thread):
            if t is not None:
                t.join(timeout=30)
        for db in (self._infos, self._decisions):
            if db is not None:
                db.close()
