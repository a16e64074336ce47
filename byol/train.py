"""BYOL pretraining (Grill et al. 2020): the run's config and one training function that reads top to bottom.

Public API
    train(cfg: TrainConfig) -> Path          runs (or resumes) a pretraining run; returns RUN_DIR/checkpoint.pt
    TrainConfig                              every setting, one comment per field (below); stored in the
                                             checkpoint as asdict(cfg) under "config"
    parse_duration("20m") -> 1200.0          "90s", "20m", "1.5h", "1h30m" -> seconds (ValueError otherwise)
    TrainingDiverged, TrainingInterrupted    raised on repeated non-finite losses / on Ctrl-C (after saving)

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
not counted and leave no trace, so a budget run is the same as a `steps` run of the planned length. It then sets total steps = (time left x 0.97) /
(step time + evaluation time / eval_every). The plan is stored in the checkpoint; --resume keeps it.
When the measured speed drifts more than 10% from the plan (another program starts or stops), the rest of
the schedules is stretched or squeezed (`virtual_step`) so lr and tau still complete within the budget;
each re-plan is logged and stored in the plan. A `steps` run never re-plans and resumes exactly.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import re
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from byol.augment import AugmentConfig, two_views, write_preview
from byol.checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from byol.init import resolve_init, start_from
from byol.loss import byol_loss, collapse_std
from byol.model import BYOL, ModelConfig
from byol.optim import OPTIMIZERS, build_optimizer, scaled_lr, schedules, virtual_step
from byol.preprocess import Preprocess

PLAN_STEPS, PLAN_WARMUP = 3, 1  # budget planner: at least PLAN_WARMUP + 1 steps, at most PLAN_STEPS + probes
CROP_FRACTION = 0.625  # default side of the training views, as a fraction of the image size (crop_size)
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
    # where the encoder starts (byol.init): none (random), base (shipped, pretrained by this project on public
    # images), imagenet (torchvision's weights, downloaded once), or a checkpoint / state dict path. Online
    # and target encoders start from it; projector and predictor are fresh
    init: str = "none"
    # side of the training views; 0 = CROP_FRACTION x model.image_size (20 px for 32). Random resized crops
    # show objects larger than whole images do, so an encoder trained on smaller views meets objects at the
    # same scale when it sees whole images at image_size in evaluation, export and search (Touvron et al.
    # 2019, "FixRes": train 128, test 224 was best there). On CIFAR-10 views of 20-24 px learn as much per
    # step as 32 px views for 0.4-0.56x the FLOPs (BENCHMARKS.md). crop_size = image_size: no shrinking
    crop_size: int = 0
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
    resume: bool = False  # continue RUN_DIR/checkpoint.pt exactly (the saved settings win)
    stop_at: int = 0  # end this call after this step, schedules still planned for all steps (staged runs)
    max_bad_steps: int = 3  # consecutive non-finite losses before the run stops
    progress: bool = True  # tqdm bar

    @property
    def view_size(self) -> int:
        """Side of the training views in px (crop_size, or its default)."""
        return self.crop_size or max(8, round(CROP_FRACTION * self.model.image_size / 4) * 4)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        m, a = ModelConfig(**d.pop("model", {})), d.pop("augment", {})
        if "crop_size" not in d and "image_size" in a:  # saved before crop_size: views at the stored size
            d["crop_size"] = a["image_size"]
        a = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in a.items()})
        return cls(model=m, augment=a, **d)


class TrainingDiverged(RuntimeError):
    """The loss stayed non-finite for max_bad_steps steps in a row."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: a checkpoint was saved; `resume` continues."""


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
    return image_size if image_size <= 64 else int(round(image_size * 1.25 / 8)) * 8


