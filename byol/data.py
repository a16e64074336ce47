"""Scanning a photo folder (or an HF dataset), decoding it in parallel, and the decoded cache.

Decode once, train many epochs: `ImageCache` holds centre-square crops of every readable photo at `side`
pixels in one memory-mapped uint8 array, so no epoch ever re-decodes a 12-megapixel JPEG. Layout of
`cache_dir` (the index is the commit point; see `_commit`):

    index-<side>.json         format, side, source, the array file's name, and one row per image:
                              [relative path, size in bytes, mtime_ns] (row i of the array = entry i),
                              plus the unreadable files with their reason (so unchanged bad files are not
                              retried on every build)
    images-<side>-<gen>.u8    raw uint8 array (N, side, side, 3), C order; <gen> is a random generation
                              tag so a new array never overwrites the one the current index points to
    bad_files.jsonl           {"path": ..., "reason": ...} per unreadable file of the latest build

`ImageCache.build` updates it incrementally: unchanged files (same relative path, size and mtime_ns) are
copied from the previous array, never re-decoded; new or changed files are decoded; deleted ones dropped.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import numpy as np
from tqdm.auto import tqdm

from byol.fileio import atomic_write, core_count
from byol.images import IMAGE_EXTENSIONS, BadImage, decode_square

if TYPE_CHECKING:
    import torch

INDEX_FORMAT = "byol-search/image-cache/1"


# ----------------------------------------------------------------------------------------------------------
# scanning
# ----------------------------------------------------------------------------------------------------------
# A file that marks a folder as made by byol-search (an index, a decoded cache, a run or work folder).
ARTIFACT_MARKER = ".byol-search"


def is_artifact_folder(filenames: Iterable[str], dirnames: Iterable[str] = ()) -> bool:
    """Whether a folder holding these files and subfolders was made by byol-search, so a scan must skip it.

    A work or index folder inside the photo folder (`cd ~/Pictures && byol-search run .`) would otherwise be
    read as photos: its thumbnails and exports get indexed and the folder never settles. Recognised by the
    marker file, or by the files each kind of folder always holds (for folders made before the marker):
    an index (manifest.json + meta.sqlite), a pretraining run (checkpoint.pt), a `run` work folder
    (run.json beside run/, index/ or encoder.onnx).
    """
    files = set(filenames)
    if ARTIFACT_MARKER in files or "checkpoint.pt" in files or {"manifest.json", "meta.sqlite"} <= files:
        return True
    return "run.json" in files and ("encoder.onnx" in files or bool({"run", "index"} & set(dirnames)))


def mark_artifact_folder(folder: str | Path, what: str) -> None:
    """Write the marker that makes every folder scan skip `folder` (best effort: a read-only folder is left)."""
    try:
        marker = Path(folder) / ARTIFACT_MARKER
        if not marker.exists():
            marker.write_text(f"{what} made by byol-search: photo folder scans skip this folder\n")
    except OSError:
        pass


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as text that always prints and encodes: name bytes that are not UTF-8 are shown as \\xNN.

    File names are bytes on Linux; Python hands those that are not UTF-8 (old cameras, zip extractions:
    `caf\\xe9.jpg`) over as lone surrogates, which print(), json and SQLite refuse. Reports and the page use
    this form; the file itself is always opened by the original str (or os.fsencode of it).
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def bad_file_record(path: str, reason: str, **extra: Any) -> dict[str, Any]:
    """One line of a bad_files.jsonl report: the printable path, the reason, and when the name is not
    UTF-8 its exact bytes in hex (`path_bytes`), so a program can still find the file."""
    out = {"path": display_path(path), "reason": reason, **extra}
    if out["path"] != path:
        out["path_bytes"] = os.fsencode(path).hex()
    return out


def record_path(record: dict[str, Any]) -> str:
    """The path a bad_file_record names, as the str a scan of the folder gives for that file."""
    raw = record.get("path_bytes")
    return os.fsdecode(bytes.fromhex(raw)) if isinstance(raw, str) else str(record["path"])


def scan_paths(root: str | Path, recursive: bool = True) -> list[str]:
    """Every image file under root (by extension, any case), sorted, as path strings; hidden files and folders
    skipped.

    Symlinked folders are followed once each (a link back up the tree is not a loop); broken links skipped.
    Folders made by byol-search (indexes, runs, work folders: `is_artifact_folder`) are skipped below root.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise ValueError(f"{root}: no such folder")
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder (give the folder that holds the photos)")
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:  # vanished while walking
            continue
        if (st.st_dev, st.st_ino) in seen:  # reached again through a symlink: a loop or a duplicate
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        if dirpath != str(root) and is_artifact_folder(filenames, dirnames):
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        for name in filenames:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            p = os.path.join(dirpath, name)
            if os.path.isfile(p):  # follows a symlinked file; drops a broken link
                found.append(p)
    found.sort(key=lambda p: p.split(os.sep))  # scan_folder's order: Paths sort by their parts
    return found


