"""byol.data: scanning, parallel decoding, the decoded cache (incremental, atomic), HF datasets."""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from imagegen import make_hazards, make_shapes, shape_image
from PIL import Image

import byol.data as data
from byol.data import BadFile, ImageCache, decode_many, scan_folder, scan_paths
from byol.images import BadImage, decode_square

SIDE = 24


@pytest.fixture
def count_decodes(monkeypatch) -> list[str]:
    """Record every file the cache decodes (byol.data calls decode_square for each new/changed file)."""
    calls: list[str] = []
    lock = threading.Lock()

    def counted(source, side):
        with lock:
            calls.append(Path(source).name if isinstance(source, (str, Path)) else "<bytes>")
        return decode_square(source, side)

    monkeypatch.setattr(data, "decode_square", counted)
    return calls


def _rows(cache: ImageCache) -> dict[str, np.ndarray]:
    return {Path(p).name: np.array(cache.array[i]) for i, p in enumerate(cache.paths)}


# ------------------------------------------------------------------------------------------------------
# scanning
# ------------------------------------------------------------------------------------------------------
def test_scan_finds_images_by_extension_in_any_case_and_skips_hidden(tmp_path):
    root = tmp_path / ".cache" / "photos"  # a hidden root itself is fine: only what is below it counts
    for rel in ["b.JPG", "a.png", "sub/c.JpEg", "sub/deep/d.webp", "sub/e.HEIC", ".hidden.jpg",
                ".thumbs/x.jpg", "sub/.git/y.png", "notes.txt", "sub/f.jpg.txt", "noext"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    found = [p.relative_to(root).as_posix() for p in scan_folder(root)]
    assert found == ["a.png", "b.JPG", "sub/c.JpEg", "sub/deep/d.webp", "sub/e.HEIC"]
    assert [p.name for p in scan_folder(root, recursive=False)] == ["a.png", "b.JPG"]
    assert all(isinstance(p, Path) for p in scan_folder(root))


def test_scan_paths_are_scan_folder_as_strings_in_the_same_order(tmp_path):
    """`index` keeps strings (a third of a Path's memory); their order is Path order, by parts: "a/x" before
    "a.b/y" although "." sorts before "/" in a plain string sort."""
    root = tmp_path / "photos"
    for rel in ["a/x.png", "a.b/y.png", "a b/z.png", "A/w.png", "a/b/c.png", "a-/d.png", "a.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    strings = scan_paths(root)
    assert all(isinstance(p, str) for p in strings)
    assert strings == [str(p) for p in scan_folder(root)] == [str(p) for p in sorted(scan_folder(root))]
    assert strings.index(str(root / "a" / "x.png")) < strings.index(str(root / "a.b" / "y.png"))

def test_scan_survives_symlink_loops_and_broken_links(tmp_path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.jpg").write_bytes(b"x")
    os.symlink(root, root / "sub" / "loop")  # a link back up the tree
    os.symlink(tmp_path / "gone.jpg", root / "broken.jpg")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "b.png").write_bytes(b"x")
    os.symlink(outside, root / "linked")  # a linked folder is followed once
    found = [p.relative_to(root).as_posix() for p in scan_folder(root)]
    assert found == ["linked/b.png", "sub/a.jpg"]


def test_scan_refuses_a_missing_folder_or_a_file(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        scan_folder(tmp_path / "missing")
    (tmp_path / "f.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a folder"):
        scan_folder(tmp_path / "f.jpg")


# ------------------------------------------------------------------------------------------------------
# decode_many
# ------------------------------------------------------------------------------------------------------
def _slow_square(i: int) -> int:
    time.sleep(0.002 * ((i * 7) % 5))  # finish out of order
    if i % 10 == 3:
        raise BadImage(f"f{i}.jpg", "truncated file")
    if i % 10 == 7:
        raise ZeroDivisionError("boom")
    return i * i


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_decode_many_keeps_order_and_turns_failures_into_bad_files(workers):
    out = list(decode_many(range(40), _slow_square, workers=workers))
    assert [i for i, _ in out] == list(range(40))
    for i, r in out:
        if i % 10 == 3:
            assert r == BadFile(f"f{i}.jpg", "truncated file")
        elif i % 10 == 7:
            assert isinstance(r, BadFile) and r.path == str(i) and r.reason == "ZeroDivisionError: boom"
        else:
            assert r == i * i


def test_decode_many_bar_follows_progress(capfd):
    assert [r for _, r in decode_many(range(5), lambda i: i, workers=1, desc="decoding xyz")] == list(range(5))
    assert "decoding xyz" in capfd.readouterr().err
    assert [r for _, r in decode_many(range(5), lambda i: i, workers=1, desc="decoding xyz", progress=False)] == \
        list(range(5))
    assert capfd.readouterr().err == ""


def test_decode_many_bounds_the_work_in_flight():
    pulled = 0

    def items():
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield i

    it = decode_many(items(), lambda i: i, workers=2, total=10_000)
    assert next(it) == (0, 0)
    assert pulled <= 4 * 2 + 1  # not 10,000 futures at once
    it.close()


# ------------------------------------------------------------------------------------------------------
# the cache
# ------------------------------------------------------------------------------------------------------
def test_cache_of_a_folder_with_hazards_skips_and_reports_each_bad_file(tmp_path, capsys):
    root = tmp_path / "photos"
    make_shapes(root, per_class=2)
    expect = make_hazards(root / "odd")
    cache = ImageCache.build(root, tmp_path / "cache", SIDE, workers=2)

    n_good = 3 * 2 + sum(expect.values())
    assert len(cache) == n_good == cache.array.shape[0]
    assert cache.array.shape == (n_good, SIDE, SIDE, 3) and cache.array.dtype == np.uint8
    assert not cache.array.flags.writeable
    assert cache.side == SIDE and all(Path(p).is_absolute() and Path(p).is_file() for p in cache.paths)
    for i in (0, len(cache) - 1):
        assert np.array_equal(cache.array[i], decode_square(cache.paths[i], SIDE))  # row i shows paths[i]

    bad_names = sorted(n for n, ok in expect.items() if not ok)
    assert sorted(Path(b.path).name for b in cache.bad) == bad_names
    report = [json.loads(line) for line in (tmp_path / "cache" / "bad_files.jsonl").read_text().splitlines()]
    assert sorted(Path(r["path"]).name for r in report) == bad_names
    assert all(r["reason"] and Path(r["path"]).is_absolute() for r in report)
    err = capsys.readouterr().err
    assert f"{len(bad_names)} unreadable files skipped" in err and "bad_files.jsonl" in err

    t = cache.tensor()
    assert tuple(t.shape) == cache.array.shape and str(t.dtype) == "torch.uint8"
    assert np.array_equal(t[3].numpy(), cache.array[3])


def test_cache_updates_incrementally(fresh_shapes, tmp_path, count_decodes):
    cache_dir = tmp_path / "cache"
    first = ImageCache.build(fresh_shapes, cache_dir, SIDE, workers=2)
    n = len(first)
    assert len(count_decodes) == n and first.stats == {"decoded": n, "reused": 0, "bad": 0, "removed": 0}
    before = _rows(first)

    changed = sorted(fresh_shapes.rglob("*.jpg"))[0]
    deleted = sorted(fresh_shapes.rglob("*.png"))[0]
    shape_image("square", np.random.default_rng(5), (70, 50)).save(changed, quality=90)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a clearly later mtime
    deleted.unlink()
    added = fresh_shapes / "new" / "added.png"
    added.parent.mkdir()
    shape_image("circle", np.random.default_rng(6), (60, 60)).save(added)

    count_decodes.clear()
    second = ImageCache.build(fresh_shapes, cache_dir, SIDE, workers=2)
    assert sorted(count_decodes) == sorted([changed.name, added.name])  # only new and changed files
    assert second.stats == {"decoded": 2, "reused": n - 2, "bad": 0, "removed": 1}
    after = _rows(second)
    assert deleted.name not in after and added.name in after and len(second) == n
    assert not np.array_equal(after[changed.name], before[changed.name])
    for name in set(before) - {changed.name, deleted.name}:
        assert np.array_equal(after[name], before[name])  # reused rows, copied into the new array
    for i, p in enumerate(second.paths):
        assert np.array_equal(second.array[i], decode_square(p, SIDE))

    count_decodes.clear()
    third = ImageCache.build(fresh_shapes, cache_dir, SIDE, workers=2)
    assert count_decodes == [] and third.stats["reused"] == n
    # one array per side on disk: older generations are removed
    assert [p.name for p in cache_dir.glob(f"images-{SIDE}-*.u8")] == [Path(third.array.filename).name]
    assert ImageCache.open(cache_dir, SIDE).paths == third.paths


def test_unchanged_bad_files_are_not_retried(hazard_folder, tmp_path, count_decodes):
    root, expect = hazard_folder
    ImageCache.build(root, tmp_path / "cache", SIDE, workers=0)
    count_decodes.clear()
    again = ImageCache.build(root, tmp_path / "cache", SIDE, workers=0)
    assert count_decodes == []
    assert sorted(Path(b.path).name for b in again.bad) == sorted(n for n, ok in expect.items() if not ok)


def test_another_folder_in_the_same_cache_dir_reuses_nothing(tmp_path, count_decodes):
    make_shapes(tmp_path / "a", per_class=1)
    make_shapes(tmp_path / "b", per_class=1)  # same relative names, other pixels
    ImageCache.build(tmp_path / "a", tmp_path / "cache", SIDE, workers=0)
    count_decodes.clear()
    b = ImageCache.build(tmp_path / "b", tmp_path / "cache", SIDE, workers=0)
    assert len(count_decodes) == 3 and b.stats["reused"] == 0
    assert all(p.startswith(str((tmp_path / "b").resolve())) for p in b.paths)


def test_caches_of_two_sides_live_side_by_side(fresh_shapes, tmp_path):
    small = ImageCache.build(fresh_shapes, tmp_path / "cache", 16, workers=0)
    big = ImageCache.build(fresh_shapes, tmp_path / "cache", 32, workers=0)
    assert ImageCache.open(tmp_path / "cache", 16).array.shape == (len(small), 16, 16, 3)
    assert big.array.shape[1:] == (32, 32, 3)


class _Interrupt(BaseException):
    """Stands in for Ctrl-C or a kill: not an Exception, so no bad-file handling swallows it."""


@pytest.mark.parametrize("where", ["decoding", "committing"])
def test_an_interrupted_update_leaves_the_previous_cache_usable(fresh_shapes, tmp_path, monkeypatch, where):
    cache_dir = tmp_path / "cache"
    old = ImageCache.build(fresh_shapes, cache_dir, SIDE, workers=2)
    old_rows, old_paths = _rows(old), list(old.paths)
    for p in sorted(fresh_shapes.rglob("*.jpg"))[:3]:  # make an update necessary
        shape_image("triangle", np.random.default_rng(7), (50, 50)).save(p, quality=90)
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))

    if where == "decoding":
        calls = []

        def dies(source, side):
            calls.append(source)
            if len(calls) == 2:
                raise _Interrupt
            return decode_square(source, side)

        monkeypatch.setattr(data, "decode_square", dies)
    else:  # the new array is complete and renamed; the index switch fails
        def dies(*args, **kwargs):
            raise _Interrupt

        monkeypatch.setattr(data, "_commit", dies)
    with pytest.raises(_Interrupt):
        ImageCache.build(fresh_shapes, cache_dir, SIDE, workers=2)

    reopened = ImageCache.open(cache_dir, SIDE)
    assert reopened.paths == old_paths
    assert all(np.array_equal(reopened.array[i], old_rows[Path(p).name]) for i, p in enumerate(reopened.paths))
    assert not list(cache_dir.glob("*.tmp"))
    monkeypatch.undo()
    fixed = ImageCache.build(fresh_shapes, cache_dir, SIDE, workers=2)  # and the next build recovers
    assert fixed.stats["decoded"] == 3
    assert len(list(cache_dir.glob(f"images-{SIDE}-*.u8"))) == 1


def test_a_damaged_index_means_a_fresh_build_not_a_crash(fresh_shapes, tmp_path):
    cache_dir = tmp_path / "cache"
    n = len(ImageCache.build(fresh_shapes, cache_dir, SIDE, workers=0))
    (cache_dir / f"index-{SIDE}.json").write_text("{not json")
    with pytest.raises(ValueError, match="no image cache"):
        ImageCache.open(cache_dir, SIDE)
    rebuilt = ImageCache.build(fresh_shapes, cache_dir, SIDE, workers=0)
    assert rebuilt.stats["decoded"] == n


def test_empty_or_unreadable_folders_give_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files in"):
        ImageCache.build(tmp_path / "empty", tmp_path / "cache", SIDE)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"")
    (bad / "b.png").write_text("not a picture")
    with pytest.raises(ValueError, match=r"no readable images in .*bad \(2 files skipped, see .*bad_files.jsonl\)"):
        ImageCache.build(bad, tmp_path / "cache", SIDE)
    assert len((tmp_path / "cache" / "bad_files.jsonl").read_text().splitlines()) == 2
    with pytest.raises(ValueError, match="no such folder"):
        ImageCache.build(tmp_path / "missing", tmp_path / "cache", SIDE)


