"""What every session of the page shares: the store, the label database and the encoder for uploads.

The page's handlers (app/handlers.py) take a Page as their first argument; app/ui.py builds one per page.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from app import search
from app.labels import Labels

log = logging.getLogger("byol_search.page")


class Page:
    """What all sessions share: the store, the label database and the encoder (loaded when the page is built)."""

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

    def map_for(self, method: str):
        key = (method, self.store.count, getattr(self.store, "generation", None))
        if key not in self._map_cache:
            include = list(self.labels.labelled())
            self._map_cache = {key: search.compute_map(self.store, method, include=include)}
        return self._map_cache[key]
