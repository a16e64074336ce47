"""Seconds per training step at each view side: what progressive resizing and larger images cost per step.

One BYOL step (resnet-tiny, batch 256, LARS, eager, channels-last, the paper's augmentations made on the CPU)
at each (image size, view side), the sides alternating in rounds so that a shared machine's load falls on all
of them alike; the minimum over rounds is reported. The ratios set the steps of equal-compute rows in
`bench_quality.py --steps` (the budget planner prices progressive runs the same way, from its own timings).

    .venv/bin/python scripts/bench_view_sides.py                  # 32 px: 16/20/24; 64 px: 24/32/40
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from byol.augment import AugmentConfig, two_views  # noqa: E402
from byol.loss import byol_loss  # noqa: E402
from byol.model import BYOL, ModelConfig  # noqa: E402
from byol.optim import build_optimizer  # noqa: E402
from byol.step import Online, TrainStep  # noqa: E402


def _views(images: torch.Tensor, side: int, gen: torch.Generator) -> torch.Tensor:
    v1, v2 = two_views(images, AugmentConfig(image_size=side), gen)
    return torch.cat([v1, v2]).contiguous(memory_format=torch.channels_last)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed steps per side per round (after one untimed)")
    p.add_argument("--batch", type=int, default=256)
    args = p.parse_args()
    torch.manual_seed(0)
    times: dict[tuple[int, int], list[float]] = {}
    for image_size, sides in ((32, [16, 20, 24]), (64, [24, 32, 40])):
        model = BYOL(ModelConfig(backbone="resnet-tiny", image_size=image_size)).to(memory_format=torch.channels_last)
        online = Online(model)
        step = TrainStep(model, online, build_optimizer("lars", online, 1.0, 1.5e-6), contextlib.nullcontext,
                         loss_fn=byol_loss)
        images = torch.randint(0, 256, (args.batch, image_size, image_size, 3), dtype=torch.uint8)
        gen = torch.Generator().manual_seed(0)

        for _ in range(args.rounds):
            for side in sides:
                step(_views(images, side, gen), 0.01, 0.99)  # untimed: kernels for this shape
                t = time.perf_counter()
                for _ in range(args.steps):
                    step(_views(images, side, gen), 0.01, 0.99)
                times.setdefault((image_size, side), []).append((time.perf_counter() - t) / args.steps)
    base = min(times[(32, 20)])
    print("| image size | view side | s/step (min over rounds) | vs 32 px / 20 px views |")
    print("|---|---|---|---|")
    for (image_size, side), t in times.items():
        print(f"| {image_size} | {side} | {min(t):.3f} | {min(t) / base:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