# ----------------------------------------------------------------------------------------------------------
# CPU kernel: convolution weight gradients on small feature maps as one GEMM
# ----------------------------------------------------------------------------------------------------------
def conv_weight_grad(x: torch.Tensor, g: torch.Tensor, k: int, stride: int, pad: int) -> torch.Tensor:
    """dL/dW of a k x k convolution (groups 1, dilation 1) as ONE matrix product.

    x: N,C,H,W input; g: N,O,Ho,Wo output gradient -> O,C,k,k. The k*k shifted (strided) views of the
    padded input are stacked into an N*Ho*Wo x k*k*C matrix; dW = g^T (O x N*Ho*Wo) @ that matrix.
    """
    n, c = x.shape[:2]
    o, ho, wo = g.shape[1:]
    xh = F.pad(x.permute(0, 2, 3, 1), (0, 0, pad, pad, pad, pad))  # N, H+2p, W+2p, C
    sh, sw = stride * (ho - 1) + 1, stride * (wo - 1) + 1
    cols = torch.stack([xh[:, i : i + sh : stride, j : j + sw : stride, :] for i in range(k) for j in range(k)], dim=3)
    cols = cols.reshape(n * ho * wo, k * k * c)  # N*Ho*Wo, k*k*C
    gm = g.permute(0, 2, 3, 1).reshape(n * ho * wo, o)  # N*Ho*Wo, O
    return (gm.t() @ cols).view(o, k, k, c).permute(0, 3, 1, 2)  # O, C, k, k


