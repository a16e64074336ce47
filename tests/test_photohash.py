"""index/photohash.py: the perceptual hash, the pixel check of a pair, the stored signatures and verdicts and their
refresh."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from index.photohash import PhotoHashes, PixelCheck, check_image, contains, hamming, phash, signature, whole


def photo(seed: int, size=(160, 120)) -> Image.Image:
    """A photo-like image: smooth shapes at random places over a gradient (a hash needs structure)."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32) + rng.uniform(0, 255, 3) * (x / w)[..., None]
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 40)
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_edits_keep_the_hash_close_and_other_photos_far():
    a = photo(0)
    near = [jpeg(a, 40), a.resize((80, 60)), a.resize((40, 30)), a.point(lambda v: min(255, int(v * 1.06)))]
    assert all(hamming(phash(a), phash(b)) <= 6 for b in near)
    assert min(hamming(phash(a), phash(photo(s))) for s in range(1, 20)) > 10


def test_the_pixel_check_passes_crops_and_refuses_other_photos():
    a = photo(1, (200, 150))
    crop = a.crop((14, 6, 190, 140)).resize((120, 91))  # 12% of the width and 11% of the height cut
    m = contains(check_image(a), check_image(jpeg(crop, 50)))
    assert m.score >= 0.95 and m.scale < 0.97
    assert contains(check_image(a), check_image(a.resize((50, 38)))).score >= 0.95
    assert max(contains(check_image(a), check_image(photo(s, (200, 150)))).score for s in range(2, 12)) < 0.95


def test_hashes_are_valid_while_the_content_is_the_same(tmp_path):
    from test_search import make_index

    from index.store import Store

    index_dir, _ = make_index(tmp_path, per_class=2)
    store = Store.open(index_dir, writable=True)
    ids = [int(i) for i in store.all_ids()]
    bad = store.rows([ids[0]])[0]["path"]
    open(bad, "wb").write(b"not a photo")
    with PhotoHashes(index_dir) as ph:
        assert ph.get(store, ids).missing == ids  # nothing signed yet
        assert ph.fill(store) == len(ids)
        known = ph.get(store, ids)
        assert known.missing == [] and set(known.hashes) == set(ids[1:])
        assert "not an image" in known.errors[ids[0]].lower()
        greys = ph.greys(ids)
        assert set(greys) == set(ids[1:]) and all(max(g.shape) == 64 for g in greys.values())
        assert ph.fill(store) == 0  # once per content
        row = store.rows([ids[1]])[0]
        store.update([ids[1]], [{**{k: row[k] for k in ("path", "width", "height")}, "sha256": "other", "size": 1}])
        assert ph.get(store, ids).missing == [ids[1]]  # new content: signed again
        store.remove([ids[2]])
        assert ph.keep_only(store.all_ids()) == 1
    store.close()


def test_index_stores_a_hash_for_every_photo(tmp_path_factory, shapes_folder, tmp_path):
    import shutil

    from checkpoints import exported_encoder

    from index.build import build_index

    encoder = exported_encoder(tmp_path_factory, check_folder=shapes_folder)
    from index.store import Store

    folder = tmp_path / "photos"
    shutil.copytree(shapes_folder, folder)
    out = tmp_path / "idx"
    build_index(folder, encoder[1], out, log=lambda *a: None)
    with Store.open(out) as store, PhotoHashes(out) as ph:
        known = ph.get(store, store.all_ids())
        hashes = known.hashes
        assert len(hashes) == store.count and not known.errors and not known.missing
        one = store.rows([next(iter(hashes))])[0]
        assert len(set(hashes.values())) > store.count // 2  # each photo's own hash, not a constant
        assert hamming(hashes[int(one["id"])], phash(Image.open(one["path"]).convert("RGB"))) <= 4


def exif_jpeg(img: Image.Image, taken: str | None) -> bytes:
    ex = Image.Exif()
    if taken:
        ex.get_ifd(0x8769)[0x9003] = taken
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, exif=ex.tobytes())
    return buf.getvalue()


def test_the_signature_holds_the_time_of_capture_and_the_grey_image():
    a = photo(3, (200, 150))
    one, two = exif_jpeg(a, "2024:05:01 10:00:00"), exif_jpeg(a, "2024:05:01 10:00:07")
    s1, s2 = signature(a, one), signature(a, two)
    assert s2.taken - s1.taken == 7.0 and s1.phash == phash(a)
    assert s1.grey.dtype == np.uint8 and s1.grey.shape == (48, 64)
    assert signature(a, exif_jpeg(a, None)).taken is None and signature(a, b"not a photo").taken is None


def test_same_size_frames_shifted_do_not_match_whole():
    """Two frames of a burst (the same window moved 3% of the side) match highly once one is shifted inside
    the other; taken whole they do not. A re-encode of the same size does."""
    big = photo(4, (400, 300))
    f1, f2 = big.crop((20, 15, 380, 285)), big.crop((31, 15, 391, 285))
    assert contains(check_image(f1), check_image(f2)).score >= 0.95
    assert whole(check_image(f1), check_image(f2)).score < whole(check_image(f1), check_image(jpeg(f1, 40))).score
    assert whole(check_image(f1), check_image(jpeg(f1, 40))).score >= 0.98


def test_verdicts_are_kept_by_content_and_read_back(tmp_path):
    from index.duplicates import Photo

    with PhotoHashes(tmp_path) as ph:
        a, b, c = photo(5, (200, 150)), photo(6, (200, 150)), photo(5, (200, 150)).resize((100, 75))
        rows = {i: {"sha256": f"sha{i}"} for i in (1, 2, 3)}
        ph.put((i, rows[i], signature(img), None) for i, img in zip((1, 2, 3), (a, b, c)))
        photos = {i: Photo(i, f"sha{i}", None, img.size) for i, img in zip((1, 2, 3), (a, b, c))}
        check = PixelCheck(ph, photos)
        got = check([(1, 2), (1, 3)])
        assert check.checked == 2 and got[(1, 3)][0] >= 0.95 and got[(1, 2)][0] < 0.95
        again = PixelCheck(ph, photos)
        assert again([(1, 2), (1, 3)]) == got and again.checked == 0  # read back, not compared again
        assert ph.verdicts([("sha1", "sha3")]) == {("sha1", "sha3"): got[(1, 3)]}