# ------------------------------------------------------------------------------------------------------
# HF datasets
# ------------------------------------------------------------------------------------------------------
def _hf_dataset(tmp_path: Path, folder: Path):
    datasets = pytest.importorskip("datasets")
    files = sorted(folder.rglob("*.*"))
    ds = datasets.Dataset.from_dict({"label": list(range(len(files))), "image": [str(f) for f in files]})
    return files, ds.cast_column("image", datasets.Image())


def test_hf_dataset_saved_to_disk_round_trips(tmp_path, count_decodes):
    make_shapes(tmp_path / "src", per_class=2)
    (tmp_path / "src" / "zz_truncated.jpg").write_bytes((tmp_path / "src" / "circle" / "circle_001.jpg").read_bytes()[:200])
    files, ds = _hf_dataset(tmp_path, tmp_path / "src")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_to_disk(str(tmp_path / "ds"))

    cache = ImageCache.from_hf(tmp_path / "ds", tmp_path / "cache", SIDE, workers=2)
    assert len(cache) == len(files) - 1 and len(count_decodes) == len(files)
    assert cache.paths[0] == f"{tmp_path / 'ds'}[train]#0"
    assert [b.path for b in cache.bad] == [f"{tmp_path / 'ds'}[train]#{len(files) - 1}"]
    assert "truncated" in cache.bad[0].reason
    for i in range(len(cache)):  # row i is dataset row i (the bad row is last)
        assert np.array_equal(cache.array[i], decode_square(files[i], SIDE))

    count_decodes.clear()
    again = ImageCache.from_hf(str(tmp_path / "ds"), tmp_path / "cache", SIDE)
    assert count_decodes == [] and again.stats["reused"] == len(cache)  # same fingerprint: nothing decoded


