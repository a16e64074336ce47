"""index/photoinfo.py on a small index of generated photos, some with EXIF dates and orientations."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_search import make_index

from index.photoinfo import INFO_FILE, PhotoInfoCache, exif_datetime, read_header
from index.store import Store


def jpeg_with_exif(path: Path, size=(120, 80), taken: str | None = None, orientation: int | None = None) -> Path:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), np.uint8))
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    img.save(path, exif=exif.tobytes(), quality=85)
    return path


@pytest.fixture
def index(tmp_path):
    index_dir, by_class = make_index(tmp_path, per_class=3)
    store = Store.open(index_dir)
    yield store, by_class, tmp_path / "photos"
    store.close()


def test_exif_datetime_parses_camera_forms_and_refuses_blanks():
    assert exif_datetime("2021:06:15 14:03:22") == "2021-06-15T14:03:22"
    assert exif_datetime(b"2021:06:15 14:03:22\x00") == "2021-06-15T14:03:22"
    assert exif_datetime("0000:00:00 00:00:00") is None
    assert exif_datetime("    ") is None
    assert exif_datetime(None) is None


def test_header_reads_exif_date_and_upright_size(tmp_path):
    p = jpeg_with_exif(tmp_path / "a.jpg", (120, 80), taken="2019:02:03 04:05:06", orientation=6)
    h = read_header(str(p))
    assert (h["width"], h["height"]) == (80, 120)  # orientation 6: stored landscape, shown portrait
    assert (h["taken"], h["taken_source"]) == ("2019-02-03T04:05:06", "exif")
    assert h["size"] == p.stat().st_size and h["error"] is None


def test_header_without_exif_falls_back_to_mtime_and_says_so(tmp_path):
    p = tmp_path / "b.png"
    Image.new("RGB", (30, 20)).save(p)
    os.utime(p, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    h = read_header(str(p))
    assert h["taken_source"] == "mtime" and h["taken"].startswith("2020-09-1")
    assert (h["width"], h["height"]) == (30, 20)


def test_missing_and_unreadable_files_give_reasons_not_exceptions(tmp_path):
    assert "not found" in read_header(str(tmp_path / "gone.jpg"))["error"]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a photo at all")
    h = read_header(str(bad))
    assert "not an image" in h["error"] and h["size"] == len(b"not a photo at all")
    eps = tmp_path / "x.jpg"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")  # a format outside the allow-list
    assert read_header(str(eps))["error"]


def test_cache_names_folders_relative_to_the_root_and_persists(index):
    store, by_class, photos = index
    i = by_class["square"][1]
    with PhotoInfoCache(store) as cache:
        info = cache.one(i)
        assert cache.root == str(photos)
        assert info.folder == "square" and info.name == "square_001.png"
        assert (info.width, info.height) == (64, 48) and info.size == (photos / "square/square_001.png").stat().st_size
        assert info.taken_source == "mtime" and info.ok
        assert "64×48" in info.caption
    assert (store.index_dir / INFO_FILE).is_file()
    with PhotoInfoCache(store) as cache:  # a new process sees what was read
        assert cache.cached([i])[i] == info


def test_changed_photo_is_read_again_and_missing_one_reports(index):
    store, by_class, photos = index
    a, b = by_class["circle"][0], by_class["circle"][1]
    with PhotoInfoCache(store) as cache:
        cache.get([a, b])
        path = photos / "circle" / "circle_000.png"
        jpeg_with_exif(path, (40, 30), taken="2000:01:01 00:00:00")  # same name, new content (a JPEG inside)
        (photos / "circle" / "circle_001.png").unlink()
        got = cache.get([a, b])
        assert (got[a].width, got[a].height, got[a].taken) == (40, 30, "2000-01-01T00:00:00")
        assert got[b].error and "not found" in got[b].error and got[b].name == "circle_001.png"
        assert cache.get([10**9]) == {}  # not in the index: left out


def test_fill_reads_everything_once_reports_progress_and_can_stop(index):
    store, by_class, _ = index
    n = len(store.all_ids())
    seen = []
    with PhotoInfoCache(store) as cache:
        r = cache.fill(progress=lambda f, d: seen.append(f), batch=4)
        assert (r.checked, r.read, r.errors, r.stopped) == (n, n, 0, False)
        assert seen[-1] == 1.0 and len(seen) == -(-n // 4)
        assert cache.fill().read == 0  # nothing changed: nothing read
        assert len(cache.cached()) == n
        stop = threading.Event()
        stop.set()
        assert cache.fill(stop=stop).stopped
