"""What a checkpoint holds, atomic saving, safe loading, and rebuilding the encoder from a checkpoint alone.

A checkpoint is a plain dict (loadable with `weights_only=True`):
  format        CHECKPOINT_FORMAT
  config        asdict(TrainConfig): the run's arguments, so another program can rebuild everything
  model_config  asdict(ModelConfig)
  preprocess    Preprocess.to_dict(): the evaluation transform for this encoder
  model         BYOL.state_dict(): online_encoder.*, online_projector.*, predictor.*, target_*.*
  optimizer     optimizer.state_dict()
  step          number of optimiser steps taken
  rng           RNG states (torch CPU, CUDA if any, numpy, python) for an exact resume
  extra         anything else the trainer wants back (plan, elapsed time, ...)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from byol.fileio import atomic_write, file_sha256  # re-exported: importable from here as before
from byol.model import ModelConfig, build_backbone
from byol.preprocess import Preprocess

CHECKPOINT_FORMAT = "byol-search/checkpoint/1"

__all__ = [
    "CHECKPOINT_FORMAT", "CheckpointError", "atomic_write", "file_sha256", "load_checkpoint", "load_encoder",
    "save_checkpoint",
]


def save_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> None:
    """Atomically save a checkpoint dict (see module docstring)."""
    ckpt = {"format": CHECKPOINT_FORMAT, **ckpt}
    atomic_write(path, lambda f: torch.save(ckpt, f))


class CheckpointError(ValueError):
    """A file that is not a usable byol-search checkpoint; the message says why."""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (`weights_only=True`: no arbitrary code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a byol-search checkpoint (expected format {CHECKPOINT_FORMAT})")
    return ckpt


def load_encoder(path: str | Path) -> tuple[nn.Module, Preprocess, dict[str, Any]]:
    """Rebuild the online encoder f from a checkpoint alone.

    Returns (encoder in eval mode mapping B,3,H,W -> B,D pooled features, its Preprocess, info) where
    info has: sha256, step, dim, model_config, config, init (where training started: byol.init).
    """
    ckpt = load_checkpoint(path)
    mcfg = ModelConfig(**ckpt["model_config"])
    encoder, dim = build_backbone(mcfg.backbone, mcfg.image_size)
    prefix = "online_encoder."
    state = {k[len(prefix):]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}
    encoder.load_state_dict(state)
    encoder.eval()
    info = {
        "sha256": file_sha256(path),
        "step": int(ckpt.get("step", 0)),
        "dim": dim,
        "model_config": ckpt["model_config"],
        "config": ckpt.get("config", {}),
        "init": ckpt.get("extra", {}).get("init", {"kind": "none"}),
    }
    return encoder, Preprocess.from_dict(ckpt["preprocess"]), info
