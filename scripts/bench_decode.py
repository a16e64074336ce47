"""Decode-and-resize speed on large JPEGs: plain PIL versus byol.images.decode_square, side by side.

Reference: `Image.open(p).convert("RGB")`, bilinear resize of the shorter side to S (PIL's antialiased
filter), centre crop: what a loader that decodes every full JPEG does. Ours: `decode_square(p, S)`, which
decodes in JPEG draft mode (libjpeg's 1/2, 1/4, 1/8 DCT scaling) and box-reduces before the same resize.
Both run in one process on one thread, on the same files, alternating which goes first on each file so
neither is favoured by caches; the page cache is warmed first. Also reports how far our pixels are from the
reference's (mean absolute difference, 0-255 scale).

    .venv/bin/python scripts/bench_decode.py             # 100 of the 200 4000x3000 JPEGs, S = 128 and 224
    .venv/bin/python scripts/bench_decode.py --n 40 --sizes 64,128,224
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
    t_ref = t_ours = 0.0
    diffs = []
    for i, p in enumerate(paths):
        order = ("ref", "ours") if i % 2 == 0 else ("ours", "ref")
        out = {}
        for who in order:
            t0 = time.perf_counter()
            out[who] = plain_pil(p, side) if who == "ref" else decode_square(p, side)
            dt = time.perf_counter() - t0
            if who == "ref":
                t_ref += dt
            else:
                t_ours += dt
        diffs.append(np.abs(out["ref"].astype(np.int16) - out["ours"].astype(np.int16)).mean())
    n = len(paths)
    return {"side": side, "n": n, "ref_ips": n / t_ref, "ours_ips": n / t_ours, "ratio": t_ref / t_ours,
            "mad": float(np.mean(diffs)), "mad_max": float(np.max(diffs))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="JPEGs timed per size (default 100)")
    ap.add_argument("--sizes", default="128,224", help="output sides S, comma-separated (default 128,224)")
    ap.add_argument("--folder", default=str(CACHE / "large-jpegs"), help="where the large JPEGs are made/kept")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    paths = make_large_jpegs(max(args.n, 1), args.folder)[: args.n]
    for p in paths:  # warm the page cache: we time decoding, not the disk
        p.read_bytes()
    with Image.open(paths[0]) as im:
        w, h = im.size
    mp = sum(p.stat().st_size for p in paths) / len(paths) / 1e6

    rows = [bench(paths, s) for s in sizes]
    print(f"\ndecode + resize + centre crop, {len(paths)} JPEGs of {w}x{h} (mean {mp:.2f} MB), one thread, "
          f"{platform.processor() or platform.machine()}, Pillow {Image.__version__}\n")
    print("| S | plain PIL (img/s) | decode_square (img/s) | ratio | mean abs diff (max) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['side']} | {r['ref_ips']:.1f} | {r['ours_ips']:.1f} | {r['ratio']:.1f}x | "
              f"{r['mad']:.2f} ({r['mad_max']:.2f}) |")
    print(f"\ncommand: .venv/bin/python scripts/bench_decode.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
