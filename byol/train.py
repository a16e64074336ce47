"""BYOL pretraining (Grill et al. 2020): the run's config and one training function that reads top to bottom.

train() reads as its phases: build (data, model, optimiser, step), plan, loop, save. The pieces live beside
it, each with its own tests:
    byol.batches   epoch permutations, shards and the two views of a step's batch
    byol.step      the online network as one module, one training step, the torch.compile fallback
    byol.planner   the time-budget planner: steps from timed throwaway steps, re-plans when speed drifts
    byol.cpu       CPU tuning: the GEMM weight-gradient convolution (AMX) and the thread tuner
    byol.rng       the RNG states saved in a checkpoint for an exact resume
    byol.curves    log.jsonl read back, curves.png

Public API
    train(cfg: TrainConfig) -> Path          runs (or resumes) a pretraining run; returns RUN_DIR/checkpoint.pt
    train(cfg, parts=Parts(...))             the same with the loss, the views or the clock replaced (tests:
                                             a loss that turns non-finite, views that interrupt, a fake clock)
    TrainConfig                              every setting, one comment per field (below); stored in the
                                             checkpoint as asdict(cfg) under "config"
    parse_duration("20m") -> 1200.0          "90s", "20m", "1.5h", "1h30m" -> seconds (ValueError otherwise)
    TrainingDiverged, TrainingInterrupted    raised on repeated non-finite losses / on Ctrl-C or SIGTERM (after saving)

RUN_DIR (cfg.out) after a run
    checkpoint.pt     the latest checkpoint (byol.checkpoint format; load_encoder() rebuilds the encoder)
    log.jsonl         one JSON object per line, each with "kind":
                        "plan"  {step, total_steps, batch_size, step_seconds, budget, images, world_size, device, precision}
                        "train" {step, epoch, loss, lr, tau, collapse_std, img_per_s, elapsed}
                                  step = optimiser steps taken so far; loss = the symmetric loss in [0, 8]
                                  (L + L~ of eq. 2) averaged over the last log_every steps; collapse_std =
                                  std over the batch of the L2-normalised online projections, healthy near
                                  1/sqrt(proj_dim); img_per_s = images (not views) per second; elapsed = s
                        "eval"  {step, knn_top1, seconds, elapsed}   (with eval_folder; k=200, t=0.1)
                        "skip"  {step, loss, restored}              a non-finite loss: the step was skipped
                        "replan" {step, total_steps, step_seconds}  budget runs: the speed changed (below)
                        "warning" {step, message}                   e.g. collapse, a failed compile
                        "end"   {step, elapsed, images_seen, compiled}
    bad_files.jsonl   {path, reason} per file that could not be decoded (skipped)
    curves.png        loss, lr, tau, collapse_std (and kNN top-1) against step
    cache/            the decoded-image cache (byol.data.ImageCache), reused by later runs

Data: every epoch is a fresh permutation of the cached images (drop_last: the few left over wait for the
next epoch's draw). A folder with fewer images than batch_size trains with batch = all images (a message
says so); BatchNorm needs at least 2 images per batch per process, so fewer than 2 x processes is an error.
Under torchrun each process takes a distinct shard of each epoch's permutation and batch_size // world
images per step: with few images and many processes each step sees few images per process (BatchNorm
statistics are per process on CPUs; on GPUs SyncBatchNorm pools them).

Time budget (steps=0, budget>0): the budget covers the whole call (cache, planning, steps, evaluations,
periodic checkpoints), all but the final checkpoint and plot. The planner times full training steps on
throwaway batches (the first at each thread count untimed: allocator and kernel set-up; see ThreadTuner;
at most 15% of the budget), then restores the model and optimiser to their initial state: those steps are
not counted and leave no trace, so a budget run is the same as a `steps` run of the planned length. It
then sets total steps = (time left x 0.97) / (step time + evaluation time / eval_every). The plan
(byol.planner.Plan) is stored in the checkpoint; --resume keeps it.
When the measured speed drifts more than 10% from the plan (another program starts or stops), the rest of
the schedules is stretched or squeezed (`virtual_step`) so lr and tau still complete within the budget;
each re-plan is logged and stored in the plan. A `steps` run never re-plans and resumes exactly.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from byol import planner
from byol.augment import AugmentConfig, small_views, two_views, write_preview
from byol.batches import Batches, SmallViewsFn, ViewsFn, side_schedule, stage_sides
from byol.checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from byol.cpu import ThreadTuner, cpu_has_amx, cpu_thread_candidates, use_gemm_weight_grads
from byol.curves import plot_curves, read_log
from byol.fileio import core_count
from byol.init import resolve_init, start_from
from byol.loss import byol_loss, collapse_std
from byol.model import BYOL, ModelConfig
from byol.optim import OPTIMIZERS, build_optimizer, scaled_lr, schedules
from byol.planner import Plan
from byol.preprocess import Preprocess
from byol.rng import rng_state, set_rng_state
from byol.step import LossFn, Online, TrainStep

if TYPE_CHECKING:
    from byol.data import ImageCache

__all__ = ["Parts", "TrainConfig", "TrainingDiverged", "TrainingInterrupted", "default_cache_side", "parse_duration",
           "preview", "train"]

CROP_FRACTION = 0.625  # default side of the training views, as a fraction of the image size (crop_size)
SMALL_FRACTION = 0.6  # default side of multi-crop's small views, as a fraction of the view side


def _side(px: float) -> int:
    """A default view side: px rounded to a multiple of 4, at least 8."""
    return max(8, round(px / 4) * 4)

COMPILE_MIN_BUDGET, COMPILE_MIN_STEPS = 300.0, 500  # compile="auto": runs this long amortise compiling


@dataclass
class TrainConfig:
    folder: str | None = None  # photo folder to learn from (read recursively); or give `hf`
    hf: str | None = None  # HF `datasets` image dataset: a save_to_disk folder or a hub name
    hf_split: str = "train"  # split of the HF dataset
    hf_image_column: str | None = None  # image column of the HF dataset; None = the first Image feature
    out: str = "runs/byol"  # RUN_DIR: checkpoint.pt, log.jsonl, bad_files.jsonl, curves.png
    cache_dir: str | None = None  # decoded-image cache; None = RUN_DIR/cache
    # cached square side; 0 = image_size up to 64 px (small sources gain nothing from upsampling),
    # else 1.25 x image_size so random resized crops of large photos keep real pixels
    cache_side: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)  # backbone, image_size, head sizes
    # where the encoder starts (byol.init): auto (base when one is shipped for the backbone and image size,
    # else none), none (random), base (shipped, pretrained by this project on public images), imagenet
    # (torchvision's weights, downloaded once), or a checkpoint / state dict path. Online and target encoders
    # start from it; projector and predictor are fresh. On held-out photo classes, base + 15 minutes beat 15
    # minutes from random weights by 19 points of kNN and 5-shot accuracy (BENCHMARKS.md): hence auto
    init: str = "auto"
    # side of the training views; 0 = CROP_FRACTION x model.image_size (20 px for 32). Random resized crops
    # show objects larger than whole images do, so an encoder trained on smaller views meets objects at the
    # same scale when it sees whole images at image_size in evaluation, export and search (Touvron et al.
    # 2019, "FixRes": train 128, test 224 was best there). On CIFAR-10 views of 20-24 px learn as much per
    # step as 32 px views for 0.4-0.56x the FLOPs (BENCHMARKS.md). crop_size = image_size: no shrinking
    crop_size: int = 0
    # progressive resizing: the views start at this side and grow in view_stages equal stages to the view
    # size (small views early are cheap steps that learn coarse features; late ones see detail: FixRes,
    # EfficientNetV2). 0 = every step at the view size. The budget planner times both ends
    view_start: int = 0
    view_stages: int = 4  # stages of progressive resizing (sides between the ends are multiples of 4)
    # multi-crop (Caron et al. 2020): extra small views per image, of small parts of it (5-40% of the area),
    # that the online network sees and that predict the target's projections of both full views. Each costs
    # about (small side / view side)^2 x 3/8 of the two views' compute. 0 = the paper's two views only
    small_crops: int = 0
    small_crop_size: int = 0  # side of the small views in px; 0 = 0.6 x the view side (12 px for 20)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # the two views (image_size follows model)
    batch_size: int = 256  # global batch (all processes); shrunk with a message when the folder is smaller
    steps: int = 0  # optimiser steps; 0 = plan them from `budget`
    budget: float = 0.0  # wall-clock seconds for the whole run when steps == 0 (see module docstring)
    optimizer: str = "lars"  # lars (the paper's) or adamw
    # lr = base_lr x batch/256. LARS: the paper's 0.2 is for 1000 ImageNet epochs; short CPU budgets learn
    # faster at 1.0 (solo-learn's CIFAR recipe). AdamW: about 2e-3
    base_lr: float = 1.0
    warmup: float = 0.05  # linear lr warm-up, as a fraction of the steps (paper: 10 of 1000 epochs)
    weight_decay: float = 1.5e-6  # paper: 1.5e-6 (LARS); try 1e-4 for AdamW. Biases and BatchNorm: none
    # target decay rate tau at step 0, rising to 1 (paper: 0.996 over ~300k steps); runs of a few thousand
    # steps need the target to follow faster: on CIFAR-10 in 15 minutes 0.98 gave +1 kNN point over 0.99
    # (solo-learn's CIFAR value for 1000 epochs); see BENCHMARKS.md
    base_tau: float = 0.98
    workers: int | None = None  # processes decoding the cache; None = one per core
    seed: int = 0  # model init, data order and augmentation
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:1
    # auto: bf16 autocast on CUDA when supported and on CPUs with native bf16 (AVX-512 BF16 / AMX: ~2x
    # faster), else fp32. fp32 | bf16 force it
    precision: str = "auto"
    channels_last: bool = True  # NHWC memory layout (faster convolutions on oneDNN and cuDNN)
    # torch.compile the online and target networks (fuses BatchNorm, ReLU and the residual adds: 1.25x on
    # resnet-tiny on a CPU; compiling costs ~30-60 s once). auto = on for runs of COMPILE_MIN_BUDGET seconds
    # or COMPILE_MIN_STEPS steps and more; on | off. A failed compile falls back to eager with a warning
    compile: str = "auto"
    # CPU bf16 on CPUs with AMX: weight gradients of convolutions on maps <= 8x8 as one GEMM (GemmGradConv2d,
    # 1.5-2x faster steps there). Without AMX (AVX-512 BF16 only) oneDNN's own kernel is 5-25% faster: unused
    gemm_weight_grads: bool = True
    # CPU intra-op threads; 0 = auto: time steps on all cores and on one, keep the faster and re-check
    # every 100 steps (on a busy machine extra threads mostly wait for each other). A fixed N is bitwise
    # reproducible; auto may switch counts, which changes float rounding
    threads: int = 0
    eval_folder: str | None = None  # labelled folder (train/<class>/, test/<class>/) for a kNN monitor
    eval_every: int = 0  # steps between kNN evaluations; 0 = five per run (plus one before training)
    log_every: int = 10  # steps between log lines (averages over the window)
    checkpoint_every: int = 500  # steps between checkpoints (and always at the end)
    # minutes between checkpoints however slow the steps (large images on a CPU); 0 = by steps only
    checkpoint_minutes: float = 10.0
    resume: bool = False  # continue RUN_DIR/checkpoint.pt exactly (the saved settings win)
    stop_at: int = 0  # end this call after this step, schedules still planned for all steps (staged runs)
    max_bad_steps: int = 3  # consecutive non-finite losses before the run stops
    progress: bool = True  # tqdm bar

    @property
    def view_size(self) -> int:
        """Side of the training views in px (crop_size, or its default)."""
        return self.crop_size or _side(CROP_FRACTION * self.model.image_size)

    @property
    def small_size(self) -> int:
        """Side of multi-crop's small views in px (small_crop_size, or its default)."""
        return self.small_crop_size or _side(SMALL_FRACTION * self.view_size)

    @property
    def view_sides(self) -> list[int]:
        """The sides of the views, stage by stage (one side without progressive resizing)."""
        return stage_sides(self.view_start, self.view_size, self.view_stages)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        m, a = ModelConfig(**d.pop("model", {})), d.pop("augment", {})
        if "crop_size" not in d and "image_size" in a:  # saved before crop_size: views at the stored size
            d["crop_size"] = a["image_size"]
        a = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in a.items()})  # type: ignore[arg-type]
        return cls(model=m, augment=a, **d)


