"""Evaluating a checkpoint on a labelled folder (byol/evaluate.py) and `byol-search evaluate`."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from app.cli import main
from byol.checkpoint import file_sha256, save_checkpoint
from byol.evaluate import embed_folder, evaluate, evaluate_encoder, format_table, load_labelled
from byol.model import BYOL, ModelConfig, build_backbone
from byol.preprocess import Preprocess

FAST = {"knn_k": 5, "shots": (1, 2), "draws": 2, "progress": False, "weight_decay": 1e-4}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained resnet-tiny checkpoint: evaluation needs weights, not good ones."""
    torch.manual_seed(0)
    mcfg = ModelConfig(backbone="resnet-tiny", image_size=32)
    m = BYOL(mcfg)
    path = tmp_path_factory.mktemp("run") / "checkpoint.pt"
    save_checkpoint(path, {
        "config": {},
        "model_config": asdict(mcfg),
        "preprocess": Preprocess.for_size(32).to_dict(),
        "model": m.state_dict(),
        "step": 0,
    })
    return path


@pytest.fixture
def labelled_copy(labelled_folder, tmp_path) -> Path:
    """A writable copy of the labelled fixture folder."""
    return Path(shutil.copytree(labelled_folder, tmp_path / "labelled"))


def test_load_labelled(labelled_folder):
    train_paths, train_y, test_paths, test_y, classes = load_labelled(labelled_folder)
    assert classes == ["circle", "square", "triangle"]
    assert len(train_paths) == len(train_y) == 24 and len(test_paths) == len(test_y) == 12
    assert np.bincount(train_y).tolist() == [8, 8, 8]
    assert all(Path(p).parent.name == classes[y] for p, y in zip(train_paths, train_y))


def test_load_labelled_accepts_val_for_test(labelled_copy):
    (labelled_copy / "test").rename(labelled_copy / "val")
    assert len(load_labelled(labelled_copy)[2]) == 12


def test_load_labelled_bad_layouts_say_what_is_expected(labelled_copy, tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        load_labelled(tmp_path / "nowhere")
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"missing train/.*train/<class>"):
        load_labelled(flat)
    shutil.rmtree(labelled_copy / "test")
    with pytest.raises(ValueError, match=r"missing test/ \(or val/\)"):
        load_labelled(labelled_copy)


def test_load_labelled_rejects_loose_files_and_unknown_classes(labelled_copy):
    shutil.copy(next((labelled_copy / "train" / "circle").iterdir()), labelled_copy / "train" / "loose.jpg")
    with pytest.raises(ValueError, match="outside class folders"):
        load_labelled(labelled_copy)
    (labelled_copy / "train" / "loose.jpg").unlink()
    (labelled_copy / "test" / "star").mkdir()
    with pytest.raises(ValueError, match="'star' has no folder"):
        load_labelled(labelled_copy)


def test_embed_folder_keeps_order_skips_bad_and_restores_mode(labelled_copy, tmp_path, capfd):
    paths = load_labelled(labelled_copy)[0][:5]
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    encoder, dim = build_backbone("resnet-tiny", 32)
    encoder.train()
    pre = Preprocess.for_size(32)
    out = embed_folder(encoder, pre, paths[:2] + [broken] + paths[2:], batch_size=2, progress=False,
                       precision="fp32")
    assert out.features.shape == (5, dim) and out.features.dtype == np.float32
    assert out.kept.tolist() == [0, 1, 3, 4, 5]
    assert [p for p, _ in out.bad] == [str(broken)] and out.bad[0][1]
    assert encoder.training  # a training loop's monitor must get its encoder back in train mode
    alone = embed_folder(encoder, pre, paths[:1], progress=False, precision="fp32").features
    # eval mode: a photo's features do not depend on its batch (train-mode BatchNorm would move them far). The
    # convolutions may pick other kernels for another batch size (oneDNN on AVX-512 or AMX), so the same
    # direction and length to 1e-4, not the same bits
    cos = float(alone[0] @ out.features[0]) / np.linalg.norm(alone[0]) / np.linalg.norm(out.features[0])
    assert cos > 1 - 1e-4 and np.linalg.norm(alone[0]) == pytest.approx(np.linalg.norm(out.features[0]), rel=1e-4)
    half = embed_folder(encoder, pre, paths, progress=False, precision="bf16").features
    cos = (half * out.features).sum(1) / np.linalg.norm(half, axis=1) / np.linalg.norm(out.features, axis=1)
    assert cos.min() > 0.999  # bfloat16 features point where the fp32 ones do
    assert "decoding" not in capfd.readouterr().err  # progress=False: no bar, the decoding one included


