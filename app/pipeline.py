"""The one-command pipeline (`byol-search run`): pretrain -> export -> index in WORK_DIR (the page follows).

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

The built-in example (`byol-search demo`) is app/demo.py: it draws photos and calls run() on them.
"""


from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from index.ray_engine import RayConfig

ENCODERS = "encoders"  # WORK_DIR/encoders/: one file per exported encoder, named by its hash


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
    memory_limit: int | None = None  # bytes the index may take in memory before it moves on disk (None: its own)
    ray: RayConfig | None = None  # embed on a Ray cluster (index/ray_engine.py); None: on this machine


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


def read_state(path: Path) -> dict[str, Any]:
    """A small JSON state file ({} when missing or unreadable: the stages then run again)."""
    try:
        return cast(dict[str, Any], json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def write_state(path: Path, state: dict[str, Any]) -> None:
    from byol.fileio import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(state, indent=2) + "\n")


@dataclass
class _Work:
    """One run() call: WORK_DIR's paths, the folder listing and run.json (saved after every change)."""

    cfg: RunConfig
    folder: Path
    work: Path
    listing: str  # folder_listing's fingerprint
    photos: int
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def ckpt(self) -> Path:
        return self.work / "run" / "checkpoint.pt"

    @property
    def model(self) -> Path:
        return self.work / "encoder.onnx"

    @property
    def index_dir(self) -> Path:
        return self.work / "index"

    def save(self, stage: str, value: dict[str, Any]) -> None:
        self.state[stage] = value
        write_state(self.work / "run.json", self.state)


def run(cfg: RunConfig, log: Callable[[str], object] = print) -> dict[str, Any]:
    """Pretrain, export and index as needed.

    Returns the paths (folder, checkpoint, model, index_dir), the number of photos, and per stage
    (pretrain, export, index) what happened: 'done', 'resumed' or 'skipped'.
    """
    folder, work = Path(cfg.folder).absolute(), Path(cfg.out).absolute()
    work.mkdir(parents=True, exist_ok=True)
    listing, n = folder_listing(folder)
    if n < 2:
        raise ValueError(f"{folder}: {n} photo(s) found; give a folder with at least a few dozen photos")
    w = _Work(cfg, folder, work, listing, n, read_state(work / "run.json"))
    out = {"folder": str(folder), "photos": n, "checkpoint": str(w.ckpt), "model": str(w.model),
           "index_dir": str(w.index_dir)}
    out["pretrain"] = _pretrain(w, log)
    out["export"], encoder = _export(w, log)
    out["index"] = _index(w, encoder, log, out)
    # the index now uses `encoder`: publish it as encoder.onnx and drop the files no index uses any more
    _link_atomically(encoder, w.model)
    for old in (work / ENCODERS).glob("*.onnx") if (work / ENCODERS).is_dir() else ():
        if old.name != encoder.name:
            old.unlink(missing_ok=True)
    return out


def _pretrain(w: _Work, log: Callable[[str], object]) -> str:
    """The pretraining stage: skipped, resumed or done (a fresh run)."""
    from byol.fileio import file_sha256
    from byol.train import TrainConfig, train

    cfg, n = w.cfg, w.photos
    budget = cfg.budget or default_budget()
    key = {"listing": w.listing, "budget": budget, "backbone": cfg.backbone, "image_size": cfg.image_size,
           "batch_size": cfg.batch_size, "proj_hidden": cfg.proj_hidden, "seed": cfg.seed}
    if cfg.init not in ("auto", "none"):  # work folders made before --init keep their trained encoder
        key["init"] = cfg.init
    done = w.state.get("pretrain", {})
    tcfg = TrainConfig(folder=str(w.folder), out=str(w.ckpt.parent), cache_dir=str(w.work / "cache"),
                       budget=budget, batch_size=cfg.batch_size, seed=cfg.seed, init=cfg.init)
    tcfg.model.backbone, tcfg.model.image_size, tcfg.model.proj_hidden = cfg.backbone, cfg.image_size, cfg.proj_hidden
    if done.get("key") == key and done.get("done") and w.ckpt.is_file() and file_sha256(w.ckpt) == done.get("sha256"):
        log(f"pretrain: skipped ({n} photos and settings unchanged since the last run)")
        return "skipped"
    resume = done.get("key") == key and not done.get("done") and w.ckpt.is_file()
    log(f"pretrain: {'resuming the interrupted run' if resume else f'{budget:.0f} s budget'} on {n} photos")
    w.save("pretrain", {"key": key, "done": False})  # an interrupted run is resumed next time
    tcfg.resume = resume
    train(tcfg)
    w.save("pretrain", {"key": key, "done": True, "sha256": file_sha256(w.ckpt)})
    return "resumed" if resume else "done"