class TrainingDiverged(RuntimeError):
    """The loss stayed non-finite for max_bad_steps steps in a row."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: a checkpoint was saved; `resume` continues."""


@dataclass(frozen=True)
class Parts:
    """What a run is made of besides its config, for a caller to replace (tests make a loss non-finite,
    interrupt a step from its views, or run a budget on a clock that ticks the same on any machine)."""

    loss_fn: LossFn = byol_loss  # TrainStep's loss: (p1, p2, z1', z2') -> the symmetric loss
    views_fn: ViewsFn = two_views  # Batches' two augmented views of a batch
    small_views_fn: SmallViewsFn = small_views  # Batches' multi-crop views
    clock: Callable[[], float] = time.perf_counter  # seconds: the budget, checkpoint minutes, throughput


def parse_duration(text: str) -> float:
    """'90s', '20m', '1.5h', '1h30m' -> seconds; ValueError with the accepted forms otherwise."""
    s = str(text).strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smh])", s)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([smh])", "", s).strip():
        raise ValueError(f"budget {text!r}: give a number with a unit, e.g. 90s, 20m, 1.5h or 1h30m")
    seconds = sum(float(n) * {"s": 1, "m": 60, "h": 3600}[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"budget {text!r}: must be more than 0")
    return seconds


def default_cache_side(image_size: int) -> int:
    """The cached square side when cache_side is 0 (see TrainConfig.cache_side)."""
    return image_size if image_size <= 64 else int(round(image_size * 1.25 / 8)) * 8


def _want_compile(cfg: TrainConfig) -> bool:
    """Whether the run compiles its forwards (TrainConfig.compile; auto: long runs only)."""
    if cfg.compile not in ("auto", "on", "off"):
        raise ValueError(f"compile {cfg.compile!r}: choose auto, on or off")
    if cfg.compile == "auto":
        return cfg.budget >= COMPILE_MIN_BUDGET if cfg.steps <= 0 else cfg.steps >= COMPILE_MIN_STEPS
    return cfg.compile == "on"


def _choose_precision(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32 (byol.precision: the rule evaluation uses too)."""
    from byol.precision import autocast_dtype

    return autocast_dtype(cfg.precision, device)


# ----------------------------------------------------------------------------------------------------------
# what a run is built from: settings, processes, data
# ----------------------------------------------------------------------------------------------------------
def _settings(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None]:
    """(the run's config, the checkpoint to resume or None). The caller's config is not changed; on
    resume the saved settings win, except those that say how to run this call."""
    cfg = copy.deepcopy(cfg)
    ckpt_path = Path(cfg.out) / "checkpoint.pt"
    ckpt = None
    if cfg.resume:
        if not ckpt_path.is_file():
            raise CheckpointError(f"{ckpt_path}: nothing to resume (no checkpoint in {cfg.out})")
        ckpt = load_checkpoint(ckpt_path)
        runtime = {k: getattr(cfg, k) for k in ("out", "resume", "stop_at", "progress", "workers", "device")}
        cfg = TrainConfig.from_dict(ckpt["config"])
        for k, v in runtime.items():
            setattr(cfg, k, v)
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer {cfg.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    if not cfg.folder and not cfg.hf:
        raise ValueError("give a photo folder or an HF dataset (hf) to learn from")
    if cfg.steps <= 0 and cfg.budget <= 0 and ckpt is None:
        raise ValueError("give a number of steps or a time budget")
    if cfg.view_start and not 8 <= cfg.view_start <= cfg.view_size:
        raise ValueError(f"view_start {cfg.view_start}: give 0 (fixed views) or a side from 8 px to the view "
                         f"size ({cfg.view_size} px)")
    if cfg.small_crops < 0 or (cfg.small_crops and not 8 <= cfg.small_size <= cfg.view_size):
        raise ValueError(f"small_crops {cfg.small_crops}, small_crop_size {cfg.small_crop_size}: give 0 or more "
                         f"small views of 8 px up to the view size ({cfg.view_size} px)")
    cfg.augment.image_size = cfg.view_size
    return cfg, ckpt


@dataclass
class _Processes:
    """This process's place in the run, chosen once: torchrun's group, device, autocast, layout, threads."""

    ddp: bool  # launched by torchrun (RANK set)
    rank: int
    world: int
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype; None = fp32
    fmt: torch.memory_format  # channels_last or contiguous
    tuner: ThreadTuner  # CPU intra-op threads (one fixed candidate where they must not change)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def precision(self) -> str:
        return "bf16" if self.amp_dtype is not None else "fp32"

    def amp(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)


def _processes(cfg: TrainConfig, compiled: bool) -> _Processes:
    """Joins torchrun's process group when launched by it, and chooses device, precision and threads."""
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank, world = 0, 1
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    if ddp:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        else:  # processes on one CPU share its cores
            torch.set_num_threads(max(1, core_count() // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    amp_dtype = _choose_precision(cfg, device)
    if cfg.threads > 0 or ddp or device.type != "cpu" or compiled:  # compiled kernels fix their thread count
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        tuner = ThreadTuner([torch.get_num_threads()])
    else:
        tuner = ThreadTuner(cpu_thread_candidates())
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    return _Processes(ddp, rank, world, device, amp_dtype, fmt, tuner)


def _open_images(cfg: TrainConfig, run_dir: Path, side: int, build: bool = True) -> ImageCache:
    """The decoded cache (byol.data.ImageCache) of the folder or HF dataset; unreadable files are listed in
    RUN_DIR/bad_files.jsonl. build=False opens the cache another process has just built."""
    from byol.data import ImageCache

    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else run_dir / "cache"
    if not build:
        return ImageCache.open(cache_dir, side)
    report = run_dir / "bad_files.jsonl"
    if cfg.hf:
        return ImageCache.from_hf(cfg.hf, cache_dir, side, split=cfg.hf_split, image_column=cfg.hf_image_column,
                                  workers=cfg.workers, report=report, progress=cfg.progress)
    assert cfg.folder is not None  # _settings: a folder or an HF dataset
    return ImageCache.build(cfg.folder, cache_dir, side, workers=cfg.workers, report=report,
                            progress=cfg.progress)


def _open_data(cfg: TrainConfig, procs: _Processes, parts: Parts) -> Batches:
    """The decoded cache (rank 0 builds it, the others open it) and the batch size that fits it."""
    run_dir, world = Path(cfg.out), procs.world
    side = cfg.cache_side or default_cache_side(cfg.model.image_size)
    if procs.main:
        cache = _open_images(cfg, run_dir, side)
    if procs.ddp:
        dist.barrier()  # rank 0 built the cache; the others open it
    if not procs.main:
        cache = _open_images(cfg, run_dir, side, build=False)
    images = cache.tensor()  # N, side, side, 3 uint8 (memory-mapped)
    n = images.shape[0]
    if n // world < 2:
        raise ValueError(f"{cfg.folder or cfg.hf}: {n} readable image(s); BYOL needs at least {2 * world} "
                         f"(BatchNorm needs 2 per batch per process)")
    device = procs.device
    if device.type == "cuda" and images.numel() < 0.25 * torch.cuda.mem_get_info(device)[0]:
        images = images.to(device)  # the whole cache on the GPU: batches are gathered there
    local_batch = min(cfg.batch_size // world, n // world)
    batch = local_batch * world
    if batch < cfg.batch_size and procs.main:
        print(f"note: {n} images for batch size {cfg.batch_size}: training with batch {batch} "
              f"(lr scaled to it)", file=sys.stderr)
    return Batches(images, local_batch, cfg.augment, cfg.seed, procs.rank, world, device, procs.fmt,
                   views_fn=parts.views_fn, small_crops=cfg.small_crops, small_side=cfg.small_size,
                   small_views_fn=parts.small_views_fn)


# ----------------------------------------------------------------------------------------------------------
# what the phases of a run share: its networks, files and clock
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """One train() call: settings, processes, data, networks, the plan, log.jsonl, checkpoint.pt, clock."""

    cfg: TrainConfig
    procs: _Processes
    data: Batches
    model: BYOL
    optimizer: torch.optim.Optimizer
    aug_gen: torch.Generator  # this process's augmentation draws
    init_info: dict[str, Any]  # where the encoder started (byol.init), stored in the checkpoint
    clock: Callable[[], float]  # seconds (Parts.clock)
    t0: float  # clock() at the start of this call
    preprocess: Preprocess = field(init=False)
    elapsed_before: float = 0.0  # seconds spent by the earlier calls of a resumed run
    plan: Plan = field(init=False)  # set by restore (a resumed run) or by train (a fresh one)

    def __post_init__(self) -> None:
        self.preprocess = Preprocess.for_size(self.cfg.model.image_size)

    @property
    def ckpt_path(self) -> Path:
        return Path(self.cfg.out) / "checkpoint.pt"

    @property
    def log_path(self) -> Path:
        return Path(self.cfg.out) / "log.jsonl"

    def elapsed(self) -> float:
        """Seconds of the whole run so far, over all its calls."""
        return self.elapsed_before + self.clock() - self.t0

    def log(self, rec: dict[str, Any]) -> None:
        """One record in log.jsonl (rank 0 writes)."""
        if self.procs.main:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def warn(self, step: int, msg: str) -> None:
        """A warning in the log and on stderr (rank 0)."""
        self.log({"kind": "warning", "step": step, "message": msg})
        if self.procs.main:
            tqdm.write(f"warning: {msg}", file=sys.stderr)

    def restore(self, ckpt: dict[str, Any] | None) -> int:
        """The step to start from: 0 with a fresh log, or the checkpoint's step with everything as saved
        (model, optimiser, plan, elapsed time, RNGs; log lines written after it are dropped)."""
        if ckpt is None:
            if self.procs.main:
                self.log_path.unlink(missing_ok=True)
            return 0
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        start, self.plan = int(ckpt["step"]), Plan.from_dict(ckpt["extra"]["plan"])
        self.elapsed_before = float(ckpt["extra"].get("elapsed", 0.0))
        set_rng_state(ckpt["rng"], self.aug_gen)
        if self.procs.main:  # drop log lines written after the checkpoint by an interrupted run
            keep = [r for r in read_log(self.log_path) if r.get("step", 0) <= start and r.get("kind") != "end"]
            atomic_write(self.log_path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in keep).encode()))
        return start

    def save(self, step: int) -> None:
        """checkpoint.pt after `step` steps (rank 0 writes; byol.checkpoint's format)."""
        if not self.procs.main:
            return
        cfg, per_epoch = self.cfg, self.data.per_epoch
        save_checkpoint(self.ckpt_path, {
            "config": asdict(cfg), "model_config": asdict(cfg.model),
            "preprocess": self.preprocess.to_dict(), "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "step": step, "rng": rng_state(self.aug_gen),
            "extra": {"plan": self.plan.to_dict(), "elapsed": self.elapsed(), "init": self.init_info,
                      "sampler": {"seed": cfg.seed, "epoch": step // per_epoch, "per_epoch": per_epoch}},
        })

    def evaluate(self, step: int) -> tuple[float, float]:
        """(kNN top-1, seconds) of the online encoder on cfg.eval_folder after `step` steps, logged."""
        te = self.clock()
        assert self.cfg.eval_folder is not None
        acc = _knn_monitor(self.model.online_encoder, self.cfg.eval_folder, self.preprocess, self.procs.device,
                           self.procs.amp)
        seconds = self.clock() - te
        self.log({"kind": "eval", "step": step, "knn_top1": acc, "seconds": seconds, "elapsed": self.elapsed()})
        return acc, seconds


def _knn_monitor(encoder: nn.Module, folder: str, preprocess: Preprocess, device: torch.device,
                 amp: Callable[[], AbstractContextManager[Any]]) -> float:
    """Weighted kNN top-1 (k=200, t=0.1) of the online encoder on a labelled folder, eval mode."""
    from byol import probe
    from byol.evaluate import embed_folder, load_labelled

    train_paths, train_y, test_paths, test_y, _ = load_labelled(folder)
    with amp():
        tr = embed_folder(encoder, preprocess, train_paths, device=device, progress=False)
        te = embed_folder(encoder, preprocess, test_paths, device=device, progress=False)
    return probe.knn_top1(tr.features, train_y[tr.kept], te.features, test_y[te.kept])


# ----------------------------------------------------------------------------------------------------------
# the phases: build, plan, loop, save
# ----------------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, parts: Parts = Parts()) -> Path:
    """Run BYOL pretraining as configured; returns the path of the final checkpoint (RUN_DIR/checkpoint.pt).
    `parts`: the loss, views and clock (Parts; the defaults are the paper's loss and views, and the wall clock)."""
    t0 = parts.clock()
    cfg, ckpt = _settings(cfg)  # a copy: the caller's config is not changed
    compiled = _want_compile(cfg)
    procs = _processes(cfg, compiled)
    try:
        # -------------------------------------------------------------- build: data, model, optimiser, step
        data = _open_data(cfg, procs, parts)
        torch.manual_seed(cfg.seed)
        model = BYOL(cfg.model)
        if ckpt is None:
            init_info = start_from(model, resolve_init(cfg.init, cfg.model.backbone, cfg.model.image_size))
        else:
            init_info = dict(ckpt["extra"].get("init", {"kind": cfg.init}))
        if procs.ddp and procs.device.type == "cuda":  # SyncBatchNorm runs on GPUs only; CPUs normalise locally
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if cfg.gemm_weight_grads and procs.device.type == "cpu" and procs.amp_dtype is not None and cpu_has_amx():
            use_gemm_weight_grads(model.online_encoder, cfg.augment.image_size)
        model = model.to(procs.device).to(memory_format=procs.fmt)
        online = Online(model)  # what the optimiser steps, and (wrapped under torchrun) what runs forward
        runs_online: nn.Module = online
        if procs.ddp:
            device_ids = [procs.device] if procs.device.type == "cuda" else None
            runs_online = nn.parallel.DistributedDataParallel(online, device_ids=device_ids)
        lr_peak = scaled_lr(cfg.base_lr, data.batch)
        optimizer = build_optimizer(cfg.optimizer, online, lr_peak, cfg.weight_decay)
        aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + procs.rank)
        run = _Run(cfg, procs, data, model, optimizer, aug_gen, init_info, parts.clock, t0)
        train_step = TrainStep(model, runs_online, optimizer, procs.amp, loss_fn=parts.loss_fn, compile=compiled,
                               distributed=procs.ddp, on_compile_failure=lambda msg: run.warn(0, msg))
        start = run.restore(ckpt)  # fresh, or exactly as saved

        # -------------------------------------------------------------- plan: kNN before training, steps
        eval_seconds = 0.0
        if cfg.eval_folder and procs.main and start == 0:
            acc, eval_seconds = run.evaluate(0)
            print(f"kNN top-1 before training: {acc:.2%} ({eval_seconds:.1f} s)", file=sys.stderr)
        if ckpt is None:
            run.plan = _plan(run, train_step, lr_peak, eval_seconds)
            run.log({"kind": "plan", "step": 0, **run.plan.to_dict()})

        # -------------------------------------------------------------- loop
        end = _loop(run, train_step, start, lr_peak, eval_seconds)

        # -------------------------------------------------------------- save: checkpoint, end record, plot
        run.save(end)
        if procs.main:
            run.log({"kind": "end", "step": end, "elapsed": run.elapsed(), "images_seen": (end - start) * data.batch,
                     "compiled": train_step.compiled})
            plot_curves(run.log_path, Path(cfg.out) / "curves.png")
        return run.ckpt_path
    finally:
        if procs.ddp:
            dist.destroy_process_group()


def _plan(run: _Run, train_step: TrainStep, lr_peak: float, eval_seconds: float) -> Plan:
    """The plan of a fresh run: cfg.steps, or the steps that fit in cfg.budget (byol.planner), timed on
    throwaway batches whose updates are undone."""
    cfg, procs = run.cfg, run.procs
    total, step_seconds, sides = cfg.steps, None, cfg.view_sides
    costs: dict[int, float] = {}  # seconds per step at each view side (progressive resizing)
    if total <= 0:
        snapshot = train_step.snapshot()
        plan_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)

        def one_step(i: int, side: int) -> float:  # a throwaway step (the snapshot comes back below)
            x, small = run.data.step_views(i, plan_gen, side)
            return float(train_step(x, lr_peak / 100, cfg.base_tau, check_finite=False, small=small)[0].item())

        def timed(side: int, tuner: ThreadTuner) -> float:
            return planner.time_steps(lambda i: one_step(i, side), tuner, cfg.budget, clock=run.clock)

        step_seconds = timed(sides[-1], procs.tuner)
        if len(sides) > 1:  # progressive resizing: the smallest views too, at the thread count just chosen
            costs = planner.side_costs(sides, timed(sides[0], ThreadTuner([procs.tuner.best()])), step_seconds)
            step_seconds = float(np.mean([costs[x] for x in sides]))  # equal stages: the mean step
        train_step.restore(snapshot)
        total = planner.steps_in(cfg.budget - run.elapsed(), step_seconds, eval_seconds, cfg.eval_every,
                                 evaluating=bool(cfg.eval_folder))
        if procs.ddp:  # agree on the slowest process's plan
            t = torch.tensor([total], device=procs.device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            total = int(t.item())
        if total < 1:
            raise ValueError(f"budget {cfg.budget:.0f} s is too short: one step takes {step_seconds:.2f} s "
                             f"and {run.elapsed():.0f} s are already spent (cache, evaluation, planning)")
    return Plan(total_steps=total, schedule_total=total, replans=[], batch_size=run.data.batch, view_sides=sides,
                side_seconds={str(x): c for x, c in costs.items()} or None, step_seconds=step_seconds,
                budget=cfg.budget, images=run.data.n, world_size=procs.world, device=str(procs.device),
                precision=procs.precision, compiled=train_step.compiled)


@dataclass
class _Window:
    """The loop's record of the steps since the last log line, and what it keeps across lines."""

    good: tuple[dict[str, Any], dict[str, Any]]  # the last model and optimiser state known finite
    t: float  # when the window started (the run's clock)
    eval_last: float  # seconds of the last kNN evaluation
    steps: int = 0
    losses: list[float] = field(default_factory=list)  # the finite losses of the window
    bad_in_row: int = 0  # non-finite losses in a row
    warned: bool = False  # the collapse warning was given (once per call)
    train_seconds: float = 0.0  # in training steps during this call (what a re-plan measures)


@dataclass(frozen=True)
class _Schedule:
    """The plan step by step: lr, tau and view side of each step, where the run ends and where this call does."""

    total: int  # the plan's end
    end: int  # this call's end: total, or stop_at
    lrs: list[float]
    taus: list[float]
    sides: list[int]  # progressive resizing

    @classmethod
    def of(cls, run: _Run, lr_peak: float) -> _Schedule:
        cfg, plan, total = run.cfg, run.plan.to_dict(), run.plan.total_steps
        lrs, taus = schedules(total, plan, lr_peak, cfg.warmup, cfg.base_tau)
        end = min(total, cfg.stop_at) if cfg.stop_at > 0 else total
        return cls(total, end, lrs, taus, side_schedule(total, plan, cfg.view_sides))


def _loop(run: _Run, train_step: TrainStep, start: int, lr_peak: float, eval_seconds: float) -> int:
    """Steps start+1 .. end (the plan's end, or stop_at); returns end. Logs every log_every steps, evaluates,
    re-plans budget runs, saves every checkpoint_every steps or checkpoint_minutes. Ctrl-C or SIGTERM: the
    step in progress finishes, a checkpoint is saved and TrainingInterrupted raised (a second Ctrl-C
    interrupts at once)."""
    cfg, procs = run.cfg, run.procs
    s = _Schedule.of(run, lr_peak)
    eval_every = cfg.eval_every or max(1, math.ceil(run.plan.schedule_total / planner.DEFAULT_EVALS))
    budgeted = cfg.budget > 0 and cfg.steps <= 0 and cfg.stop_at <= 0
    with _stop_signals() as stop:
        _announce(run, train_step, start, s)
        bar = tqdm(total=s.total, initial=start, unit="step", disable=not (cfg.progress and procs.main),
                   file=sys.stderr, dynamic_ncols=True)
        w = _Window(good=train_step.snapshot(), t=run.clock(), eval_last=eval_seconds)
        saves = _Saves(run, w.t)
        try:
            step = start
            while step < s.end:
                procs.tuner.next()  # the thread count of this step (byol.cpu.ThreadTuner)
                seconds, z = _step(run, train_step, w, step, s)  # a non-finite loss: skipped (_skip)
                procs.tuner.record(seconds)
                done = step + 1
                bar.update(1)
                if done % cfg.log_every == 0 or done == s.end:
                    _log_window(run, w, bar, done, s.lrs[step], s.taus[step], z)
                    if w.bad_in_row == 0:
                        w.good = train_step.snapshot()  # what _skip brings back
                if cfg.eval_folder and procs.main and (done % eval_every == 0 or done == s.total):
                    _evaluate(run, w, bar, done)
                if budgeted and planner.replan_due(done, start, s.total, cfg.log_every) and _replan(
                        run, w, done, start, eval_every):
                    s = _Schedule.of(run, lr_peak)
                    bar.total = s.total
                saves.after(done, s.end)
                if _stop_requested(stop, procs.ddp):  # every process votes: all stop at the same step
                    _interrupted(run, done, s.total)
                step = done
        finally:
            bar.close()
    return s.end


def _announce(run: _Run, train_step: TrainStep, start: int, s: _Schedule) -> None:
    """One line on stderr: what trains on what, which steps, how."""
    cfg, procs = run.cfg, run.procs
    if not procs.main:
        return
    crop = f" (views {'-'.join(map(str, cfg.view_sides))} px)" if cfg.view_sides != [cfg.model.image_size] else ""
    if cfg.small_crops:
        crop += f" + {cfg.small_crops} small views of {cfg.small_size} px"
    print(f"training {cfg.model.backbone} @ {cfg.model.image_size} px{crop} on {run.data.n} images: steps "
          f"{start}-{s.end} of {s.total}, batch {run.data.batch}, {procs.precision} on {procs.device}"
          + (f" x {procs.world}" if procs.ddp else "") + (", compiled" if train_step.compiled else ""),
          file=sys.stderr)


def _step(run: _Run, train_step: TrainStep, w: _Window, step: int, s: _Schedule) -> tuple[float, torch.Tensor]:
    """Training step `step` on its batch's views: (seconds it took, z for the log)."""
    ts = run.clock()
    x, small = run.data.step_views(step, run.aug_gen, s.sides[step])
    loss, z = train_step(x, s.lrs[step], s.taus[step], small=small)
    if torch.isfinite(loss):
        w.bad_in_row = 0
        w.losses.append(loss.item())
    else:
        _skip(run, train_step, w, step, loss, s.lrs[step])
    seconds = run.clock() - ts
    w.train_seconds += seconds
    w.steps += 1
    return seconds, z


def _skip(run: _Run, train_step: TrainStep, w: _Window, step: int, loss: torch.Tensor, lr: float) -> None:
    """A non-finite loss: the step was skipped. Weights and optimiser are untouched unless an earlier update
    left non-finite weights behind, in which case the last good state comes back. TrainingDiverged after
    max_bad_steps in a row."""
    w.bad_in_row += 1
    restored = not train_step.weights_finite()
    if restored:
        train_step.restore(w.good)
    run.log({"kind": "skip", "step": step + 1, "loss": str(loss.item()), "restored": restored})
    tqdm.write(f"warning: non-finite loss at step {step + 1}: step skipped", file=sys.stderr)
    if w.bad_in_row >= run.cfg.max_bad_steps:
        raise TrainingDiverged(
            f"the loss was not finite for {w.bad_in_row} steps in a row (step {step + 1}, lr "
            f"{lr:.3g}); {run.ckpt_path} keeps the last saved state. Try a lower base_lr "
            f"or precision fp32.")


def _log_window(run: _Run, w: _Window, bar: tqdm, done: int, lr: float, tau: float, z: torch.Tensor) -> None:
    """The "train" record of the window ending at step `done` (and the collapse warning); a new window."""
    dt = run.clock() - w.t
    ips = w.steps * run.data.batch / max(dt, 1e-9)
    loss, spread = float(np.mean(w.losses)) if w.losses else float("nan"), collapse_std(z.detach())
    rec = {"kind": "train", "step": done, "epoch": (done - 1) // run.data.per_epoch, "loss": loss, "lr": lr,
           "tau": tau, "collapse_std": spread, "img_per_s": ips, "elapsed": run.elapsed()}
    run.log(rec)
    bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{ips:.0f}", refresh=False)
    healthy = 1 / math.sqrt(run.cfg.model.proj_dim)
    if spread < 0.2 * healthy and not w.warned and run.procs.main:
        w.warned = True
        run.warn(done, f"collapse: std of normalised projections {spread:.4f} "
                       f"(healthy ~{healthy:.3f}); outputs are becoming constant")
    w.losses, w.t, w.steps = [], run.clock(), 0


def _evaluate(run: _Run, w: _Window, bar: tqdm, done: int) -> None:
    """The kNN monitor after step `done` (logged); its time is kept out of the window's throughput."""
    acc, w.eval_last = run.evaluate(done)
    bar.set_postfix(loss=f"{np.mean(w.losses) if w.losses else float('nan'):.3f}", knn=f"{acc:.1%}")
    w.t = run.clock()


def _replan(run: _Run, w: _Window, done: int, start: int, eval_every: int) -> bool:
    """Budget runs: the machine got slower or faster than planned; move the end (Plan.replan) so the run,
    lr and tau still complete within the budget. Returns whether the plan changed (then logged)."""
    cfg, procs, plan = run.cfg, run.procs, run.plan
    weights = None
    if plan.side_seconds:  # progressive resizing: steps cost what their views' sides do
        costs = {int(k): v for k, v in plan.side_seconds.items()}
        sides = side_schedule(plan.total_steps, plan.to_dict(), cfg.view_sides)
        weights = [costs[x] / costs[cfg.view_sides[-1]] for x in sides]
    fit, per_step = planner.fit_steps(done, start, plan.total_steps, w.train_seconds, cfg.budget - run.elapsed(),
                                      w.eval_last, eval_every, evaluating=bool(cfg.eval_folder), weights=weights)
    if procs.ddp:  # rank 0 decides for everybody
        t = torch.tensor([fit if procs.main else 0], device=procs.device)
        dist.all_reduce(t)
        fit = int(t.item())
    if not plan.replan(done, fit):
        return False
    run.log({"kind": "replan", "step": done, "total_steps": fit, "step_seconds": per_step})
    return True


class _Saves:
    """The loop's checkpoints: every checkpoint_every steps, and checkpoint_minutes after the last one
    however slow the steps (0: by steps only); never at the call's end (train saves there)."""

    def __init__(self, run: _Run, now: float) -> None:
        self.run, self.last = run, now

    def after(self, done: int, end: int) -> None:
        """Save after step `done` when one is due."""
        cfg = self.run.cfg
        late = cfg.checkpoint_minutes > 0 and self.run.clock() - self.last >= cfg.checkpoint_minutes * 60
        if (done % cfg.checkpoint_every == 0 or late) and done < end:
            self.run.save(done)
            self.last = self.run.clock()


def _interrupted(run: _Run, done: int, total: int) -> None:
    """Ctrl-C or SIGTERM reached every process: save after step `done` and stop."""
    run.save(done)
    raise TrainingInterrupted(f"interrupted at step {done} of {total}; checkpoint saved to {run.ckpt_path}; "
                              f"continue with resume")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; kill, a job scheduler's or a laptop's shutdown


@contextlib.contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    """An event Ctrl-C or SIGTERM sets (the loop finishes its step, saves and stops); a second one
    interrupts at once. Only the main thread receives signals: elsewhere the event is never set."""
    stop = threading.Event()
    old_handlers: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        def on_stop(signum: int, frame: object) -> None:
            if stop.is_set():
                raise KeyboardInterrupt
            stop.set()
        old_handlers = {sig: signal.signal(sig, on_stop) for sig in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


def _stop_requested(stop: threading.Event, ddp: bool) -> bool:
    """Whether any process was asked to stop (all processes stop at the same step)."""
    stop_now = torch.tensor([float(stop.is_set())])
    if ddp:
        dist.all_reduce(stop_now)
    return stop_now.item() > 0


def preview(cfg: TrainConfig, pairs: int = 8) -> Path:
    """RUN_DIR/preview.png: `pairs` cached images with their two augmented views (no training).

    The caller's config is not changed."""
    cfg = copy.deepcopy(cfg)
    cfg.augment.image_size = cfg.view_size
    side = cfg.cache_side or default_cache_side(cfg.model.image_size)
    cache = _open_images(cfg, Path(cfg.out), side)
    images = cache.tensor()
    if images.shape[0] == 0:
        raise ValueError(f"{cfg.folder or cfg.hf}: no readable images")
    idx = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(cfg.seed))[:pairs]
    return write_preview(images[idx], cfg.augment, Path(cfg.out) / "preview.png", seed=cfg.seed)
