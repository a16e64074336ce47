"""Embedding throughput: onnxruntime (fp32 and int8) against torch eager on the same encoder and batch.

For each encoder (default: the default CPU backbone resnet-tiny at 32 px, and resnet18 at 64 px) this
exports a checkpoint with byol.export (parity-checked), quantises it (static int8 QDQ, calibrated on the
images), and measures side by side, on the same preprocessed real photos and the same batch size:

  torch    the encoder in eval mode, torch.no_grad, L2-normalised (what `byol-search evaluate` runs)
  ort      index.embed.Embedder on the fp32 model (what `byol-search index` runs)
  int8     the same on the int8 model
  int8-dyn dynamic quantisation (weights only), to show why static is the default

Throughput is images/s of the model alone (decoding excluded); the engines take turns over several rounds
and the median is reported, so a neighbour's load hits all of them alike. Retrieval cost of int8: top-10
neighbour overlap with fp32 on the same images. Finally the whole pipeline (decode + model) of
`Embedder.embed_paths`, decoding in threads while the model runs, against decoding first and then embedding.

Without --checkpoint the weights are random, with BatchNorm statistics taken from the images (a trained
checkpoint gives the same speed; its overlap figure is the one to quote).

    .venv/bin/python scripts/bench_embed.py                       # Imagenette val, ~6 minutes on 2 cores
    .venv/bin/python scripts/bench_embed.py --configs resnet-tiny:32 --checkpoint runs/x/checkpoint.pt
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from byol.checkpoint import load_encoder, save_checkpoint  # noqa: E402
from byol.data import scan_folder  # noqa: E402
from byol.export import export_onnx, normalized_encoder, quantize_int8, top_k_overlap  # noqa: E402
from byol.images import load_rgb  # noqa: E402
from byol.model import BYOL, ModelConfig  # noqa: E402
from byol.preprocess import Preprocess  # noqa: E402
from index.embed import Embedder  # noqa: E402


def default_images() -> Path:
    for p in (ROOT / ".cache/imagenette/val", ROOT / ".cache/cifar10/test"):
        if p.is_dir():
            return p
    raise SystemExit("no images: extract /work/shared/datasets/imagenette-224.tar.gz into .cache/imagenette "
                     "or pass --images DIR")


def random_checkpoint(path: Path, backbone: str, size: int, images: np.ndarray) -> Path:
    """Random weights with BatchNorm running statistics of real images (so activations are in range)."""
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, image_size=size)
    model = BYOL(cfg)
    enc = model.online_encoder.train()
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
    with torch.no_grad():
        for i in range(0, min(len(images), 256), 32):
            enc(torch.from_numpy(images[i:i + 32]))
    save_checkpoint(path, {"config": {}, "model_config": asdict(cfg), "preprocess": Preprocess.for_size(size).to_dict(),
                           "model": model.state_dict(), "step": 0})
    return path


def throughput(run, x: np.ndarray, batch: int, seconds: float) -> float:
    """Images per second of run(batch_array), looping over x for at least `seconds` (and 2 batches)."""
    run(x[:batch])  # warm up
    n, t0, i = 0, time.perf_counter(), 0
    while n < 2 * batch or time.perf_counter() - t0 < seconds:
        b = x[i:i + batch] if i + batch <= len(x) else x[:batch]
        run(b)
        n += len(b)
        i = (i + batch) % len(x)
    return n / (time.perf_counter() - t0)


def bench_config(backbone: str, size: int, folder: Path, paths: list[Path], args, tmp: Path) -> dict:
    print(f"\n== {backbone} @ {size} px, batch {args.batch}")
    pre = Preprocess.for_size(size)
    imgs = [load_rgb(p, min_side=pre.resize) for p in paths[:args.n]]
    x = pre.batch(imgs)
    ckpt = Path(args.checkpoint) if args.checkpoint else random_checkpoint(tmp / f"{backbone}.pt", backbone, size, x)
    enc, pre, _ = load_encoder(ckpt)
    x = pre.batch(imgs)  # the checkpoint's own transform
    fp32_path, int8_path, dyn_path = tmp / f"{backbone}.onnx", tmp / f"{backbone}.int8.onnx", tmp / f"{backbone}.dyn.onnx"
    rep = export_onnx(ckpt, fp32_path, check_folder=folder, log=lambda *a: None)
    worst = max(p["max_abs_diff"] for p in rep["parity"].values())
    q = quantize_int8(fp32_path, int8_path, check_folder=folder, n_overlap=args.n, log=lambda *a: None)
    quantize_int8(fp32_path, dyn_path, check_folder=folder, method="dynamic", n_overlap=16, log=lambda *a: None)
    print(f"export parity max|diff| {worst:.1e}; int8 top-10 overlap with fp32 {q['top10_overlap']:.3f} on {q['n_images']} images")

    torch_model = normalized_encoder(enc)
    ort32, ort8, ortdyn = Embedder(fp32_path), Embedder(int8_path), Embedder(dyn_path)

    def run_torch(b):
        with torch.no_grad():
            return torch_model(torch.from_numpy(b)).numpy()

    engines = {"torch": run_torch, "ort": ort32.embed_array, "int8": ort8.embed_array}
    rates: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(args.rounds):
        for name, fn in engines.items():
            rates[name].append(throughput(lambda b, fn=fn: fn(b), x, args.batch, args.seconds))
    med = {k: statistics.median(v) for k, v in rates.items()}
    med["int8-dyn"] = throughput(ortdyn.embed_array, x, args.batch, args.seconds / 2)

    with torch.no_grad():
        ref = run_torch(x)
    overlap_ort = top_k_overlap(ref, ort32.embed_array(x))
    for name in ("torch", "ort", "int8", "int8-dyn"):
        print(f"  {name:<9} {med[name]:8.1f} img/s" + ("" if name == "torch" else f"   {med[name] / med['torch']:.2f}x torch,"
              f" {med[name] / med['ort']:.2f}x ort fp32"))
    print(f"  top-10 overlap: ort fp32 vs torch {overlap_ort:.3f}, int8 vs fp32 {q['top10_overlap']:.3f}")

    # -- the whole pipeline on files: decode threads overlapping the model, or decode first then embed
    files = paths[:args.n]
    t = time.perf_counter()
    n = sum(len(b.indices) for b in ort32.embed_paths(files, batch_size=args.batch, desc="pipelined"))
    pipelined = n / (time.perf_counter() - t)
    t = time.perf_counter()
    xs = pre.batch([load_rgb(p, min_side=pre.resize) for p in files])
    ort32.embed_array(xs, args.batch)
    serial = len(files) / (time.perf_counter() - t)
    print(f"  files -> vectors (fp32): pipelined {pipelined:.1f} img/s, decode-then-embed {serial:.1f} img/s "
          f"({pipelined / serial:.2f}x)")
    return {"backbone": backbone, "size": size, "batch": args.batch, "img_per_s": med, "rounds": rates,
            "ort_vs_torch": med["ort"] / med["torch"], "int8_vs_fp32": med["int8"] / med["ort"],
            "int8_top10_overlap": q["top10_overlap"], "ort_top10_overlap_vs_torch": overlap_ort,
            "parity_max_abs_diff": worst, "pipeline_img_per_s": pipelined, "serial_img_per_s": serial,
            "provider": ort32.provider, "trained": bool(args.checkpoint)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=None, help="photo folder (default .cache/imagenette/val, else cifar10/test)")
    ap.add_argument("--configs", default="resnet-tiny:32,resnet18:64", help="backbone:size,... (default %(default)s)")
    ap.add_argument("--checkpoint", default=None, help="a trained checkpoint to use instead of random weights")
    ap.add_argument("--n", type=int, default=512, help="images (default 512)")
    ap.add_argument("--batch", type=int, default=64, help="batch size for every engine (default 64)")
    ap.add_argument("--rounds", type=int, default=3, help="turns each engine takes (default 3)")
    ap.add_argument("--seconds", type=float, default=3.0, help="minimum seconds per measurement (default 3)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()

    folder = Path(args.images) if args.images else default_images()
    all_paths = scan_folder(folder)
    paths = [all_paths[i] for i in np.linspace(0, len(all_paths) - 1, min(args.n, len(all_paths))).astype(int)]
    print(f"{len(paths)} images from {folder}; torch {torch.__version__} ({torch.get_num_threads()} threads)")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.configs.split(","):
            backbone, size = spec.split(":")
            if args.checkpoint:
                mc = load_encoder(args.checkpoint)[2]["model_config"]
                backbone, size = mc["backbone"], mc["image_size"]
            out.append(bench_config(backbone, int(size), folder, paths, args, Path(tmp)))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