def scan_folder(root: str | Path, recursive: bool = True) -> list[Path]:
    """scan_paths as Paths (a str costs a third of a Path: `index` of millions of photos keeps strings)."""
    return [Path(p) for p in scan_paths(root, recursive)]


# ----------------------------------------------------------------------------------------------------------
# parallel decoding
# ----------------------------------------------------------------------------------------------------------
@dataclass
class BadFile:
    path: str  # the file (or dataset row) that could not be used
    reason: str  # short human reason, e.g. "truncated file"


def default_workers() -> int:
    """Decoding threads: one per core (PIL releases the GIL while decoding, so threads scale)."""
    return core_count()


def _call(fn: Callable[[Any], object], item: Any) -> object:
    try:
        return fn(item)
    except BadImage as e:
        return BadFile(e.path, e.reason)
    except Exception as e:  # one bad file never ends a run: report it and go on
        return BadFile(str(item), f"{type(e).__name__}: {e}")


def decode_many(
    items: Iterable[Any], fn: Callable[[Any], object], workers: int | None = None, desc: str = "decoding",
    total: int | None = None, progress: bool = True,
) -> Generator[tuple[int, object], None, None]:
    """Yield (i, fn(items[i])) in order, computed on a thread pool with a progress bar (progress=False: none).

    A result is fn's value, or a BadFile when fn raised (BadImage: its path and reason; anything else:
    the exception's type and message). At most 4 x workers items are in flight, so a million paths cost
    no more memory than a few dozen decoded images. workers=0 runs inline (handy when debugging).
    """
    workers = default_workers() if workers is None else workers
    if total is None and isinstance(items, Sized):
        total = len(items)
    bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, disable=total == 0 or not progress)
    try:
        if workers <= 0:
            for i, item in enumerate(items):
                out = _call(fn, item)
                bar.update()
                yield i, out
            return
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
        try:
            pending: deque[Future[object]] = deque()
            i = 0
            for item in items:
                pending.append(pool.submit(_call, fn, item))
                if len(pending) >= 4 * workers:
                    out = pending.popleft().result()
                    bar.update()
                    yield i, out
                    i += 1
            while pending:
                out = pending.popleft().result()
                bar.update()
                yield i, out
                i += 1
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


# ----------------------------------------------------------------------------------------------------------
# the decoded cache
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _Source:
    """Where rows come from: one key per image (a relative path, or a dataset row) with size/mtime."""

    id: str  # folder's absolute path, or "hf:<fingerprint>"; a cache is only reused for the same source
    keys: list[str]  # one per candidate image, in row order
    stamps: list[tuple[int, int]]  # (size, mtime_ns) per key; rows with the same key and stamp are reused
    items: list[Any]  # what `decode` is called with, per key
    decode: Callable[[Any], object]  # item -> side x side x 3 uint8 (may raise BadImage)
    label_prefix: str  # prefix + key is the path people see in reports and `.paths`


