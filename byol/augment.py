"""The paper's two asymmetric views (Grill et al. 2020, table 6), batched on tensors.

A batch of uint8 images N,H,W,3 goes in (on the CPU or a GPU); two float views N,3,S,S normalised with the
evaluation transform's mean/std come out. Every sample draws its own parameters, and all draws come from
one `torch.Generator` in a fixed order, so a seed fixes the views exactly (the draws happen on the
generator's device, then move to the batch's device: the same seed gives the same parameters anywhere).

Per view, in the paper's order:
  random resized crop  area 8-100%, aspect 3/4-4/3, to S x S; one `grid_sample` call with a per-sample
                       affine grid (bilinear; crop and flip are one affine map)
  horizontal flip      p 0.5 (a negative x scale in the same affine map)
  colour jitter        p 0.8: brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, applied in a random
                       order per sample ("the order ... is randomly selected for each patch", appendix B).
                       Hue is rotated in HSV like torchvision and TensorFlow's adjust_hue (vectorised here),
                       not by a YIQ rotation: the same colours as the paper's implementation, at an
                       elementwise cost that is small beside the network's
  greyscale            p 0.2
  Gaussian blur        p 1.0 (view 1) / 0.1 (view 2), sigma 0.1-2 px, kernel 10% of S (odd), separable,
                       reflect padding; per-sample kernels in one grouped convolution
  solarisation         p 0.0 (view 1) / 0.2 (view 2): x -> 1 - x where x >= 0.5
  normalisation        Preprocess mean/std

Multi-crop (optional, `small_views`): extra views of small crops (area 5-40%) at a smaller side, which the
online network sees and which predict the target's projections of both full views (Caron et al. 2020).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from byol.preprocess import IMAGENET_MEAN, IMAGENET_STD

_GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale and PIL's convert("L")


@dataclass
class AugmentConfig:
    image_size: int = 32  # side S of each view; train.py sets it from ModelConfig.image_size
    crop_scale: tuple[float, float] = (0.08, 1.0)  # random resized crop: area fraction (table 6)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # random resized crop: aspect ratio range (table 6)
    flip_p: float = 0.5  # horizontal flip probability (table 6)
    jitter_p: float = 0.8  # colour jitter probability (table 6)
    brightness: float = 0.4  # brightness factor drawn in [1 - 0.4, 1 + 0.4] (table 6)
    contrast: float = 0.4  # contrast factor in [0.6, 1.4] (table 6)
    saturation: float = 0.2  # saturation factor in [0.8, 1.2] (table 6)
    hue: float = 0.1  # hue shift in [-0.1, 0.1] turns of the colour wheel (table 6)
    grey_p: float = 0.2  # greyscale probability (table 6)
    blur_p: tuple[float, float] = (1.0, 0.1)  # Gaussian blur probability, view 1 / view 2 (table 6)
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # blur sigma range in pixels (table 6)
    blur_kernel: float = 0.1  # blur kernel side as a fraction of S, rounded to odd (appendix B: 10%)
    # below this S blur is off: at 32 px the kernel is 3 px and only smears; the CIFAR recipes of
    # solo-learn and lightly drop it too (a departure from the paper, which trains at 224 px)
    blur_min_size: int = 64
    solarize_p: tuple[float, float] = (0.0, 0.2)  # solarisation probability, view 1 / view 2 (table 6)
    # multi-crop's small views (Caron et al. 2020, SwAV; DINO's local crops): area fraction of their crops
    small_scale: tuple[float, float] = (0.05, 0.4)
    mean: tuple[float, float, float] = field(default=IMAGENET_MEAN)  # normalisation, as Preprocess
    std: tuple[float, float, float] = field(default=IMAGENET_STD)  # normalisation, as Preprocess


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=gen.device) * (hi - lo) + lo


def _bernoulli(n: int, p: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=gen.device) < p


# ----------------------------------------------------------------------------------------------------------
# geometry: random resized crop + flip as one affine sampling grid
# ----------------------------------------------------------------------------------------------------------
def crop_boxes(n: int, h: int, w: int, cfg: AugmentConfig, gen: torch.Generator, tries: int = 10) -> torch.Tensor:
    """Per-sample crop boxes (x0, y0, width, height) in pixels, N,4, like torchvision's RandomResizedCrop.

    Ten (area, log-ratio) draws per sample; the first that fits is used, else a centre crop of the whole
    image at the nearest allowed ratio.
    """
    area = torch.empty(n, tries, device=gen.device).uniform_(*cfg.crop_scale, generator=gen) * (h * w)
    lr = (math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
    ratio = torch.exp(torch.empty(n, tries, device=gen.device).uniform_(*lr, generator=gen))
    cw, ch = torch.sqrt(area * ratio), torch.sqrt(area / ratio)  # N, tries
    ok = (cw <= w) & (ch <= h)
    first = ok.float().argmax(dim=1, keepdim=True)  # index of the first fitting try (0 if none)
    cw, ch = cw.gather(1, first)[:, 0], ch.gather(1, first)[:, 0]
    # fallback: the whole image, clamped to the ratio range
    in_ratio = w / h
    fw = min(w, h * cfg.crop_ratio[1]) if in_ratio > cfg.crop_ratio[1] else float(w)
    fh = min(h, w / cfg.crop_ratio[0]) if in_ratio < cfg.crop_ratio[0] else float(h)
    fits = ok.any(dim=1)
    cw = torch.where(fits, cw, torch.full_like(cw, fw))
    ch = torch.where(fits, ch, torch.full_like(ch, fh))
    x0 = torch.rand(n, generator=gen, device=gen.device) * (w - cw)
    y0 = torch.rand(n, generator=gen, device=gen.device) * (h - ch)
    return torch.stack([x0, y0, cw, ch], dim=1)


def crop_and_flip(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """x: N,3,H,W float; boxes: N,4 (x0, y0, w, h) px; flip: N bool -> N,3,size,size (bilinear)."""
    n, _, h, w = x.shape
    x0, y0, cw, ch = boxes.unbind(1)
    sx, sy = cw / w, ch / h  # half-extent of the crop in normalised coordinates ([-1, 1] spans the image)
    tx, ty = (2 * x0 + cw) / w - 1, (2 * y0 + ch) / h - 1  # crop centre, normalised
    sx = torch.where(flip, -sx, sx)
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1)  # N,2,3
    grid = F.affine_grid(theta.to(x.dtype), [n, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ----------------------------------------------------------------------------------------------------------
# colour: per-sample factors, in [0, 1] space; every op takes x: M,3,S,S and a factor per sample: M
# ----------------------------------------------------------------------------------------------------------
def grey(x: torch.Tensor) -> torch.Tensor:
    """M,3,S,S -> M,1,S,S luma."""
    r, g, b = x.unbind(1)
    return (_GREY[0] * r + _GREY[1] * g + _GREY[2] * b).unsqueeze(1)


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * f.view(-1, 1, 1, 1)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = f.view(-1, 1, 1, 1)
    mean = grey(x).mean(dim=(1, 2, 3), keepdim=True)
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = f.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * grey(x)).clamp_(0, 1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """M,3,S,S RGB in [0, 1] -> HSV with h in [0, 1) (torchvision's formula, batched)."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    crd = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.remainder((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack([h, s, maxc], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """M,3,S,S HSV -> RGB in [0, 1]."""
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1 - s)).clamp_(0, 1)
    q = (v * (1 - s * f)).clamp_(0, 1)
    t = (v * (1 - s * (1 - f))).clamp_(0, 1)
    # sector i picks (r, g, b) from (v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q)
    table = torch.stack([torch.stack(c, dim=1) for c in ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))], 1)
    return table.gather(2, i[:, None, None].expand(-1, 3, 1, -1, -1)).squeeze(2)  # M,3,6,S,S -> M,3,S,S


