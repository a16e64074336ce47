"""Embedding with onnxruntime: agreement with torch evaluation, bad files, order, the pipeline."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from checkpoints import exported_encoder

from byol.checkpoint import load_encoder
from byol.data import BadFile, scan_folder
from byol.images import BadImage, load_rgb
from index.embed import Embedder


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, shapes_folder):
    return exported_encoder(tmp_path_factory, check_folder=shapes_folder)


@pytest.fixture(scope="module")
def embedder(encoder):
    return Embedder(encoder[1])


def test_reads_everything_from_the_model(embedder, encoder):
    _, pre, info = load_encoder(encoder[0])
    assert embedder.preprocess == pre and embedder.dim == info["dim"]
    assert embedder.checkpoint_sha256 == info["sha256"] and len(embedder.sha256) == 64
    assert embedder.provider == "CPUExecutionProvider"  # no GPU on the test machine


def test_torch_eval_and_onnx_embeddings_of_the_same_files_agree(embedder, encoder, shapes_folder):
    paths = scan_folder(shapes_folder)
    enc, pre, _ = load_encoder(encoder[0])
    with torch.no_grad():  # the evaluation path: load_rgb + Preprocess + torch encoder, L2-normalised
        x = pre.batch([load_rgb(p, min_side=pre.resize) for p in paths])
        want = torch.nn.functional.normalize(enc(torch.from_numpy(x)), dim=1).numpy()
    got = np.zeros_like(want)
    for b in embedder.embed_paths(paths, batch_size=5, workers=2):
        got[b.indices] = b.vectors
    cos = (got * want).sum(1)
    assert cos.min() >= 0.9999, cos.min()
    np.testing.assert_allclose(embedder.embed_images([load_rgb(paths[0])]), want[:1], atol=1e-4)
    np.testing.assert_allclose(embedder.embed_file(paths[0]), want[0], atol=1e-4)


def test_bad_files_reported_in_order_with_reasons(embedder, hazard_folder, tmp_path):
    root, expect = hazard_folder
    paths = sorted(root / n for n in expect) + [tmp_path / "missing.jpg"]
    seen, bad, extras = [], {}, []
    batches = list(embedder.embed_paths(paths, batch_size=3, workers=2,
                                        also=lambda p, data, img: (p.name, len(data), img.mode)))
    for b in batches:
        assert b.vectors.shape == (len(b.indices), embedder.dim) and len(b.sizes) == len(b.indices)
        np.testing.assert_allclose(np.linalg.norm(b.vectors, axis=1), 1.0, atol=1e-5)
        seen += b.indices
        extras += b.extras
        bad.update({i: f for i, f in b.bad})
    assert seen == sorted(seen)  # input order
    assert {paths[i].name for i in seen} == {n for n, ok in expect.items() if ok}
    assert {paths[i].name for i in bad} == {n for n, ok in expect.items() if not ok} | {"missing.jpg"}
    assert all(isinstance(f, BadFile) and f.path == str(paths[i]) and f.reason for i, f in bad.items())
    assert all(e[0] == paths[i].name and e[2] == "RGB" for i, e in zip(seen, extras))
    sizes = dict(zip(seen, sum((b.sizes for b in batches), [])))
    assert sizes[paths.index(root / "rotated.jpg")] == (60, 80)  # the upright size, EXIF orientation applied


def test_stopping_early_ends_the_decode_threads(embedder, shapes_folder):
    before = threading.active_count()
    it = embedder.embed_paths(scan_folder(shapes_folder), batch_size=2, workers=2)
    next(it)
    it.close()
    assert threading.active_count() <= before


def test_bad_query_raises_bad_image(embedder, tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"nope")
    with pytest.raises(BadImage):
        embedder.embed_file(tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="no such model"):
        Embedder(tmp_path / "none.onnx")
