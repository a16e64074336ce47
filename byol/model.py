"""Backbones, projector/predictor MLPs, the online/target pair and the EMA update (Grill et al. 2020).

Names follow the paper: the online network is encoder f_theta, projector g_theta and predictor q_theta;
the target network is f_xi, g_xi, an exponential moving average of the online weights.
y = f(x) is the representation, z = g(y) the projection, p = q(z) the prediction.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torchvision

BACKBONES = ("resnet-tiny", "resnet-small", "resnet18", "resnet34", "resnet50")


@dataclass
class ModelConfig:
    backbone: str = "resnet-tiny"  # one of BACKBONES; resnet-tiny/small are sized for a laptop CPU
    image_size: int = 32  # training resolution; <= 64 uses a CIFAR stem (3x3 conv, no max-pool)
    proj_hidden: int = 4096  # projector/predictor hidden width (paper: 4096)
    proj_dim: int = 256  # projection and prediction size (paper: 256)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016), used by the small CPU backbones."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A narrow ResNet for CPUs: four stages of basic blocks, global average pooling, no classifier."""

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...], small_input: bool):
        super().__init__()
        w0 = widths[0]
        if small_input:  # CIFAR stem: keep resolution for 32-64 px inputs
            self.stem = nn.Sequential(nn.Conv2d(3, w0, 3, 1, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, w0, 7, 2, 3, bias=False), nn.BatchNorm2d(w0), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
            )
        layers, cin = [], w0
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B,3,H,W -> B,D
        return torch.flatten(self.pool(self.layers(self.stem(x))), 1)


def build_backbone(name: str, image_size: int) -> tuple[nn.Module, int]:
    """An encoder f mapping B,3,H,W images to B,D pooled representations y; returns (module, D)."""
    small = image_size <= 64
    if name == "resnet-tiny":
        net = SmallResNet((32, 64, 128, 256), (1, 1, 1, 1), small)
        return net, net.dim
    if name == "resnet-small":
        net = SmallResNet((64, 128, 256, 512), (1, 1, 1, 1), small)
        return net, net.dim
    if name in ("resnet18", "resnet34", "resnet50"):
        net = getattr(torchvision.models, name)(weights=None)
        if small:  # the usual CIFAR variant of torchvision's ResNets
            net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        dim = net.fc.in_features
        net.fc = nn.Identity()
        return net, dim
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


class MLP(nn.Module):
    """Projector g / predictor q: Linear -> BatchNorm -> ReLU -> Linear (paper section 3.3)."""

    def __init__(self, din: int, hidden: int, dout: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(din, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class BYOL(nn.Module):
    """The online network (encoder, projector, predictor) and its EMA target (encoder, projector)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.online_encoder, self.dim = build_backbone(cfg.backbone, cfg.image_size)
        self.online_projector = MLP(self.dim, cfg.proj_hidden, cfg.proj_dim)
        self.predictor = MLP(cfg.proj_dim, cfg.proj_hidden, cfg.proj_dim)
        self.target_encoder = copy.deepcopy(self.online_encoder)
        self.target_projector = copy.deepcopy(self.online_projector)
        for p in self.target_parameters():
            p.requires_grad_(False)

    def online_parameters(self) -> Iterator[nn.Parameter]:
        for m in (self.online_encoder, self.online_projector, self.predictor):
            yield from m.parameters()

    def target_parameters(self) -> Iterator[nn.Parameter]:
        for m in (self.target_encoder, self.target_projector):
            yield from m.parameters()

    def online(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: B,3,H,W -> (p: B,proj_dim prediction, z: B,proj_dim projection)."""
        z = self.online_projector(self.online_encoder(x))
        return self.predictor(z), z

    @torch.no_grad()
    def target(self, x: torch.Tensor) -> torch.Tensor:
        """x: B,3,H,W -> z': B,proj_dim target projection (no gradient: stop-gradient)."""
        z: torch.Tensor = self.target_projector(self.target_encoder(x))
        return z

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        ema_update(self.target_encoder, self.online_encoder, tau)
        ema_update(self.target_projector, self.online_projector, tau)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """xi <- tau * xi + (1 - tau) * theta (paper eq. 1); buffers (BatchNorm statistics) are copied.

    tau = 1 leaves the target unchanged; tau = 0 makes it a copy of the online network.
    """
    t_params: list[torch.Tensor] = [p for p in target.parameters()]
    o_params: list[torch.Tensor] = [p for p in online.parameters()]
    if tau == 0.0:
        torch._foreach_copy_(t_params, o_params)
    elif tau != 1.0:
        torch._foreach_lerp_(t_params, o_params, 1.0 - tau)
    for tb, ob in zip(target.buffers(), online.buffers()):
        tb.copy_(ob)
