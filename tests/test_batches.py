"""byol.batches: epoch permutations, shards per process, and the two views of a step's batch."""

from __future__ import annotations

import torch

from byol.augment import AugmentConfig
from byol.batches import Batches, epoch_batches


def test_an_epoch_is_a_permutation_without_the_leftovers():
    b = epoch_batches(10, 0, seed=3, rank=0, world=1, local_batch=3)
    assert b.shape == (3, 3)  # drop_last: 10 images make 3 batches of 3, one image waits
    assert len(set(b.flatten().tolist())) == 9 and set(b.flatten().tolist()) <= set(range(10))


def test_the_order_depends_only_on_seed_and_epoch():
    assert torch.equal(epoch_batches(20, 4, 1, 0, 1, 5), epoch_batches(20, 4, 1, 0, 1, 5))
    assert not torch.equal(epoch_batches(20, 4, 1, 0, 1, 5), epoch_batches(20, 5, 1, 0, 1, 5))
    assert not torch.equal(epoch_batches(20, 4, 1, 0, 1, 5), epoch_batches(20, 4, 2, 0, 1, 5))


def test_processes_take_disjoint_shards_of_the_same_permutation():
    shards = [epoch_batches(12, 0, 0, rank, 3, 2).flatten().tolist() for rank in range(3)]
    assert all(len(s) == 4 for s in shards)
    assert sorted(sum(shards, [])) == list(range(12))  # together: every image once


def test_views_read_the_steps_batch_in_order_first_views_then_second():
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 4, 4, 3).contiguous()
    seen = []

    def views_fn(x, augment, gen):  # the image index as a constant picture, negated for the second view
        seen.append(x[:, 0, 0, 0].tolist())
        v = x.permute(0, 3, 1, 2).float()
        return v, -v

    batches = Batches(images, local_batch=2, augment=AugmentConfig(), seed=7, views_fn=views_fn)
    assert (batches.n, batches.batch, batches.per_epoch) == (6, 2, 3)
    for step in range(4):
        out = batches.views(step, torch.Generator())
        idx = batches.indices(step).tolist()
        assert seen[-1] == idx and out.shape == (4, 3, 4, 4)
        assert out[:2, 0, 0, 0].tolist() == idx and out[2:, 0, 0, 0].tolist() == [-i for i in idx]
    assert seen[3] == epoch_batches(6, 1, 7, 0, 1, 2)[0].tolist()  # step 3 opens epoch 1


def test_real_views_have_the_view_size():
    images = torch.randint(0, 255, (4, 32, 32, 3), dtype=torch.uint8)
    batches = Batches(images, local_batch=2, augment=AugmentConfig(image_size=20))
    assert batches.views(0, torch.Generator().manual_seed(0)).shape == (4, 3, 20, 20)
