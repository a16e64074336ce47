"""The built-in example (`byol-search demo`): draws a small photo collection (nothing is downloaded) and
runs the one-command pipeline (app/pipeline.py) on it with a short budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from app.pipeline import RunConfig, read_state, run, write_state

DEMO_BUDGET = 60.0  # seconds of pretraining for the demo: about two minutes end to end on a laptop CPU

DEMO_CLASSES = ("sunset", "ocean", "forest", "night_sky", "brick_wall", "flower_field", "checkerboard", "stripes")


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int = 30) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)
    return r, g, b


def _gradient(w: int, h: int, top: tuple[int, int, int], bottom: tuple[int, int, int]) -> Image.Image:
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
        img = img.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BILINEAR, fillcolor=a)
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
    if read_state(marker) == spec:
        return folder
    rng = np.random.default_rng(seed)
    sizes = ((160, 120), (120, 160), (144, 144), (192, 128))
    for kind in DEMO_CLASSES:
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            example_photo(kind, rng, sizes[i % len(sizes)]).save(folder / kind / f"{kind}_{i:03d}.jpg", quality=90)
    write_state(marker, spec)
    return folder


def demo(out: str | Path = "byol-demo", budget: float = DEMO_BUDGET, per_class: int = 40,
         log: Callable[[str], object] = print) -> dict[str, Any]:
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
