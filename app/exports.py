"""The label exports: CSV, ImageFolder (links or copies) and HF `datasets`, and the page's download copies.

    export_csv(labels, store, path) -> rows                 every photo with its label and prediction
    export_imagefolder(labels, store, out_dir, ...) -> {label: photos}   out_dir/<label>/<id>_<file name>
    export_hf(labels, store, out_dir, ...) -> photos        a datasets.Dataset saved to disk
    write_folder(out_dir, fill)                             the one folder writer all folder exports use
    remove_stale_exports(parent), download_copy(path)       cleaning up after killed exports and downloads
    check_room(folder, need), keep_newest(made, prefix)     the disk bounds: room left, one export per kind

All three read the rows of app.labels.Labels.table(). Every export lands whole or not at all: the CSV through
app.csvfile.write (the one CSV writer: atomic, and no cell a spreadsheet runs as a formula), the folders
through write_folder (a temporary folder beside the target, renamed into place), so a failure or a kill
never leaves a half-written export under its real name; what a killed process leaves (`.<name>.*.partial`) is removed by a later export.

The disk they use is bounded: an export that copies photos (ImageFolder copies, HF datasets) is refused when
it would leave less than MIN_FREE on the disk it writes to; the page keeps the newest export of each kind
(keep_newest), so clicking Export again replaces the last one instead of adding a copy of every labelled
photo; and it keeps at most DOWNLOADS_KEPT download copies, none older than an hour.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from app import csvfile
from app.labels import Progress, no_progress
from byol.fileio import fsync_dir

if TYPE_CHECKING:
    from app.labels import Labels
    from index.store import Store

T = TypeVar("T")
_PARTIAL = ".partial"  # suffix of an export folder being written
_EXPORT_RECORD = ".export.json"  # in a copies export: {id: [relative path, size, mtime_ns]} of its files
_STALE_EXPORT_S = 6 * 3600  # a half-written export folder this old was left by a killed process
_NAME_MAX = 255  # bytes in one file name on Linux and macOS file systems
_DOWNLOADS_KEPT_S = 3600.0  # how long a download copy stays in the temp folder: time enough to click it
DOWNLOADS_KEPT = 8  # download copies kept at most, the newest: a script clicking Export fills no temp folder
MIN_FREE = 1 << 30  # bytes an export that copies photos leaves free on its disk (the index and system need room)
CSV_FIELDS = ["id", "path", "label", "source", "predicted", "confidence"]


# ---------------------------------------------------------------- the three formats
def export_csv(labels: Labels, store: Store, path: str | Path) -> int:
    """Every photo with its label and prediction as CSV; returns the number of rows."""
    from byol.data import display_path

    rows = ({**r, "path": display_path(r["path"])} for r in labels.table(store, include_predictions=False))
    return csvfile.write(path, CSV_FIELDS, rows)  # a label or path that starts like a formula stays text


def export_imagefolder(labels: Labels, store: Store, out_dir: str | Path, copy: bool = False,
                       include_predictions: bool = False, min_confidence: float = 0.0,
                       progress: Progress = no_progress) -> dict[str, int]:
    """out_dir/<label>/<id>_<file name>: symbolic links to the photos (or copies). Returns counts per label.

    Written by write_folder: a failure leaves no half-written tree, and an existing non-empty out_dir is
    refused rather than mixed into. Copies of photos unchanged since an earlier copies export beside out_dir
    are hard links to that export's files: a photo's bytes are copied once, however many times one exports
    (each export stays a complete folder of its own). Names too long for the file system are shortened,
    keeping the id and the extension.
    """
    out_dir = Path(out_dir)
    check_free(out_dir)
    rows = [r for r in labels.table(store, include_predictions, min_confidence) if r["label"]]  # labelled ones
    if not rows:
        raise ValueError("nothing to export: no photo has a label yet")
    earlier = _earlier_copies(out_dir.parent) if copy else {}
    found = list(_stat_photos(rows))
    if copy:  # the bytes this export copies: the photos no earlier copy can be linked for
        check_room(out_dir, sum(st.st_size for r, _, st in found
                                if not _linkable(earlier.get(str(r["id"])), [st.st_size, st.st_mtime_ns])))

    def fill(tmp: Path) -> dict[str, int]:
        counts: dict[str, int] = {}
        made: dict[str, list[Any]] = {}
        tmp.mkdir()
        for n, (r, src, st) in enumerate(found):
            rel = f"{r['label']}/{export_name(r['id'], src.name)}"
            dst = tmp / rel
            dst.parent.mkdir(exist_ok=True)
            if copy:
                stamp = [st.st_size, st.st_mtime_ns]
                if not _link_earlier(earlier.get(str(r["id"])), stamp, dst):
                    shutil.copy2(src, dst)
                made[str(r["id"])] = [rel, *stamp]
            else:
                os.symlink(src, dst)
            counts[r["label"]] = counts.get(r["label"], 0) + 1
            if n % 500 == 0:
                progress(n / len(found), f"{n} of {len(found)} photos")
        if copy:  # what the next copies export may link to instead of copying again
            (tmp / _EXPORT_RECORD).write_text(json.dumps({"format": 1, "files": made}))
        return counts

    return write_folder(out_dir, fill)


def export_hf(labels: Labels, store: Store, out_dir: str | Path, include_predictions: bool = False,
              min_confidence: float = 0.0) -> int:
    """A `datasets.Dataset` (image, label as ClassLabel, id, path, source, confidence) saved to disk.

    save_to_disk embeds the image bytes, so the saved dataset does not depend on the photo folder: refused
    (check_room) when those bytes would leave less than MIN_FREE on the disk.
    """
    import datasets

    from byol.data import display_path

    out_dir = Path(out_dir)
    check_free(out_dir)
    found = list(_stat_photos([r for r in labels.table(store, include_predictions, min_confidence) if r["label"]]))
    rows = [r for r, _, _ in found]
    if not rows:
        raise ValueError("nothing to export: no photo has a label yet")
    check_room(out_dir, sum(st.st_size for _, _, st in found))
    names = sorted({r["label"] for r in rows})
    features = datasets.Features({
        "image": datasets.Image(), "label": datasets.ClassLabel(names=names), "id": datasets.Value("int64"),
        "path": datasets.Value("string"), "source": datasets.Value("string"),
        "confidence": datasets.Value("float32")})
    ds = datasets.Dataset.from_dict({
        # a name that is not UTF-8 cannot go into Arrow as text: such a photo goes in as its bytes
        "image": [{"path": str(Path(r["path"]).resolve()), "bytes": None} if display_path(r["path"]) == r["path"]
                  else {"path": None, "bytes": Path(r["path"]).read_bytes()} for r in rows],
        "label": [names.index(r["label"]) for r in rows],
        "id": [r["id"] for r in rows],
        "path": [display_path(r["path"]) for r in rows],
        "source": [r["source"] for r in rows],
        "confidence": [float(r["confidence"]) if r["confidence"] != "" else float("nan") for r in rows],
    }, features=features)
    write_folder(out_dir, lambda tmp: ds.save_to_disk(str(tmp)))
    return len(rows)


def _stat_photos(rows: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Path, os.stat_result]]:
    """(row, resolved path, stat) of each row whose photo is a file; photos moved or deleted since indexing
    are left out (the next index update drops them)."""
    for r in rows:
        src = Path(r["path"]).resolve()
        try:
            st = src.stat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            yield r, src, st


# ---------------------------------------------------------------- the disk an export may use
def check_room(folder: Path, need: int, reserve: int = MIN_FREE) -> None:
    """Refuse an export that writes about `need` bytes into folder when it would leave less than `reserve`
    bytes free on that disk, before anything is written."""
    from index.photoinfo import human_size

    probe = Path(folder).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free - need < reserve:
        raise ValueError(f"not enough disk space: this export copies about {human_size(need)} of photos into "
                         f"{folder}, where {human_size(free)} is free, and exports leave {human_size(reserve)} "
                         "free; free some space, or export links instead of copies")


def keep_newest(made: Path, prefix: str) -> list[Path]:
    """Remove the exports beside `made` whose names start with `prefix`, other than `made` itself: the page
    keeps one export of each kind, so exporting again replaces the last one instead of adding another copy.
    Returns what was removed (what cannot be removed now stays, and goes with the next export)."""
    removed = []
    for p in made.parent.glob(glob.escape(prefix) + "*"):
        if p == made:
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


# ---------------------------------------------------------------- writing a folder whole
def check_free(out_dir: Path) -> None:
    """An export never mixes into an existing folder: refuse one that is not empty."""
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} already exists and is not empty: choose another folder")


def write_folder(out_dir: str | Path, fill: Callable[[Path], T]) -> T:
    """Make the folder out_dir whole or not at all; returns what fill returned.

    fill(path) creates the folder `path` (not there yet) inside a temporary folder beside out_dir
    (`.<name>.*.partial`, same file system, so the rename is atomic); `path` is then renamed to out_dir and
    the parent folder fsynced. An existing non-empty out_dir is refused; an empty one is replaced. Any
    failure removes the temporary folder; a kill leaves it, and the next export removes it once stale.
    """
    out_dir = Path(out_dir)
    check_free(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_exports(out_dir.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=_PARTIAL, dir=out_dir.parent))
    try:
        result = fill(tmp / out_dir.name)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp / out_dir.name, out_dir)
        fsync_dir(out_dir.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def remove_stale_exports(parent: Path, older_than: float = _STALE_EXPORT_S) -> int:
    """Delete half-written export folders in parent left by a process killed while exporting."""
    n = 0
    for p in parent.glob(f".*{_PARTIAL}"):
        try:
            if p.is_dir() and time.time() - p.stat().st_mtime > older_than:
                shutil.rmtree(p)
                n += 1
        except OSError:
            pass
    return n


# ---------------------------------------------------------------- file names and earlier copies
def export_name(image_id: int, name: str) -> str:
    """`<id>_<name>`, shortened to the file system's 255 bytes by cutting the end of the name's stem (the
    id keeps names unique, the extension keeps the type)."""
    out = f"{image_id}_{name}"
    raw = os.fsencode(out)
    if len(raw) <= _NAME_MAX:
        return out
    stem, dot, ext = name.rpartition(".")
    ext_b = os.fsencode(dot + ext) if dot and len(os.fsencode(ext)) <= 16 else b""
    head = os.fsencode(f"{image_id}_")
    stem_b = os.fsencode(stem if ext_b else name)[: _NAME_MAX - len(head) - len(ext_b)]
    stem_b = stem_b.decode("utf-8", "ignore").encode() if _is_utf8(os.fsencode(name)) else stem_b
    return os.fsdecode(head + stem_b + ext_b)


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _earlier_copies(parent: Path) -> dict[str, tuple[Path, list[Any]]]:
    """{id: (file, [size, mtime_ns] of the photo when copied)} from the newest copies export in parent."""
    records = []
    for rec in parent.glob(f"*/{_EXPORT_RECORD}"):
        try:
            records.append((rec.stat().st_mtime_ns, rec))
        except OSError:
            continue
    for _, rec in sorted(records, reverse=True):
        try:
            files = json.loads(rec.read_text())["files"]
            return {i: (rec.parent / v[0], v[1:3]) for i, v in files.items()}
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            continue
    return {}


def _linkable(earlier: tuple[Path, list[Any]] | None, stamp: list[Any]) -> bool:
    """An earlier export's copy of the photo is there, made from the photo as it is now (size, mtime)."""
    if earlier is None or earlier[1] != stamp:
        return False
    try:
        return bool(earlier[0].stat().st_size == stamp[0])
    except OSError:
        return False