def test_evaluate_checkpoint_keys_and_ranges(checkpoint, labelled_folder):
    r = evaluate(checkpoint, labelled_folder, **{**FAST, "weight_decay": None})  # the held-out choice
    for key in ("knn_top1", "linear_top1"):
        assert 0.0 <= r[key] <= 1.0
    assert set(r["few_shot"]) == {"1", "2"} and "few_shot_classifier" not in r  # the page's is the logistic probe
    for v in r["few_shot"].values():
        assert 0.0 <= v["mean"] <= 1.0 and v["std"] >= 0.0
    assert (r["n_train"], r["n_test"], r["classes"]) == (24, 12, ["circle", "square", "triangle"])
    assert r["checkpoint"]["sha256"] == file_sha256(checkpoint)
    assert (r["checkpoint"]["step"], r["checkpoint"]["backbone"]) == (0, "resnet-tiny")
    assert r["linear_weight_decay"] in (1e-5, 1e-4, 1e-3)
    assert r["bad_files"] == [] and r["seconds"]["total"] > 0
    json.dumps(r)  # JSON-serialisable as it is
    assert "kNN top-1" in format_table(r) and "the page's classifier" in format_table(r)


def test_evaluate_encoder_separates_colour_coded_shapes(labelled_folder):
    # the fixture's classes differ by colour, which even a random conv net's features keep
    torch.manual_seed(0)
    encoder, _ = build_backbone("resnet-tiny", 32)
    r = evaluate_encoder(encoder, Preprocess.for_size(32), labelled_folder, shots=(), linear=True,
                         knn_k=5, progress=False, weight_decay=1e-4)
    assert r["linear_top1"] > 0.6 and r["few_shot"] == {}


def test_corrupt_file_is_skipped_and_reported(checkpoint, labelled_copy):
    bad = labelled_copy / "train" / "circle" / "zz_corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    r = evaluate(checkpoint, labelled_copy, **{**FAST, "shots": ()})
    assert [b["path"] for b in r["bad_files"]] == [str(bad)]
    assert r["n_train"] == 24


