"""Small generated photo folders for tests: nothing is downloaded.

`make_shapes` writes classes of simple coloured shapes on textured backgrounds in a few sizes, modes and
formats; `make_hazards` writes the files that break naive image loaders.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")
_COLOURS = {"circle": (220, 40, 40), "square": (40, 180, 60), "triangle": (40, 70, 220)}
_SIZES = ((64, 48), (80, 80), (96, 72), (50, 70))


def shape_image(cls: str, rng: np.random.Generator, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """One RGB image of class `cls`: a jittered shape of the class colour on a noisy background."""
    w, h = size
    bg = rng.integers(90, 170, size=(h, w, 3), dtype=np.uint8)
    img = Image.fromarray(bg)
    d = ImageDraw.Draw(img)
    r = int(min(w, h) * rng.uniform(0.25, 0.4))
    cx, cy = int(w * rng.uniform(0.35, 0.65)), int(h * rng.uniform(0.35, 0.65))
    colour = tuple(int(np.clip(c + rng.integers(-25, 25), 0, 255)) for c in _COLOURS[cls])
    if cls == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif cls == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return img


def make_shapes(root: Path, per_class: int = 6, seed: int = 0, nested: bool = True) -> list[Path]:
    """Write per_class images of each class under root/<class>/ (JPEG, PNG and a greyscale JPEG)."""
    rng = np.random.default_rng(seed)
    paths = []
    for cls in CLASSES:
        folder = root / cls if nested else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = shape_image(cls, rng, _SIZES[i % len(_SIZES)])
            if i % 3 == 0:
                p = folder / f"{cls}_{i:03d}.png"
                img.save(p)
            elif i % 5 == 4:
                p = folder / f"{cls}_{i:03d}_grey.jpg"
                img.convert("L").save(p, quality=90)
            else:
                p = folder / f"{cls}_{i:03d}.jpg"
                img.save(p, quality=90)
            paths.append(p)
    return paths


def make_labelled(root: Path, train_per_class: int = 8, test_per_class: int = 4, seed: int = 0) -> Path:
    """root/train/<class>/*, root/test/<class>/*: the layout `byol-search evaluate` reads."""
    make_shapes(root / "train", train_per_class, seed)
    make_shapes(root / "test", test_per_class, seed + 1)
    return root


def _exif_orientation(value: int) -> bytes:
    img = Image.new("RGB", (1, 1))
    exif = img.getexif()
    exif[0x0112] = value
    return exif.tobytes()


def make_hazards(root: Path, seed: int = 0) -> dict[str, bool]:
    """Write hazardous files into root; returns {file name: should it load}."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    good = shape_image("circle", rng, (80, 60))
    expect: dict[str, bool] = {}

    buf = io.BytesIO()
    good.save(buf, format="JPEG", quality=90)
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    expect["truncated.jpg"] = False
    (root / "empty.jpg").write_bytes(b"")
    expect["empty.jpg"] = False
    (root / "notes.jpg").write_text("this is a text file with an image extension\n")
    expect["notes.jpg"] = False

    # a PNG whose header declares 100000 x 100000 pixels: a decompression bomb
    def chunk(kind: bytes, data: bytes) -> bytes:
        import zlib

        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    (root / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    expect["bomb.png"] = False

    # EXIF orientation 6: stored 80x60, displayed 60x80
    good.save(root / "rotated.jpg", exif=_exif_orientation(6))
    expect["rotated.jpg"] = True
    good.convert("CMYK").save(root / "cmyk.jpg")
    expect["cmyk.jpg"] = True
    grey16 = (np.linspace(0, 65535, 80 * 60).reshape(60, 80)).astype(np.uint16)
    Image.fromarray(grey16).save(root / "grey16.png")  # mode I;16
    expect["grey16.png"] = True
    rgba = good.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(good.size))
    rgba.save(root / "rgba.png")
    expect["rgba.png"] = True
    pal = good.convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(root / "palette.png", transparency=0)
    expect["palette.png"] = True
    frames = [shape_image(c, rng, (64, 64)) for c in ("circle", "square", "triangle")]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    expect["animated.gif"] = True
    good.save(root / "ok.webp")
    expect["ok.webp"] = True
    good.save(root / "ok.bmp")
    expect["ok.bmp"] = True
    good.save(root / "ok.tiff")
    expect["ok.tiff"] = True
    return expect
