"""index/preview.py: previews made once through the safe decoder, cached, and made again when the photo changes."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from PIL import Image

from byol.images import BadImage
from byol.preprocess import Preprocess
from index.preview import PREVIEW_DIR, is_fresh, preview, preview_file, remove_stale
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
