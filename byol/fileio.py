"""Files on disk, written so a crash never leaves half a file; their hashes; the usable core count.

Public API
    atomic_write(path, write, durable=True)        write(file_object) on a temporary file, then rename it over path
    atomic_write_bytes(path, data, durable=True)   the same for bytes or text (text is written as UTF-8)
    atomic_write_path(path, write)                 for writers that want a file name (faiss.write_index)
    fsync_dir(path)                                make a rename inside the folder `path` durable
    file_sha256(path) -> hex digest
    core_count() -> int                            the cores this process may run on

Standard library only: the index, the page and the data scanner use it without importing torch.

Every write goes to a temporary file beside the target (same folder, so the rename is atomic), is flushed
and fsynced, renamed over the target with os.replace, and the folder is fsynced so the rename itself
survives a power cut. A crash at any point leaves either the old file or the new one; a failing writer
leaves the old file and removes its temporary file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_path", "core_count", "file_sha256", "fsync_dir"]

# What open() would give a new file. mkstemp makes 0600, which would hide thumbnails from a web server.
# Read once at import: reading the umask means setting it, which is not safe while other threads create files.
_umask = os.umask(0)
os.umask(_umask)
FILE_MODE = 0o666 & ~_umask


def fsync_dir(path: str | Path) -> None:
    """fsync the folder `path`, so that a rename or a new file inside it is on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_beside(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], durable: bool = True) -> None:
    """Call write(file_object) on a temporary file beside `path`, fsync it, then rename it over `path`.

    The folder is created when missing. durable=False skips both fsyncs: the result is still never a
    half-written file to a reader, but a power cut may lose it (thumbnails, which can be made again).
    """
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes | str, durable: bool = True) -> None:
    """Atomically replace `path` with `data` (text is encoded as UTF-8); see atomic_write."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    atomic_write(path, lambda f: f.write(payload), durable=durable)


def atomic_write_path(path: str | Path, write: Callable[[str], object]) -> None:
    """Call write(temporary_path) for writers that open the file themselves (faiss.write_index), then fsync
    that file, rename it over `path` and fsync the folder."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
    os.close(fd)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's content, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def core_count() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one, else all), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
