"""app/search.py on a real index of generated photos, embedded by a tiny colour encoder.

`make_index` is shared by the page's other tests (labels, ui, browser).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from imagegen import CLASSES, shape_image
from PIL import Image

from app import search
from byol.preprocess import Preprocess
from index.store import Store


class ColourEmbedder:
    """Stands in for the ONNX encoder: a 4x4 colour thumbnail, centred and L2-normalised (48-d).

    The generated classes differ by colour, so their embeddings separate, as a trained encoder's would.
    """

    dim = 48

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        x = np.stack([np.asarray(im.convert("RGB").resize((4, 4), Image.BILINEAR), np.float32).ravel()
                      for im in images]) / 255.0 - 0.5
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_index(root: Path, per_class: int = 8, seed: int = 0, duplicates: int = 0) -> tuple[Path, dict[str, list[int]]]:
    """root/photos/<class>/*.png and an index of them in root/index; returns (index_dir, ids per class).

    `duplicates` extra files are byte copies of the first photos (near-duplicates for the duplicates view).
    """
    rng = np.random.default_rng(seed)
    photos, index_dir = root / "photos", root / "index"
    paths, classes = [], []
    for cls in CLASSES:
        (photos / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            p = photos / cls / f"{cls}_{i:03d}.png"
            shape_image(cls, rng, (64, 48)).save(p)
            paths.append(p)
            classes.append(cls)
    for j in range(duplicates):
        p = photos / CLASSES[0] / f"copy_{j:03d}.png"
        p.write_bytes(paths[j].read_bytes())
        paths.append(p)
        classes.append(CLASSES[0])
    images = [Image.open(p).convert("RGB") for p in paths]
    enc = ColourEmbedder()
    store = Store.create(index_dir, enc.dim, "0" * 64, root / "encoder.onnx", Preprocess().to_dict())
    ids = store.add([{"path": str(p), "width": im.width, "height": im.height} for p, im in zip(paths, images)],
                    enc.embed_images(images))
    for i, im in zip(ids, images):
        store.thumbs.put(int(i), im)
    store.save()
    store.close()
    by_class: dict[str, list[int]] = {}
    for i, c in zip(ids.tolist(), classes):
        by_class.setdefault(c, []).append(i)
    return index_dir, by_class


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    index_dir, by_class = make_index(tmp_path_factory.mktemp("search"), per_class=8, duplicates=2)
    store = Store.open(index_dir)
    yield store, by_class
    store.close()


def test_search_by_id_finds_itself_first_then_its_class(index):
    store, by_class = index
    first = by_class["circle"][3]
    hits = search.search_id(store, first, k=6)
    assert hits[0].id == first and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert all(h.id in by_class["circle"] for h in hits[1:6])
    assert all(Path(h.thumb).is_file() and Path(h.thumb).parent.parent.name == "thumbs" for h in hits)
    assert hits[1].caption.startswith(f"{hits[1].score:.3f} · circle_")


def test_paging_continues_where_the_first_page_stopped(index):
    store, by_class = index
    q = store.get_vectors([by_class["square"][0]])
    first, second = search.search_vector(store, q, 5), search.search_vector(store, q, 5, offset=5)
    both = search.search_vector(store, q, 10)
    assert [h.id for h in first + second] == [h.id for h in both]
    scores = [h.score for h in both]
    assert scores == sorted(scores, reverse=True)


def test_search_by_photo_uses_the_encoder(index):
    store, by_class = index
    img = shape_image("triangle", np.random.default_rng(99), (80, 60))
    hits = search.search_vector(store, search.embed_photo(ColourEmbedder(), img), 5)
    assert all(h.id in by_class["triangle"] for h in hits)


def test_random_browse_and_missing_ids(index):
    store, _ = index
    got = search.random_browse(store, 10, np.random.default_rng(0))
    assert len({h.id for h in got}) == 10 and all(h.score is None for h in got)
    assert [h.id for h in search.hits(store, [got[0].id, -1, 10**9])] == [got[0].id]


def test_duplicates_groups_the_copies(index):
    store, by_class = index
    groups = search.duplicate_groups(store, 0.999)
    pairs = {frozenset(h.id for h in g) for g in groups}
    copies = by_class["circle"][-2:]  # the two byte copies were added last
    assert frozenset({by_class["circle"][0], copies[0]}) in pairs
    assert frozenset({by_class["circle"][1], copies[1]}) in pairs


def test_map_layout_and_legend(index):
    store, by_class = index
    m = search.compute_map(store)
    assert m.xy.shape == (store.count, 2) and m.method == "pca"
    keys = search.colour_keys(m.ids, {by_class["circle"][0]: "round"})
    legend = search.legend(keys)
    assert legend[0][:1] == ("round",) and legend[-1][0] == search.UNLABELLED
    # the classes separate along the first two principal components
    cls_of = {i: c for c, ids in by_class.items() for i in ids}
    centres = {c: m.xy[[cls_of[int(i)] == c for i in m.ids]].mean(0) for c in by_class}
    assert min(np.linalg.norm(centres[a] - centres[b]) for a in centres for b in centres if a != b) > 0.1


def test_map_samples_but_keeps_requested_ids(index):
    store, by_class = index
    keep = by_class["square"][:3]
    m = search.compute_map(store, max_points=5, include=keep)
    assert len(m.ids) == 5 and set(keep) <= set(m.ids.tolist())


def test_pca_matches_svd():
    x = np.random.default_rng(0).normal(size=(200, 16)) * np.linspace(3, 0.1, 16)
    xy = search.pca_2d(x)
    u, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    ref = (x - x.mean(0)) @ vt[:2].T
    assert np.allclose(np.abs(xy), np.abs(ref), atol=1e-4)
    assert xy.dtype == np.float32


def test_pca_in_float32_matches_float64_on_embeddings():
    """Unit vectors with an offset mean, as a trained encoder's: the float32 projection equals float64's."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20_000, 64)) * np.linspace(2, 0.2, 64) + 3.0
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    xy = search.pca_2d(x)
    x64 = x.astype(np.float64) - x.astype(np.float64).mean(0)
    _, _, vt = np.linalg.svd(x64, full_matrices=False)
    ref = x64 @ vt[:2].T
    scale = np.abs(ref).max()
    assert np.allclose(np.abs(xy), np.abs(ref), atol=1e-4 * scale)


# ---------------------------------------------------------------- query photos and odd names (issue 11)
def test_a_query_photo_is_decoded_with_the_folders_guards(tmp_path):
    """Uploads: reduced to what the encoder needs (JPEG draft mode), photo formats only, 16-bit in strips."""
    import io

    from byol.images import BadImage

    class Pre:
        resize = 32

    class Enc(ColourEmbedder):
        preprocess = Pre()

    big = shape_image("circle", np.random.default_rng(0), (1600, 1200))
    big.save(tmp_path / "big.jpg", quality=90)
    img = search.load_query(str(tmp_path / "big.jpg"), Enc())
    assert min(img.size) >= 32 and max(img.size) <= 400  # never the full 1600 x 1200
    assert search.embed_photo(Enc(), str(tmp_path / "big.jpg")).shape == (1, 48)
    grey16 = Image.fromarray((np.arange(800 * 600) % 65536).astype(np.uint16).reshape(600, 800))
    grey16.save(tmp_path / "g16.png")
    assert max(search.load_query(tmp_path / "g16.png", Enc()).size) <= 200
    eps = io.BytesIO()
    Image.new("RGB", (8, 8)).save(eps, format="EPS")
    with pytest.raises(BadImage, match="photo format"):
        search.load_query(eps.getvalue(), Enc())


def test_hits_name_files_that_are_not_utf8_printably(tmp_path):
    import os

    index_dir, by_class = make_index(tmp_path, per_class=2)
    first = by_class["circle"][0]
    with Store.open(index_dir, writable=True) as w:
        w.update([first], [{"path": str(tmp_path / os.fsdecode(b"caf\xe9.png"))}])
        w.save()
    with Store.open(index_dir) as st:
        (hit,) = search.hits(st, [first])
    assert hit.name == "caf\\xe9.png" and hit.caption.encode("utf-8")
