"""Checkpoints made without training (random weights), for tests of export, embedding and the index."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from byol.checkpoint import save_checkpoint
from byol.model import BYOL, ModelConfig
from byol.preprocess import Preprocess


def make_checkpoint(path: Path, backbone: str = "resnet-tiny", image_size: int = 32, seed: int = 0) -> Path:
    """A checkpoint of an untrained BYOL model, with BatchNorm statistics that are not the identity."""
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone=backbone, image_size=image_size, proj_hidden=64, proj_dim=32)
    m = BYOL(cfg)
    m.train()
    with torch.no_grad():  # a few forward passes move the running statistics away from 0/1
        for _ in range(3):
            m.online_encoder(torch.randn(8, 3, image_size, image_size) * 2 + 0.5)
    save_checkpoint(path, {"config": {"epochs": 0}, "model_config": asdict(cfg),
                           "preprocess": Preprocess.for_size(image_size).to_dict(), "model": m.state_dict(), "step": 0})
    return path



_EXPORTED: dict = {}


def exported_encoder(tmp_path_factory, check_folder: Path | None = None) -> tuple[Path, Path]:
    """(checkpoint, encoder.onnx) exported once per test session (parity checked on `check_folder`, when the
    first caller gives one) and shared by every test file that needs a model; `export_report()` has the report."""
    if "onnx" not in _EXPORTED:
        from byol.export import export_onnx

        root = tmp_path_factory.mktemp("encoder")
        _EXPORTED["ckpt"] = make_checkpoint(root / "checkpoint.pt")
        _EXPORTED["report"] = export_onnx(_EXPORTED["ckpt"], root / "encoder.onnx", check_folder=check_folder,
                                          log=lambda *a: None)
        _EXPORTED["onnx"] = root / "encoder.onnx"
    return _EXPORTED["ckpt"], _EXPORTED["onnx"]


def export_report() -> dict:
    return _EXPORTED["report"]