def test_cli_json_and_out(checkpoint, labelled_folder, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = main(["evaluate", str(checkpoint), str(labelled_folder), "--json", "--k", "5", "--shots", "1",
               "--draws", "2", "--weight-decay", "1e-4", "--out", str(out)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["few_shot"].keys() == {"1"} and printed["knn_k"] == 5
    assert json.loads(out.read_text()) == printed


def test_cli_table(checkpoint, labelled_folder, capsys):
    assert main(["evaluate", str(checkpoint), str(labelled_folder), "--k", "5", "--shots", "",
                 "--weight-decay", "1e-4"]) == 0
    text = capsys.readouterr().out
    assert "kNN top-1" in text and "linear probe top-1" in text


@pytest.mark.parametrize("case", ["missing", "not_a_checkpoint", "bad_layout", "bad_shots"])
def test_cli_errors_exit_2_without_traceback(case, checkpoint, labelled_folder, tmp_path, capsys):
    ckpt, folder, extra = str(checkpoint), str(labelled_folder), []
    if case == "missing":
        ckpt = str(tmp_path / "nope.pt")
    elif case == "not_a_checkpoint":
        (tmp_path / "text.pt").write_text("hello")
        ckpt = str(tmp_path / "text.pt")
    elif case == "bad_layout":
        folder = str(tmp_path)
    else:
        extra = ["--shots", "one"]
    assert main(["evaluate", ckpt, folder, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    expected = {"missing": "no such checkpoint", "not_a_checkpoint": "not a readable checkpoint",
                "bad_layout": "expected", "bad_shots": "--shots"}[case]
    assert expected in err


class MeanColour(torch.nn.Module):
    """An 'encoder' whose feature is the mean normalised colour: the answer on solid colours is known."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mean(dim=(2, 3))  # B, 3


_SOLID = {"red": (0, 0), "green": (1, 1), "blue": (2, 2)}


def solid_colours(root: Path, test_green_in_red: int = 2) -> Path:
    """train/<colour>/ of 6 solid images each and test/<colour>/ of 4, except that the last
    `test_green_in_red` images of test/red are green: a colour encoder must get exactly those wrong."""
    from PIL import Image

    for split, n in (("train", 6), ("test", 4)):
        for name, (channel, _) in _SOLID.items():
            (root / split / name).mkdir(parents=True)
            for j in range(n):
                c = 1 if split == "test" and name == "red" and j >= n - test_green_in_red else channel
                px = np.zeros((32, 32, 3), np.uint8)
                px[..., c] = 200 + 10 * j  # a little brightness variation
                Image.fromarray(px).save(root / split / name / f"{j}.png")
    return root


def test_evaluate_encoder_exact_on_constructed_colours(tmp_path):
    folder = solid_colours(tmp_path / "solid")
    r = evaluate_encoder(MeanColour(), Preprocess.for_size(32), folder, knn_k=200, shots=(1, 3), draws=3,
                         progress=False, weight_decay=1e-4, precision="fp32")
    want = 10 / 12  # every image right but the two green ones filed under test/red
    assert r["knn_top1"] == pytest.approx(want) and r["linear_top1"] == pytest.approx(want)
    for shots in ("1", "3"):
        assert r["few_shot"][shots] == pytest.approx({"mean": want, "std": 0.0})
    assert (r["n_train"], r["n_test"], r["dim"], r["draws"]) == (18, 12, 3, 3)
    assert r["classes"] == ["blue", "green", "red"] and r["precision"] == "fp32"
    assert (r["knn_k"], r["knn_t"], r["linear_weight_decay"]) == (200, 0.1, 1e-4)
    perfect = evaluate_encoder(MeanColour(), Preprocess.for_size(32), solid_colours(tmp_path / "p", 0),
                               shots=(1,), draws=2, progress=False, weight_decay=1e-4, precision="fp32")
    assert perfect["knn_top1"] == perfect["linear_top1"] == perfect["few_shot"]["1"]["mean"] == 1.0


def test_evaluate_passes_every_option_to_evaluate_encoder(checkpoint, labelled_folder):
    """evaluate() is evaluate_encoder() on the checkpoint's encoder with the same options, plus provenance."""
    from byol.checkpoint import load_encoder

    opts = {"knn_k": 7, "knn_t": 0.2, "shots": (2,), "draws": 3, "batch_size": 5, "seed": 4, "progress": False,
            "weight_decay": 1e-3, "precision": "fp32"}
    r = evaluate(checkpoint, labelled_folder, **opts)
    encoder, pre, _ = load_encoder(checkpoint)
    direct = evaluate_encoder(encoder, pre, labelled_folder, linear=True, **opts)
    for key in ("knn_top1", "knn_k", "knn_t", "linear_top1", "linear_weight_decay", "few_shot", "draws", "precision", "classes", "n_train", "n_test", "dim"):
        assert r[key] == direct[key], key
    assert (r["knn_k"], r["knn_t"], r["draws"], r["precision"]) == (7, 0.2, 3, "fp32")
    assert set(r["few_shot"]) == {"2"} and r["linear_weight_decay"] == 1e-3
    assert r["labelled_folder"] == str(labelled_folder) and r["checkpoint"]["path"] == str(checkpoint)


def test_options_are_one_dataclass_and_unknown_ones_are_refused(checkpoint, labelled_folder):
    from byol.evaluate import EvalOptions

    with pytest.raises(TypeError, match="knn_kk"):
        evaluate(checkpoint, labelled_folder, knn_kk=5)
    r = evaluate(checkpoint, labelled_folder, EvalOptions(shots=(), knn_k=3, linear=False), progress=False)
    assert r["knn_k"] == 3 and r["few_shot"] == {} and "linear_top1" in r  # evaluate always fits the probe


# ---------------------------------------------------------------------------------------------- where a run starts
def _step0_from(init: str, path: Path) -> Path:
    """A step-0 checkpoint of a run started from `init`: the encoder `evaluate <init>` must score."""
    from byol.init import resolve_init, start_from

    mcfg = ModelConfig(backbone="resnet-tiny", image_size=32)
    model = BYOL(mcfg)
    start_from(model, resolve_init(init, "resnet-tiny", 32))
    save_checkpoint(path, {"config": {}, "model_config": asdict(mcfg), "preprocess": Preprocess.for_size(32).to_dict(),
                           "model": model.state_dict(), "step": 0})
    return path


def test_evaluate_base_scores_the_encoder_a_run_starts_from(labelled_folder, tmp_path):
    """`evaluate base` needs no checkpoint: it scores the shipped base as a run with --init base starts."""
    r = evaluate("base", labelled_folder, **{**FAST, "shots": ()})
    want = evaluate(_step0_from("base", tmp_path / "b.pt"), labelled_folder, **{**FAST, "shots": ()})
    assert r["knn_top1"] == want["knn_top1"] and r["linear_top1"] == pytest.approx(want["linear_top1"], abs=0.05)
    assert (r["checkpoint"]["step"], r["checkpoint"]["init"], r["checkpoint"]["backbone"]) == (0, "base", "resnet-tiny")
    assert "where a run starts: --init base" in format_table(r)


def test_evaluate_an_encoder_file_as_init_reads_it(checkpoint, labelled_folder, tmp_path):
    """An encoder file written by export_base (what --init PATH reads) scores as the checkpoint it came from."""
    from byol.init import export_base

    export_base(checkpoint, tmp_path, {"data": "test"})
    r = evaluate(tmp_path / "base-resnet-tiny.pt", labelled_folder, **{**FAST, "shots": ()})
    want = evaluate(checkpoint, labelled_folder, **{**FAST, "shots": ()})
    assert r["knn_top1"] == want["knn_top1"] and r["checkpoint"]["init"] == "path"


def test_cli_evaluate_base(labelled_folder, capsys):
    assert main(["evaluate", "base", str(labelled_folder), "--k", "5", "--shots", "", "--weight-decay", "1e-4"]) == 0
    assert "--init base, no training" in capsys.readouterr().out