def _export(w: _Work, log: Callable[[str], object]) -> tuple[str, Path]:
    """The export stage: (skipped or done, the encoder file in encoders/ the index is to use)."""
    from byol.export import export_onnx
    from byol.fileio import file_sha256

    ckpt_sha = w.state["pretrain"]["sha256"]
    done = w.state.get("export", {})
    encoder = w.work / done["file"] if done.get("file") else w.model  # runs before encoders/ used encoder.onnx
    if done.get("checkpoint_sha256") == ckpt_sha and encoder.is_file() and file_sha256(encoder) == done.get("model_sha256"):
        log("export: skipped (checkpoint unchanged)")
        return "skipped", encoder
    staged = w.work / ENCODERS / f".export-{ckpt_sha[:16]}.onnx"
    staged.parent.mkdir(exist_ok=True)
    export_onnx(w.ckpt, staged, check_folder=w.folder, log=log)
    model_sha = file_sha256(staged)
    encoder = staged.with_name(f"{model_sha[:16]}.onnx")
    staged.replace(encoder)
    log(f"export: {w.ckpt.name} -> {encoder.relative_to(w.work)}")
    w.save("export", {"checkpoint_sha256": ckpt_sha, "model_sha256": model_sha,
                      "file": str(encoder.relative_to(w.work))})
    return "done", encoder


def _index(w: _Work, encoder: Path, log: Callable[[str], object], out: dict[str, Any]) -> str:
    """The index stage: skipped, or done (incremental; a new encoder re-embeds in place). Adds the build's
    summary to out["index_summary"]."""
    from index.build import build_index
    from index.store import Store

    model_sha = w.state["export"]["model_sha256"]
    key: dict[str, Any] = {"model_sha256": model_sha, "listing": w.listing}
    if w.cfg.memory_limit is not None:  # a new limit moves the index on disk or back: not skipped
        key["memory_limit"] = w.cfg.memory_limit
    if w.state.get("index", {}) == key and Store.exists(w.index_dir):
        log("index: skipped (encoder and folder unchanged)")
        return "skipped"
    rebuild = False
    if Store.exists(w.index_dir):
        with Store.open(w.index_dir) as s:
            rebuild = s.model_sha256 != model_sha  # a new encoder: re-embed in place, ids and labels kept
    log(f"index: {'re-embedding with the new encoder' if rebuild else 'adding new and changed photos'}")
    summary = build_index(w.folder, encoder, w.index_dir, rebuild=rebuild, log=log, memory_limit=w.cfg.memory_limit,
                          ray=w.cfg.ray)
    w.save("index", key)
    out.update(index_summary={k: summary[k] for k in ("count", "added", "updated", "removed", "bad")})
    return "done"


def _link_atomically(src: Path, dst: Path) -> None:
    """Make `dst` the same file as `src` (a hard link, else a copy), switched in one rename
    (byol.fileio.atomic_write_path: the link or copy is fsynced, then renamed over dst)."""
    import shutil

    from byol.fileio import atomic_write_path

    if dst.exists() and dst.samefile(src):
        return

    def link(tmp: str) -> None:
        os.unlink(tmp)  # the empty temporary file, replaced by the link
        try:
            os.link(src, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(src, tmp)

    atomic_write_path(dst, link)
