"""Decode-and-resize speed on large JPEGs: plain PIL versus byol.images.decode_square, side by side.

Reference: `Image.open(p).convert("RGB")`, bilinear resize of the shorter side to S (PIL's antialiased
filter), centre crop: what a loader that decodes every full JPEG does. Ours: `decode_square(p, S)`, which
decodes in JPEG draft mode (libjpeg's 1/2, 1/4, 1/8 DCT scaling) and box-reduces before the same resize.
Both run in one process on one thread, on the same files, alternating which goes first on each file so
neither is favoured by caches; the page cache is warmed first. Also reports how far our pixels are from the
reference's (mean absolute difference per image, 0-255 scale).

Two sets of 4000x3000 JPEGs (scripts/make_large_jpegs.py): Imagenette photos upscaled (smooth, ~0.7 MB),
and the same with grain added (~4.4 MB, as dense as a real 12 MP photo: entropy decoding, which draft
mode cannot skip, weighs more there, so the ratio is lower).

    .venv/bin/python scripts/bench_decode.py                 # 100 smooth + 40 dense JPEGs, S = 128 and 224
    .venv/bin/python scripts/bench_decode.py --n 40 --n-dense 0 --sizes 64,128,224
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_large_jpegs import CACHE, make_large_jpegs  # noqa: E402

from byol.images import decode_square  # noqa: E402

DENSE_NOISE = 12.0  # grain std that brings an upscaled JPEG to a real photo's ~4 MB


def plain_pil(path: Path, side: int) -> np.ndarray:
    """The reference: full decode, antialiased bilinear resize of the shorter side, centre crop."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = side / min(w, h)
    nw, nh = max(side, round(w * s)), max(side, round(h * s))
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - side) // 2, (nh - side) // 2
    return np.asarray(img.crop((left, top, left + side, top + side)))


def bench(paths: list[Path], side: int) -> dict:
    """Seconds per image of both, file by file, alternating who goes first."""
    t = {"ref": 0.0, "ours": 0.0}
    diffs = []
    for i, p in enumerate(paths):
        out = {}
        for who in ("ref", "ours") if i % 2 == 0 else ("ours", "ref"):
            t0 = time.perf_counter()
            out[who] = plain_pil(p, side) if who == "ref" else decode_square(p, side)
            t[who] += time.perf_counter() - t0
        diffs.append(np.abs(out["ref"].astype(np.int16) - out["ours"].astype(np.int16)).mean())
    n = len(paths)
    return {"side": side, "n": n, "ref_ips": n / t["ref"], "ours_ips": n / t["ours"],
            "ratio": t["ref"] / t["ours"], "mad": float(np.mean(diffs)), "mad_max": float(np.max(diffs))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="smooth JPEGs timed per size (default 100)")
    ap.add_argument("--n-dense", type=int, default=40, help="photo-dense JPEGs timed per size (default 40; 0: skip)")
    ap.add_argument("--sizes", default="128,224", help="output sides S, comma-separated (default 128,224)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    sets = []
    if args.n > 0:
        sets.append(("smooth", make_large_jpegs(args.n, CACHE / "large-jpegs")[: args.n]))
    if args.n_dense > 0:
        dense = make_large_jpegs(args.n_dense, CACHE / "large-jpegs-dense", noise=DENSE_NOISE)[: args.n_dense]
        sets.append(("dense", dense))

    rows = []
    for name, paths in sets:
        for p in paths:  # warm the page cache: we time decoding, not the disk
            p.read_bytes()
        with Image.open(paths[0]) as im:
            w, h = im.size
        mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
        rows += [(f"{name}, {w}x{h}, {mb:.1f} MB", bench(paths, s)) for s in sizes]

    print(f"\ndecode + resize + centre crop, one thread, {platform.machine()}, Pillow {Image.__version__}\n")
    print("| JPEGs | n | S | plain PIL (img/s) | decode_square (img/s) | ratio | mean abs diff (max) |")
    print("|---|---|---|---|---|---|---|")
    for what, r in rows:
        print(f"| {what} | {r['n']} | {r['side']} | {r['ref_ips']:.1f} | {r['ours_ips']:.1f} | "
              f"{r['ratio']:.1f}x | {r['mad']:.2f} ({r['mad_max']:.2f}) |")
    cmd = " ".join(["python", "scripts/bench_decode.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"\ncommand: .venv/bin/{cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
