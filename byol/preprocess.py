"""The one evaluation transform, shared by evaluation, export, embedding and the page.

Resize the shorter side to `resize`, centre-crop `size` x `size`, scale to [0, 1], normalise with
mean/std. It is written into the exported ONNX model's metadata (`to_dict`) and read back from it
(`from_dict`), so serving can never drift from training.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    size: int = 64  # side of the square crop fed to the encoder
    resize: int = 64  # shorter side is resized to this before the centre crop (size/resize = crop ratio)
    mean: tuple[float, float, float] = field(default=IMAGENET_MEAN)  # per-channel mean, RGB, in [0, 1]
    std: tuple[float, float, float] = field(default=IMAGENET_STD)  # per-channel std, RGB
    resize_rule: str = "shorter_side_bilinear_then_center_crop"  # documented in the model metadata

    @classmethod
    def for_size(cls, size: int, crop_ratio: float = 1.0) -> Preprocess:
        """The evaluation transform for a training resolution; crop_ratio 0.875 is the ImageNet habit."""
        return cls(size=size, resize=max(size, round(size / crop_ratio)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | str) -> Preprocess:
        if isinstance(d, str):
            d = cast(dict[str, Any], json.loads(d))
        return cls(
            size=int(d["size"]),
            resize=int(d["resize"]),
            mean=cast(tuple[float, float, float], tuple(float(x) for x in d["mean"])),
            std=cast(tuple[float, float, float], tuple(float(x) for x in d["std"])),
            resize_rule=d.get("resize_rule", cls.resize_rule),
        )

    def resize_crop(self, img: Image.Image) -> Image.Image:
        """Resize (shorter side) and centre-crop an RGB PIL image to size x size."""
        w, h = img.size
        s = self.resize / min(w, h)
        nw, nh = max(self.size, round(w * s)), max(self.size, round(h * s))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        return img.crop((left, top, left + self.size, top + self.size))

    def to_uint8(self, img: Image.Image) -> np.ndarray:
        """HWC uint8 array of the resized, cropped image (what caches store)."""
        return np.asarray(self.resize_crop(img.convert("RGB")), dtype=np.uint8)

    def normalize(self, hwc_uint8: np.ndarray) -> np.ndarray:
        """(N,)H,W,3 uint8 -> (N,)3,H,W float32, normalised."""
        x: np.ndarray = np.asarray(hwc_uint8, dtype=np.float32) * (1.0 / 255.0)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(np.moveaxis(x, -1, -3))

    def __call__(self, img: Image.Image) -> np.ndarray:
        """One PIL image -> 3,H,W float32 ready for the encoder."""
        return self.normalize(self.to_uint8(img))

    def batch(self, imgs: list[Image.Image]) -> np.ndarray:
        """A list of PIL images -> N,3,H,W float32."""
        return self.normalize(np.stack([self.to_uint8(im) for im in imgs]))
