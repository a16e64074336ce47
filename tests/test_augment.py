"""byol.augment: the paper's two views, batched: shapes, ranges, seeded determinism, probabilities, crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from byol.augment import (
    AugmentConfig,
    adjust_hue,
    apply_view,
    blur_kernel_size,
    crop_and_flip,
    denormalize,
    draw_params,
    gaussian_blur,
    hsv_to_rgb,
    rgb_to_hsv,
    small_views,
    two_views,
    write_preview,
)


def _images(n: int = 16, side: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, side, side, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shapes_dtype_and_range():
    cfg = AugmentConfig(image_size=32)
    v1, v2 = two_views(_images(), cfg, _gen(0))
    assert v1.shape == v2.shape == (16, 3, 32, 32)
    assert v1.dtype == v2.dtype == torch.float32
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    for v in (v1, v2):
        x = v * std + mean  # back to [0, 1]
        assert x.min() >= -1e-5 and x.max() <= 1 + 1e-5
    assert not torch.equal(v1, v2)


def test_rejects_non_uint8_batches():
    with pytest.raises(ValueError, match="uint8"):
        two_views(torch.rand(2, 8, 8, 3), AugmentConfig(image_size=8), _gen(0))


def test_same_seed_same_views_different_seed_different_views():
    cfg = AugmentConfig(image_size=24)
    a = two_views(_images(), cfg, _gen(1))
    b = two_views(_images(), cfg, _gen(1))
    c = two_views(_images(), cfg, _gen(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_probabilities_over_a_large_batch():
    cfg = AugmentConfig(image_size=96)  # large enough for blur (see blur_min_size)
    n = 20000
    p1, p2 = draw_params(n, 120, 120, cfg, 0, _gen(0)), draw_params(n, 120, 120, cfg, 1, _gen(1))
    assert p1.blur.all()  # view 1: blur p 1.0
    assert p2.blur.float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert not p1.solarize.any()  # view 1: solarisation p 0
    assert p2.solarize.float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert p1.flip.float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert p1.jitter.float().mean().item() == pytest.approx(0.8, abs=0.02)
    assert p1.grey.float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert p1.sigma.min() >= 0.1 and p1.sigma.max() <= 2.0
    lo, hi = p1.factors.min(dim=1).values, p1.factors.max(dim=1).values
    assert lo.tolist() == pytest.approx([0.6, 0.6, 0.8, -0.1], abs=1e-3)
    assert hi.tolist() == pytest.approx([1.4, 1.4, 1.2, 0.1], abs=1e-3)
    assert all(sorted(row) == [0, 1, 2, 3] for row in p1.order[:100].tolist())  # a permutation per sample


def test_blur_is_off_for_small_views():
    assert not draw_params(1000, 32, 32, AugmentConfig(image_size=32), 0, _gen(0)).blur.any()


def test_crop_area_and_ratio_within_range():
    cfg = AugmentConfig(image_size=32)
    h, w = 60, 80
    b = draw_params(20000, h, w, cfg, 0, _gen(3)).boxes
    x0, y0, cw, ch = b.unbind(1)
    area = cw * ch / (h * w)
    assert area.min() >= 0.08 - 1e-4 and area.max() <= 1.0 + 1e-4
    ratio = cw / ch
    assert ratio.min() >= 3 / 4 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + cw <= w + 1e-3).all() and (y0 + ch <= h + 1e-3).all()
    assert area.max() > 0.9 and area.min() < 0.1  # the whole range is used


def test_crop_and_flip_is_exact_on_pixel_aligned_boxes():
    x = torch.rand(2, 3, 8, 8)
    whole = torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 2)
    out = crop_and_flip(x, whole, torch.tensor([False, True]), 8)
    assert torch.allclose(out[0], x[0], atol=1e-6) and torch.allclose(out[1], x[1].flip(-1), atol=1e-6)
    out = crop_and_flip(x, torch.tensor([[2.0, 4.0, 4.0, 4.0]] * 2), torch.tensor([False, False]), 4)
    assert torch.allclose(out[0], x[0, :, 4:8, 2:6], atol=1e-6)


def test_colour_ops_match_torchvision():
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    x = torch.rand(4, 3, 12, 12)
    shift = torch.tensor([-0.1, 0.03, 0.0, 0.1])
    ref = torch.stack([tvf.adjust_hue(x[i], shift[i].item()) for i in range(4)])
    assert torch.allclose(adjust_hue(x, shift), ref, atol=1e-5)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5)
    sigma = torch.tensor([0.3, 1.0, 2.0, 0.1])
    ref = torch.stack([tvf.gaussian_blur(x[i], [5, 5], [sigma[i].item()] * 2) for i in range(4)])
    assert torch.allclose(gaussian_blur(x, sigma, 5), ref, atol=1e-5)


def test_blur_kernel_is_odd_tenth_of_size():
    assert blur_kernel_size(224, 0.1) == 23
    assert blur_kernel_size(128, 0.1) == 13
    assert blur_kernel_size(32, 0.1) == 3


def test_solarise_only_view():
    cfg = AugmentConfig(image_size=16, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                        grey_p=0.0, blur_p=(0.0, 0.0), solarize_p=(1.0, 1.0), mean=(0, 0, 0), std=(1, 1, 1))
    x = torch.rand(3, 3, 16, 16)
    out = apply_view(x, draw_params(3, 16, 16, cfg, 1, _gen(0)), cfg)
    assert torch.allclose(out, torch.where(x >= 0.5, 1 - x, x), atol=1e-6)


def test_write_preview(tmp_path):
    from PIL import Image

    images = _images(4, 48)
    cfg = AugmentConfig(image_size=32)
    path = write_preview(images, cfg, tmp_path / "preview.png", seed=5)
    img = np.asarray(Image.open(path))
    cell, gap = 96, 4
    assert img.shape == (4 * (cell + gap) + gap, 3 * (cell + gap) + gap, 3)  # 4 rows of 3 columns
    assert (img[:gap] == 255).all() and (img[:, :gap] == 255).all()  # white gaps around the tiles
    for i in range(4):
        y = gap + i * (cell + gap)
        # column 0: the cached image itself, each pixel repeated 2x2 (48 px -> 96 px, nearest)
        assert np.array_equal(img[y : y + cell : 2, gap : gap + cell : 2], images[i].numpy())
        # columns 1 and 2: the two views of the same seed, 32 px -> 96 px (each pixel 3x3)
        v1, v2 = two_views(images, cfg, _gen(5))
        for j, v in ((1, v1), (2, v2)):
            x = gap + j * (cell + gap)
            tile = denormalize(v, cfg)[i].numpy()
            assert np.array_equal(img[y : y + cell : 3, x : x + cell : 3], tile)
    assert not np.array_equal(img[gap : gap + cell, gap + cell + gap :][:, :cell],
                              img[gap : gap + cell, gap + 2 * (cell + gap) :][:, :cell])  # two different views


def test_small_views_are_seeded_small_crops_view_after_view():
    cfg = AugmentConfig(image_size=20)
    images = _images(4)
    out = small_views(images, cfg, count=3, side=12, gen=_gen(0))
    assert out.shape == (12, 3, 12, 12) and out.dtype == torch.float32
    assert torch.equal(out, small_views(images, cfg, 3, 12, _gen(0)))
    assert not torch.equal(out, small_views(images, cfg, 3, 12, _gen(1)))
    assert cfg.image_size == 20 and cfg.crop_scale == (0.08, 1.0)  # the caller's settings are not changed
    # the crops cover small_scale of the image: the same draws as draw_params with that scale
    gen = _gen(5)
    small = AugmentConfig(image_size=12, crop_scale=cfg.small_scale)
    boxes = draw_params(2000, 40, 40, small, 0, gen).boxes
    area = boxes[:, 2] * boxes[:, 3] / (40 * 40)
    assert area.min() >= 0.04 and area.max() <= 0.41 and area.mean() < 0.3