@dataclass
class ImageCache:
    """Centre-square uint8 crops of every readable image, memory-mapped: `array[i]` shows `paths[i]`."""

    array: np.memmap  # read-only (N, side, side, 3) uint8
    paths: list[str]  # per row: the file's absolute path (folder), or "NAME[split]#row" (HF dataset)
    bad: list[BadFile]  # unreadable files, with reasons
    side: int  # pixels per side of each crop
    cache_dir: Path  # where the files live
    stats: dict[str, Any] = field(default_factory=dict)  # last build: decoded / reused / bad / removed counts

    def __len__(self) -> int:
        return len(self.paths)

    def tensor(self) -> torch.Tensor:
        """torch.uint8 (N, side, side, 3) sharing memory with the file (a private copy-on-write mapping)."""
        import torch

        cow = np.memmap(cast(str, self.array.filename), dtype=np.uint8, mode="c", shape=self.array.shape)
        return torch.from_numpy(cow)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, cache_dir: str | Path, side: int) -> ImageCache:
        """Open the cache last committed in cache_dir for `side` (ValueError if none or inconsistent)."""
        cache_dir = Path(cache_dir)
        index = _read_index(cache_dir, side)
        if index is None:
            raise ValueError(f"{cache_dir}: no image cache for side {side} (build it with ImageCache.build)")
        return cls._from_index(cache_dir, index)

    @classmethod
    def _from_index(cls, cache_dir: Path, index: dict[str, Any], stats: dict[str, Any] | None = None) -> ImageCache:
        side, n = index["side"], len(index["rows"])
        array = np.memmap(cache_dir / index["array"], dtype=np.uint8, mode="r", shape=(n, side, side, 3))
        label = index.get("label_prefix", "")
        return cls(array=array, paths=[_label(label, r[0]) for r in index["rows"]],
                   bad=[BadFile(_label(label, b[0]), b[3]) for b in index["bad"]], side=side,
                   cache_dir=cache_dir, stats=stats or {})

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, folder: str | Path, cache_dir: str | Path, side: int, workers: int | None = None,
              report: str | Path | None = None, progress: bool = True) -> ImageCache:
        """Create or incrementally update the cache of `folder` at `side` pixels; see the module docstring.

        Unreadable files are listed in `report` (default cache_dir/bad_files.jsonl) and summarised on stderr.
        Raises ValueError when the folder is missing or holds no readable image.
        """
        root = Path(folder).expanduser().resolve()
        files = scan_folder(root)
        if not files:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise ValueError(f"no image files in {root} (looked for {exts}, hidden files and folders skipped)")
        keys, stamps, items = [], [], []
        for p in files:
            try:
                st = p.stat()
            except OSError:  # vanished since the scan: it simply is not part of this build
                continue
            keys.append(p.relative_to(root).as_posix())
            stamps.append((st.st_size, st.st_mtime_ns))
            items.append(p)
        source = _Source(
            id=str(root), keys=keys, stamps=stamps, items=items,
            decode=lambda p: decode_square(p, side), label_prefix=str(root) + os.sep,
        )
        return cls._build(source, Path(cache_dir), side, workers, report, str(root), progress)

    @classmethod
    def from_hf(cls, name_or_path: str | Path, cache_dir: str | Path, side: int, split: str = "train",
                image_column: str | None = None, workers: int | None = None,
                report: str | Path | None = None, progress: bool = True) -> ImageCache:
        """The cache of an HF `datasets` image dataset, keyed by the dataset's fingerprint.

        name_or_path: a folder written by Dataset/DatasetDict.save_to_disk (read locally), or a hub name
        such as "user/name" (downloaded by `datasets.load_dataset`: only when a hub name is given).
        image_column: default the first column whose feature is datasets.Image.
        """
        import datasets

        name = str(name_or_path)
        local = Path(name).expanduser()
        if local.exists():
            ds = datasets.load_from_disk(str(local))
        elif name.startswith((".", "/", "~")) or os.sep + os.sep in name:
            raise ValueError(f"{name}: no such dataset folder")
        else:
            ds = datasets.load_dataset(name, split=split)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{name}: no split {split!r} (it has {', '.join(ds)})")
            ds = ds[split]
        images = [c for c, f in ds.features.items() if isinstance(f, datasets.Image)]
        if image_column is None:
            if not images:
                raise ValueError(f"{name}: no image column (columns: {', '.join(ds.column_names)})")
            image_column = images[0]
        elif image_column not in ds.column_names:
            raise ValueError(f"{name}: no column {image_column!r} (columns: {', '.join(ds.column_names)})")
        # raw bytes/paths, decoded by load_rgb (bomb guard, EXIF, modes) instead of datasets' bare PIL open
        col = ds.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
        n = len(col)
        prefix = f"{name}[{split}]#"

        def decode(i: int) -> np.ndarray:
            cell = col[i][image_column]
            if cell is None:
                raise BadImage(f"{prefix}{i}", "no image in this row")
            src = cell.get("bytes") or cell.get("path")
            if src is None:
                raise BadImage(f"{prefix}{i}", "no image in this row")
            try:
                return decode_square(src, side)
            except BadImage as e:
                raise BadImage(f"{prefix}{i}", e.reason) from e

        # the fingerprint changes with any change to the data, so the stamp is shared by all rows
        fingerprint = getattr(ds, "_fingerprint", None) or name
        source = _Source(
            id=f"hf:{fingerprint}:{image_column}", keys=[str(i) for i in range(n)], stamps=[(0, 0)] * n,
            items=list(range(n)), decode=decode, label_prefix=prefix,
        )
        return cls._build(source, Path(cache_dir), side, workers, report, name, progress)

    @classmethod
    def _build(
        cls, source: _Source, cache_dir: Path, side: int, workers: int | None, report: str | Path | None,
        what: str, progress: bool = True,
    ) -> ImageCache:
        cache_dir.mkdir(parents=True, exist_ok=True)
        mark_artifact_folder(cache_dir, "decoded-image cache")
        report = Path(report) if report else cache_dir / "bad_files.jsonl"
        old = _read_index(cache_dir, side)
        if old is not None and old.get("source") != source.id:
            old = None  # another folder or dataset: nothing is reusable
        old_rows: dict[tuple[str, int, int], int] = {}
        old_bad: dict[tuple[str, int, int], str] = {}
        old_array: np.memmap[Any, np.dtype[np.uint8]] | None = None
        if old is not None:
            old_rows = {(k, s, m): i for i, (k, s, m) in enumerate(old["rows"])}
            old_bad = {(k, s, m): r for k, s, m, r in old["bad"]}
            old_array = np.memmap(cache_dir / old["array"], dtype=np.uint8, mode="r",
                                  shape=(len(old["rows"]), side, side, 3))

        todo = [i for i, (k, st) in enumerate(zip(source.keys, source.stamps))
                if (k, *st) not in old_rows and (k, *st) not in old_bad]
        decoded = decode_many([source.items[i] for i in todo], source.decode, workers, desc=f"decoding {side}px",
                              progress=progress)
        todo_set = set(todo)

        gen = secrets.token_hex(4)
        array_name = f"images-{side}-{gen}.u8"
        rows: list[list[Any]] = []
        bad: list[list[Any]] = []
        n_decoded = n_reused = 0

        def write_rows(f: BinaryIO) -> None:
            nonlocal n_decoded, n_reused
            for i, (k, (size, mtime)) in enumerate(zip(source.keys, source.stamps)):
                if i in todo_set:
                    _, out = next(decoded)
                    if isinstance(out, BadFile):
                        bad.append([k, size, mtime, out.reason])
                        continue
                    f.write(np.ascontiguousarray(out, dtype=np.uint8).tobytes())
                    n_decoded += 1
                elif (k, size, mtime) in old_rows and old_array is not None:  # old_rows: from old_array
                    f.write(old_array[old_rows[(k, size, mtime)]].tobytes())
                    n_reused += 1
                else:  # unchanged and known to be unreadable
                    bad.append([k, size, mtime, old_bad[(k, size, mtime)]])
                    continue
                rows.append([k, size, mtime])

        try:
            # a new generation's name: readers of the committed index never see this file until _commit
            atomic_write(cache_dir / array_name, write_rows)
            decoded.close()

            bad_files = [BadFile(_label(source.label_prefix, b[0]), b[3]) for b in bad]
            atomic_write(report, lambda f: f.writelines(
                (json.dumps(bad_file_record(b.path, b.reason)) + "\n").encode() for b in bad_files))
            if not rows:
                raise ValueError(f"no readable images in {what} ({len(bad)} files skipped, see {report})")
            index = {"format": INDEX_FORMAT, "side": side, "source": source.id, "array": array_name,
                     "label_prefix": source.label_prefix, "rows": rows, "bad": bad}
            _commit(cache_dir, side, index)
        except BaseException:
            (cache_dir / array_name).unlink(missing_ok=True)  # never committed: the old index still rules
            raise
        finally:
            decoded.close()
            old_array = None  # unmaps the previous array (write_rows shares this variable, so not `del`)
        _remove_stale(cache_dir, side, keep=array_name)

        gone = set() if old is None else {r[0] for r in old["rows"] + old["bad"]} - set(source.keys)
        stats = {"decoded": n_decoded, "reused": n_reused, "bad": len(bad), "removed": len(gone)}
        msg = f"image cache {side}px: {len(rows)} images ({n_decoded} decoded, {n_reused} unchanged)"
        if bad:
            msg += f", {len(bad)} unreadable file{'s' if len(bad) > 1 else ''} skipped (see {report})"
        print(msg, file=sys.stderr)
        return cls._from_index(cache_dir, index, stats)