def adjust_hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    hsv = rgb_to_hsv(x)
    hsv[:, 0] = torch.remainder(hsv[:, 0] + f.view(-1, 1, 1), 1.0)
    return hsv_to_rgb(hsv)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def _apply(x: torch.Tensor, sel: torch.Tensor, op: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    """x[sel] = op(x[sel], args[sel]...) for a bool mask `sel` (on x's device); a no-op when none selected."""
    idx = sel.nonzero().flatten()
    if idx.numel():
        x = x.index_copy(0, idx, op(x.index_select(0, idx), *(a.index_select(0, idx) for a in args)))
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """M,3,S,S blurred with a per-sample sigma (M) by a separable odd `kernel`, reflect padding."""
    m, c, h, w = x.shape
    t = torch.arange(kernel, device=x.device, dtype=x.dtype) - kernel // 2
    k = torch.exp(-(t**2) / (2 * sigma.to(x.dtype).view(-1, 1) ** 2))  # M, kernel
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # M*3, kernel
    pad = kernel // 2
    y = F.pad(x, (pad, pad, pad, pad), mode="reflect").reshape(1, m * c, h + 2 * pad, w + 2 * pad)
    y = F.conv2d(y, k.view(m * c, 1, kernel, 1), groups=m * c)  # vertical pass
    y = F.conv2d(y, k.view(m * c, 1, 1, kernel), groups=m * c)  # horizontal pass
    return y.view(m, c, h, w)


def blur_kernel_size(size: int, frac: float) -> int:
    """Kernel side for an S-pixel view: 10% of S made odd, at least 3 (23 at 224 px, as the paper)."""
    k = max(3, int(frac * size))
    return k if k % 2 else k + 1


# ----------------------------------------------------------------------------------------------------------
# the views
# ----------------------------------------------------------------------------------------------------------
@dataclass
class ViewParams:
    """Per-sample random parameters of one view (N samples), on the generator's device."""

    boxes: torch.Tensor  # N,4 crop (x0, y0, width, height) in pixels of the source image
    flip: torch.Tensor  # N bool
    jitter: torch.Tensor  # N bool: colour jitter applied
    factors: torch.Tensor  # 4,N brightness, contrast, saturation factors and hue shift
    order: torch.Tensor  # N,4 jitter op index at each position (a permutation per sample)
    grey: torch.Tensor  # N bool
    blur: torch.Tensor  # N bool
    sigma: torch.Tensor  # N blur sigma in pixels
    solarize: torch.Tensor  # N bool

    def to(self, device: torch.device) -> ViewParams:
        return ViewParams(**{k: v.to(device) for k, v in vars(self).items()})


def draw_params(n: int, h: int, w: int, cfg: AugmentConfig, which: int, gen: torch.Generator) -> ViewParams:
    """Draw the random parameters of view `which` (0: view 1, 1: view 2) for n images of h x w pixels."""
    boxes = crop_boxes(n, h, w, cfg, gen)
    flip = _bernoulli(n, cfg.flip_p, gen)
    jitter = _bernoulli(n, cfg.jitter_p, gen)
    factors = torch.stack([
        _uniform(n, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness, gen),
        _uniform(n, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast, gen),
        _uniform(n, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation, gen),
        _uniform(n, -cfg.hue, cfg.hue, gen),
    ])
    order = torch.rand(n, 4, generator=gen, device=gen.device).argsort(dim=1)
    greyed = _bernoulli(n, cfg.grey_p, gen)
    blur = _bernoulli(n, cfg.blur_p[which] if cfg.image_size >= cfg.blur_min_size else 0.0, gen)
    sigma = _uniform(n, *cfg.blur_sigma, gen)
    solarize = _bernoulli(n, cfg.solarize_p[which], gen)
    return ViewParams(boxes, flip, jitter, factors, order, greyed, blur, sigma, solarize)


def apply_view(x: torch.Tensor, params: ViewParams, cfg: AugmentConfig) -> torch.Tensor:
    """x: N,3,H,W float in [0, 1] -> N,3,S,S normalised, with the given parameters (on x's device)."""
    pr = params.to(x.device)
    out = crop_and_flip(x, pr.boxes, pr.flip, cfg.image_size)  # N,3,S,S
    for k in range(4):  # position k of each sample's random order
        for j, op in enumerate(_JITTER_OPS):
            out = _apply(out, pr.jitter & (pr.order[:, k] == j), op, pr.factors[j])
    out = torch.where(pr.grey.view(-1, 1, 1, 1), grey(out).expand_as(out), out)
    kernel = blur_kernel_size(cfg.image_size, cfg.blur_kernel)
    out = _apply(out, pr.blur, lambda v, s: gaussian_blur(v, s, kernel), pr.sigma)
    out = torch.where(pr.solarize.view(-1, 1, 1, 1) & (out >= 0.5), 1.0 - out, out)
    mean = torch.tensor(cfg.mean, device=x.device, dtype=out.dtype).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=x.device, dtype=out.dtype).view(1, 3, 1, 1)
    return (out - mean) / std


