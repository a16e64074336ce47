"""Side-by-side pretraining benchmark: byol-search against lightly's documented BYOL recipe.

The reference follows lightly's examples/pytorch/byol.py (lightly 1.6): BYOLTransform views built in PIL
inside a DataLoader with 2 workers, BYOLProjectionHead / BYOLPredictionHead (hidden 1024, out 256),
momentum update with tau on a cosine schedule from 0.996 to 1, NegativeCosineSimilarity, plain SGD lr 0.06,
fp32. It runs on the same backbone, resolution and batch size as ours, on the same JPEG folder.

Modes:
  --mode throughput --data cifar10   images/s at 32 px, batch 256, CIFAR ResNet-18 (and ours' default backbone)
  --mode throughput --data large     images/s on 4000x3000 JPEGs at 128 px (the reference decodes every
                                     full JPEG every epoch; ours decodes once into its cache)
  --mode quality --budget 15m        CIFAR-10 kNN top-1 (k=200, t=0.1) after the same wall-clock budget,
                                     plus a randomly initialised encoder; runs one after the other

Writes a markdown table to stdout and a JSON file (--out), with the command line, machine and versions.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"
CACHE = ROOT / ".cache"


# ----------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------
def extract_once(archive: Path, dest: Path) -> Path:
    """Extract `archive` into `dest` unless it is already there (temp folder + rename: never half-extracted)."""
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not dest.is_dir():  # another process may have won the race, which is fine
            raise
    return dest


def large_jpegs(count: int) -> Path:
    """A folder of `count` 4000x3000 JPEGs (Imagenette photos upscaled) in class folders, made once."""
    from make_large_jpegs import make_large_jpegs

    dest = CACHE / "large-jpegs"
    make_large_jpegs(count, dest)
    return dest


def parse_duration(text: str) -> float:
    """'15m', '90s', '1h', '1.5m' -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration like 90s, 15m or 1h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


# ----------------------------------------------------------------------------------------------------------
# the reference: lightly's documented BYOL recipe, on our backbone
# ----------------------------------------------------------------------------------------------------------
class ReferenceBYOL(nn.Module):
    """The model of lightly's BYOL example, with the backbone swapped for the one we compare on."""

    def __init__(self, backbone: nn.Module, dim: int):
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(dim, 1024, 256)
        self.prediction_head = BYOLPredictionHead(256, 1024, 256)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()


def reference_loader(folder: Path, size: int, batch_size: int, workers: int, small_images: bool):
    """lightly's BYOLTransform applied in PIL, image by image, inside a DataLoader over the JPEG folder."""
    import torchvision
    from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform

    # lightly's example turns Gaussian blur off for CIFAR-sized images; larger ones keep the paper's blur
    blur = {"gaussian_blur": 0.0} if small_images else {}
    transform = BYOLTransform(
        view_1_transform=BYOLView1Transform(input_size=size, **blur),
        view_2_transform=BYOLView2Transform(input_size=size, **blur),
    )
    dataset = torchvision.datasets.ImageFolder(str(folder), transform=transform)  # labels are ignored
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
        persistent_workers=workers > 0,
    )


