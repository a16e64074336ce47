"""This process's training batches: an epoch permutation of the decoded images, its shard, two views each.

Public API
    epoch_batches(n, epoch, seed, rank, world, local_batch) -> batches x local_batch image indices
    Batches(images, ...).views(step, gen, side) -> 2B,3,S,S   both augmented views of the batch of `step`
    Batches(images, ...).step_views(step, gen, side) -> (2B,3,S,S, MB,3,s,s | None)   and multi-crop's small views
    stage_sides(start, end, stages) -> [S0, ..., end]      the view sides of progressive resizing
    side_schedule(total, plan, sides) -> [S per step]      the side of each step's views

Progressive resizing (Touvron et al. 2019, "FixRes"; Tan & Le 2021, EfficientNetV2): the views start small
and grow in equal stages to their full side, so the early steps (which learn coarse features) are cheap and
the late ones see detail. The stages follow the schedules' virtual step (byol.optim.virtual_step), so a
budget re-plan stretches them with the lr and tau, and a resumed run draws the same sides.

Every epoch is a fresh permutation of the images that depends only on (seed, epoch), so the data order
needs no saved state: step s reads batch s % per_epoch of epoch s // per_epoch, and a resumed run reads
exactly the batches it would have read (drop_last: the few left over wait for the next epoch's draw).
Under torchrun each process takes a distinct shard of each permutation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from byol.augment import AugmentConfig, small_views, two_views
from byol.optim import virtual_step

ViewsFn = Callable[[torch.Tensor, AugmentConfig, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
SmallViewsFn = Callable[[torch.Tensor, AugmentConfig, int, int, torch.Generator], torch.Tensor]


def epoch_batches(n: int, epoch: int, seed: int, rank: int, world: int, local_batch: int) -> torch.Tensor:
    """Image indices of one epoch for process `rank` of `world`: batches x local_batch (drop_last)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    shard = perm[rank::world]
    per_epoch = len(shard) // local_batch
    return shard[: per_epoch * local_batch].view(per_epoch, local_batch)


def stage_sides(start: int, end: int, stages: int) -> list[int]:
    """The view sides of `stages` equal stages from `start` to `end` px (multiples of 4 between them);
    [end] when start is 0 (fixed views) or not smaller than end."""
    if start <= 0 or start >= end or stages <= 1:
        return [end]
    sides = [start + (end - start) * k / (stages - 1) for k in range(stages)]
    return sorted({int(round(x / 4) * 4) for x in sides[1:-1]} | {start, end})


def side_schedule(total: int, plan: dict[str, Any], sides: list[int]) -> list[int]:
    """The side of the views of steps 0..total-1: stage k of len(sides) covers the k-th equal share of the
    schedules' virtual steps (plan as in byol.optim.schedules)."""
    if len(sides) == 1:
        return sides * total
    t = int(plan.get("schedule_total", total))
    replans = plan.get("replans", [])
    return [sides[min(len(sides) - 1, int(virtual_step(s, t, replans) * len(sides) / max(1, t)))]
            for s in range(total)]


@dataclass
class Batches:
    """The decoded images and this process's batches of two views (see module docstring)."""

    images: torch.Tensor  # N, side, side, 3 uint8 (memory-mapped, or on the GPU)
    local_batch: int  # images per step in this process
    augment: AugmentConfig  # the two views
    seed: int = 0
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")  # where the views are made
    fmt: torch.memory_format = torch.contiguous_format  # their memory layout
    views_fn: ViewsFn = two_views  # (x: B,side,side,3 uint8, augment, gen) -> (v1, v2): B,3,S,S each
    small_crops: int = 0  # multi-crop: extra small views per image (0: the two views only)
    small_side: int = 0  # their side in px
    # (x: B,side,side,3 uint8, augment, small_crops, small_side, gen) -> small_crops*B,3,s,s
    small_views_fn: SmallViewsFn = small_views

    @property
    def n(self) -> int:
        """Images in the cache."""
        return self.images.shape[0]

    @property
    def batch(self) -> int:
        """Images per step over all processes."""
        return self.local_batch * self.world

    @property
    def per_epoch(self) -> int:
        """Steps per epoch."""
        return (self.n // self.world) // self.local_batch

    def indices(self, step: int) -> torch.Tensor:
        """The image indices this process reads at `step`: local_batch of them."""
        epoch = epoch_batches(self.n, step // self.per_epoch, self.seed, self.rank, self.world, self.local_batch)
        return epoch[step % self.per_epoch]

    def _images(self, step: int) -> torch.Tensor:
        """The decoded images of the batch of `step` on the device: B, side, side, 3 uint8."""
        idx = self.indices(step)
        return self.images[idx.to(self.images.device)].to(self.device, non_blocking=True)

    def views(self, step: int, gen: torch.Generator, side: int = 0) -> torch.Tensor:
        """Both augmented views of the batch of `step`: 2B,3,S,S (the first views, then the second), S =
        `side` (progressive resizing) or, when 0, the augmentation's image_size."""
        return self._two(self._images(step), gen, side)

    def step_views(self, step: int, gen: torch.Generator, side: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What a training step reads, from one read of the batch: (views(step, gen, side), and multi-crop's
        small views: small_crops*B,3,s,s, view after view, drawn from `gen` after the two views; None without
        multi-crop, with no draws)."""
        x = self._images(step)  # B, side, side, 3 uint8
        two = self._two(x, gen, side)
        if self.small_crops <= 0:
            return two, None
        small = self.small_views_fn(x, self.augment, self.small_crops, self.small_side, gen)
        return two, small.contiguous(memory_format=self.fmt)

    def _two(self, x: torch.Tensor, gen: torch.Generator, side: int) -> torch.Tensor:
        augment = self.augment if side in (0, self.augment.image_size) else replace(self.augment, image_size=side)
        v1, v2 = self.views_fn(x, augment, gen)  # B,3,S,S each
        return torch.cat([v1, v2]).contiguous(memory_format=self.fmt)
