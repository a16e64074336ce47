"""A base's vectors.npy (float16 rows) written and read with ordinary file I/O, never memory-mapped.

Why not np.memmap: every page of a mapped file that a process touches counts in its resident memory (and in
ru_maxrss) until the kernel reclaims it, and a fault maps the cached pages around it too (fault-around, 64 KiB).
At 10 million 256-d vectors the file is 5 GB: writing it through a map, or streaming it for the exact search
or the training sample, would take the process past the 4 GB it may use while building, and serving would
count every row it ever re-ranked. Read with pread, the same bytes sit in the page cache, which the kernel
shares and drops under pressure, and the process holds only the rows it asked for.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

DTYPE = np.dtype("<f2")
GAP = 16  # rows: wanted rows closer than this are read in one call with the rows between (cheaper than a call)
BLOCK = 65_536  # rows read at most per call (32 MiB at 256-d): bounded memory however many rows are asked for


def write(path: Path, chunks: Iterable[np.ndarray], n: int, dim: int) -> None:
    """vectors.npy of `n` x `dim` float16 from float32 `chunks` (rows in order), by buffered writes."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": DTYPE.str, "fortran_order": False, "shape": (n, dim)})
        written = 0
        for x in chunks:
            f.write(np.ascontiguousarray(x, DTYPE).tobytes())
            written += len(x)
    if written != n:
        raise ValueError(f"{path}: {written} rows written, {n} announced")


class VectorFile:
    """Rows of a 2-d float16 .npy file by position; `shape` as the array's."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            self.offset = f.tell()
        if fortran or dtype != DTYPE or len(shape) != 2:
            raise ValueError(f"{path}: not a C-ordered 2-d float16 array ({dtype}, {shape})")
        self.path, self.shape = path, tuple(int(s) for s in shape)
        self.row_bytes = self.shape[1] * DTYPE.itemsize
        self._fd = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def span(self, a: int, b: int) -> np.ndarray:
        """Rows a..b-1 (b clipped to the end), float16."""
        b = min(b, self.shape[0])
        count = max(b - a, 0) * self.row_bytes
        buf = os.pread(self._fd, count, self.offset + a * self.row_bytes) if count else b""
        if len(buf) != count:
            raise OSError(f"{self.path}: short read at row {a} (the file is truncated)")
        return np.frombuffer(buf, DTYPE).reshape(-1, self.shape[1])

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """The rows at positions `rows` (any order, repeats allowed), float16, in that order."""
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), self.shape[1]), DTYPE)
        if not len(rows):
            return out
        if rows.min() < 0 or rows.max() >= self.shape[0]:
            raise IndexError(f"{self.path}: row out of range 0..{self.shape[0] - 1}")
        order = np.argsort(rows, kind="stable")
        r = rows[order]
        cut = np.concatenate([[0], np.flatnonzero(np.diff(r) > GAP) + 1, [len(r)]])
        alone = np.flatnonzero(np.diff(cut) == 1)  # rows far from any other: one read each, gathered in one go
        if len(alone):
            at = cut[alone]
            offsets = [self.offset + int(x) * self.row_bytes for x in r[at]]
            if len(offsets) > 1:  # every page asked for first: read from a disk together, not one after another
                for o in offsets:  # (160 rows not in the page cache: 4.4 ms against 16.8 ms read one by one)
                    os.posix_fadvise(self._fd, o, self.row_bytes, os.POSIX_FADV_WILLNEED)
            buf = b"".join([os.pread(self._fd, self.row_bytes, o) for o in offsets])
            out[order[at]] = np.frombuffer(buf, DTYPE).reshape(-1, self.shape[1])
        for a, b in zip(cut[:-1], cut[1:]):
            if b - a == 1:
                continue
            while a < b:  # a run of near rows, read in spans of at most BLOCK rows
                end = a + int(np.searchsorted(r[a:b], r[a] + BLOCK))
                part = self.span(int(r[a]), int(r[end - 1]) + 1)
                out[order[a:end]] = part[r[a:end] - r[a]]
                a = end
        return out
