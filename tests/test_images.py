"""byol.images: every hazardous file is either decoded correctly or refused with a reason naming the problem."""

from __future__ import annotations

import io
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from byol.images import IMAGE_EXTENSIONS, BadImage, decode_square, load_rgb
from byol.preprocess import Preprocess

# the words a person should see for each bad hazard file
BAD_REASONS = {"truncated.jpg": "truncated", "empty.jpg": "empty", "notes.jpg": "not an image", "bomb.png": "too large"}


def _exif(orientation: int) -> bytes:
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _halves(size: tuple[int, int], left=(220, 30, 30), right=(30, 30, 220)) -> Image.Image:
    """Left half `left`, right half `right`: shows which way an image was turned."""
    w, h = size
    img = Image.new("RGB", size, right)
    img.paste(left, (0, 0, w // 2, h))
    return img


def _photo_like(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Smooth gradients and shapes with mild noise: JPEG-compresses like a photo, not like flat colour."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 200, yy / h * 200, (xx + yy) / (w + h) * 255], -1)
    base += rng.normal(0, 6, base.shape)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(12):
        x, y, r = int(rng.uniform(0, w)), int(rng.uniform(0, h)), int(rng.uniform(0.03, 0.15) * min(w, h))
        d.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return img


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _header_only_png(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------------------------
# the hazard folder
# ------------------------------------------------------------------------------------------------------
def test_every_hazard_file_loads_or_is_refused_with_a_reason(hazard_folder):
    root, expect = hazard_folder
    for name, should_load in expect.items():
        if should_load:
            img = load_rgb(root / name)
            assert img.mode == "RGB", name
            assert min(img.size) > 0, name
            for side in (16, 40):
                a = decode_square(root / name, side)
                assert a.shape == (side, side, 3) and a.dtype == np.uint8, name
        else:
            with pytest.raises(BadImage) as info:
                load_rgb(root / name)
            e = info.value
            assert e.path == str(root / name)
            assert BAD_REASONS[name] in e.reason, (name, e.reason)
            assert str(e) == f"{root / name}: {e.reason}"


def test_bomb_reason_gives_the_declared_size(hazard_folder):
    root, _ = hazard_folder
    with pytest.raises(BadImage, match=r"too large: 100000x100000 pixels exceeds the 100 MP limit"):
        load_rgb(root / "bomb.png")


def test_exif_rotated_photo_is_upright(hazard_folder, tmp_path):
    root, _ = hazard_folder
    assert load_rgb(root / "rotated.jpg").size == (60, 80)  # stored 80 wide x 60 high, orientation 6
    # orientation 6 means "turn 90 degrees clockwise to display": the stored left half ends up on top
    _halves((80, 60)).save(tmp_path / "r.jpg", quality=95, exif=_exif(6))
    a = np.asarray(load_rgb(tmp_path / "r.jpg"), dtype=np.float32)
    assert a.shape == (80, 60, 3)
    top, bottom = a[:35].mean((0, 1)), a[45:].mean((0, 1))
    assert top[0] > 180 and top[2] < 80, top  # red
    assert bottom[2] > 180 and bottom[0] < 80, bottom  # blue


def test_exif_rotation_is_right_for_the_draft_reduced_size(tmp_path):
    _halves((1600, 1200)).save(tmp_path / "big.jpg", quality=90, exif=_exif(6))
    img = load_rgb(tmp_path / "big.jpg", min_side=100)
    w, h = img.size
    assert h > w and min(w, h) >= 100 and w < 1200  # portrait, reduced, still covering min_side
    a = np.asarray(img, dtype=np.float32)
    assert a[: h // 3].mean((0, 1))[0] > 180 and a[-h // 3 :].mean((0, 1))[2] > 180


def test_16_bit_grey_is_scaled_not_clipped(hazard_folder):
    root, _ = hazard_folder
    assert Image.open(root / "grey16.png").mode.startswith("I")
    a = np.asarray(load_rgb(root / "grey16.png"))
    assert a.min() <= 2 and a.max() >= 253
    assert (a == 255).mean() < 0.01  # clipping would saturate almost everything above 255/65535
    assert 110 < a.mean() < 145  # a linear ramp over 0..65535 averages mid-grey
    assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2])


def test_cmyk_matches_the_rgb_original(hazard_folder):
    root, _ = hazard_folder
    cmyk = np.asarray(load_rgb(root / "cmyk.jpg"), dtype=np.float32)
    rgb = np.asarray(load_rgb(root / "ok.bmp"), dtype=np.float32)
    assert np.abs(cmyk - rgb).mean() < 12


def test_rgba_transparent_area_becomes_white(tmp_path):
    img = Image.new("RGBA", (40, 20), (30, 30, 220, 255))
    img.paste((200, 0, 0, 0), (0, 0, 20, 20))  # fully transparent red on the left
    img.save(tmp_path / "a.png")
    a = np.asarray(load_rgb(tmp_path / "a.png"))
    assert (a[:, :20] == 255).all()
    assert np.abs(a[:, 20:].astype(int) - (30, 30, 220)).max() <= 1
    la = Image.new("LA", (10, 10), (0, 0))
    la.save(tmp_path / "la.png")
    assert (np.asarray(load_rgb(tmp_path / "la.png")) == 255).all()


@pytest.mark.parametrize("fmt", ["png", "gif"])
def test_palette_transparency_becomes_white(tmp_path, fmt):
    img = Image.new("P", (20, 10), 1)
    img.putpalette([0, 0, 0, 200, 0, 0] + [0] * (254 * 3))
    img.paste(0, (0, 0, 10, 10))  # index 0, declared transparent
    img.save(tmp_path / f"p.{fmt}", transparency=0)
    a = np.asarray(load_rgb(tmp_path / f"p.{fmt}"))
    assert (a[:, :10] == 255).all()
    assert np.abs(a[:, 10:].astype(int) - (200, 0, 0)).max() <= 2


def test_animated_gif_gives_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    a = np.asarray(load_rgb(tmp_path / "a.gif")).astype(int)
    assert a[..., 0].mean() > 200 and a[..., 1].mean() < 30 and a[..., 2].mean() < 30


# ------------------------------------------------------------------------------------------------------
# sources, errors, guard
# ------------------------------------------------------------------------------------------------------
def test_bytes_and_file_objects_give_the_same_image(hazard_folder):
    root, _ = hazard_folder
    ref = np.asarray(load_rgb(root / "rotated.jpg"))
    data = (root / "rotated.jpg").read_bytes()
    assert np.array_equal(np.asarray(load_rgb(data)), ref)
    assert np.array_equal(np.asarray(load_rgb(str(root / "rotated.jpg"))), ref)
    with open(root / "rotated.jpg", "rb") as f:
        assert np.array_equal(np.asarray(load_rgb(f)), ref)
        assert not f.closed  # the caller's file stays the caller's
    assert np.array_equal(decode_square(data, 24), decode_square(root / "rotated.jpg", 24))
    with pytest.raises(BadImage, match="truncated") as info:
        load_rgb((root / "truncated.jpg").read_bytes())
    assert info.value.path == "<bytes>"
    with pytest.raises(BadImage, match="empty"):
        load_rgb(io.BytesIO(b""))


def test_missing_file_and_folder_are_bad_images(tmp_path):
    with pytest.raises(BadImage, match="no such file"):
        load_rgb(tmp_path / "nope.jpg")
    with pytest.raises(BadImage, match="folder"):
        load_rgb(tmp_path)


def test_bad_image_pickles_with_its_fields():
    e = pickle.loads(pickle.dumps(BadImage("a/b.jpg", "truncated file")))
    assert (e.path, e.reason, str(e)) == ("a/b.jpg", "truncated file", "a/b.jpg: truncated file")


def test_size_guard_runs_before_decoding_and_never_warns(tmp_path):
    (tmp_path / "big.png").write_bytes(_header_only_png(9500, 9500))  # 90 MP: PIL alone would only warn
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(BadImage, match=r"too large: 9500x9500 pixels exceeds the 50 MP limit"):
            load_rgb(tmp_path / "big.png", max_pixels=50_000_000)
    with pytest.raises(BadImage, match="too large: 80x60"):
        load_rgb(_encode(_photo_like((80, 60)), "PNG"), max_pixels=1000)


def test_a_big_declared_size_under_the_limit_gives_no_warning_spam(tmp_path):
    (tmp_path / "big.png").write_bytes(_header_only_png(9500, 9500))  # within 100 MP, but has no pixel data
    with warnings.catch_warnings(record=True) as seen:  # the filters in force, as a program has them
        for _ in range(3):
            with pytest.raises(BadImage, match="corrupt|truncated"):
                load_rgb(tmp_path / "big.png")
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]


def test_extensions_are_lower_case_with_a_dot():
    assert {".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".tif", ".gif", ".bmp"} <= IMAGE_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)


# ------------------------------------------------------------------------------------------------------
# the speed path: draft-mode JPEG and integer reduce
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("min_side", [64, 100, 224])
def test_draft_keeps_the_shorter_side_and_matches_a_full_decode(tmp_path, min_side):
    p = tmp_path / "photo.jpg"
    _photo_like((1600, 1200)).save(p, quality=90)
    img = load_rgb(p, min_side=min_side)
    assert min(img.size) >= min_side
    assert img.size[0] < 1600  # decoded at a reduced scale
    pre = Preprocess(size=min_side, resize=min_side)
    fast, full = decode_square(p, min_side).astype(np.float32), pre.to_uint8(load_rgb(p)).astype(np.float32)
    assert fast.shape == full.shape == (min_side, min_side, 3)
    assert np.abs(fast - full).mean() < 2.5


def test_other_formats_are_box_reduced_only_down_to_twice_min_side(tmp_path):
    p = tmp_path / "big.png"
    _photo_like((1000, 800)).save(p)
    img = load_rgb(p, min_side=100)
    assert 200 <= min(img.size) < 400
    pre = Preprocess(size=100, resize=100)
    fast, full = decode_square(p, 100).astype(np.float32), pre.to_uint8(load_rgb(p)).astype(np.float32)
    assert np.abs(fast - full).mean() < 2.5


def test_min_side_larger_than_the_photo_leaves_it_whole(hazard_folder):
    root, _ = hazard_folder
    assert load_rgb(root / "ok.bmp", min_side=500).size == (80, 60)
    assert load_rgb(root / "rotated.jpg", min_side=500).size == (60, 80)
    assert decode_square(root / "ok.bmp", 128).shape == (128, 128, 3)  # upscaled by the final resize


# ------------------------------------------------------------------------------------------------------
# HEIC/HEIF
# ------------------------------------------------------------------------------------------------------
def _write_heic(img: Image.Image, path: Path) -> None:
    try:
        import pillow_heif

        pillow_heif.from_pillow(img).save(path, quality=90)
    except Exception as e:  # no HEVC encoder in this libheif build
        pytest.skip(f"pillow-heif cannot write HEIF here ({type(e).__name__}: {e})")


def test_heic_by_path_and_by_bytes(tmp_path):
    src = _halves((64, 48))
    _write_heic(src, tmp_path / "phone.HEIC")
    img = load_rgb(tmp_path / "phone.HEIC")
    assert img.mode == "RGB" and img.size == (64, 48)
    assert np.abs(np.asarray(img, np.float32) - np.asarray(src, np.float32)).mean() < 12
    # no file name to go by: recognised from the 'ftyp' brand
    assert load_rgb((tmp_path / "phone.HEIC").read_bytes()).size == (64, 48)
    assert decode_square(tmp_path / "phone.HEIC", 32).shape == (32, 32, 3)


def test_a_stream_that_cannot_seek_is_read_whole(hazard_folder):
    root, _ = hazard_folder

    class Pipe(io.RawIOBase):  # like a socket or stdin: read() only
        def __init__(self, data: bytes):
            self._buf = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:
            chunk = self._buf.read(len(b))
            b[: len(chunk)] = chunk
            return len(chunk)

    img = load_rgb(Pipe((root / "ok.webp").read_bytes()))
    assert img.size == (80, 60) and img.mode == "RGB"


# ---------------------------------------------------------------- formats and memory (issue 11)
def eps_bytes() -> bytes:
    """A small EPS picture (PostScript: PIL renders it by running Ghostscript)."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="EPS")
    return buf.getvalue()


def test_eps_is_refused_without_being_rendered(tmp_path, monkeypatch):
    """Only photo formats are opened: an EPS file, even named .jpg, never reaches Ghostscript."""
    from PIL import EpsImagePlugin

    rendered = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "load", lambda self, *a, **k: rendered.append(1))
    (tmp_path / "drawing.jpg").write_bytes(eps_bytes())
    for source in (tmp_path / "drawing.jpg", eps_bytes()):
        with pytest.raises(BadImage, match="not an image in a photo format"):
            load_rgb(source)
    assert rendered == []


def test_photo_formats_are_the_readme_list():
    from byol.images import PHOTO_FORMATS, photo_formats

    assert set(PHOTO_FORMATS) == {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "HEIF"}
    assert {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"} <= set(photo_formats()) <= set(PHOTO_FORMATS)


def test_16_bit_grey_is_converted_a_strip_at_a_time(tmp_path):
    """A 16-bit photo is never widened whole to 32/64-bit: the extra memory stays a few MB."""
    import tracemalloc

    a = (np.arange(2000 * 2000, dtype=np.uint32) % 65536).astype(np.uint16).reshape(2000, 2000)
    Image.fromarray(a).save(tmp_path / "grey16.png")
    tracemalloc.start()
    img = load_rgb(tmp_path / "grey16.png", min_side=32)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 12e6, f"{peak / 1e6:.0f} MB of numpy temporaries for an 8 MB photo"
    assert img.mode == "RGB" and min(img.size) >= 32 and max(img.size) < 2000  # reduced too
    full = np.asarray(load_rgb(tmp_path / "grey16.png"))[..., 0]
    expect = (a.astype(np.uint32) * 255 + 32767) // 65535
    assert np.array_equal(full, expect.astype(np.uint8))