def test_hf_dataset_dict_split_and_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    make_shapes(tmp_path / "src", per_class=1)
    files, ds = _hf_dataset(tmp_path, tmp_path / "src")
    ds = ds.rename_column("image", "photo")
    dd = datasets.DatasetDict({"train": ds, "test": ds.select([0, 1])})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dd.save_to_disk(str(tmp_path / "dd"))
    test = ImageCache.from_hf(tmp_path / "dd", tmp_path / "cache", SIDE, split="test", workers=0)
    assert len(test) == 2 and np.array_equal(test.array[1], decode_square(files[1], SIDE))
    explicit = ImageCache.from_hf(tmp_path / "dd", tmp_path / "cache2", SIDE, image_column="photo", workers=0)
    assert len(explicit) == len(files)
    with pytest.raises(ValueError, match=r"no split 'val' \(it has train, test\)"):
        ImageCache.from_hf(tmp_path / "dd", tmp_path / "cache", SIDE, split="val")
    with pytest.raises(ValueError, match="no column 'img'"):
        ImageCache.from_hf(tmp_path / "dd", tmp_path / "cache", SIDE, image_column="img")
    with pytest.raises(ValueError, match="no such dataset folder"):
        ImageCache.from_hf(tmp_path / "nope", tmp_path / "cache", SIDE)


