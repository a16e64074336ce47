"""Seconds per training step at each view side: what progressive resizing and larger images cost per step.

One BYOL step (resnet-tiny, batch 256, LARS, channels-last, the paper's augmentations made on the CPU) at each
(image size, view side[, small views]), the settings alternating in rounds so that a shared machine's load falls
on all of them alike; the minimum over rounds is reported. The ratios set the steps of equal-compute rows in
`bench_quality.py --steps` (the budget planner prices progressive runs the same way, from its own timings).
Time them as the rows run: `--compile` for rows of 500 steps and more (`--compile auto` compiles them), eager
below; compiling changes the ratios (it speeds larger views more).

    .venv/bin/python scripts/bench_view_sides.py                  # 32 px: 16/20/24; 64 px: 24/32/40; eager
    .venv/bin/python scripts/bench_view_sides.py --compile --settings 32/20,64/40,32/20+2   # +2: two small views
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from byol.augment import AugmentConfig, small_views, two_views  # noqa: E402
from byol.loss import byol_loss  # noqa: E402
from byol.model import BYOL, ModelConfig  # noqa: E402
from byol.optim import build_optimizer  # noqa: E402
from byol.step import Online, TrainStep  # noqa: E402
from byol.train import TrainConfig  # noqa: E402


def _views(images: torch.Tensor, side: int, gen: torch.Generator) -> torch.Tensor:
    v1, v2 = two_views(images, AugmentConfig(image_size=side), gen)
    return torch.cat([v1, v2]).contiguous(memory_format=torch.channels_last)


def _small(images: torch.Tensor, side: int, count: int, gen: torch.Generator) -> torch.Tensor | None:
    """Multi-crop's small views at the side `--small-crops` trains them with, or None."""
    if not count:
        return None
    small_side = TrainConfig(crop_size=side).small_size  # the training run's own rule
    x = small_views(images, AugmentConfig(image_size=side), count, small_side, gen)
    return x.contiguous(memory_format=torch.channels_last)


def _settings(text: str) -> dict[int, list[tuple[int, int]]]:
    """"32/20,64/40,32/20+2" -> {image size: [(view side, small views), ...]}"""
    out: dict[int, list[tuple[int, int]]] = {}
    for item in text.split(","):
        size, _, rest = item.partition("/")
        side, _, small = rest.partition("+")
        out.setdefault(int(size), []).append((int(side), int(small or 0)))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed steps per side per round (after one untimed)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--settings", default="32/16,32/20,32/24,64/24,64/32,64/40",
                   help="IMAGE/SIDE[+SMALL] items, comma-separated (SMALL: multi-crop's small views per image); "
                        "32/20 is the default run and the reference")
    p.add_argument("--compile", action="store_true", help="time compiled steps (rows of 500 steps and more)")
    args = p.parse_args()
    torch.manual_seed(0)
    settings = _settings(args.settings)
    steps, images = {}, {}
    for image_size in settings:  # one model per image size; compiled once per view shape (static shapes)
        model = BYOL(ModelConfig(backbone="resnet-tiny", image_size=image_size)).to(memory_format=torch.channels_last)
        online = Online(model)
        steps[image_size] = TrainStep(model, online, build_optimizer("lars", online, 1.0, 1.5e-6),
                                      contextlib.nullcontext, loss_fn=byol_loss, compile=args.compile)
        images[image_size] = torch.randint(0, 256, (args.batch, image_size, image_size, 3), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    times: dict[tuple[int, int, int], list[float]] = {}
    for r in range(args.rounds):
        for image_size, sides in settings.items():
            step, x = steps[image_size], images[image_size]
            for side, small in sides:
                for _ in range(1 + 2 * args.compile * (r == 0)):  # untimed: kernels (and compiles) for the shapes
                    step(_views(x, side, gen), 0.01, 0.99, small=_small(x, side, small, gen))
                t = time.perf_counter()
                for _ in range(args.steps):
                    step(_views(x, side, gen), 0.01, 0.99, small=_small(x, side, small, gen))
                times.setdefault((image_size, side, small), []).append((time.perf_counter() - t) / args.steps)
    base = min(times.get((32, 20, 0), next(iter(times.values()))))
    print(f"{'compiled' if args.compile else 'eager'}, batch {args.batch}, {torch.get_num_threads()} threads")
    print("| image size | view side | small views | s/step (min over rounds) | vs 32 px / 20 px views |")
    print("|---|---|---|---|---|")
    for (image_size, side, small), t in times.items():
        print(f"| {image_size} | {side} | {small} | {min(t):.3f} | {min(t) / base:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
