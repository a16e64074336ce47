"""Make a folder of large JPEGs (Imagenette photos upscaled to 4000x3000, quality 90) for decoding benchmarks.

Phones and cameras write 12-megapixel JPEGs; the decoding cost of such files is what draft-mode decoding and
the decoded cache are meant to remove. The photos keep their class folders (<out>/<wnid>/<name>.jpg), so the
folder also works as a labelled ImageFolder. Idempotent: files already there are kept, and an interrupted run
leaves no half-written JPEG (temporary file + rename).

    .venv/bin/python scripts/make_large_jpegs.py --n 200 --out .cache/large-jpegs
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"
ARCHIVE = ROOT.parent / "shared" / "datasets" / "imagenette-224.tar.gz"
SIZE = (4000, 3000)  # width x height: 12 megapixels, a phone photo
QUALITY = 90


def _imagenette(cache: Path = CACHE) -> Path:
    """The extracted Imagenette archive (train/<wnid>/*.JPEG), extracted once into cache/imagenette."""
    dest = cache / "imagenette"
    if dest.is_dir():
        return dest
    if not ARCHIVE.is_file():
        raise FileNotFoundError(f"{ARCHIVE}: Imagenette archive not found")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".imagenette.", dir=dest.parent))
    try:
        with tarfile.open(ARCHIVE) as tar:
            tar.extractall(tmp, filter="data")
        os.rename(tmp, dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not dest.is_dir():  # another process may have extracted it meanwhile
            raise
    return dest


def make_large_jpegs(n: int = 200, out: str | Path = CACHE / "large-jpegs", size: tuple[int, int] = SIZE,
                     quality: int = QUALITY, noise: float = 0.0) -> list[Path]:
    """Write (or reuse) n upscaled JPEGs under out/<wnid>/ and return their paths, sorted.

    The first ceil(n / classes) training photos of each class (sorted by name) are taken, so a larger n
    extends a smaller run's folder instead of replacing it. An upscaled 224 px photo is smooth and compresses
    to ~0.7 MB; `noise` (std of added Gaussian grain, 0-255 scale; 12 gives ~4.4 MB) makes files as dense as
    a real 12 MP photo (3-5 MB), where entropy decoding, which draft mode cannot skip, costs more.
    """
    import numpy as np
    from PIL import Image

    if n < 1:
        raise ValueError(f"n={n}: need at least one image")
    out = Path(out)
    src = _imagenette() / "train"
    classes = sorted(p for p in src.iterdir() if p.is_dir())
    per_class = -(-n // len(classes))
    firsts = {c: sorted(c.iterdir())[:per_class] for c in classes}
    # round-robin over classes, so any n is balanced
    chosen = [(c, firsts[c][j]) for j in range(per_class) for c in classes if j < len(firsts[c])][:n]
    paths = []
    made = 0
    for c, f in chosen:
        target = out / c.name / (f.stem + ".jpg")
        paths.append(target)
        if target.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        img = Image.open(f).convert("RGB").resize(size, Image.BICUBIC)
        if noise > 0:
            rng = np.random.default_rng(zlib.crc32(f.name.encode()))  # same grain on every run
            grain = rng.normal(0, noise, (size[1], size[0], 3)).astype(np.float32)
            img = Image.fromarray(np.clip(np.asarray(img, np.float32) + grain, 0, 255).astype(np.uint8))
        tmp = target.with_name(f".{target.name}.tmp")
        img.save(tmp, "JPEG", quality=quality)
        os.replace(tmp, target)
        made += 1
    print(f"{out}: {len(paths)} JPEGs of {size[0]}x{size[1]} ({made} new)", file=sys.stderr)
    return sorted(paths)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", "--count", dest="n", type=int, default=200, help="number of JPEGs (default 200)")
    p.add_argument("--out", default=str(CACHE / "large-jpegs"), help="output folder (default .cache/large-jpegs)")
    p.add_argument("--quality", type=int, default=QUALITY, help=f"JPEG quality (default {QUALITY})")
    p.add_argument("--noise", type=float, default=0.0,
                   help="Gaussian grain std added after upscaling (default 0; 12 makes photo-dense ~4.4 MB files)")
    args = p.parse_args(argv)
    try:
        make_large_jpegs(args.n, args.out, quality=args.quality, noise=args.noise)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