def test_hf_rows_with_odd_images_are_reported_not_fatal(tmp_path):
    datasets = pytest.importorskip("datasets")
    rgba = Image.new("RGBA", (30, 20), (0, 0, 255, 0))
    import io

    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    ds = datasets.Dataset.from_dict({"image": [{"bytes": buf.getvalue(), "path": None},
                                               {"bytes": b"GIF89a-but-not-really", "path": None}]})
    ds = ds.cast_column("image", datasets.Image())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_to_disk(str(tmp_path / "ds"))
    cache = ImageCache.from_hf(tmp_path / "ds", tmp_path / "cache", SIDE, workers=0)
    assert len(cache) == 1 and (np.asarray(cache.array[0]) == 255).all()  # transparent -> white
    assert len(cache.bad) == 1 and cache.bad[0].path.endswith("#1")


# ---------------------------------------------------------------- odd names and our own folders (issue 11)
def non_utf8(folder: Path, name: bytes) -> Path:
    """The path of a file whose name is these bytes (not UTF-8), as a folder scan gives it."""
    return folder / os.fsdecode(name)


def test_names_that_are_not_utf8_are_cached_and_reported_printably(tmp_path, capsys):
    folder = tmp_path / "photos"
    make_shapes(folder, per_class=2, nested=False)
    shape_image("circle", np.random.default_rng(1)).save(non_utf8(folder, b"caf\xe9.jpg"))
    non_utf8(folder, b"bad\xff.jpg").write_bytes(b"not a photo")
    cache = ImageCache.build(folder, tmp_path / "cache", side=16, workers=0)
    assert non_utf8(folder, b"caf\xe9.jpg").as_posix() in cache.paths
    line = json.loads((tmp_path / "cache" / "bad_files.jsonl").read_text())
    assert line["path"].endswith("bad\\xff.jpg") and line["path"].isprintable()
    assert data.record_path(line) == str(non_utf8(folder, b"bad\xff.jpg"))
    print(data.display_path(cache.bad[0].path))  # printing the report never raises
    again = ImageCache.build(folder, tmp_path / "cache", side=16, workers=0)
    assert again.stats["decoded"] == 0 and len(again) == len(cache)


