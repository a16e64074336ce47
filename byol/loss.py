"""The BYOL loss (Grill et al. 2020, eq. 2): 2 - 2 cos(p, z'), symmetrised over the two views."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ||p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z); z is treated as a constant.

    p, z: B,D. The value lies in [0, 4]; 0 when p and z point the same way.
    """
    p = F.normalize(p.float(), dim=-1)
    z = F.normalize(z.detach().float(), dim=-1)
    return (2 - 2 * (p * z).sum(dim=-1)).mean()


def byol_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Symmetric loss: online prediction of view 1 regresses target projection of view 2 and vice versa.

    p1, p2: online predictions of views 1 and 2; z1, z2: target projections of views 1 and 2.
    Returns the sum of the two directions (paper: L + L~), in [0, 8].
    """
    return regression_loss(p1, z2) + regression_loss(p2, z1)


@torch.no_grad()
def collapse_std(z: torch.Tensor) -> float:
    """Std over the batch of the L2-normalised projections, averaged over dimensions.

    A healthy run stays near 1/sqrt(D); a collapsed one (all outputs equal) falls to 0.
    """
    return F.normalize(z.float(), dim=-1).std(dim=0).mean().item()