def run_reference(
    folder: Path,
    size: int,
    batch_size: int,
    workers: int = 2,
    steps: int | None = None,
    warmup: int = 1,
    budget_s: float | None = None,
    snapshots_s: tuple[float, ...] = (),
    seed: int = 0,
) -> dict:
    """Train the reference for `warmup + steps` steps (throughput) or for `budget_s` seconds (quality).

    Returns images/s over the timed steps (after warm-up), and for a budget the backbone weights at each
    snapshot time (elapsed training seconds, counted from the first batch request).
    """
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.utils import update_momentum
    from lightly.utils.scheduler import cosine_schedule

    from byol.model import build_backbone

    torch.manual_seed(seed)
    backbone, dim = build_backbone("resnet18", size)
    model = ReferenceBYOL(backbone, dim)
    criterion = NegativeCosineSimilarity()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06)
    loader = reference_loader(folder, size, batch_size, workers, small_images=size <= 64)
    total_steps = warmup + steps if steps is not None else None

    step, t0, t_timed, snaps, losses = 0, time.perf_counter(), None, {}, []
    pending = sorted(snapshots_s)
    done = False
    while not done:
        for (x0, x1), _ in loader:
            elapsed = time.perf_counter() - t0
            # tau follows the cosine schedule over the run: over the steps, or over the wall-clock budget
            progress = (step, total_steps) if total_steps else (int(elapsed), int(budget_s))
            tau = cosine_schedule(progress[0], max(progress[1], 1), 0.996, 1.0)
            update_momentum(model.backbone, model.backbone_momentum, m=tau)
            update_momentum(model.projection_head, model.projection_head_momentum, m=tau)
            p0, z0 = model(x0), model.forward_momentum(x0)
            p1, z1 = model(x1), model.forward_momentum(x1)
            loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            step += 1
            now = time.perf_counter()
            if step == warmup:
                t_timed = now
            step_s = (now - t0) / step
            # a snapshot (and the end of a budget) is the last step that does not run past its time
            while pending and now - t0 + step_s > pending[0]:
                snaps[pending.pop(0)] = {"elapsed_s": now - t0, "step": step,
                                         "state": copy.deepcopy(model.backbone.state_dict())}
            if (total_steps and step >= total_steps) or (budget_s and now - t0 + step_s > budget_s):
                done = True
                break
    end = time.perf_counter()
    timed = step - warmup
    for t in pending:  # the budget ended before a snapshot time: the final weights stand for it
        snaps[t] = {"elapsed_s": end - t0, "step": step, "state": copy.deepcopy(model.backbone.state_dict())}
    return {
        "steps": step,
        "images_per_s": timed * batch_size / (end - t_timed) if timed > 0 and t_timed else None,
        "seconds": end - t0,
        "final_loss": losses[-1],
        "snapshots": snaps,
    }


# ----------------------------------------------------------------------------------------------------------
# ours: byol.train on the same folder
# ----------------------------------------------------------------------------------------------------------
def build_cache(folder: Path, cache_dir: Path, side: int) -> dict:
    """Decode the folder once into our cache (timed on its own); a later train() call reuses it."""
    from byol.data import ImageCache

    if cache_dir.exists():
        shutil.rmtree(cache_dir)
    t0 = time.perf_counter()
    cache = ImageCache.build(str(folder), cache_dir, side)
    return {"seconds": time.perf_counter() - t0, "images": int(cache.tensor().shape[0]), "side": side,
            "bad": len(cache.bad)}


