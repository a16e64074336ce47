"""byol.model: backbones, heads, the online/target pair and the EMA update."""

from __future__ import annotations

import pytest
import torch

from byol.model import BYOL, MLP, ModelConfig, build_backbone, ema_update


def _pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6))
    b = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6))
    b[1].running_mean.fill_(3.0)
    return a, b


def test_ema_tau_one_keeps_the_target():
    target, online = _pair()
    before = [p.clone() for p in target.parameters()]
    ema_update(target, online, 1.0)
    assert all(torch.equal(p, q) for p, q in zip(target.parameters(), before))


def test_ema_tau_zero_copies_the_online_network():
    target, online = _pair()
    ema_update(target, online, 0.0)
    assert all(torch.equal(p, q) for p, q in zip(target.parameters(), online.parameters()))
    assert torch.equal(target[1].running_mean, online[1].running_mean)  # buffers follow the online network


def test_ema_interpolates():
    target, online = _pair()
    expect = [0.9 * t + 0.1 * o for t, o in zip(target.parameters(), online.parameters())]
    ema_update(target, online, 0.9)
    assert all(torch.allclose(p, e, atol=1e-7) for p, e in zip(target.parameters(), expect))


def test_target_has_no_gradient_and_starts_as_a_copy():
    model = BYOL(ModelConfig(backbone="resnet-tiny", image_size=32, proj_hidden=64, proj_dim=16))
    assert all(not p.requires_grad for p in model.target_parameters())
    assert all(p.requires_grad for p in model.online_parameters())
    for t, o in zip(model.target_encoder.parameters(), model.online_encoder.parameters()):
        assert torch.equal(t, o)
    x = torch.randn(4, 3, 32, 32)
    p, z = model.online(x)
    zt = model.target(x)
    assert p.shape == z.shape == zt.shape == (4, 16)
    assert not zt.requires_grad
    (p.sum() + z.sum()).backward()
    assert all(q.grad is None for q in model.target_parameters())


@pytest.mark.parametrize(
    "name,size,dim",
    [("resnet-tiny", 32, 256), ("resnet-small", 32, 512), ("resnet-tiny", 96, 256), ("resnet18", 32, 512)],
)
def test_backbone_output_dims(name, size, dim):
    net, d = build_backbone(name, size)
    assert d == dim
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, size, size)).shape == (2, dim)


def test_unknown_backbone_names_the_choices():
    with pytest.raises(ValueError, match="resnet-tiny"):
        build_backbone("vgg", 32)


def test_mlp_shape():
    assert MLP(8, 32, 4)(torch.randn(3, 8)).shape == (3, 4)
