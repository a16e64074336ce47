"""Where a pretraining run starts (`--init`): random weights, the shipped base encoder, ImageNet, or a file.

Self-supervised training that starts from an existing encoder converges much faster and ends better than
training from random weights (Reed et al. 2022, "Self-Supervised Pretraining Improves Self-Supervised
Pretraining"). Continued BYOL starts the online *and* target encoders from the init; the projector and
predictor are fresh (their input statistics belong to the new data).

    auto        base when one is shipped for the backbone and image size, else none
    none        random weights (He init), the only choice before this module
    base        an encoder shipped in byol/weights/, pretrained by this project with BYOL on public,
                unlabelled images only (its model card lies beside it; scripts/train_base.py remakes it)
    imagenet    torchvision's supervised ImageNet weights (resnet18/34/50), through torchvision's weights
                API: downloaded once into torch's cache (TORCH_HOME) when the machine is online
    PATH        a byol-search checkpoint (an earlier run: continue on a new or grown folder), an encoder file
                written by export_base, or a torchvision-style state dict (keys conv1.weight, layer1.0...)

resolve_init(spec, backbone, image_size) -> Init {state (encoder state dict), info (what is recorded: kind,
source, sha256, loaded/skipped keys)}. Every error is an InitError with what to do.
start_encoder(spec, backbone, image_size) -> (encoder, Preprocess, info): the encoder a run would start from,
ready to embed (`byol-search evaluate base LABELLED`: what the folder's own training then adds).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from byol.model import BYOL

ENCODER_FORMAT = "byol-search/encoder/1"
BASE_DIR = Path(__file__).resolve().parent / "weights"
INIT_KINDS = ("auto", "none", "base", "imagenet")
IMAGENET_BACKBONES = ("resnet18", "resnet34", "resnet50")
_PREFIXES = ("module.", "online_encoder.", "encoder.", "backbone.", "model.")


class InitError(ValueError):
    """The init cannot be used; the message says why and what to do."""


@dataclass
class Init:
    state: dict[str, torch.Tensor] | None  # encoder state dict (None: random weights)
    info: dict[str, Any] = field(default_factory=dict)  # kind, source, sha256, loaded, skipped: stored with the run


def base_path(backbone: str) -> Path:
    return BASE_DIR / f"base-{backbone}.pt"


def base_card(backbone: str = "resnet-tiny") -> dict[str, Any] | None:
    """The shipped base's model card (data, command, budget, sha256, ...), or None when none is shipped."""
    card = BASE_DIR / f"base-{backbone}.json"
    return json.loads(card.read_text()) if card.is_file() else None


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _load_file(path: Path) -> tuple[dict[str, Any], str]:
    """torch.load with weights_only (no code runs); returns (object, sha256 of the file)."""
    if not path.is_file():
        raise InitError(f"--init {path}: no such file (give none, base, imagenet or a checkpoint/state dict)")
    data = path.read_bytes()
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad file
        raise InitError(f"--init {path}: not a readable torch file ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise InitError(f"--init {path}: expected a checkpoint or a state dict, found {type(obj).__name__}")
    return obj, _sha256_bytes(data)


def _encoder_state(obj: dict[str, Any], path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The encoder's tensors out of any accepted file, with what the file says it was (backbone, size)."""
    if obj.get("format") == ENCODER_FORMAT:
        return obj["encoder"], {"backbone": obj.get("backbone"), "image_size": obj.get("image_size")}
    if str(obj.get("format", "")).startswith("byol-search/checkpoint"):
        mc = obj.get("model_config", {})
        state = {k[len("online_encoder."):]: v for k, v in obj["model"].items() if k.startswith("online_encoder.")}
        return state, {"backbone": mc.get("backbone"), "image_size": mc.get("image_size"), "step": obj.get("step")}
    for key in ("state_dict", "model", "encoder"):  # common wrappers of a state dict
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {}
    for k, v in obj.items():
        if not torch.is_tensor(v):
            continue
        for prefix in _PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        state[k] = v
    if not state:
        raise InitError(f"--init {path}: holds no tensors")
    return state, {}


def apply_state(encoder: nn.Module, state: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Copy every tensor of `state` whose name and shape match into `encoder`; returns {loaded, skipped}.

    Names that differ only by a classifier (fc.*) or a stem of another shape (ImageNet's 7x7 stem for a
    small-image encoder's 3x3 one) are skipped and reported. Fewer than half of the encoder's tensors
    matching means the file is for another backbone: an InitError, not a silent partial start.
    """
    own = encoder.state_dict()
    loaded, skipped = {}, []
    for k, v in state.items():
        if k in own and own[k].shape == v.shape:
            loaded[k] = v.to(own[k].dtype)
        elif not k.startswith("fc."):
            skipped.append(k)
    weights = [k for k in own if not k.endswith("num_batches_tracked")]
    hit = sum(k in loaded for k in weights)
    if hit < 0.5 * len(weights):
        raise InitError(f"--init {source}: only {hit} of {len(weights)} encoder tensors match by name and shape; "
                        f"is it for another --backbone or --image-size? (e.g. {', '.join(skipped[:3]) or 'none'})")
    encoder.load_state_dict(loaded, strict=False)
    return {"loaded": hit, "of": len(weights), "skipped": sorted(skipped)}


def start_from(model: BYOL, init: Init) -> dict[str, Any]:
    """Start a BYOL model (byol.model.BYOL) from `init`: online and target encoders get its weights; the
    projector and predictor keep their fresh ones. Returns the info to record with the run."""
    if init.state is None:
        return dict(init.info)
    report = apply_state(model.online_encoder, init.state, init.info.get("source", init.info["kind"]))
    model.target_encoder.load_state_dict(model.online_encoder.state_dict())
    return {**init.info, **report}


def _imagenet_state(backbone: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torchvision's ImageNet weights for `backbone`: from torch's cache, else downloaded once into it."""
    if backbone not in IMAGENET_BACKBONES:
        raise InitError(f"--init imagenet: torchvision has ImageNet weights for {', '.join(IMAGENET_BACKBONES)}, "
                        f"not {backbone}; choose one with --backbone, or use --init base")
    import torchvision

    weights = torchvision.models.get_model_weights(backbone).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        state = weights.get_state_dict(progress=True, check_hash=True)
    except Exception as e:  # URLError, socket errors, hash mismatch: all mean "not available here"
        raise InitError(
            f"--init imagenet: could not download {weights.url} ({type(e).__name__}: {e}). On a machine that is "
            f"online this happens once; offline, copy that file to {cached} (TORCH_HOME sets the cache folder), "
            f"or use --init base (shipped, offline) or --init PATH") from e
    from byol.fileio import file_sha256

    sha = file_sha256(cached) if cached.is_file() else ""
    return state, {"source": str(weights), "sha256": sha}


def _same_stem(trained_size: int | None, image_size: int) -> bool:
    """Whether an encoder trained at `trained_size` px has the stem an `image_size` px run builds
    (byol.model: the small-image stem up to 64 px); unknown sizes are taken to fit."""
    return trained_size is None or (trained_size <= 64) == (image_size <= 64)


def resolve_init(spec: str | None, backbone: str, image_size: int) -> Init:
    """The weights a run starts from (see module docstring); InitError when they cannot be had."""
    spec = (spec or "none").strip()
    if spec == "auto":
        card = base_card(backbone)
        if base_path(backbone).is_file() and card and _same_stem(card.get("image_size"), image_size):
            return resolve_init("base", backbone, image_size)
        return Init(None, {"kind": "none", "auto": "no base shipped for this backbone and image size"})
    if spec == "none":
        return Init(None, {"kind": "none"})
    if spec == "base":
        path = base_path(backbone)
        if not path.is_file():
            shipped = sorted(p.stem[len("base-"):] for p in BASE_DIR.glob("base-*.pt"))
            raise InitError(f"--init base: no base encoder is shipped for {backbone} (shipped: "
                            f"{', '.join(shipped) or 'none'}); use --backbone {shipped[0] if shipped else '...'} "
                            f"or --init none/imagenet/PATH")
        obj, sha = _load_file(path)
        state, meta = _encoder_state(obj, path)
        if not _same_stem(meta.get("image_size"), image_size):
            raise InitError(f"--init base: the base was trained at {meta['image_size']} px (small-image stem); "
                            f"--image-size {image_size} builds the other stem: use --image-size 64 or less")
        return Init(state, {"kind": "base", "source": path.name, "sha256": sha})
    if spec == "imagenet":
        state, meta = _imagenet_state(backbone)
        return Init(state, {"kind": "imagenet", **meta})
    path = Path(spec).expanduser()
    obj, sha = _load_file(path)
    state, meta = _encoder_state(obj, path)
    if meta.get("backbone") and meta["backbone"] != backbone:
        raise InitError(f"--init {path}: it holds a {meta['backbone']} encoder; add --backbone {meta['backbone']}")
    return Init(state, {"kind": "path", "source": str(path.resolve()), "sha256": sha})


def start_encoder(spec: str, backbone: str | None = None,
                  image_size: int | None = None) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(encoder in eval mode, its byol.preprocess.Preprocess, info) of where a run with `--init spec` starts,
    without training: base (the shipped base, at the size it was trained at), imagenet (resnet18 unless
    `backbone` says otherwise; only from torch's cache or online), none (random weights) or PATH (an encoder
    file of export_base, or a state dict). info: sha256 ("" for random weights), step 0, dim, model_config
    and init, as byol.checkpoint.load_encoder's."""
    from byol.model import build_backbone
    from byol.preprocess import Preprocess

    meta: dict[str, Any] = {}
    path = Path(spec).expanduser()
    if spec not in INIT_KINDS and path.is_file():  # an encoder file says what it holds
        obj, _ = _load_file(path)
        meta = _encoder_state(obj, path)[1]
    card = base_card(backbone or "resnet-tiny") if spec in ("base", "auto") else None
    backbone = backbone or meta.get("backbone") or ("resnet18" if spec == "imagenet" else "resnet-tiny")
    image_size = int(image_size or meta.get("image_size") or (card or {}).get("image_size") or 32)
    torch.manual_seed(0)  # random weights (`none`) are the same on every call
    encoder, dim = build_backbone(backbone, image_size)
    init = resolve_init(spec, backbone, image_size)
    info = dict(init.info)
    if init.state is not None:
        info.update(apply_state(encoder, init.state, info.get("source", info["kind"])))
    encoder.eval()
    return encoder, Preprocess.for_size(image_size), {
        "sha256": info.get("sha256", ""), "step": 0, "dim": dim,
        "model_config": {"backbone": backbone, "image_size": image_size}, "init": info}


def _card_text(v: Any) -> str:
    """A card value as markdown text: a dict (e.g. the base a continued run started from) as `k: v` pairs."""
    if isinstance(v, dict):
        return "; ".join(f"{k}: {x}" for k, x in v.items())
    return str(v)


def export_base(checkpoint: str | Path, dest: str | Path, card: dict[str, Any]) -> dict[str, Any]:
    """Write a run's online encoder as the shipped base (`base-BACKBONE.pt`) and its card (`.json`, `.md`).

    The encoder is stored in fp32 (a resnet-tiny is 4.9 MB); the card gets sha256, size, step and the
    training plan from the checkpoint, plus `card` (data, command, machine, date).
    """
    from byol.checkpoint import load_checkpoint
    from byol.fileio import atomic_write

    ckpt = load_checkpoint(checkpoint)
    mc = ckpt["model_config"]
    state, _ = _encoder_state(ckpt, Path(checkpoint))
    obj = {"format": ENCODER_FORMAT, "backbone": mc["backbone"], "image_size": mc["image_size"],
           "encoder": {k: v.contiguous() for k, v in state.items()}}
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    dest = Path(dest)
    plan = ckpt.get("extra", {}).get("plan", {})
    cfg = ckpt.get("config", {})
    full = {"name": f"base-{mc['backbone']}", "backbone": mc["backbone"], "image_size": mc["image_size"],
            "view_size": cfg.get("crop_size") or None, "method": "BYOL (this project's pretrain)",
            **card, "steps": int(ckpt.get("step", 0)), "batch_size": plan.get("batch_size"),
            "images": plan.get("images"), "budget_s": plan.get("budget"),
            "elapsed_s": round(float(ckpt.get("extra", {}).get("elapsed", 0.0))),
            "init": cfg.get("init", "none"), "bytes": len(data), "sha256": _sha256_bytes(data)}
    atomic_write(dest / f"base-{mc['backbone']}.pt", lambda f: f.write(data))
    atomic_write(dest / f"base-{mc['backbone']}.json", lambda f: f.write(json.dumps(full, indent=2).encode()))
    lines = [f"# Model card: {full['name']}", "",
             "The encoder behind `byol-search pretrain --init base`: a BYOL online encoder pretrained by this "
             "project on public, unlabelled images only. No labels were read.", ""]
    lines += [f"- **{k}**: {_card_text(v)}" for k, v in full.items() if k != "name"]
    atomic_write(dest / f"base-{mc['backbone']}.md", lambda f: f.write(("\n".join(lines) + "\n").encode()))
    return full
