"""byol.batches: epoch permutations, shards per process, and the two views of a step's batch."""

from __future__ import annotations

import torch

from byol.augment import AugmentConfig
from byol.batches import Batches, epoch_batches, side_schedule, stage_sides


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


def test_stage_sides_grow_in_multiples_of_four_from_start_to_end():
    assert stage_sides(16, 32, 4) == [16, 20, 28, 32]
    assert stage_sides(16, 24, 3) == [16, 20, 24]
    assert stage_sides(0, 20, 4) == [20]  # fixed views
    assert stage_sides(20, 20, 4) == [20]


def test_side_schedule_gives_each_stage_an_equal_share_and_follows_replans():
    sides = side_schedule(8, {"schedule_total": 8, "replans": []}, [16, 20, 24, 28])
    assert sides == [16, 16, 20, 20, 24, 24, 28, 28]
    assert side_schedule(3, {}, [20]) == [20, 20, 20]
    # a re-plan at step 2 stretches the rest of the run from 8 to 14 steps: the stages stretch with it
    stretched = side_schedule(14, {"schedule_total": 8, "replans": [[2, 2.0, 14]]}, [16, 20, 24, 28])
    assert stretched == [16, 16] + [20] * 4 + [24] * 4 + [28] * 4


def test_views_take_the_side_of_their_step():
    images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    b = Batches(images, 4, AugmentConfig(image_size=20))
    gen = torch.Generator().manual_seed(0)
    assert b.views(0, gen).shape == (8, 3, 20, 20)
    assert b.views(0, gen, 16).shape == (8, 3, 16, 16)
    assert b.augment.image_size == 20  # the batches' own settings are not changed


def test_small_views_come_after_the_two_views_and_only_with_multi_crop():
    images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    plain = Batches(images, 4, AugmentConfig(image_size=20))
    gen, ref = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    two, small = plain.step_views(0, gen)
    assert small is None and torch.equal(two, plain.views(0, ref))
    assert torch.equal(gen.get_state(), ref.get_state())  # no draws beyond the two views without multi-crop
    multi = Batches(images, 4, AugmentConfig(image_size=20), small_crops=2, small_side=12)
    two_m, small = multi.step_views(0, torch.Generator().manual_seed(0))
    assert torch.equal(two_m, two)  # the two views are drawn as before
    assert small is not None and small.shape == (8, 3, 12, 12)


def test_the_view_functions_are_parameters_and_see_the_steps_batch():
    images = torch.arange(8, dtype=torch.uint8).view(8, 1, 1, 1).expand(8, 4, 4, 3).contiguous()
    seen = {}

    def small_fn(x, augment, count, side, gen):  # stands in for byol.augment.small_views
        seen["small"] = (x[:, 0, 0, 0].tolist(), count, side)
        return torch.zeros(count * x.shape[0], 3, side, side)

    b = Batches(images, 4, AugmentConfig(image_size=4), small_crops=2, small_side=2,
                views_fn=lambda x, augment, gen: (x.permute(0, 3, 1, 2).float(),) * 2, small_views_fn=small_fn)
    two, small = b.step_views(1, torch.Generator())
    assert seen["small"] == (b.indices(1).tolist(), 2, 2)
    assert two.shape == (8, 3, 4, 4) and small is not None and small.shape == (8, 3, 2, 2)
