"""Who may reach the page and which files it may serve.

Safe by default: the server binds the loopback interface; any other address needs a user and password.
The page only ever shows thumbnails, so the thumbnail folder is the one folder served; everything else in
the index (FAISS index, SQLite databases, manifest) and every other path is refused, whatever the URL
(traversal with ../, absolute paths, encoded variants), because gradio serves a file only when it lies in
an allowed folder and outside every blocked one.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

# Uploaded query photos larger than this are refused by the server before they reach the decoder.
MAX_UPLOAD = "25mb"
# Files an index holds besides its thumbnails; blocked by name even before they exist.
INDEX_FILES = ("meta.sqlite", "vectors.faiss", "labels.sqlite", "manifest.json")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """'user:password' -> (user, password); None stays None."""
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth expects user:password (both non-empty), e.g. --auth alice:correct-horse")
    return user, password


def check_bind(host: str, auth: tuple[str, str] | None) -> None:
    """Refuse to listen beyond this machine without a password."""
    if not is_loopback(host) and auth is None:
        raise ValueError(
            f"--host {host} would let anyone on the network see and label your photos: add "
            "--auth user:password, or keep the default --host 127.0.0.1 (this machine only)")


def thumbs_dir(index_dir: str | Path, store=None) -> Path:
    """The folder of cached thumbnails: the store's own when it says, else INDEX_DIR/thumbs."""
    d = getattr(store, "thumbs_dir", None) if store is not None else None
    return Path(d if d is not None else Path(index_dir) / "thumbs").resolve()


def served_paths(index_dir: str | Path, store=None) -> tuple[list[str], list[str]]:
    """(allowed_paths, blocked_paths) for gradio's launch: the thumbnails, and nothing else of the index."""
    index_dir = Path(index_dir).resolve()
    thumbs = thumbs_dir(index_dir, store)
    blocked = {index_dir / n for n in INDEX_FILES}
    blocked |= {index_dir / f"{n}{s}" for n in INDEX_FILES for s in ("-wal", "-shm", "-journal")}
    if index_dir.is_dir():
        # every other entry of the index, present now (exports, checkpoints copied in, temporary files)
        blocked |= {p.resolve() for p in index_dir.iterdir() if p.resolve() != thumbs}
    return [str(thumbs)], sorted(str(p) for p in blocked)