def _link_earlier(earlier: tuple[Path, list[Any]] | None, stamp: list[Any], dst: Path) -> bool:
    """Hard-link an earlier export's copy of an unchanged photo to dst; False when there is none to link."""
    if earlier is None or not _linkable(earlier, stamp):
        return False
    try:
        os.link(earlier[0], dst)
        return True
    except OSError:  # gone, another file system, or links not allowed: copy instead
        return False


# ---------------------------------------------------------------- downloads from the page
def download_copy(path: str | Path, keep_s: float = _DOWNLOADS_KEPT_S, keep: int = DOWNLOADS_KEPT) -> Path:
    """A copy of an export in one folder of the system temp folder (gradio hands out files only from there
    or the cwd). The copies made more than keep_s seconds ago are removed on the way, and all but the newest
    keep - 1, so that with this one at most `keep` are there: however often a script clicks Export, the temp
    folder holds `keep` exports at most."""
    folder = Path(tempfile.gettempdir()) / f"byol-search-downloads-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    now = time.time()
    copies = []
    for old in folder.iterdir():
        try:
            copies.append((old.stat().st_mtime_ns, old))
        except OSError:
            pass
    copies.sort(reverse=True)
    for n, (mtime_ns, old) in enumerate(copies):
        if n >= keep - 1 or now - mtime_ns / 1e9 > keep_s:
            try:
                shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
            except OSError:
                pass
    d = Path(tempfile.mkdtemp(prefix="export-", dir=folder))
    return Path(shutil.copy2(path, d / Path(path).name))
