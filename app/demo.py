"""The one-command pipeline (`byol-search run`) and the built-in example (`byol-search demo`).

`run` chains pretrain -> export -> index -> serve in WORK_DIR:

    WORK_DIR/run/          pretraining run (checkpoint.pt, log.jsonl, curves.png)
    WORK_DIR/cache/        decoded-image cache, kept between runs
    WORK_DIR/encoder.onnx  the exported encoder (a link to the current file in encoders/)
    WORK_DIR/encoders/     exported encoders, one file per encoder, named by its hash, never rewritten
    WORK_DIR/index/        the index (and labels.sqlite: your labels)
    WORK_DIR/run.json      what each stage was last made from

Each stage is skipped when its inputs are unchanged since the last run, judged by fingerprints in run.json:
the folder listing (path, size, mtime of every photo) plus the training settings for pretraining, the
checkpoint's sha256 for export, the encoder's sha256 plus the folder listing for indexing. Each stage also
resumes: pretraining continues its checkpoint (`pretrain --resume`) when it was interrupted, and indexing is
incremental (new or changed photos only; a new encoder re-embeds in place, keeping ids and labels).

A new encoder never replaces the file an index, and so a page serving it, is using: it is exported to a
new file in encoders/, the index is re-embedded with that file, and only then does encoder.onnx point to it
and the previous encoder's file go away. A page left running across `run` keeps embedding uploads with the
encoder its index was built with (app/ui.py checks the hash).

`demo` draws a small example photo collection (nothing is downloaded) and runs the pipeline on it with a
short budget.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ENCODERS = "encoders"  # WORK_DIR/encoders/: one file per exported encoder, named by its hash
DEMO_BUDGET = 60.0  # seconds of pretraining for the demo: about two minutes end to end on a laptop CPU


def default_budget() -> float:
    """Pretraining seconds when none is given: a coffee break on a CPU, longer where a GPU makes it pay."""
    import torch

    return 15 * 60.0 if torch.cuda.is_available() else 5 * 60.0


@dataclass
class RunConfig:
    folder: str  # the photo folder
    out: str = "byol-work"  # WORK_DIR (layout in the module docstring)
    budget: float = 0.0  # pretraining wall-clock seconds; 0 = default_budget()
    backbone: str = "resnet-tiny"  # encoder; resnet-tiny learns most per CPU minute
    image_size: int = 32  # training resolution in px; 64 or more for photos when there is time or a GPU
    batch_size: int = 256  # images per step (shrunk for folders smaller than this)
    proj_hidden: int = 4096  # projector/predictor hidden width (the paper's 4096; smaller steps faster)
    seed: int = 0  # initialisation, data order and augmentation
    init: str = "auto"  # where the encoder starts: auto, none, base, imagenet or a checkpoint path (byol.init)


def folder_listing(folder: str | Path) -> tuple[str, int]:
    """(sha256 of every photo's relative path, size and mtime, number of photos): changes when the folder does."""
    from byol.data import scan_folder

    folder = Path(folder)
    h = hashlib.sha256()
    paths = scan_folder(folder)
    for p in paths:
        st = p.stat()
        h.update(f"{p.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest(), len(paths)


def _read_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_state(path: Path, state: dict) -> None:
    from byol.checkpoint import atomic_write

    atomic_write(path, lambda f: f.write((json.dumps(state, indent=2) + "\n").encode()))


def run(cfg: RunConfig, log=print) -> dict:
    """Pretrain, export and index as needed.

    Returns the paths (folder, checkpoint, model, index_dir), the number of photos, and per stage
    (pretrain, export, index) what happened: 'done', 'resumed' or 'skipped'.
    """
    from byol.checkpoint import file_sha256
    from byol.export import export_onnx
    from byol.train import TrainConfig, train
    from index.build import build_index
    from index.store import Store

    folder, work = Path(cfg.folder).absolute(), Path(cfg.out).absolute()
    work.mkdir(parents=True, exist_ok=True)
    state_path, run_dir = work / "run.json", work / "run"
    ckpt, model, index_dir = run_dir / "checkpoint.pt", work / "encoder.onnx", work / "index"
    state = _read_state(state_path)
    listing, n = folder_listing(folder)
    if n < 2:
        raise ValueError(f"{folder}: {n} photo(s) found; give a folder with at least a few dozen photos")
    out = {"folder": str(folder), "photos": n, "checkpoint": str(ckpt), "model": str(model),
           "index_dir": str(index_dir)}

    # ------------------------------------------------------------------ pretrain
    budget = cfg.budget or default_budget()
    key = {"listing": listing, "budget": budget, "backbone": cfg.backbone, "image_size": cfg.image_size,
           "batch_size": cfg.batch_size, "proj_hidden": cfg.proj_hidden, "seed": cfg.seed}
    if cfg.init not in ("auto", "none"):  # work folders made before --init keep their trained encoder
        key["init"] = cfg.init
    done = state.get("pretrain", {})
    tcfg = TrainConfig(folder=str(folder), out=str(run_dir), cache_dir=str(work / "cache"), budget=budget,
                       batch_size=cfg.batch_size, seed=cfg.seed, init=cfg.init)
    tcfg.model.backbone, tcfg.model.image_size, tcfg.model.proj_hidden = cfg.backbone, cfg.image_size, cfg.proj_hidden
    if done.get("key") == key and done.get("done") and ckpt.is_file() and file_sha256(ckpt) == done.get("sha256"):
        log(f"pretrain: skipped ({n} photos and settings unchanged since the last run)")
        out["pretrain"] = "skipped"
    else:
        resume = done.get("key") == key and not done.get("done") and ckpt.is_file()
        log(f"pretrain: {'resuming the interrupted run' if resume else f'{budget:.0f} s budget'} on {n} photos")
        state["pretrain"] = {"key": key, "done": False}
        _write_state(state_path, state)  # an interrupted run is resumed next time
        tcfg.resume = resume
        train(tcfg)
        state["pretrain"] = {"key": key, "done": True, "sha256": file_sha256(ckpt)}
        _write_state(state_path, state)
        out["pretrain"] = "resumed" if resume else "done"

    # ------------------------------------------------------------------ export
    ckpt_sha = state["pretrain"]["sha256"]
    done = state.get("export", {})
    encoder = work / done["file"] if done.get("file") else model  # runs before encoders/ used encoder.onnx
    if done.get("checkpoint_sha256") == ckpt_sha and encoder.is_file() and file_sha256(encoder) == done.get("model_sha256"):
        log("export: skipped (checkpoint unchanged)")
        out["export"] = "skipped"
    else:
        staged = work / ENCODERS / f".export-{ckpt_sha[:16]}.onnx"
        staged.parent.mkdir(exist_ok=True)
        export_onnx(ckpt, staged, check_folder=folder, log=log)
        model_sha = file_sha256(staged)
        encoder = staged.with_name(f"{model_sha[:16]}.onnx")
        staged.replace(encoder)
        log(f"export: {ckpt.name} -> {encoder.relative_to(work)}")
        state["export"] = {"checkpoint_sha256": ckpt_sha, "model_sha256": model_sha,
                           "file": str(encoder.relative_to(work))}
        _write_state(state_path, state)
        out["export"] = "done"

    # ------------------------------------------------------------------ index
    model_sha = state["export"]["model_sha256"]
    done = state.get("index", {})
    if done == {"model_sha256": model_sha, "listing": listing} and Store.exists(index_dir):
        log("index: skipped (encoder and folder unchanged)")
        out["index"] = "skipped"
    else:
        rebuild = False
        if Store.exists(index_dir):
            with Store.open(index_dir) as s:
                rebuild = s.model_sha256 != model_sha  # a new encoder: re-embed in place, ids and labels kept
        log(f"index: {'re-embedding with the new encoder' if rebuild else 'adding new and changed photos'}")
        summary = build_index(folder, encoder, index_dir, rebuild=rebuild, log=log)
        state["index"] = {"model_sha256": model_sha, "listing": listing}
        _write_state(state_path, state)
        out.update(index_summary={k: summary[k] for k in ("count", "added", "updated", "removed", "bad")})
        out["index"] = "done"
    # the index now uses `encoder`: publish it as encoder.onnx and drop the files no index uses any more
    _link_atomically(encoder, model)
    for old in (work / ENCODERS).glob("*.onnx") if (work / ENCODERS).is_dir() else ():
        if old.name != encoder.name:
            old.unlink(missing_ok=True)
    return out


def _link_atomically(src: Path, dst: Path) -> None:
    """Make `dst` the same file as `src` (a hard link, else a copy), switched in one rename."""
    import shutil

    if dst.exists() and dst.samefile(src):
        return
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # a file system without hard links
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


# ---------------------------------------------------------------------- the built-in example photos
DEMO_CLASSES = ("sunset", "ocean", "forest", "night_sky", "brick_wall", "flower_field", "checkerboard", "stripes")


def _jitter(rng: np.random.Generator, rgb, amount: int = 30) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _gradient(w: int, h: int, top, bottom) -> Image.Image:
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    arr = (1 - t) * np.asarray(top, np.float32) + t * np.asarray(bottom, np.float32)
    return Image.fromarray(np.broadcast_to(arr, (h, w, 3)).astype(np.uint8))


def example_photo(kind: str, rng: np.random.Generator, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """One procedurally drawn 'photo' of a kind in DEMO_CLASSES, with random layout, colours and noise."""
    w, h = size
    horizon = int(h * rng.uniform(0.5, 0.7))
    if kind == "sunset":
        img = _gradient(w, h, _jitter(rng, (250, 140, 50)), _jitter(rng, (120, 40, 90)))
        d = ImageDraw.Draw(img)
        r, cx = int(h * rng.uniform(0.1, 0.18)), int(w * rng.uniform(0.2, 0.8))
        d.ellipse((cx - r, horizon - r, cx + r, horizon + r), fill=_jitter(rng, (255, 220, 120), 20))
        hills = [(0, h)] + [(x, horizon + int(rng.integers(-h // 10, h // 10))) for x in range(0, w + 20, 20)] + [(w, h)]
        d.polygon(hills, fill=_jitter(rng, (40, 20, 30), 15))
    elif kind == "ocean":
        img = _gradient(w, h, _jitter(rng, (150, 200, 240)), _jitter(rng, (10, 50, 120)))
        d = ImageDraw.Draw(img)
        d.rectangle((0, horizon, w, h), fill=_jitter(rng, (20, 80, 150), 20))
        for y in range(horizon + 6, h, int(rng.integers(6, 11))):
            phase, amp = rng.uniform(0, 6.3), rng.uniform(1, 3)
            pts = [(x, y + amp * np.sin(x / 6 + phase)) for x in range(0, w + 4, 4)]
            d.line(pts, fill=_jitter(rng, (220, 235, 255), 15), width=1)
    elif kind == "forest":
        img = _gradient(w, h, _jitter(rng, (170, 210, 150)), _jitter(rng, (40, 90, 40)))
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(5, 10))):
            x, tw = int(rng.integers(0, w)), int(rng.integers(3, 7))
            top = int(h * rng.uniform(0.2, 0.5))
            d.rectangle((x, top, x + tw, h), fill=_jitter(rng, (90, 60, 30), 15))
            cw = int(rng.integers(14, 26))
            d.polygon([(x + tw // 2, top - cw), (x - cw // 2, top + cw), (x + tw + cw // 2, top + cw)],
                      fill=_jitter(rng, (30, 110, 40), 20))
    elif kind == "night_sky":
        img = _gradient(w, h, _jitter(rng, (5, 10, 40), 10), _jitter(rng, (20, 30, 70), 10))
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(40, 90))):
            x, y, s = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(0, 2))
            d.ellipse((x, y, x + s, y + s), fill=_jitter(rng, (240, 240, 220), 15))
        r, cx, cy = int(h * rng.uniform(0.08, 0.14)), int(w * rng.uniform(0.2, 0.8)), int(h * rng.uniform(0.2, 0.4))
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(245, 240, 210))
        d.ellipse((cx - r + r // 2, cy - r, cx + r + r // 2, cy + r), fill=_jitter(rng, (10, 15, 50), 5))
    elif kind == "brick_wall":
        mortar = _jitter(rng, (200, 195, 185), 15)
        img = Image.new("RGB", size, mortar)
        d = ImageDraw.Draw(img)
        bh, bw = int(rng.integers(8, 14)), int(rng.integers(20, 32))
        for row, y in enumerate(range(0, h, bh)):
            off = (bw // 2) * (row % 2)
            for x in range(-off, w, bw):
                d.rectangle((x + 1, y + 1, x + bw - 2, y + bh - 2), fill=_jitter(rng, (160, 70, 50), 25))
    elif kind == "flower_field":
        img = _gradient(w, h, _jitter(rng, (140, 190, 240)), _jitter(rng, (200, 225, 250)))
        d = ImageDraw.Draw(img)
        d.rectangle((0, horizon, w, h), fill=_jitter(rng, (60, 140, 50), 20))
        for _ in range(int(rng.integers(40, 80))):
            x, y = int(rng.integers(0, w)), int(rng.integers(horizon, h))
            r = int(1 + 3 * (y - horizon) / max(1, h - horizon))
            colour = [(230, 50, 80), (250, 220, 60), (250, 250, 250), (180, 80, 200)][int(rng.integers(0, 4))]
            d.ellipse((x - r, y - r, x + r, y + r), fill=_jitter(rng, colour, 20))
    elif kind == "checkerboard":
        a, b = _jitter(rng, (230, 230, 230), 25), _jitter(rng, (40, 40, 40), 25)
        s = int(rng.integers(8, 20))
        yy, xx = np.mgrid[0:h, 0:w]
        mask = ((xx // s + yy // s) % 2).astype(bool)[..., None]
        img = Image.fromarray(np.where(mask, np.asarray(a, np.uint8), np.asarray(b, np.uint8)))
        img = img.rotate(float(rng.uniform(-20, 20)), resample=Image.BILINEAR, fillcolor=a)
    elif kind == "stripes":
        colours = [_jitter(rng, c, 40) for c in ((230, 60, 60), (240, 200, 60), (60, 120, 220))]
        period = int(rng.integers(6, 14))
        yy, xx = np.mgrid[0:h, 0:w]
        angle = rng.uniform(0, np.pi)
        band = ((xx * np.cos(angle) + yy * np.sin(angle)) // period).astype(int) % len(colours)
        img = Image.fromarray(np.asarray(colours, np.uint8)[band])
    else:
        raise ValueError(f"unknown example kind {kind!r}; one of {', '.join(DEMO_CLASSES)}")
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.8))), np.float32)
    arr += rng.normal(0, 6, arr.shape)  # sensor noise: no two photos are pixel-identical
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_example_photos(folder: str | Path, per_class: int = 40, seed: int = 0) -> Path:
    """folder/<kind>/<kind>_NNN.jpg for every kind in DEMO_CLASSES; skipped when already made with these settings."""
    folder = Path(folder)
    marker = folder / ".example.json"  # hidden: not a photo to the scanner
    spec = {"classes": list(DEMO_CLASSES), "per_class": per_class, "seed": seed, "version": 1}
    if _read_state(marker) == spec:
        return folder
    rng = np.random.default_rng(seed)
    sizes = ((160, 120), (120, 160), (144, 144), (192, 128))
    for kind in DEMO_CLASSES:
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            example_photo(kind, rng, sizes[i % len(sizes)]).save(folder / kind / f"{kind}_{i:03d}.jpg", quality=90)
    _write_state(marker, spec)
    return folder


def demo(out: str | Path = "byol-demo", budget: float = DEMO_BUDGET, per_class: int = 40, log=print) -> dict:
    """Draw the example photos into OUT/photos and run the pipeline on them into OUT."""
    out = Path(out)
    t0 = time.perf_counter()
    photos = make_example_photos(out / "photos", per_class=per_class)
    log(f"example photos: {len(DEMO_CLASSES)} kinds x {per_class} in {photos}")
    # a small collection and a short budget: smaller steps buy more of them
    cfg = RunConfig(folder=str(photos), out=str(out), budget=budget, batch_size=128, proj_hidden=1024)
    result = run(cfg, log=log)
    result["seconds"] = time.perf_counter() - t0
    result["config"] = asdict(cfg)
    return result
