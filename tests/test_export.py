"""Export: parity with torch, metadata round trip, refusal on mismatch, int8 and its measured cost.

The real exporter runs once per test session (tests/checkpoints.py); tests that only need the export's
plumbing reuse its graph through `to_onnx`, so the suite stays fast.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from checkpoints import export_report, exported_encoder, make_checkpoint

import byol.export as export
from app.cli import main
from byol.checkpoint import file_sha256, load_encoder
from byol.export import ExportError, export_onnx, quantize_int8, read_metadata
from byol.preprocess import Preprocess


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, shapes_folder):
    return exported_encoder(tmp_path_factory, check_folder=shapes_folder)


@pytest.fixture
def cached_exporter(encoder, monkeypatch):
    """Make `to_onnx` hand back the session's exported graph (of the session checkpoint) instantly."""
    proto = onnx.load(str(encoder[1]))
    monkeypatch.setattr(export, "to_onnx", lambda model, example, opset=18: onnx.ModelProto.FromString(
        proto.SerializeToString()))


def test_export_parity_and_metadata_round_trip(encoder):
    ckpt, path = encoder
    report = export_report()
    assert set(report["parity"]) == {1, 7, 64}
    for p in report["parity"].values():
        assert p["max_abs_diff"] <= 1e-4 and p["min_cosine"] >= 0.9999

    meta = read_metadata(path)
    _, pre, info = load_encoder(ckpt)
    assert Preprocess.from_dict(meta) == pre and Preprocess.from_dict(meta["preprocess"]) == pre
    assert meta["dim"] == info["dim"] == 256 and meta["checkpoint_sha256"] == file_sha256(ckpt)
    assert meta["model_config"]["backbone"] == "resnet-tiny" and meta["train_config"] == {"epochs": 0}
    assert meta["quantization"] == "none" and meta["opset"] == 18 and meta["format"] == export.EXPORT_FORMAT
    assert report["metadata"] == meta

    model = onnx.load(str(path))
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "images" and inp.type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [3, 32, 32]
    assert out.name == "embeddings"
    assert {p.key for p in model.metadata_props} >= {"byol_search.preprocess", "byol_search.checkpoint_sha256"}


def test_onnx_output_is_normalised_and_matches_torch(encoder):
    ckpt, path = encoder
    session = export._session(path)
    enc, pre, _ = load_encoder(ckpt)
    x = pre.batch(export.generated_images(5, 48, seed=3))
    got = session.run(None, {"images": x})[0]
    with torch.no_grad():
        want = torch.nn.functional.normalize(enc(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_export_fails_loudly_and_writes_nothing(tmp_path, cached_exporter):
    other = make_checkpoint(tmp_path / "other.pt", seed=5)  # its weights differ from the graph handed back
    with pytest.raises(ExportError, match=r"batch 1: max abs diff .* min cosine"):
        export_onnx(other, tmp_path / "out" / "enc.onnx", log=lambda *a: None)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_read_metadata_refuses_a_foreign_model(tmp_path):
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    vi = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([node], "g", [vi("x", 1, [1])], [vi("y", 1, [1])])
    onnx.save(onnx.helper.make_model(graph), tmp_path / "other.onnx")
    with pytest.raises(ValueError, match="not a byol-search encoder"):
        read_metadata(tmp_path / "other.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        read_metadata(tmp_path / "junk.onnx")


def test_int8_written_with_its_cost(tmp_path, encoder, labelled_folder):
    _, path = encoder
    r = quantize_int8(path, tmp_path / "enc.int8.onnx", labelled_folder=labelled_folder, n_calibration=32,
                      n_overlap=64, log=lambda *a: None)
    assert 0.0 <= r["top10_overlap"] <= 1.0 and r["n_images"] == 64 and r["method"] == "static"
    assert {"knn_top1_fp32", "knn_top1_int8", "knn_top1_change"} <= set(r)
    meta = read_metadata(tmp_path / "enc.int8.onnx")
    assert meta["quantization"] == "int8-static" and meta["dim"] == 256
    s = export._session(tmp_path / "enc.int8.onnx")
    y = s.run(None, {"images": np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)})[0]
    assert y.shape == (3, 256)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-3)


def test_top_k_overlap():
    x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    assert export.top_k_overlap(x, x) == 1.0
    assert export.top_k_overlap(x, np.random.default_rng(1).standard_normal((50, 8))) < 0.6


def test_cli_export(tmp_path, encoder, shapes_folder, cached_exporter, capsys):
    ckpt, _ = encoder
    out = tmp_path / "e.onnx"
    args = ["export", str(ckpt), "-o", str(out), "--check-folder", str(shapes_folder), "--quantize", "int8", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == str(out) and read_metadata(out)["dim"] == 256
    assert report["int8"]["path"] == str(tmp_path / "e.int8.onnx") and 0 <= report["int8"]["top10_overlap"] <= 1
    assert main(["export", str(tmp_path / "missing.pt"), "-o", str(out)]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["export", str(ckpt), "--check-folder", str(tmp_path / "nope")]) == 2
