"""Safe decoding of one photo: formats, EXIF orientation, modes, bomb guard, draft-mode JPEG.

`load_rgb` turns whatever a person's photo folder holds into a fully loaded 8-bit RGB PIL image, or raises
`BadImage` naming the file and the reason (truncated, empty, not an image, too large, ...). Callers report
and skip a `BadImage`; they never see PIL's own zoo of exceptions.

Speed: a 12-megapixel JPEG costs 0.2-0.6 s to decode and resize at full size on a laptop core, yet the
encoder wants 64-224 px. With `min_side`, libjpeg decodes at 1/2, 1/4 or 1/8 scale straight from the DCT
coefficients (`Image.draft`), skipping most of the inverse DCT, colour conversion and resizing; only the
entropy decoding stays. 3.3-8.5x faster (scripts/bench_decode.py). The exact final resize stays in
`byol.preprocess.Preprocess`.
"""

from __future__ import annotations

import io
import threading
import warnings
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif"}
)
# The photo formats read, by content (PIL format ids), for the folder and the page's uploads alike. PIL knows
# many more, some of which run other programs (EPS and PDF-like formats start Ghostscript), so every
# Image.open of a photo passes `formats=photo_formats()`. (Multi-picture JPEGs, MPO, open through "JPEG".)
PHOTO_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "HEIF")
PHOTO_FORMAT_NAMES = "JPEG, PNG, WebP, BMP, TIFF, GIF, HEIC/HEIF"

# 100 megapixels: above any phone or consumer camera (a 61 MP full-frame sensor is 9504 x 6336), far below
# what would exhaust memory (100 MP RGB is 300 MB). PIL refuses by itself above 2 x Image.MAX_IMAGE_PIXELS.
MAX_PIXELS = 100_000_000

# PIL warns once per photo between Image.MAX_IMAGE_PIXELS (89 MP) and twice that; load_rgb checks the size
# itself against `max_pixels` right after reading the header, so the warning would only repeat what the guard
# decides. The filter is (re)installed by each call, not once at import: a `warnings.catch_warnings` block
# (test runners, frameworks) throws away filters added inside it, and wrapping each call in one of our own
# would not be thread-safe (it swaps the process-wide filter list).
_QUIET_BOMB = ("ignore", None, Image.DecompressionBombWarning, None, 0)


def _quiet_bomb_warning() -> None:
    if _QUIET_BOMB not in warnings.filters:
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


Source = str | Path | bytes | bytearray | memoryview | BinaryIO

_JPEG_FORMATS = ("JPEG", "MPO")  # MPO: multi-picture JPEGs from some cameras, decoded like a JPEG
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif")
_heif_lock = threading.Lock()
_heif_registered = False


class BadImage(Exception):
    """A file that cannot be used as a photo; `reason` is short and meant for a person."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[type[BadImage], tuple[str, str]]:  # picklable across processes despite the two-argument constructor
        return (BadImage, (self.path, self.reason))


def photo_formats() -> list[str]:
    """PHOTO_FORMATS that this PIL can open now (HEIF once pillow-heif is registered): Image.open's `formats`."""
    Image.init()
    return [f for f in PHOTO_FORMATS if f in Image.OPEN]


def _register_heif() -> None:
    """Teach PIL to open HEIC/HEIF, once, only when such a file shows up (pillow-heif is slow to import)."""
    global _heif_registered
    with _heif_lock:
        if _heif_registered:
            return
        try:
            import pillow_heif
        except ImportError as e:
            raise BadImage("", "HEIC/HEIF photo, but pillow-heif is not installed (pip install pillow-heif)") from e
        pillow_heif.register_heif_opener()
        _heif_registered = True


def _looks_heif(head: bytes) -> bool:
    """ISO base media file with a HEIF brand: bytes 4..8 are 'ftyp', 8..12 the major brand."""
    return len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def _describe(source: Source) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return str(getattr(source, "name", "<file object>"))


def _too_large(w: int, h: int, limit: int) -> str:
    return f"too large: {w}x{h} pixels exceeds the {limit / 1e6:g} MP limit"


def _bomb_reason(e: Image.DecompressionBombError, max_pixels: int) -> str:
    """PIL refuses above 2 x Image.MAX_IMAGE_PIXELS while opening, before load_rgb sees the size: read the
    size back from the frame of PIL's check, so the reason reads like load_rgb's own."""
    tb, size = e.__traceback__, None
    while tb is not None:
        size = tb.tb_frame.f_locals.get("size", size)
        tb = tb.tb_next
    limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
    if isinstance(size, tuple) and len(size) == 2:
        return _too_large(size[0], size[1], limit)
    return f"too large: {e}"


def _reason(e: BaseException) -> str:
    """A short human reason for one of PIL's (or the OS's) exceptions."""
    msg = str(e)
    if isinstance(e, UnidentifiedImageError):
        return f"not an image in a photo format ({PHOTO_FORMAT_NAMES})"
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "is a folder, not a file"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, (OSError, SyntaxError, ValueError, EOFError)) and ("truncated" in msg.lower() or "EOF" in msg):
        return "truncated file"
    if isinstance(e, (OSError, SyntaxError)):  # PIL's words for a damaged stream: "broken data stream", ...
        return f"corrupt file ({msg})" if msg else "corrupt file"
    if isinstance(e, MemoryError):
        return "out of memory while decoding"
    return f"cannot decode ({type(e).__name__}: {msg})" if msg else f"cannot decode ({type(e).__name__})"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: 16/32-bit grey scaled (not clipped), transparency composited on white."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I") or mode == "F":
        return _grey_to_8bit(img).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV


