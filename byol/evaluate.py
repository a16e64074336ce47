"""Evaluating a frozen encoder on a labelled folder: weighted kNN, linear probe and few-shot linear probe.

The field's protocol (Wu et al. 2018; used by lightly, solo-learn and DINO): the encoder is frozen, its
features L2-normalised; weighted kNN with k=200 and t=0.1 against the train split, top-1 on the test split;
a multinomial logistic regression on all train features; and the same probe given only 1, 5 or 10
labelled images per class, averaged over several random draws: the page's few-shot classifier (byol.probe.
fit_page makes the same predictions). The encoder is a checkpoint's or where a run starts (`base`,
`imagenet`, `none`, an --init file), so that what training on the folder added can be read off. Images
go through the ONE evaluation transform (byol.preprocess.Preprocess) that export, embedding and the page
also use.

A labelled folder is FOLDER/train/<class>/* and FOLDER/test/<class>/* (`val/` is accepted for `test/`,
as in Imagenette). Embeddings stay in memory; nothing is written to disk.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from byol import probe
from byol.precision import resolve_precision
from byol.preprocess import Preprocess

LAYOUT = "FOLDER/train/<class>/<images> and FOLDER/test/<class>/<images> (or FOLDER/val/<class>/<images>)"
# weight decays tried for the linear probe on a held-out part of train (features are L2-normalised)
WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3)
FEW_SHOT_WEIGHT_DECAY = 1e-4  # with 1-10 labels per class there is nothing to hold out: byol.probe's default
# decoded pixels of the last folders embedded, kept in memory so evaluating several encoders on the
# same folder (the benchmark, the kNN monitor) decodes its images once
_DECODED: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]] = {}
_DECODED_MAX_BYTES = 1 << 30


class Embedded(NamedTuple):
    features: np.ndarray  # N_kept, D float32 (not normalised; the probes normalise)
    kept: np.ndarray  # N_kept int64: row i of features is paths[kept[i]]
    bad: list[tuple[str, str]]  # (path, reason) for each file that could not be decoded, skipped


# ----------------------------------------------------------------------------------------------------------
# the labelled folder
# ----------------------------------------------------------------------------------------------------------
def _images_under(folder: Path) -> list[str]:
    from byol.data import scan_folder

    return [str(p) for p in scan_folder(folder)]


def load_labelled(folder: str | Path) -> tuple[list[str], np.ndarray, list[str], np.ndarray, list[str]]:
    """Read a labelled folder: (train_paths, train_labels, test_paths, test_labels, class_names).

    Class names are the sub-folder names of train/, sorted; labels index into them. Raises ValueError
    with the expected layout when the folder does not match it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder; expected {LAYOUT}")
    train_dir = folder / "train"
    test_dir = next((folder / n for n in ("test", "val") if (folder / n).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        found = ", ".join(sorted(p.name + "/" for p in folder.iterdir() if p.is_dir())) or "no sub-folders"
        missing = "train/" if not train_dir.is_dir() else "test/ (or val/)"
        raise ValueError(f"{folder}: missing {missing} (found {found}); expected {LAYOUT}")
    class_names = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_names:
        raise ValueError(f"{train_dir}: no class folders; expected {LAYOUT}")
    index = {c: i for i, c in enumerate(class_names)}

    def split(root: Path) -> tuple[list[str], np.ndarray]:
        loose = [p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
        if loose:
            raise ValueError(f"{root}: files outside class folders ({loose[0]}, ...); expected {LAYOUT}")
        paths, labels = [], []
        for c in sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if c not in index:
                raise ValueError(f"{root / c}: class {c!r} has no folder in {train_dir}; the splits must share classes")
            found = sorted(_images_under(root / c))
            paths += found
            labels += [index[c]] * len(found)
        if not paths:
            raise ValueError(f"{root}: no images in its class folders; expected {LAYOUT}")
        return paths, np.asarray(labels, dtype=np.int64)

    train_paths, train_labels = split(train_dir)
    test_paths, test_labels = split(test_dir)
    empty = [c for i, c in enumerate(class_names) if not (train_labels == i).any()]
    if empty:
        raise ValueError(f"{train_dir}: class folder(s) without images: {', '.join(empty)}")
    return train_paths, train_labels, test_paths, test_labels, class_names


# ----------------------------------------------------------------------------------------------------------
# embedding
# ----------------------------------------------------------------------------------------------------------
def _stamp(path: str) -> tuple[str, int, int]:
    try:
        st = os.stat(path)
        return path, st.st_size, st.st_mtime_ns
    except OSError:
        return path, -1, -1


def _decode(paths: list[str], preprocess: Preprocess, workers: int | None,
            progress: bool = True) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Decode and resize/crop every image to uint8 N,H,W,3 with the evaluation transform; bad files skipped."""
    from byol.data import BadFile, decode_many
    from byol.images import load_rgb

    key = (tuple(_stamp(p) for p in paths), preprocess)  # a file changed on disk is decoded again
    if key in _DECODED:
        return _DECODED[key]

    def one(path: str) -> np.ndarray:
        # min_side lets JPEG draft mode decode a large photo at a reduced scale that still covers `resize`
        return preprocess.to_uint8(load_rgb(path, min_side=preprocess.resize))

    pixels = np.empty((len(paths), preprocess.size, preprocess.size, 3), np.uint8)
    kept: list[int] = []
    bad: list[tuple[str, str]] = []
    for i, out in decode_many(paths, one, workers, desc="decoding", progress=progress):
        if isinstance(out, BadFile):
            bad.append((str(out.path), str(out.reason)))
        else:
            pixels[len(kept)] = cast(np.ndarray, out)
            kept.append(i)
    result = (pixels[: len(kept)], np.asarray(kept, dtype=np.int64), bad)
    if pixels.nbytes <= _DECODED_MAX_BYTES:
        while _DECODED and sum(v[0].nbytes for v in _DECODED.values()) + pixels.nbytes > _DECODED_MAX_BYTES:
            _DECODED.pop(next(iter(_DECODED)))
        _DECODED[key] = result
    return result


@torch.inference_mode()
def embed_folder(
    encoder: nn.Module,
    preprocess: Preprocess,
    paths: Sequence[str | Path],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    workers: int | None = None,
    progress: bool = True,
    precision: str = "auto",
) -> Embedded:
    """Embed images with a frozen encoder: (features N_kept,D float32, kept indices, bad files).

    Files that cannot be decoded are skipped and returned as (path, reason); `kept` maps rows back to
    `paths`. The encoder runs in eval mode (BatchNorm uses its running statistics) and is restored to
    its previous mode afterwards, so a training loop can call this as a monitor. precision: see
    `byol.precision.resolve_precision`.
    """
    pixels, kept, bad = _decode([str(p) for p in paths], preprocess, workers, progress)
    device = torch.device(device)
    bf16 = resolve_precision(precision, device) == "bf16"
    was_training = encoder.training
    encoder.eval()
    feats = []
    try:
        for i in tqdm(range(0, len(pixels), batch_size), desc="embed", unit="batch", disable=not progress,
                      leave=False, file=sys.stderr):
            x = torch.from_numpy(preprocess.normalize(pixels[i : i + batch_size])).to(device)  # B,3,H,W
            # channels-last input lets oneDNN pick its fast bfloat16 convolutions (measured 1.7x on AMX CPUs)
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                feats.append(encoder(x).float().flatten(1).cpu())  # B, D
    finally:
        encoder.train(was_training)
    dim = feats[0].shape[1] if feats else 0
    features = torch.cat(feats).numpy() if feats else np.zeros((0, dim), np.float32)
    return Embedded(np.ascontiguousarray(features, dtype=np.float32), kept, bad)


# ----------------------------------------------------------------------------------------------------------
# the probes
# ----------------------------------------------------------------------------------------------------------
def choose_weight_decay(x: np.ndarray, y: np.ndarray, num_classes: int, seed: int = 0) -> float:
    """Pick the linear probe's weight decay among WEIGHT_DECAYS on held-out train images.

    A stratified 20% of train is held out (at most 5,000 images) and the candidates are fitted on the rest
    (at most 20,000: the choice is stable well before that, and each fit is a full-batch L-BFGS).
    Too few labels to hold any out (fewer than 5 per class): the probe's default.
    """
    counts = np.bincount(y, minlength=num_classes)
    if counts[counts > 0].min() < 5:
        return 1e-4
    rng = np.random.default_rng(seed)
    order = {c: rng.permutation(np.flatnonzero(y == c)) for c in np.flatnonzero(counts)}
    n_val = min(0.2, 5_000 / len(y))
    n_fit = min(1.0, 20_000 / len(y))
    val = np.concatenate([o[: max(1, int(n_val * len(o)))] for o in order.values()])
    fit = np.concatenate([o[max(1, int(n_val * len(o))):][: max(1, int(n_fit * len(o)))] for o in order.values()])
    scores = {}
    for wd in WEIGHT_DECAYS:
        clf = probe.fit_linear(x[fit], y[fit], num_classes, weight_decay=wd)
        scores[wd] = float((clf.predict(x[val])[0] == y[val]).mean())
    best = max(scores.values())
    return max(wd for wd, s in scores.items() if s == best)  # ties: the stronger regulariser


@dataclass(frozen=True)
class EvalOptions:
    """How `evaluate` and `evaluate_encoder` measure (the field's protocol by default: module docstring)."""

    knn_k: int = 200  # neighbours of the weighted kNN
    knn_t: float = 0.1  # its temperature
    shots: tuple[int, ...] = (1, 5, 10)  # labels per class of the few-shot probes
    draws: int = 5  # random draws of those labels per shot count
    linear: bool = True  # fit the linear probe on all train labels
    batch_size: int = 256
    device: str | torch.device = "cpu"
    workers: int | None = None  # decoding processes; None = one per core
    seed: int = 0  # the few-shot draws and the weight-decay split
    progress: bool = True  # tqdm bars
    weight_decay: float | None = None  # the probes'; None picks the linear probe's on held-out train images
    precision: str = "auto"  # auto | fp32 | bf16 (byol.precision)


def _options(options: EvalOptions | None, overrides: dict[str, Any]) -> EvalOptions:
    """options (or the defaults) with keyword overrides; TypeError names an unknown one."""
    return replace(options or EvalOptions(), **overrides)


def evaluate_encoder(encoder: nn.Module, preprocess: Preprocess, labelled_folder: str | Path,
                     options: EvalOptions | None = None, **overrides: Any) -> dict[str, Any]:
    """kNN, linear-probe and few-shot top-1 of a frozen encoder on a labelled folder (see module docstring).

    Any encoder mapping B,3,H,W to B,D works: a checkpoint's, a randomly initialised one, a baseline's.
    weight_decay: the linear probe's; None picks it on held-out train images (`choose_weight_decay`).
    Few-shot probes use it too when given, else FEW_SHOT_WEIGHT_DECAY (too few labels to pick one).
    options (EvalOptions) and keyword overrides of its fields (evaluate_encoder(..., draws=10)) say how.
    """
    o = _options(options, overrides)
    knn_k, knn_t, draws, seed, weight_decay = o.knn_k, o.knn_t, o.draws, o.seed, o.weight_decay
    t0 = time.perf_counter()
    train_paths, train_y, test_paths, test_y, classes = load_labelled(labelled_folder)
    precision = resolve_precision(o.precision, o.device)

    def embed(paths: list[str]) -> Embedded:
        return embed_folder(encoder, preprocess, paths, batch_size=o.batch_size, device=o.device,
                            workers=o.workers, progress=o.progress, precision=precision)

    tr, te = embed(train_paths), embed(test_paths)
    train_y, test_y = train_y[tr.kept], test_y[te.kept]
    if not len(tr.kept) or not len(te.kept):
        raise ValueError(f"{labelled_folder}: no readable images in {'train' if not len(tr.kept) else 'test'}/")
    t_embed = time.perf_counter() - t0
    c = len(classes)
    x, xt = tr.features, te.features  # the probes L2-normalise

    result: dict[str, Any] = {
        "knn_top1": probe.knn_top1(x, train_y, xt, test_y, k=knn_k, t=knn_t),
        "knn_k": knn_k,
        "knn_t": knn_t,
    }
    if o.linear:
        wd = weight_decay if weight_decay is not None else choose_weight_decay(x, train_y, c, seed)
        clf = probe.fit_linear(x, train_y, c, weight_decay=wd)
        result["linear_top1"] = float((clf.predict(xt)[0] == test_y).mean())
        result["linear_weight_decay"] = wd
    # the plain logistic probe, which is also the page's few-shot classifier (byol.probe.fit_page: the same
    # predictions, its confidence calibrated)
    result["few_shot"] = {}
    few_wd = weight_decay if weight_decay is not None else FEW_SHOT_WEIGHT_DECAY
    for n in o.shots:
        mean, std = probe.few_shot_top1(x, train_y, xt, test_y, n, draws, seed, weight_decay=few_wd)
        result["few_shot"][str(n)] = {"mean": mean, "std": std}
    result.update(
        draws=draws,
        classes=classes,
        n_train=int(len(train_y)),
        n_test=int(len(test_y)),
        dim=int(tr.features.shape[1]),
        image_size=preprocess.size,
        precision=precision,
        bad_files=[{"path": p, "reason": r} for p, r in tr.bad + te.bad],
        seconds={"embed": t_embed, "total": time.perf_counter() - t0},
    )
    return result


def load_any_encoder(spec: str | Path) -> tuple[nn.Module, Preprocess, dict[str, Any]]:
    """A checkpoint's online encoder, or the encoder a run starts from (byol.init.start_encoder): `base`,
    `imagenet`, `none`, or a file that `--init` reads (an encoder file, a state dict). A file that is neither
    is a byol.checkpoint.CheckpointError that names both."""
    from byol.checkpoint import CheckpointError, load_checkpoint, load_encoder
    from byol.init import INIT_KINDS, InitError, start_encoder

    if str(spec) in INIT_KINDS:
        return start_encoder(str(spec))
    try:
        load_checkpoint(spec)
    except CheckpointError as not_checkpoint:
        if not Path(spec).is_file():
            raise CheckpointError(f"{spec}: no such checkpoint file (give a checkpoint.pt, base, imagenet, none "
                                  f"or an encoder file that --init reads)") from None
        try:
            return start_encoder(str(spec))
        except InitError as e:
            raise CheckpointError(f"{not_checkpoint}; nor an encoder file that --init reads: {e}") from None
    return load_encoder(spec)


def evaluate(checkpoint_path: str | Path, labelled_folder: str | Path, options: EvalOptions | None = None,
             **overrides: Any) -> dict[str, Any]:
    """Evaluate an encoder on a labelled folder; `evaluate_encoder` plus where it came from. The encoder is a
    checkpoint's, or where a run starts (`base`, `imagenet`, `none`, an --init file: `load_any_encoder`), so
    that what training on the folder added can be read off.

    Raises byol.checkpoint.CheckpointError (a ValueError) for a file that is neither, and
    ValueError for a folder that is not laid out as train/<class>/, test/<class>/. options and overrides as
    in evaluate_encoder (the linear probe is always fitted here).
    """
    o = replace(_options(options, overrides), linear=True)

    t0 = time.perf_counter()
    load_labelled(labelled_folder)  # fail on a bad layout before the slow part
    encoder, preprocess, info = load_any_encoder(checkpoint_path)
    encoder.to(o.device)
    result = evaluate_encoder(encoder, preprocess, labelled_folder, o)
    result["checkpoint"] = {
        "path": str(checkpoint_path),
        "sha256": info["sha256"],
        "step": info["step"],
        "backbone": info["model_config"].get("backbone"),
        "image_size": info["model_config"].get("image_size"),
        "init": info.get("init", {}).get("kind") if not info["step"] else None,
    }
    result["labelled_folder"] = str(labelled_folder)
    result["seconds"]["total"] = time.perf_counter() - t0
    return result


def format_table(result: dict[str, Any]) -> str:
    """A readable summary of an evaluation result."""
    rows = [("kNN top-1", f"{result['knn_top1']:.2%}", f"k={result['knn_k']}, t={result['knn_t']}")]
    if "linear_top1" in result:
        rows.append(("linear probe top-1", f"{result['linear_top1']:.2%}",
                     f"all train labels, weight decay {result['linear_weight_decay']:g}"))
    for n, r in result["few_shot"].items():
        rows.append((f"{n}-shot linear top-1", f"{r['mean']:.2%} ± {r['std']:.2%}",
                     f"{n} label(s) per class, {result['draws']} draws; the page's classifier"))
    w = max(len(r[0]) for r in rows)
    v = max(len(r[1]) for r in rows)
    lines = []
    ck = result.get("checkpoint")
    if ck:
        start = f"  (where a run starts: --init {ck['init']}, no training)" if ck.get("init") else ""
        lines.append(f"checkpoint {ck['path']}  step {ck['step']}  {ck['backbone']} @ {ck['image_size']} px  "
                     f"sha256 {ck['sha256'][:12] or '-'}{start}")
    lines.append(f"{len(result['classes'])} classes, {result['n_train']} train / {result['n_test']} test images, "
                 f"{result['seconds']['total']:.1f} s")
    lines += [f"  {a:<{w}}  {b:>{v}}   {c}" for a, b, c in rows]
    if result["bad_files"]:
        lines.append(f"skipped {len(result['bad_files'])} unreadable file(s):")
        lines += [f"  {b['path']}: {b['reason']}" for b in result["bad_files"]]
    return "\n".join(lines)