def test_scans_skip_the_folders_byol_search_makes(tmp_path):
    """An index, a run or a work folder inside the photo folder is not read as photos."""
    folder = tmp_path / "photos"
    make_shapes(folder, per_class=1, nested=False)
    photos = set(scan_folder(folder))
    made = {"byol-work": ["run.json", "encoder.onnx"], "byol-work/index": ["manifest.json", "meta.sqlite"],
            "runs/pictures": ["checkpoint.pt"], "marked": [data.ARTIFACT_MARKER]}
    for sub, files in made.items():
        (folder / sub / "thumbs").mkdir(parents=True, exist_ok=True)
        shape_image("square", np.random.default_rng(0)).save(folder / sub / "thumbs" / "1.jpg")
        shape_image("square", np.random.default_rng(0)).save(folder / sub / "export.jpg")
        for f in files:
            (folder / sub / f).write_bytes(b"")
    (folder / "holiday").mkdir()
    shape_image("square", np.random.default_rng(0)).save(folder / "holiday" / "beach.jpg")
    assert set(scan_folder(folder)) == photos | {folder / "holiday" / "beach.jpg"}
    assert scan_folder(folder / "marked") != []  # named itself, a folder is read


def test_the_cache_folder_is_marked(fresh_shapes, tmp_path):
    ImageCache.build(fresh_shapes, tmp_path / "cache", side=16, workers=0)
    assert (tmp_path / "cache" / data.ARTIFACT_MARKER).is_file()