def run_ours(folder: Path, out_dir: Path, warmup: int = 0, **overrides) -> dict:
    """Train with byol.train.train(TrainConfig(...)) and read its JSON-lines log back.

    images/s is measured over the logged steps after `warmup` (log_every=1 gives one record per step).
    """
    from byol.train import TrainConfig, train

    if out_dir.exists():
        shutil.rmtree(out_dir)
    cfg = TrainConfig(folder=str(folder), out=str(out_dir), **overrides)
    t0 = time.perf_counter()
    checkpoint = train(cfg)
    wall = time.perf_counter() - t0
    recs = [json.loads(line) for line in (out_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    plan = next(r for r in recs if r["kind"] == "plan")
    steps = [r for r in recs if r["kind"] == "train"]
    timed = [r for r in steps if r["step"] > warmup]
    images = [plan["batch_size"] * (r["step"] - prev["step"]) for prev, r in zip([{"step": warmup}] + timed, timed)]
    seconds = sum(n / r["img_per_s"] for n, r in zip(images, timed))
    end = next((r for r in recs if r["kind"] == "end"), {})
    return {
        "checkpoint": str(checkpoint),
        "seconds": wall,
        "steps": end.get("step", steps[-1]["step"] if steps else 0),
        "images_per_s": sum(images) / seconds if seconds else None,
        "final_loss": steps[-1]["loss"] if steps else None,
        "precision": plan.get("precision"),
        "batch_size": plan["batch_size"],
        "planned_steps": plan["total_steps"],
        "compiled": end.get("compiled", False),  # after a failed compile, the run went on eager
        # the first step sets up kernels (and compiles): its time beyond a normal step is a one-off
        "first_step_s": plan["batch_size"] / steps[0]["img_per_s"] if steps else None,
    }


# ----------------------------------------------------------------------------------------------------------
# measuring: FLOPs, machine, evaluation
# ----------------------------------------------------------------------------------------------------------
def train_step_flops(backbone: str, size: int, reference: bool) -> float:
    """Model FLOPs of one training step per image (2 views: online forward+backward, target forward)."""
    from torch.utils.flop_counter import FlopCounterMode

    from byol.model import BYOL, ModelConfig, build_backbone

    n = 4
    x0, x1 = torch.randn(n, 3, size, size), torch.randn(n, 3, size, size)
    if reference:
        net, dim = build_backbone(backbone, size)
        model = ReferenceBYOL(net, dim)
        with FlopCounterMode(display=False) as fc:
            p0, z0, p1, z1 = model(x0), model.forward_momentum(x0), model(x1), model.forward_momentum(x1)
            (-(nn.functional.cosine_similarity(p0, z1).mean() + nn.functional.cosine_similarity(p1, z0).mean())).backward()
    else:
        model = BYOL(ModelConfig(backbone=backbone, image_size=size))
        with FlopCounterMode(display=False) as fc:
            (p0, _), (p1, _) = model.online(x0), model.online(x1)
            z0, z1 = model.target(x0), model.target(x1)
            (-(nn.functional.cosine_similarity(p0, z1).mean() + nn.functional.cosine_similarity(p1, z0).mean())).backward()
    return fc.get_total_flops() / n


def machine() -> dict:
    """CPU model, cores and nominal peak FLOP/s per core and cycle: AVX-512 fp32 2 FMA x 16 x 2 = 64;
    AVX-512 BF16 (vdpbf16ps, 2 x 32 bf16 pairs x 2) = 128; AMX 1024 bf16 flops."""
    info = {"cpu": platform.processor(), "cores": os.cpu_count(), "ghz": None}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        info["cpu"] = re.search(r"Model name:\s*(.+)", out).group(1).strip()
        flags = re.search(r"Flags:\s*(.+)", out).group(1).split()
        mhz = re.search(r"cpu MHz\s*:\s*([0-9.]+)", Path("/proc/cpuinfo").read_text())
        info["ghz"] = float(mhz.group(1)) / 1000 if mhz else None
        info["avx512"] = "avx512f" in flags
        info["amx_bf16"] = "amx_bf16" in flags
        info["avx512_bf16"] = "avx512_bf16" in flags
    except (OSError, AttributeError):
        pass
    if info["ghz"]:
        info["peak_fp32_gflops"] = info["cores"] * info["ghz"] * (64 if info.get("avx512") else 32)
        if info.get("amx_bf16"):
            info["peak_bf16_gflops"] = info["cores"] * info["ghz"] * 1024
        elif info.get("avx512_bf16"):
            info["peak_bf16_gflops"] = info["cores"] * info["ghz"] * 128
    info.update(torch=torch.__version__, python=platform.python_version())
    try:
        import lightly

        info["lightly"] = lightly.__version__
    except ImportError:
        pass
    return info


def knn_of(backbone_name: str, size: int, state: dict | None, folder: Path, seed: int = 0,
           precision: str = "auto") -> dict:
    """kNN top-1 (k=200, t=0.1) and linear-probe top-1 of a backbone's weights (None: random init)."""
    from byol.evaluate import evaluate_encoder
    from byol.model import build_backbone
    from byol.preprocess import Preprocess

    torch.manual_seed(seed)
    encoder, _ = build_backbone(backbone_name, size)
    if state is not None:
        encoder.load_state_dict(state)
    r = evaluate_encoder(encoder, Preprocess.for_size(size), folder, shots=(), linear=True, weight_decay=1e-4,
                         precision=precision)
    return {"knn_top1": r["knn_top1"], "linear_top1": r["linear_top1"], "precision": r["precision"],
            "eval_seconds": r["seconds"]["total"]}


def knn_of_checkpoint(checkpoint: str, folder: Path, precision: str = "auto") -> dict:
    from byol.evaluate import evaluate

    r = evaluate(checkpoint, folder, shots=(), weight_decay=1e-4, precision=precision)
    return {"knn_top1": r["knn_top1"], "linear_top1": r["linear_top1"], "precision": r["precision"],
            "eval_seconds": r["seconds"]["total"], "step": r["checkpoint"]["step"],
            "backbone": r["checkpoint"]["backbone"], "image_size": r["checkpoint"]["image_size"]}


# ----------------------------------------------------------------------------------------------------------
# the modes
# ----------------------------------------------------------------------------------------------------------
def with_flops(run: dict, backbone: str, size: int, reference: bool, mach: dict) -> dict:
    flops = train_step_flops(backbone, size, reference)
    run["gflop_per_image"] = flops / 1e9
    if run.get("images_per_s"):
        run["gflops"] = run["images_per_s"] * flops / 1e9
        peak = mach.get("peak_bf16_gflops") if run.get("precision") == "bf16" else mach.get("peak_fp32_gflops")
        run["peak_gflops"] = peak
        run["percent_of_peak"] = 100 * run["gflops"] / peak if peak else None
    return run


def throughput(args, mach: dict) -> dict:
    large = args.data == "large"
    size = args.size or (128 if large else 32)
    batch = args.batch_size or (64 if large else 256)
    folder = large_jpegs(args.large_count) if large else extract_once(DATASETS / "cifar10-jpg.tar.gz", CACHE / "cifar10") / "train"
    work = CACHE / "bench" / f"work-{args.data}"
    result = {"size": size, "batch_size": batch, "folder": str(folder), "warmup_steps": args.warmup,
              "timed_steps": args.steps, "runs": {}}
    n_images = sum(1 for _ in folder.rglob("*") if _.is_file())
    result["folder_images"] = n_images
    if not args.skip_reference:
        print(f"reference (lightly recipe): resnet18 @ {size} px, batch {batch}, {args.workers} workers", file=sys.stderr)
        ref = run_reference(folder, size, batch, args.workers, steps=args.steps, warmup=args.warmup)
        ref.pop("snapshots")
        ref["precision"] = "fp32"
        result["runs"]["reference resnet18"] = with_flops(ref, "resnet18", size, True, mach)
    from byol.model import ModelConfig
    from byol.train import default_cache_side

    side = default_cache_side(size)
    cache_dir = work / f"cache-{side}"
    result["cache"] = build_cache(folder, cache_dir, side)
    print(f"our cache: {result['cache']['images']} images decoded in {result['cache']['seconds']:.1f} s",
          file=sys.stderr)
    # ours as a long run trains (compiled: runs of 5+ minutes compile; the first step pays for it), and
    # eager as short runs do (its warm-up also covers the thread tuner's probe steps at one thread); views at
    # the reference's resolution, and for our default backbone also at our default view size
    from byol.cpu import ThreadTuner, cpu_thread_candidates
    from byol.train import TrainConfig

    default = args.ours_backbone or ModelConfig.backbone
    views = TrainConfig(model=ModelConfig(image_size=size)).view_size
    probes = len(ThreadTuner(cpu_thread_candidates()).probes)  # eager runs with threads=0 probe these steps
    variants = [("resnet18", "compiled", size), ("resnet18", "eager", size), (default, "compiled", size),
                (default, "eager", size)] + ([(default, "compiled", views)] if views != size else [])
    for backbone, mode, crop in dict.fromkeys(variants):
        warmup = args.warmup + (probes if mode == "eager" else 0)
        name = f"ours {backbone} ({mode}" + (f", {crop} px views" if crop != size else "") + ")"
        print(f"{name}: @ {size} px, batch {batch}", file=sys.stderr)
        run = run_ours(folder, work / f"run-{backbone}-{mode}-{crop}", warmup=warmup,
                       model=ModelConfig(backbone=backbone, image_size=size), crop_size=crop, batch_size=batch,
                       steps=warmup + args.steps, log_every=1, cache_dir=str(cache_dir), checkpoint_every=10**9,
                       progress=False, compile="on" if mode == "compiled" else "off")
        result["runs"][name] = with_flops(run, backbone, crop, False, mach)
    ref = result["runs"].get("reference resnet18", {}).get("images_per_s")
    for name, run in result["runs"].items():
        if ref and run.get("images_per_s"):
            run["ratio_vs_reference"] = run["images_per_s"] / ref
            if not name.startswith("reference"):
                # one pass over the folder, ours paying its one-off decode: the first epoch's speed-up
                epoch_ref = n_images / ref
                once = result["cache"]["seconds"] + run["first_step_s"] - run["batch_size"] / run["images_per_s"]
                run["first_epoch_ratio_incl_cache"] = epoch_ref / (once + n_images / run["images_per_s"])
    return result


def quality(args, mach: dict) -> dict:
    cifar = extract_once(DATASETS / "cifar10-jpg.tar.gz", CACHE / "cifar10")
    labelled = args.eval_folder or cifar
    budget = args.budget
    snaps = tuple(sorted({t for t in (300.0, budget) if t <= budget}))
    work = CACHE / "bench" / "work-quality"
    result = {"budget_s": budget, "folder": str(cifar / "train"), "eval_folder": str(labelled), "runs": {}}
    from byol.model import ModelConfig

    if not args.skip_reference:
        print(f"reference (lightly recipe): resnet18 @ 32 px, batch 256, {args.workers} workers, {budget:.0f} s",
              file=sys.stderr)
        ref = run_reference(cifar / "train", 32, 256, args.workers, warmup=1, budget_s=budget, snapshots_s=snaps)
        for t, snap in ref.pop("snapshots").items():
            ev = knn_of("resnet18", 32, snap["state"], labelled, precision=args.eval_precision)
            result["runs"][f"reference resnet18 @ {t / 60:g} min"] = {
                "trained_s": snap["elapsed_s"], "steps": snap["step"], "images_per_s": ref["images_per_s"], **ev}
    print(f"ours: defaults, budget {budget:.0f} s", file=sys.stderr)
    overrides = {"model": ModelConfig(backbone=args.ours_backbone)} if args.ours_backbone else {}
    ours = run_ours(cifar / "train", work / "run-ours", budget=budget, **overrides)
    from byol.checkpoint import load_checkpoint

    saved = load_checkpoint(ours["checkpoint"])
    mcfg, views = saved["model_config"], saved["config"]["augment"]["image_size"]
    ev = knn_of_checkpoint(ours["checkpoint"], labelled, precision=args.eval_precision)
    views = f" ({views} px views)" if views != mcfg["image_size"] else ""
    result["runs"][f"ours {mcfg['backbone']} @ {mcfg['image_size']} px{views}, {budget / 60:g} min"] = {
        "trained_s": ours["seconds"], "steps": ours["steps"], "images_per_s": ours["images_per_s"],
        "precision_train": ours["precision"], **ev}
    for backbone, size in dict.fromkeys([("resnet18", 32), (mcfg["backbone"], mcfg["image_size"])]):
        ev = knn_of(backbone, size, None, labelled, precision=args.eval_precision)
        result["runs"][f"random init {backbone} @ {size} px"] = {"trained_s": 0, "steps": 0, **ev}
    return result


def _fmt(v, spec: str, suffix: str = "") -> str:
    return "—" if v is None else f"{v:{spec}}{suffix}"


def markdown(result: dict) -> str:
    runs = result["runs"]
    if result["mode"] == "throughput":
        lines = ["| run | precision | images/s | vs reference | first epoch incl. our cache build and compile | GFLOP/s | % of peak |",
                 "|---|---|---:|---:|---:|---:|---:|"]
        for name, r in runs.items():
            lines.append(
                f"| {name} | {r.get('precision', '')} | {_fmt(r.get('images_per_s'), '.1f')} "
                f"| {_fmt(r.get('ratio_vs_reference'), '.2f', 'x')} | {_fmt(r.get('first_epoch_ratio_incl_cache'), '.2f', 'x')} "
                f"| {_fmt(r.get('gflops'), '.0f')} | {_fmt(r.get('percent_of_peak'), '.1f', '%')} |")
        if "cache" in result:
            c = result["cache"]
            lines.append(f"\nour decoded cache: {c['images']} images at {c['side']} px built in {c['seconds']:.1f} s "
                         f"(one-off; reused by later epochs and runs). Peak: {result['machine'].get('peak_fp32_gflops')} "
                         f"GFLOP/s fp32 (AVX-512), {result['machine'].get('peak_bf16_gflops')} GFLOP/s bf16 "
                         f"({'AMX' if result['machine'].get('amx_bf16') else 'AVX-512 BF16'}), "
                         f"nominal clock.")
    else:
        lines = ["| encoder | trained (s) | steps | images/s | kNN top-1 | linear top-1 |", "|---|---:|---:|---:|---:|---:|"]
        for name, r in runs.items():
            lines.append(f"| {name} | {r['trained_s']:.0f} | {r['steps']} | {_fmt(r.get('images_per_s'), '.1f')} "
                         f"| {r['knn_top1']:.2%} | {r['linear_top1']:.2%} |")
        ours = [r for n, r in runs.items() if n.startswith("ours")]
        ref = [r for n, r in runs.items() if n.startswith("reference")]
        if ours and ref:
            diff = 100 * (ours[0]["knn_top1"] - ref[-1]["knn_top1"])
            lines.append(f"\nours minus reference after the same budget: {diff:+.1f} kNN points")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("throughput", "quality"), required=True)
    p.add_argument("--data", choices=("cifar10", "large"), default="cifar10", help="throughput data (default cifar10)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per run, after --warmup (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--budget", type=parse_duration, default=parse_duration("15m"),
                   help="quality: wall-clock pretraining budget for each method (default 15m)")
    p.add_argument("--size", type=int, default=0, help="resolution (default 32 for cifar10, 128 for large)")
    p.add_argument("--batch-size", type=int, default=0, help="batch (default 256 for cifar10, 64 for large)")
    p.add_argument("--workers", type=int, default=2, help="the reference's DataLoader workers (default 2)")
    p.add_argument("--large-count", type=int, default=640, help="number of 4000x3000 JPEGs (default 640)")
    p.add_argument("--ours-backbone", default=None, help="our backbone besides resnet18 (default: our default)")
    p.add_argument("--eval-precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="kNN evaluation arithmetic, the same for every encoder (default auto)")
    p.add_argument("--eval-folder", type=Path, default=None,
                   help="quality: labelled folder for the kNN (default the CIFAR-10 train/test; a subset for smoke tests)")
    p.add_argument("--skip-reference", action="store_true", help="measure ours only")
    p.add_argument("--out", type=Path, default=None, help="JSON result (default .cache/bench/pretrain-MODE-DATA.json)")
    args = p.parse_args(argv)

    mach = machine()
    started = datetime.datetime.now(datetime.UTC)
    result = throughput(args, mach) if args.mode == "throughput" else quality(args, mach)
    result.update(mode=args.mode, data=args.data if args.mode == "throughput" else "cifar10",
                  command=" ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
                  machine=mach, date=started.isoformat(timespec="seconds"),
                  seconds=(datetime.datetime.now(datetime.UTC) - started).total_seconds())
    out = args.out or CACHE / "bench" / f"pretrain-{args.mode}-{result['data']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    os.replace(tmp, out)
    print(f"\n## pretraining benchmark: {args.mode}, {result['data']}\n")
    print(f"command: `{result['command']}`  \nmachine: {mach['cpu']}, {mach['cores']} cores, torch {mach['torch']}, "
          f"lightly {mach.get('lightly')}  \ndate: {result['date']}\n")
    print(markdown(result))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