def view(x: torch.Tensor, cfg: AugmentConfig, which: int, gen: torch.Generator) -> torch.Tensor:
    """One augmented view of x: N,3,H,W float in [0, 1] -> N,3,S,S normalised. which: 0 or 1 (view 1/2)."""
    n, _, h, w = x.shape
    return apply_view(x, draw_params(n, h, w, cfg, which, gen), cfg)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 N,H,W,3 -> float32 N,3,H,W in [0, 1] (same device)."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def two_views(images: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 N,H,W,3 -> (view 1, view 2), each float32 N,3,S,S normalised, on the images' device."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 N,H,W,3 images, got {images.dtype} {tuple(images.shape)}")
    x = to_float(images)
    return view(x, cfg, 0, gen), view(x, cfg, 1, gen)


def small_views(images: torch.Tensor, cfg: AugmentConfig, count: int, side: int,
                gen: torch.Generator) -> torch.Tensor:
    """Multi-crop's extra views: uint8 N,H,W,3 -> count*N,3,side,side normalised (view after view).

    Crops cover cfg.small_scale of the image (small parts of it); the colour, grey, blur and solarisation
    draws alternate between view 1's and view 2's probabilities, as the two views do."""
    x = to_float(images)
    small = replace(cfg, image_size=side, crop_scale=cfg.small_scale)
    return torch.cat([view(x, small, k % 2, gen) for k in range(count)])


