"""This process's training batches: an epoch permutation of the decoded images, its shard, two views each.

Public API
    epoch_batches(n, epoch, seed, rank, world, local_batch) -> batches x local_batch image indices
    Batches(images, ...).views(step, gen) -> 2B,3,S,S    both augmented views of the batch of `step`

Every epoch is a fresh permutation of the images that depends only on (seed, epoch), so the data order
needs no saved state: step s reads batch s % per_epoch of epoch s // per_epoch, and a resumed run reads
exactly the batches it would have read (drop_last: the few left over wait for the next epoch's draw).
Under torchrun each process takes a distinct shard of each permutation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from byol.augment import AugmentConfig, two_views

ViewsFn = Callable[[torch.Tensor, AugmentConfig, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def epoch_batches(n: int, epoch: int, seed: int, rank: int, world: int, local_batch: int) -> torch.Tensor:
    """Image indices of one epoch for process `rank` of `world`: batches x local_batch (drop_last)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    shard = perm[rank::world]
    per_epoch = len(shard) // local_batch
    return shard[: per_epoch * local_batch].view(per_epoch, local_batch)


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

    def views(self, step: int, gen: torch.Generator) -> torch.Tensor:
        """Both augmented views of the batch of `step`: 2B,3,S,S (the first views, then the second)."""
        idx = self.indices(step)
        x = self.images[idx.to(self.images.device)].to(self.device, non_blocking=True)  # B, side, side, 3 uint8
        v1, v2 = self.views_fn(x, self.augment, gen)  # B,3,S,S each
        return torch.cat([v1, v2]).contiguous(memory_format=self.fmt)
