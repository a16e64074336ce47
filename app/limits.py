"""What the page bounds, so that no script can make it use unbounded memory or disk or hold what everyone shares.

- The queue (`bound_queue`): at most QUEUE_MAX events wait in all, and at most QUEUE_WAITING_MAX of one
  kind (one concurrency group: searches, previews, training, ...), so that a script sending 10,000
  `open_photo` calls fills the previews' line only: searches keep their own slots and their own line.
  Past either bound gradio answers 503 with BUSY, which the page shows.
- Uploads (`UploadLimit`): one upload request carries at most MAX_UPLOAD_BYTES (and says how long it is);
  uploads wait at most UPLOAD_KEEP_S for their search and are deleted UPLOAD_SHOWN_S after the search that
  reads them (`discard_after_search`: the browser still loads the upload to show it as the query), and all this page's waiting uploads together hold at most UPLOADS_MAX_BYTES; past that an
  upload is refused (507) with a message saying to try again in a few minutes.
- The previews' disk: index/preview.py (PREVIEW_CACHE_BYTES, least recently used leave first).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.files import MAX_UPLOAD_BYTES, answer, client_of, discard_upload

if TYPE_CHECKING:
    from gradio import Blocks
    from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("byol_search.page")

QUEUE_MAX = 256  # events waiting at once, all kinds together
QUEUE_WAITING_MAX = 32  # events of one kind (a concurrency group) waiting at once
BUSY = ("byol-search is busy: {n} requests like this one are already waiting. Try again in a moment "
        "(a script sending many at once is refused past this).")
UPLOAD_KEEP_S = 600.0  # an upload not searched within 10 minutes is deleted (by the next upload)
# a searched upload stays this long, so the browser can load it into the query box (deleting it at once made
# that load fail with a missing file), and then leaves the disk
UPLOAD_SHOWN_S = 60.0
UPLOADS_MAX_BYTES = 10 * MAX_UPLOAD_BYTES  # all of this page's uploads waiting for their search
_FORM_OVERHEAD = 64 * 1024  # multipart boundaries and headers around one photo


def bound_queue(blocks: Blocks, max_size: int = QUEUE_MAX, per_kind: int = QUEUE_WAITING_MAX) -> None:
    """Bound the page's queue: `max_size` waiting events in all (gradio's own limit), and `per_kind` of one
    concurrency group, refused with BUSY before gradio queues them."""
    queue = blocks._queue
    queue.max_size = max_size
    push = queue.push
    if getattr(push, "bounded", False):
        return

    async def bounded_push(body: Any, request: Any, username: str | None) -> Any:
        from gradio import route_utils

        try:
            fn = route_utils.get_fn(blocks, None, body)
            line = queue.event_queue_per_concurrency_id.get(fn.concurrency_id)
        except Exception:  # an unknown event: gradio's push answers it
            line = None
        if line is not None and len(line.queue) >= per_kind:
            log.warning("refused an event of %s from %s: %d waiting", fn.concurrency_id,
                        getattr(getattr(request, "client", None), "host", "?"), len(line.queue))
            return False, BUSY.format(n=len(line.queue)), "queue_full"
        return await push(body, request, username)

    bounded_push.bounded = True  # type: ignore[attr-defined]  # launched twice: bounded once
    queue.push = bounded_push  # type: ignore[method-assign]


def sweep_uploads(upload_dir: str | Path, uploaded: set[str], keep_s: float = UPLOAD_KEEP_S) -> int:
    """Delete this page's uploads older than `keep_s` (never searched); returns the bytes the rest hold."""
    held, now = 0, time.time()
    for path in list(uploaded):
        try:
            st = os.stat(path)
        except OSError:
            uploaded.discard(path)  # searched and deleted, or gone
            continue
        if now - st.st_mtime > keep_s:
            discard_upload(path, upload_dir, uploaded)
        else:
            held += st.st_size
    return held


class UploadLimit:
    """ASGI middleware on gradio's upload route: a request must say its length (411 otherwise) and carry at
    most one photo's worth (413); uploads waiting too long are deleted first, and an upload that would take
    this page's waiting uploads past `max_stored` bytes is refused (507)."""

    def __init__(self, app: ASGIApp, blocks: Blocks, upload_dir: Callable[[], str],
                 max_request: int = MAX_UPLOAD_BYTES + _FORM_OVERHEAD, max_stored: int | None = None,
                 keep_s: float | None = None):
        self.app, self.blocks, self.upload_dir = app, blocks, upload_dir
        self.max_request = max_request
        self.max_stored = UPLOADS_MAX_BYTES if max_stored is None else max_stored
        self.keep_s = UPLOAD_KEEP_S if keep_s is None else keep_s

    def refusal(self, length: int | None) -> tuple[int, str] | None:
        if length is None:
            return 411, "byol-search refused an upload that does not say its length (Content-Length)."
        if length > self.max_request:
            return 413, f"byol-search refused an upload over {self.max_request // 10**6} MB: send one photo at a time."
        held = sweep_uploads(self.upload_dir(), self.blocks.upload_file_set, self.keep_s)
        if held + length > self.max_stored:
            return 507, (f"byol-search refused this upload: {held // 10**6} MB of uploads already wait for their "
                         "search. Try again in a few minutes.")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") != "POST" or not path.rstrip("/").endswith("/upload"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        try:
            length: int | None = int(headers[b"content-length"])
        except (KeyError, ValueError):
            length = None
        refused = self.refusal(length)
        if refused is None:
            return await self.app(scope, receive, send)
        log.warning("refused an upload from %s: %s", client_of(scope), refused[1])
        await answer(send, *refused)


def discard_after_search(path: object, upload_dir: str | Path, uploaded: set[str],
                         after_s: float | None = None) -> threading.Timer:
    """Delete a searched (or refused) upload UPLOAD_SHOWN_S from now, in a daemon timer: the search has used
    it, and the query box shows it meanwhile. Returns the timer (tests wait on it)."""
    timer = threading.Timer(UPLOAD_SHOWN_S if after_s is None else after_s, discard_upload,
                            args=(path, upload_dir, uploaded))
    timer.daemon = True
    timer.start()
    return timer