# ----------------------------------------------------------------------------------------------------------
# the index file
# ----------------------------------------------------------------------------------------------------------
def _label(prefix: str, key: str) -> str:
    return prefix + (key.replace("/", os.sep) if prefix.endswith(os.sep) else key)


def _index_path(cache_dir: Path, side: int) -> Path:
    return cache_dir / f"index-{side}.json"


def _read_index(cache_dir: Path, side: int) -> dict[str, Any] | None:
    """The committed index, or None when absent, unreadable, or not matching its array file."""
    path = _index_path(cache_dir, side)
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT or index.get("side") != side:
        return None
    try:
        size = (cache_dir / index["array"]).stat().st_size
    except (OSError, KeyError, TypeError):
        return None
    if size != len(index["rows"]) * side * side * 3:
        return None
    return index


def _commit(cache_dir: Path, side: int, index: dict[str, Any]) -> None:
    """Atomically replace the index: the one step that switches readers from the old array to the new."""

    atomic_write(_index_path(cache_dir, side), lambda f: f.write(json.dumps(index).encode()))


def _remove_stale(cache_dir: Path, side: int, keep: str) -> None:
    """Delete arrays of this side that no committed index points to (older generations, crashed builds)."""
    for p in cache_dir.glob(f"images-{side}-*.u8"):
        if p.name != keep:
            p.unlink(missing_ok=True)
    # temporary arrays left by a killed build (atomic_write's `.NAME.XXXX.tmp`; `.NAME.tmp` from older
    # versions); spare a running one
    for p in cache_dir.glob(f".images-{side}-*.u8*.tmp"):
        try:
            if time.time() - p.stat().st_mtime > 3600:
                p.unlink()
        except OSError:
            pass