def denormalize(v: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """N,3,S,S normalised -> uint8 N,S,S,3 (for looking at views)."""
    mean = torch.tensor(cfg.mean, device=v.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=v.device).view(1, 3, 1, 1)
    return (v.float() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1)


def preview_grid(images: torch.Tensor, cfg: AugmentConfig, seed: int = 0, cell: int = 96) -> np.ndarray:
    """uint8 H,W,3 grid: one row per image: the cached image, view 1, view 2 (nearest-upscaled to `cell`)."""
    gen = torch.Generator().manual_seed(seed)
    v1, v2 = two_views(images.cpu(), cfg, gen)
    cols = [images.cpu(), denormalize(v1, cfg), denormalize(v2, cfg)]

    def up(a: torch.Tensor) -> torch.Tensor:  # N,h,w,3 -> N,cell,cell,3
        t = F.interpolate(a.permute(0, 3, 1, 2).float(), size=(cell, cell), mode="nearest")
        return t.permute(0, 2, 3, 1).to(torch.uint8)

    gap = 4
    n = images.shape[0]
    grid = np.full((n * (cell + gap) + gap, 3 * (cell + gap) + gap, 3), 255, np.uint8)
    for j, col in enumerate(cols):
        tiles = up(col).numpy()
        for i in range(n):
            y, x = gap + i * (cell + gap), gap + j * (cell + gap)
            grid[y : y + cell, x : x + cell] = tiles[i]
    return grid


def write_preview(images: torch.Tensor, cfg: AugmentConfig, path: str | Path, seed: int = 0) -> Path:
    """Write a PNG grid of augmented pairs (see `preview_grid`) atomically; returns the path."""
    import io

    from PIL import Image

    from byol.checkpoint import atomic_write

    buf = io.BytesIO()
    Image.fromarray(preview_grid(images, cfg, seed)).save(buf, format="PNG")
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return Path(path)