class _GemmGradConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride: int, pad: int):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.pad = stride, pad
        return F.conv2d(x, weight, None, stride, pad)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        s, p = ctx.stride, ctx.pad
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(
                g, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            gw = conv_weight_grad(x, g, w.shape[-1], s, p).to(w.dtype)
        return gx, gw, None, None


class GemmGradConv2d(nn.Conv2d):
    """nn.Conv2d whose weight gradient is `conv_weight_grad` (same parameters, same state_dict).

    On CPUs, oneDNN's bf16 backward-weights kernel crawls on feature maps of 8x8 and smaller (10-25
    GFLOP/s measured on 2 cores of a CPU with AMX, against 60-100 for this GEMM): in a CIFAR ResNet that is
    stages 3 and 4. The input gradient and the forward stay oneDNN's. Autocast casts as for nn.Conv2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if torch.is_autocast_enabled("cpu"):
            dt = torch.get_autocast_dtype("cpu")
            x, w = x.to(dt), w.to(dt)
        with torch.autocast("cpu", enabled=False):
            return _GemmGradConvFn.apply(x, w, self.stride[0], self.padding[0])


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles for bf16 (Linux /proc/cpuinfo flags; False when they cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


def use_gemm_weight_grads(encoder: nn.Module, image_size: int, max_side: int = 8) -> int:
    """Switch the encoder's eligible convolutions with outputs of at most max_side^2 to GemmGradConv2d.

    Eligible: square kernel, equal strides and paddings, no bias, groups and dilation 1. Returns how many.
    """
    sides: dict[nn.Conv2d, int] = {}
    hooks = [m.register_forward_hook(lambda mod, i, out: sides.__setitem__(mod, out.shape[-1]))
             for m in encoder.modules() if type(m) is nn.Conv2d]
    was = encoder.training
    encoder.eval()
    with torch.no_grad():
        encoder(torch.zeros(1, 3, image_size, image_size))
    encoder.train(was)
    for h in hooks:
        h.remove()
    n = 0
    for m, side in sides.items():
        k, st, pd = m.kernel_size, m.stride, m.padding
        if (side <= max_side and m.bias is None and m.groups == 1 and m.dilation == (1, 1) and k[0] == k[1]
                and st[0] == st[1] and isinstance(pd, tuple) and pd[0] == pd[1] and m.padding_mode == "zeros"):
            m.__class__ = GemmGradConv2d
            n += 1
    return n


def cpu_thread_candidates() -> list[int]:
    """Thread counts the auto ThreadTuner tries: all usable cores, half of them and one (largest first)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return sorted({cores, max(1, cores // 2), 1}, reverse=True)


class ThreadTuner:
    """Chooses the CPU intra-op thread count whose steps are fastest, by timing real steps.

    Each candidate runs two steps (the first at a new count sets up kernels and is not timed; step 0 runs
    at the first candidate); afterwards the fastest (median of its last 5 steps) runs, and every `recheck` steps each other candidate gets one step to show it is
    now faster (the load of a shared machine changes). One candidate: a fixed count, nothing timed.
    """

    def __init__(self, candidates: list[int], recheck: int = 100):
        self.candidates, self.recheck = candidates, recheck
        self.times: dict[int, list[float]] = {c: [] for c in candidates}
        self.seen: set[int] = set()  # the first step at a count sets up kernels for it: not timed
        self.n = 0
        # the first candidate's first step is step 0 (warm-up), so it needs one probe less
        self.probes = [c for c in candidates for _ in range(2)][1:] if len(candidates) > 1 else []

    @property
    def settled(self) -> bool:
        return not self.probes

    def best(self) -> int:
        timed = [c for c in self.candidates if self.times[c]]
        return min(timed, key=lambda c: float(np.median(self.times[c][-5:]))) if timed else self.candidates[0]

    def step_seconds(self) -> float | None:
        """Median step time of the best candidate."""
        t = self.times[self.best()]
        return float(np.median(t[-5:])) if t else None

    def next(self) -> int:
        """The thread count for the coming step (and sets it)."""
        if self.n == 0 or len(self.candidates) == 1:
            c = self.candidates[0]
        elif self.probes:
            c = self.probes.pop(0)
        elif self.n % self.recheck == 0:
            self.probes = [x for x in self.candidates if x != self.best()]
            c = self.probes.pop(0)
        else:
            c = self.best()
        if torch.get_num_threads() != c:
            torch.set_num_threads(c)
        self.current = c
        return c

    def record(self, seconds: float) -> None:
        if self.current in self.seen and len(self.candidates) > 1:
            self.times[self.current].append(seconds)
        self.seen.add(self.current)
        self.n += 1


class _Online(nn.Module):
    """The online network as one module (what DistributedDataParallel wraps): x -> (p, z)."""

    def __init__(self, byol: BYOL):
        super().__init__()
        self.encoder, self.projector, self.predictor = byol.online_encoder, byol.online_projector, byol.predictor

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projector(self.encoder(x))
        return self.predictor(z), z


def _open_images(cfg: TrainConfig, run_dir: Path, side: int, build: bool = True):
    """The decoded cache (byol.data.ImageCache) of the folder or HF dataset; unreadable files are listed in
    RUN_DIR/bad_files.jsonl. build=False opens the cache another process has just built."""
    from byol.data import ImageCache

    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else run_dir / "cache"
    if not build:
        return ImageCache.open(cache_dir, side)
    report = run_dir / "bad_files.jsonl"
    if cfg.hf:
        return ImageCache.from_hf(cfg.hf, cache_dir, side, split=cfg.hf_split, image_column=cfg.hf_image_column,
                                  workers=cfg.workers, report=report)
    return ImageCache.build(cfg.folder, cache_dir, side, workers=cfg.workers, report=report)


def _choose_precision(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32."""
    if cfg.precision == "fp32":
        return None
    if cfg.precision == "bf16":
        return torch.bfloat16
    if cfg.precision != "auto":
        raise ValueError(f"precision {cfg.precision!r}: choose auto, fp32 or bf16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def _want_compile(cfg: TrainConfig) -> bool:
    if cfg.compile not in ("auto", "on", "off"):
        raise ValueError(f"compile {cfg.compile!r}: choose auto, on or off")
    if cfg.compile == "auto":
        return cfg.budget >= COMPILE_MIN_BUDGET if cfg.steps <= 0 else cfg.steps >= COMPILE_MIN_STEPS
    return cfg.compile == "on"


def _rng_state(aug_gen: torch.Generator) -> dict:
    st = np.random.get_state()
    rng = {"torch": torch.get_rng_state(), "augment": aug_gen.get_state(), "python": random.getstate(),
           "numpy": [st[0], st[1].tolist(), int(st[2]), int(st[3]), float(st[4])]}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _set_rng_state(rng: dict, aug_gen: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    aug_gen.set_state(rng["augment"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in rng["python"]))
    n = rng["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _epoch_batches(n: int, epoch: int, seed: int, rank: int, world: int, local_batch: int) -> torch.Tensor:
    """Image indices of one epoch for this process: batches x local_batch (drop_last).

    The permutation depends only on (seed, epoch), so the data order needs no saved state: step s reads
    batch s % batches_per_epoch of epoch s // batches_per_epoch. Each process takes a distinct shard.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    shard = perm[rank::world]
    per_epoch = len(shard) // local_batch
    return shard[: per_epoch * local_batch].view(per_epoch, local_batch)


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def plot_curves(log_path: str | Path, png_path: str | Path) -> None:
    """curves.png from log.jsonl: loss, lr, tau, collapse std and (if any) kNN top-1 against step."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = _read_log(Path(log_path))
    tr = [r for r in recs if r.get("kind") == "train"]
    ev = [r for r in recs if r.get("kind") == "eval"]
    panels = [("loss", tr), ("lr", tr), ("tau", tr), ("collapse_std", tr)] + ([("knn_top1", ev)] if ev else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0))
    for ax, (key, rs) in zip(axes, panels):
        ax.plot([r["step"] for r in rs], [r[key] for r in rs], marker="o" if key == "knn_top1" else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write(png_path, lambda f: f.write(buf.getvalue()))


def _knn_monitor(encoder: nn.Module, folder: str, preprocess: Preprocess, device: torch.device, amp) -> float:
    """Weighted kNN top-1 (k=200, t=0.1) of the online encoder on a labelled folder, eval mode."""
    from byol import probe
    from byol.evaluate import embed_folder, load_labelled

    train_paths, train_y, test_paths, test_y, _ = load_labelled(folder)
    with amp():
        tr = embed_folder(encoder, preprocess, train_paths, device=device, progress=False)
        te = embed_folder(encoder, preprocess, test_paths, device=device, progress=False)
    return probe.knn_top1(tr.features, train_y[tr.kept], te.features, test_y[te.kept])


def train(cfg: TrainConfig) -> Path:
    """Run BYOL pretraining as configured; returns the path of the final checkpoint (RUN_DIR/checkpoint.pt)."""
    t0 = time.perf_counter()
    cfg = copy.deepcopy(cfg)  # the caller's config is not changed
    run_dir = Path(cfg.out)
    ckpt_path, log_path = run_dir / "checkpoint.pt", run_dir / "log.jsonl"
    # ------------------------------------------------------------------ resume: the saved settings win
    ckpt = None
    if cfg.resume:
        if not ckpt_path.is_file():
            raise CheckpointError(f"{ckpt_path}: nothing to resume (no checkpoint in {run_dir})")
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
    cfg.augment.image_size = cfg.view_size
    compiled = _want_compile(cfg)

    # ------------------------------------------------------------------ processes and device, chosen once
    ddp = int(os.environ.get("RANK", -1)) != -1  # launched by torchrun
    rank, world = 0, 1
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
    if ddp:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        else:  # processes on one CPU share its cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    main = rank == 0
    amp_dtype = _choose_precision(cfg, device)
    precision = "bf16" if amp_dtype is not None else "fp32"

    def amp():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    if cfg.threads > 0 or ddp or device.type != "cpu" or compiled:  # compiled kernels fix their thread count
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        tuner = ThreadTuner([torch.get_num_threads()])
    else:
        tuner = ThreadTuner(cpu_thread_candidates())
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        # -------------------------------------------------------------- data: the decoded cache
        side = cfg.cache_side or default_cache_side(cfg.model.image_size)
        if main:
            cache = _open_images(cfg, run_dir, side)
        if ddp:
            dist.barrier()  # rank 0 built the cache; the others open it
        if not main:
            cache = _open_images(cfg, run_dir, side, build=False)
        images = cache.tensor()  # N, side, side, 3 uint8 (memory-mapped)
        n = images.shape[0]
        if n // world < 2:
            raise ValueError(f"{cfg.folder or cfg.hf}: {n} readable image(s); BYOL needs at least {2 * world} "
                             f"(BatchNorm needs 2 per batch per process)")
        if device.type == "cuda" and images.numel() < 0.25 * torch.cuda.mem_get_info(device)[0]:
            images = images.to(device)  # the whole cache on the GPU: batches are gathered there
        local_batch = min(cfg.batch_size // world, n // world)
        batch = local_batch * world
        if batch < cfg.batch_size and main:
            print(f"note: {n} images for batch size {cfg.batch_size}: training with batch {batch} "
                  f"(lr scaled to it)", file=sys.stderr)
        per_epoch = (n // world) // local_batch

        # -------------------------------------------------------------- model, optimiser, augmentation RNG
        torch.manual_seed(cfg.seed)
        model = BYOL(cfg.model)
        if ckpt is None:
            init_info = start_from(model, resolve_init(cfg.init, cfg.model.backbone, cfg.model.image_size))
        else:
            init_info = dict(ckpt["extra"].get("init", {"kind": cfg.init}))
        if ddp and device.type == "cuda":  # SyncBatchNorm runs on GPUs only; CPU processes normalise locally
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if cfg.gemm_weight_grads and device.type == "cpu" and amp_dtype is not None and cpu_has_amx():
            use_gemm_weight_grads(model.online_encoder, cfg.augment.image_size)
        model = model.to(device, memory_format=fmt)
        online = _Online(model)
        if ddp:
            online = nn.parallel.DistributedDataParallel(online, device_ids=[device] if device.type == "cuda" else None)
        lr_peak = scaled_lr(cfg.base_lr, batch)
        optimizer = build_optimizer(cfg.optimizer, _Online(model), lr_peak, cfg.weight_decay)
        aug_gen = torch.Generator().manual_seed(cfg.seed * 7919 + rank)
        preprocess = Preprocess.for_size(cfg.model.image_size)
        forward_online, forward_target = online, model.target
        if compiled:
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" on CPUs
            forward_online, forward_target = torch.compile(online), torch.compile(model.target)

        compile_tried = False  # compiling happens at the first call: only its failure means "no compile"

        def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """(p, z) of the online network and z' of the target; a failed compile falls back to eager once."""
            nonlocal compiled, compile_tried, forward_online, forward_target
            try:
                with amp():
                    p, z = forward_online(x)  # 2B, proj_dim each
                    out = p, z, forward_target(x)  # 2B, proj_dim, no gradient
                compile_tried = True
                return out
            except Exception as e:  # noqa: BLE001 (no C++ compiler, unsupported platform, ...)
                if not compiled or compile_tried:
                    raise
                msg = (f"torch.compile failed ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}); "
                       f"training without it (compile=off hides this)")
                log({"kind": "warning", "step": 0, "message": msg})
                if main:
                    print(f"warning: {msg}", file=sys.stderr)
                compiled, forward_online, forward_target = False, online, model.target
                return forward(x)

        def get_batch(step: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            idx = _epoch_batches(n, step // per_epoch, cfg.seed, rank, world, local_batch)[step % per_epoch]
            x = images[idx.to(images.device)].to(device, non_blocking=True)  # B, side, side, 3 uint8
            v1, v2 = two_views(x, cfg.augment, gen)  # B,3,S,S each
            return torch.cat([v1, v2]).contiguous(memory_format=fmt), idx  # 2B,3,S,S

        def train_step(x: torch.Tensor, lr: float, tau: float, check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
            """One step on both views at once (BatchNorm statistics span both); returns (loss, z)."""
            for g in optimizer.param_groups:
                g["lr"] = lr
            p, z, zt = forward(x)
            p1, p2 = p.float().chunk(2)
            zt1, zt2 = zt.float().chunk(2)
            loss = byol_loss(p1, p2, zt1, zt2)
            stat = loss.detach().reshape(1)
            if ddp:  # every process takes the same decision on a non-finite loss
                stat = stat.clone()
                dist.all_reduce(stat)
                stat /= world
            if check_finite and not torch.isfinite(stat).all():
                return stat[0], z
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.update_target(tau)
            return stat[0], z

        # -------------------------------------------------------------- state: fresh, or exactly as saved
        start, elapsed_before, plan = 0, 0.0, {}
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            start, plan = int(ckpt["step"]), dict(ckpt["extra"]["plan"])
            elapsed_before = float(ckpt["extra"].get("elapsed", 0.0))
            _set_rng_state(ckpt["rng"], aug_gen)
            if main:  # drop log lines written after the checkpoint by an interrupted run
                keep = [r for r in _read_log(log_path) if r.get("step", 0) <= start and r.get("kind") != "end"]
                atomic_write(log_path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in keep).encode()))
        elif main:
            log_path.unlink(missing_ok=True)

        def log(rec: dict) -> None:
            if main:
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")

        def elapsed() -> float:
            return elapsed_before + time.perf_counter() - t0

        # -------------------------------------------------------------- kNN monitor before training
        eval_seconds = 0.0
        if cfg.eval_folder and main and start == 0:
            te = time.perf_counter()
            acc = _knn_monitor(model.online_encoder, cfg.eval_folder, preprocess, device, amp)
            eval_seconds = time.perf_counter() - te
            log({"kind": "eval", "step": 0, "knn_top1": acc, "seconds": eval_seconds, "elapsed": elapsed()})
            print(f"kNN top-1 before training: {acc:.2%} ({eval_seconds:.1f} s)", file=sys.stderr)

        # -------------------------------------------------------------- plan: steps from the time budget
        if ckpt is None:
            total, step_seconds = cfg.steps, None
            if total <= 0:
                snapshot = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
                plan_gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)
                times, tp = [], time.perf_counter()
                for i in range(PLAN_STEPS + len(tuner.probes)):
                    tuner.next()
                    ts = time.perf_counter()
                    train_step(get_batch(i, plan_gen)[0], lr_peak / 100, cfg.base_tau, check_finite=False)[0].item()
                    times.append(time.perf_counter() - ts)
                    tuner.record(times[-1])
                    # enough once past warm-up and the thread probes, or when planning eats 15% of the budget
                    if i >= PLAN_WARMUP and (tuner.settled or time.perf_counter() - tp > 0.15 * cfg.budget):
                        break
                model.load_state_dict(snapshot[0])
                optimizer.load_state_dict(snapshot[1])
                step_seconds = tuner.step_seconds() or float(np.median(times[1:] or times))
                left = (cfg.budget - elapsed()) * 0.97
                if cfg.eval_folder and cfg.eval_every:
                    total = int(left / (step_seconds + eval_seconds / cfg.eval_every))
                else:  # the default: five evaluations whatever the length
                    total = int((left - (5 * eval_seconds if cfg.eval_folder else 0)) / step_seconds)
                if ddp:  # agree on the slowest process's plan
                    t = torch.tensor([total], device=device)
                    dist.all_reduce(t, op=dist.ReduceOp.MIN)
                    total = int(t.item())
                if total < 1:
                    raise ValueError(f"budget {cfg.budget:.0f} s is too short: one step takes {step_seconds:.2f} s "
                                     f"and {elapsed():.0f} s are already spent (cache, evaluation, planning)")
            plan = {"total_steps": total, "schedule_total": total, "replans": [], "batch_size": batch,
                    "step_seconds": step_seconds, "budget": cfg.budget, "images": n, "world_size": world,
                    "device": str(device), "precision": precision, "compiled": compiled}
            log({"kind": "plan", "step": 0, **plan})
        total = int(plan["total_steps"])
        plan.setdefault("schedule_total", total)
        plan.setdefault("replans", [])
        end = min(total, cfg.stop_at) if cfg.stop_at > 0 else total
        lrs, taus = schedules(total, plan, lr_peak, cfg.warmup, cfg.base_tau)  # per-step schedules
        eval_every = cfg.eval_every or max(1, math.ceil(int(plan.get("schedule_total", total)) / 5))
        budgeted = cfg.budget > 0 and cfg.steps <= 0 and cfg.stop_at <= 0

        def save(step: int) -> None:
            if main:
                save_checkpoint(ckpt_path, {
                    "config": asdict(cfg), "model_config": asdict(cfg.model),
                    "preprocess": preprocess.to_dict(), "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "step": step, "rng": _rng_state(aug_gen),
                    "extra": {"plan": plan, "elapsed": elapsed(), "init": init_info,
                              "sampler": {"seed": cfg.seed, "epoch": step // per_epoch, "per_epoch": per_epoch}},
                })

        # -------------------------------------------------------------- Ctrl-C: finish the step, save, stop
        stop = threading.Event()
        old_handler = None
        if threading.current_thread() is threading.main_thread():
            def on_sigint(signum, frame):
                if stop.is_set():
                    raise KeyboardInterrupt
                stop.set()
            old_handler = signal.signal(signal.SIGINT, on_sigint)

        # -------------------------------------------------------------- the loop
        if main:
            crop = f" (views {cfg.augment.image_size} px)" if cfg.augment.image_size != cfg.model.image_size else ""
            print(f"training {cfg.model.backbone} @ {cfg.model.image_size} px{crop} on {n} images: steps {start}-{end} "
                  f"of {total}, batch {batch}, {precision} on {device}" + (f" x {world}" if ddp else "")
                  + (", compiled" if compiled else ""), file=sys.stderr)
        bar = tqdm(total=total, initial=start, unit="step", disable=not (cfg.progress and main), file=sys.stderr,
                   dynamic_ncols=True)
        good = copy.deepcopy((model.state_dict(), optimizer.state_dict()))  # the last state known finite
        bad_in_row, losses, warned = 0, [], False
        t_win, n_win = time.perf_counter(), 0
        train_seconds, eval_last = 0.0, eval_seconds  # time in training steps during this call; last eval
        try:
            step = start
            while step < end:
                tuner.next()
                ts = time.perf_counter()
                x, _ = get_batch(step, aug_gen)
                loss, z = train_step(x, lrs[step], taus[step])
                if not torch.isfinite(loss):
                    # the step was skipped: weights and optimiser are untouched unless an earlier update left
                    # non-finite weights behind, in which case the last good state comes back
                    bad_in_row += 1
                    restored = not all(torch.isfinite(p).all() for p in model.parameters())
                    if restored:
                        model.load_state_dict(good[0])
                        optimizer.load_state_dict(good[1])
                    log({"kind": "skip", "step": step + 1, "loss": str(loss.item()), "restored": restored})
                    tqdm.write(f"warning: non-finite loss at step {step + 1}: step skipped", file=sys.stderr)
                    if bad_in_row >= cfg.max_bad_steps:
                        raise TrainingDiverged(
                            f"the loss was not finite for {bad_in_row} steps in a row (step {step + 1}, lr "
                            f"{lrs[step]:.3g}); {ckpt_path} keeps the last saved state. Try a lower base_lr "
                            f"or precision fp32.")
                else:
                    bad_in_row = 0
                    losses.append(loss.item())
                train_seconds += time.perf_counter() - ts
                tuner.record(time.perf_counter() - ts)
                n_win += 1
                done = step + 1
                bar.update(1)
                if done % cfg.log_every == 0 or done == end:
                    dt = time.perf_counter() - t_win
                    ips = n_win * batch / max(dt, 1e-9)
                    rec = {"kind": "train", "step": done, "epoch": step // per_epoch,
                           "loss": float(np.mean(losses)) if losses else float("nan"), "lr": lrs[step],
                           "tau": taus[step], "collapse_std": collapse_std(z.detach()), "img_per_s": ips,
                           "elapsed": elapsed()}
                    log(rec)
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", img_s=f"{ips:.0f}", refresh=False)
                    healthy = 1 / math.sqrt(cfg.model.proj_dim)
                    if rec["collapse_std"] < 0.2 * healthy and not warned and main:
                        warned = True
                        msg = (f"collapse: std of normalised projections {rec['collapse_std']:.4f} "
                               f"(healthy ~{healthy:.3f}); outputs are becoming constant")
                        log({"kind": "warning", "step": done, "message": msg})
                        tqdm.write(f"warning: {msg}", file=sys.stderr)
                    losses, t_win, n_win = [], time.perf_counter(), 0
                    if bad_in_row == 0:
                        good = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
                if cfg.eval_folder and main and (done % eval_every == 0 or done == total):
                    te = time.perf_counter()
                    acc = _knn_monitor(model.online_encoder, cfg.eval_folder, preprocess, device, amp)
                    eval_last = time.perf_counter() - te
                    log({"kind": "eval", "step": done, "knn_top1": acc, "seconds": eval_last, "elapsed": elapsed()})
                    bar.set_postfix(loss=f"{np.mean(losses) if losses else float('nan'):.3f}", knn=f"{acc:.1%}")
                    t_win = time.perf_counter()  # evaluation time is not training throughput
                check = max(1, min(cfg.log_every, total // 10))
                if budgeted and done % check == 0 and done - start >= max(3, total // 20):
                    # the machine got slower or faster than planned: stretch or squeeze the rest of the
                    # schedules so the run still ends, lr and tau complete, within the budget
                    per_step = train_seconds / (done - start)
                    evals_left = math.ceil((total - done) / eval_every) if cfg.eval_folder else 0
                    left = (cfg.budget - elapsed()) * 0.98 - evals_left * eval_last
                    fit = done + max(1, int(left / per_step))
                    if ddp:  # rank 0 decides for everybody
                        t = torch.tensor([fit if main else 0], device=device)
                        dist.all_reduce(t)
                        fit = int(t.item())
                    if abs(fit - total) >= max(2.0, 0.1 * (total - done)):  # ignore noise of a step or so
                        v0 = virtual_step(done, int(plan["schedule_total"]), plan["replans"])
                        plan["replans"].append([done, v0, fit])
                        plan["total_steps"] = total = end = fit
                        lrs, taus = schedules(total, plan, lr_peak, cfg.warmup, cfg.base_tau)
                        bar.total = total
                        log({"kind": "replan", "step": done, "total_steps": total, "step_seconds": per_step})
                if done % cfg.checkpoint_every == 0 and done < end:
                    save(done)
                stop_now = torch.tensor([float(stop.is_set())])
                if ddp:
                    dist.all_reduce(stop_now)
                if stop_now.item() > 0:
                    save(done)
                    raise TrainingInterrupted(f"interrupted at step {done} of {total}; checkpoint saved to "
                                              f"{ckpt_path}; continue with resume")
                step = done
        finally:
            bar.close()
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)

        # -------------------------------------------------------------- the end: checkpoint, plot
        save(end)
        if main:
            log({"kind": "end", "step": end, "elapsed": elapsed(), "images_seen": (end - start) * batch,
                 "compiled": compiled})
            plot_curves(log_path, run_dir / "curves.png")
        return ckpt_path
    finally:
        if ddp:
            dist.destroy_process_group()


def preview(cfg: TrainConfig, pairs: int = 8) -> Path:
    """RUN_DIR/preview.png: `pairs` cached images with their two augmented views (no training)."""
    cfg.augment.image_size = cfg.view_size
    side = cfg.cache_side or default_cache_side(cfg.model.image_size)
    cache = _open_images(cfg, Path(cfg.out), side)
    images = cache.tensor()
    if images.shape[0] == 0:
        raise ValueError(f"{cfg.folder or cfg.hf}: no readable images")
    idx = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(cfg.seed))[:pairs]
    return write_preview(images[idx], cfg.augment, Path(cfg.out) / "preview.png", seed=cfg.seed)
