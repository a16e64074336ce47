"""byol.loss: the symmetric BYOL loss (Grill et al. 2020, eq. 2) and the collapse signal."""

from __future__ import annotations

import math

import torch

from byol.loss import byol_loss, collapse_std, regression_loss


def test_symmetric_in_the_two_views():
    g = torch.Generator().manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(8, 16, generator=g) for _ in range(4))
    assert torch.allclose(byol_loss(p1, p2, z1, z2), byol_loss(p2, p1, z2, z1))


def test_zero_for_same_direction_and_four_for_opposite():
    p = torch.randn(5, 32)
    assert regression_loss(p, 3.0 * p).item() < 1e-6  # scale does not matter: the loss compares directions
    assert abs(regression_loss(p, -p).item() - 4.0) < 1e-5
    assert abs(byol_loss(p, p, -p, -p).item() - 8.0) < 1e-5  # both directions, the sum


def test_orthogonal_gives_two():
    p, z = torch.eye(4)[:2], torch.eye(4)[2:]
    assert abs(regression_loss(p, z).item() - 2.0) < 1e-6


def test_stop_gradient_on_the_target():
    p = torch.randn(4, 8, requires_grad=True)
    z = torch.randn(4, 8, requires_grad=True)
    regression_loss(p, z).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None


def test_collapse_std_healthy_and_collapsed():
    d = 256
    healthy = collapse_std(torch.randn(4096, d))
    assert abs(healthy - 1 / math.sqrt(d)) < 0.1 / math.sqrt(d)
    assert collapse_std(torch.ones(64, d) + 1e-9 * torch.randn(64, d)) < 1e-6