_STRIP_PIXELS = 1 << 20  # pixels converted at a time from 16/32-bit grey: a few MB of temporaries


def _grey_to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float grey -> 8-bit "L", scaled (not clipped), a strip of rows at a time.

    Converting the whole array at once widens every pixel to 4-8 bytes in several temporaries (1-2 GB for a
    100-megapixel 16-bit PNG); strips keep the extra memory to a few MB whatever the photo's size.
    """
    w, h = img.size
    lo, hi = cast(tuple[float, float], img.getextrema())  # one band: (min, max)
    if img.mode.startswith("I;16") or (img.mode == "I" and lo >= 0 and hi <= 65535):
        def convert(a: np.ndarray) -> np.ndarray:
            return (a.astype(np.uint32) * 255 + 32767) // 65535  # 0..65535 -> 0..255, rounded
    else:  # signed or float data of unknown range: stretch what is there to 0..255
        lo, hi = float(lo), float(hi)

        def convert(a: np.ndarray) -> np.ndarray:
            if hi <= lo:
                return np.zeros(a.shape, np.uint8)
            return np.round((a.astype(np.float64) - lo) * (255.0 / (hi - lo)))

    out = Image.new("L", (w, h))
    step = max(1, _STRIP_PIXELS // max(w, 1))
    for y in range(0, h, step):
        strip = np.asarray(img.crop((0, y, w, min(h, y + step))))
        out.paste(Image.fromarray(convert(strip).astype(np.uint8), "L"), (0, y))
    return out


def _decode(fp: BinaryIO, name: str, min_side: int | None, max_pixels: int) -> Image.Image:
    head = fp.read(12)
    if not head:
        raise BadImage(name, "empty file")
    fp.seek(-len(head), io.SEEK_CUR)
    if _looks_heif(head) or name.lower().endswith((".heic", ".heif")):
        _register_heif()

    img: Image.Image = Image.open(fp, formats=photo_formats())  # reads the header only; other formats are refused
    w, h = img.size
    if w * h > max_pixels:
        raise BadImage(name, _too_large(w, h, max_pixels))
    if w < 1 or h < 1:
        raise BadImage(name, f"empty image ({w}x{h} pixels)")
    if min_side and img.format in _JPEG_FORMATS:
        # libjpeg picks the largest 1/s (s in 8,4,2,1) with both sides still >= min_side, so the shorter
        # side stays >= min_side; orientation is applied after decoding, and swapping w/h keeps that true.
        img.draft("RGB", (min_side, min_side))
    img.load()  # frame 0 of an animated GIF/WebP/PNG or a multi-page TIFF: open() leaves it current
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # a malformed EXIF block should not cost the photo: keep it as stored
        pass
    if img.mode.startswith("I") or img.mode == "F":
        img = _box_reduce(_grey_to_8bit(img), min_side)  # reduced while still one byte per pixel
    return _box_reduce(_to_rgb(img), min_side)


def _box_reduce(img: Image.Image, min_side: int | None) -> Image.Image:
    # a box reduce by an integer factor is ~5x cheaper than an antialiased resize of the full image;
    # keeping >= 2x the target side leaves the exact final resize (Preprocess) its antialiasing.
    factor = min(img.size) // (2 * min_side) if min_side else 0
    return img.reduce(factor) if factor >= 2 else img


def load_rgb(source: Source, min_side: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode one photo into a fully loaded 8-bit RGB PIL image, upright.

    source: a path, the file's bytes (uploads), or a binary file object (left open).
    min_side: the caller will resize the shorter side to this; decoding may then downsample (JPEG draft
        mode, integer box reduce) while keeping the shorter side >= min_side. None decodes at full size.
    max_pixels: width x height refused before decoding (decompression-bomb guard).
    Raises BadImage (with .path and .reason) for anything that is not a usable image.
    """
    name = _describe(source)
    _quiet_bomb_warning()
    try:
        if isinstance(source, (str, Path)):
            with open(source, "rb") as f:
                return _decode(f, name, min_side, max_pixels)
        if isinstance(source, (bytes, bytearray, memoryview)):
            return _decode(io.BytesIO(bytes(source)), name, min_side, max_pixels)
        if not source.seekable():  # a pipe or a socket: PIL needs to seek
            source = io.BytesIO(source.read())
        return _decode(source, name, min_side, max_pixels)
    except BadImage as e:
        if e.path != name:
            raise BadImage(name, e.reason) from e
        raise
    except Image.DecompressionBombError as e:
        raise BadImage(name, _bomb_reason(e, max_pixels)) from e
    except Exception as e:  # PIL and codecs raise many kinds; every one means "this file is unusable"
        raise BadImage(name, _reason(e)) from e


def decode_square(source: Source, side: int) -> np.ndarray:
    """side x side x 3 uint8: shorter side resized to `side` (bilinear, antialiased), centre square crop.

    The resize and crop are `byol.preprocess.Preprocess`'s, so the cache and evaluation see the same pixels.
    """
    from byol.preprocess import Preprocess

    return Preprocess(size=side, resize=side).to_uint8(load_rgb(source, min_side=side))

