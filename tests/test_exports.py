"""app/exports.py: the three label exports (CSV, ImageFolder, HF datasets), the folder writer they share,
and the clean-up of killed exports and download copies."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from PIL import Image

from app import exports
from app.probe import Probe
from index.store import Store


def test_exports(setup, tmp_path):
    import datasets

    store, labels, by_class, _ = setup
    labels.assign(by_class["circle"][:2], "round")
    labels.assign(by_class["square"][:2], "boxy")
    Probe(labels).train(store)

    n = exports.export_csv(labels, store, tmp_path / "out" / "labels.csv")
    rows = list(csv.DictReader(open(tmp_path / "out" / "labels.csv")))
    assert n == len(rows) == store.count
    row = next(r for r in rows if int(r["id"]) == by_class["circle"][0])
    assert row["label"] == "round" and row["source"] == "human" and row["predicted"] == "round"

    counts = exports.export_imagefolder(labels, store, tmp_path / "links")
    assert counts == {"round": 2, "boxy": 2}
    files = sorted((tmp_path / "links" / "round").iterdir())
    assert all(f.is_symlink() and Image.open(f).size == (64, 48) for f in files)
    with pytest.raises(ValueError, match="not empty"):
        exports.export_imagefolder(labels, store, tmp_path / "links")
    counts = exports.export_imagefolder(labels, store, tmp_path / "copies", copy=True, include_predictions=True)
    assert sum(counts.values()) == store.count
    assert not any(f.is_symlink() for f in (tmp_path / "copies").rglob("*"))
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary folder left behind

    n = exports.export_hf(labels, store, tmp_path / "hf", include_predictions=True, min_confidence=0.0)
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert n == len(ds) == store.count
    assert ds.features["label"].names == ["boxy", "round"]
    first = ds[0]
    assert first["image"].size == (64, 48) and first["source"] in ("human", "predicted")


def test_csv_cells_that_start_like_a_formula_stay_text(setup, tmp_path):
    """A label made before names were checked (or by another tool) cannot make the CSV run a formula."""
    import time

    store, labels, by_class, _ = setup
    labels.write(lambda db: db.execute("INSERT INTO label_names VALUES ('=1+1', ?)", (time.time(),)))
    labels.write(lambda db: db.execute("INSERT INTO label_names VALUES ('@SUM(A1)', ?)", (time.time(),)))
    labels.write(lambda db: db.executemany(
        "INSERT INTO labels (image_id, label, source, at) VALUES (?, ?, 'human', ?)",
        [(by_class["circle"][0], "=1+1", time.time()), (by_class["square"][0], "@SUM(A1)", time.time())]))
    exports.export_csv(labels, store, tmp_path / "labels.csv")
    text = (tmp_path / "labels.csv").read_text()
    rows = {int(r["id"]): r for r in csv.DictReader(text.splitlines())}
    assert rows[by_class["circle"][0]]["label"] == "'=1+1" and rows[by_class["square"][0]]["label"] == "'@SUM(A1)"
    assert not any(c.startswith(("=", "+", "-", "@")) for r in rows.values() for c in r.values())


def test_copies_exports_copy_each_photo_once_and_shorten_long_names(setup, tmp_path, monkeypatch):
    store, labels, by_class, _ = setup
    long_name = Path(store.rows([by_class["circle"][0]])[0]["path"])
    labels.assign(by_class["circle"][:3], "round")
    target = long_name.with_name("x" * 250 + ".png")  # <id>_ + 254 bytes: over the 255-byte limit
    long_name.rename(target)
    with Store.open(store.index_dir, writable=True) as w:
        w.update([by_class["circle"][0]], [{"path": str(target)}])
        w.save()
    store.refresh()
    copied = []
    real_copy = exports.shutil.copy2
    monkeypatch.setattr(exports.shutil, "copy2", lambda s, d: copied.append(s) or real_copy(s, d))
    out = tmp_path / "exports"
    assert exports.export_imagefolder(labels, store, out / "one", copy=True) == {"round": 3}
    names = [f.name for f in (out / "one" / "round").iterdir()]
    assert len(copied) == 3 and all(len(os.fsencode(n)) <= 255 for n in names)
    assert any(n.endswith(".png") and n.startswith(f"{by_class['circle'][0]}_xxx") for n in names)
    assert exports.export_imagefolder(labels, store, out / "two", copy=True) == {"round": 3}
    assert len(copied) == 3  # nothing copied again: unchanged photos are linked to the first export
    a, b = sorted((out / "one" / "round").iterdir()), sorted((out / "two" / "round").iterdir())
    assert [f.read_bytes() for f in a] == [f.read_bytes() for f in b]


def test_partial_exports_and_download_copies_are_cleaned_up(setup, tmp_path):
    stale = tmp_path / ".imagefolder-1.abc.partial"
    (stale / "round").mkdir(parents=True)
    os.utime(stale, (0, 0))
    assert exports.remove_stale_exports(tmp_path) == 1 and not stale.exists()
    (tmp_path / "labels.csv").write_text("id\n")
    first = exports.download_copy(tmp_path / "labels.csv")
    os.utime(first.parent, (0, 0))
    second = exports.download_copy(tmp_path / "labels.csv")
    assert second.is_file() and not first.exists()


def test_write_folder_lands_whole_or_not_at_all(tmp_path):
    out = tmp_path / "exports" / "one"

    def fill(d: Path) -> int:
        (d / "a").mkdir(parents=True)
        (d / "a" / "x.txt").write_text("x")
        return 7

    assert exports.write_folder(out, fill) == 7 and (out / "a" / "x.txt").read_text() == "x"
    with pytest.raises(ValueError, match="not empty"):
        exports.write_folder(out, fill)

    def fails(d: Path) -> None:
        d.mkdir()
        (d / "half.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        exports.write_folder(tmp_path / "exports" / "two", fails)
    assert sorted(os.listdir(tmp_path / "exports")) == ["one"]  # neither the target nor a temporary folder
    (tmp_path / "exports" / "empty").mkdir()  # an empty folder is taken over
    exports.write_folder(tmp_path / "exports" / "empty", fill)
    assert (tmp_path / "exports" / "empty" / "a" / "x.txt").is_file()


def test_nothing_to_export_is_refused(setup, tmp_path):
    store, labels, _, _ = setup
    for export in (exports.export_imagefolder, exports.export_hf):
        with pytest.raises(ValueError, match="nothing to export"):
            export(labels, store, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_download_copies_are_bounded_however_often_export_is_clicked(tmp_path, monkeypatch):
    monkeypatch.setattr(exports.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "labels.csv").write_text("id\n" + "1\n" * 1000)
    copies = [exports.download_copy(tmp_path / "labels.csv") for _ in range(3 * exports.DOWNLOADS_KEPT)]
    folder = copies[-1].parent.parent
    assert len(list(folder.iterdir())) == exports.DOWNLOADS_KEPT
    assert copies[-1].is_file() and not copies[0].exists()  # the newest stay, the oldest went first
    size = (tmp_path / "labels.csv").stat().st_size
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) == exports.DOWNLOADS_KEPT * size
