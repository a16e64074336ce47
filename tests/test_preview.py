"""index/preview.py: previews made once through the safe decoder, cached, and made again when the photo changes."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from PIL import Image

from byol.images import BadImage
from byol.preprocess import Preprocess
from index.preview import PREVIEW_DIR, is_fresh, preview, preview_file, remove_pictures, remove_stale
from index.store import Store


def photo(path, size=(1600, 1200), seed=0, orientation=None):
    rng = np.random.default_rng(seed)
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[:, : size[0] // 2] = rng.integers(0, 255, 3)  # left half one colour, right half another
    a[:, size[0] // 2 :] = rng.integers(0, 255, 3)
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    Image.fromarray(a).save(path, quality=90, exif=exif.tobytes())
    return path


@pytest.fixture
def store(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    paths = [photo(photos / "big.jpg"), photo(photos / "small.png".replace(".png", ".jpg"), (300, 200), 1),
             photo(photos / "turned.jpg", (1200, 800), 2, orientation=6), photos / "broken.jpg"]
    paths[3].write_bytes(b"\xff\xd8\xff\xe0 truncated")
    s = Store.create(tmp_path / "index", 4, "0" * 64, tmp_path / "e.onnx", Preprocess().to_dict())
    sizes = [(1600, 1200), (300, 200), (1200, 800), (10, 10)]
    s.add([{"path": str(p), "width": w, "height": h} for p, (w, h) in zip(paths, sizes)],
          np.eye(4, dtype=np.float32))
    s.save()
    yield s
    s.close()


def test_preview_is_1024_on_the_longest_side_upright_and_cached_under_the_index(store):
    ids = store.all_ids()
    p = preview(store, ids[0])
    assert p == preview_file(store.index_dir, ids[0]) == store.index_dir / PREVIEW_DIR / "0" / f"{ids[0]}.jpg"
    with Image.open(p) as im:
        assert im.size == (1024, 768)
    with Image.open(preview(store, ids[2])) as im:  # orientation 6: shown portrait
        assert im.size == (683, 1024) or im.size == (682, 1024)
    with Image.open(preview(store, ids[1])) as im:  # never enlarged
        assert im.size == (300, 200)
    assert is_fresh(store, ids[0])


def test_cached_preview_is_reused_then_remade_when_the_photo_changes(store):
    i = int(store.all_ids()[0])
    p = preview(store, i)
    made = p.stat().st_ino  # a preview made again is a new file (written atomically); its mtime marks use
    assert preview(store, i) == p and p.stat().st_ino == made
    src = store.rows([i])[0]["path"]
    photo(src, (1600, 2000), seed=5)
    os.utime(src, ns=(time.time_ns() + 10**9,) * 2)
    assert not is_fresh(store, i)
    with Image.open(preview(store, i)) as im:
        assert im.size == (819, 1024)
    assert preview(store, i, side=512) and Image.open(preview_file(store.index_dir, i)).size == (410, 512)


def test_bad_or_missing_original_raises_a_reason_and_unknown_id_a_keyerror(store):
    ids = store.all_ids()
    with pytest.raises(BadImage, match="truncated|corrupt"):
        preview(store, ids[3])
    os.unlink(store.rows([ids[1]])[0]["path"])
    with pytest.raises(BadImage, match="no such file"):
        preview(store, ids[1])
    with pytest.raises(KeyError):
        preview(store, 10**9)
    assert not (store.index_dir / PREVIEW_DIR / "0" / f"{ids[3]}.jpg").exists()


def test_remove_stale_only_deletes_previews_of_photos_gone_from_the_index(tmp_path, store):
    ids = store.all_ids()
    keep = preview(store, ids[0])
    orphan = preview_file(store.index_dir, 5000)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(keep.read_bytes())
    assert remove_stale(store) == 1
    assert keep.exists() and not orphan.exists()
    assert os.path.exists(store.rows([ids[0]])[0]["path"])


def _jpegs(tmp_path, n):
    photos = tmp_path / "many"
    photos.mkdir()
    return [photo(photos / f"p{i}.jpg", (1600, 1200), seed=10 + i) for i in range(n)]


@pytest.fixture
def many(tmp_path):
    paths = _jpegs(tmp_path, 5)
    s = Store.create(tmp_path / "index5", 4, "0" * 64, tmp_path / "e.onnx", Preprocess().to_dict())
    s.add([{"path": str(p), "width": 1600, "height": 1200} for p in paths], np.ones((5, 4), np.float32))
    s.save()
    yield s
    s.close()


def test_the_cache_stays_under_its_limit_and_the_least_recently_opened_leave_first(many, monkeypatch):
    """Past PREVIEW_CACHE_BYTES a new preview deletes the least recently opened ones: a script opening every
    photo cannot fill the disk, and a preview opened again stays."""
    import index.preview as pv

    ids = [int(i) for i in many.all_ids()]
    one = preview(many, ids[0]).stat().st_size
    monkeypatch.setattr(pv, "PREVIEW_CACHE_BYTES", int(one * 3.5))  # room for three
    for i in ids[1:3]:
        preview(many, i)
    preview(many, ids[0])  # opened again: now the most recent
    preview(many, ids[3])  # a fourth: the least recently opened (ids[1]) leaves
    on_disk = {int(p.stem) for p in (many.index_dir / PREVIEW_DIR).rglob("*.jpg")}
    assert on_disk == {ids[0], ids[2], ids[3]}
    for i in ids:
        preview(many, i)
    sizes = sum(p.stat().st_size for p in (many.index_dir / PREVIEW_DIR).rglob("*.jpg"))
    assert sizes <= pv.PREVIEW_CACHE_BYTES and pv.cache_bytes(many.index_dir) == sizes
    assert preview(many, ids[1]).is_file()  # an evicted preview is simply made again


def test_the_cache_order_survives_a_restart(many, monkeypatch):
    """The order of use is each preview's mtime, so a page started again evicts the least recently opened."""
    import index.preview as pv

    ids = [int(i) for i in many.all_ids()]
    paths = [preview(many, i) for i in ids[:3]]
    for k, p in enumerate(paths):
        os.utime(p, ns=(10**18 + k * 10**9,) * 2)
    os.utime(paths[0], ns=(10**18 + 9 * 10**9,) * 2)  # opened last, long ago (another run)
    pv._caches.clear()  # a new page process
    monkeypatch.setattr(pv, "PREVIEW_CACHE_BYTES", int(paths[0].stat().st_size * 3.5))
    preview(many, ids[3])
    assert not paths[1].exists() and paths[0].exists() and paths[2].exists()


def test_pictures_of_removed_photos_are_deleted_and_only_theirs(many):
    ids = [int(i) for i in many.all_ids()]
    made = [preview(many, i) for i in ids[:3]]
    thumbs = []
    for i in ids:
        many.thumbs.put(i, Image.new("RGB", (32, 24)))
        thumbs.append(many.thumbs.path(i))
    assert remove_pictures(many, [ids[1]]) == 2
    assert not made[1].exists() and not thumbs[1].exists()
    assert made[0].exists() and made[2].exists() and thumbs[0].exists() and thumbs[2].exists()
    many.remove([ids[2]])
    many.save()  # the store deletes the thumbnails it removed itself; a killed save may not have
    many.thumbs.put(ids[2], Image.new("RGB", (32, 24)))  # as if left behind
    assert remove_stale(many, thumbnails=True) == 2  # ids[2]'s preview and thumbnail
    assert not made[2].exists() and not thumbs[2].exists() and made[0].exists() and thumbs[0].exists()
