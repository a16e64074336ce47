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
    assert torch.allclose(zt, z, atol=1e-6)  # the same weights in the same mode: the same projection
    assert torch.allclose(p, model.predictor(z), atol=1e-6)  # p = q(z), z = g(f(x))
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


def test_ema_shrinks_the_distance_to_the_online_weights_by_tau():
    """xi' - theta = tau (xi - theta): every parameter moves (1 - tau) of the way toward the online one."""
    target, online = _pair()
    gap = [t - o for t, o in zip(target.parameters(), online.parameters())]
    online_before = [o.clone() for o in online.parameters()]
    for _ in range(3):
        ema_update(target, online, 0.75)
    for t, o, g, ob in zip(target.parameters(), online.parameters(), gap, online_before):
        assert torch.allclose(t - o, 0.75 ** 3 * g, atol=1e-6)
        assert torch.equal(o, ob)  # the online network is never changed


def test_ema_copies_buffers_whatever_tau():
    target, online = _pair()
    online[1].running_var.fill_(7.0)
    ema_update(target, online, 1.0)
    assert torch.equal(target[1].running_mean, online[1].running_mean)
    assert torch.equal(target[1].running_var, online[1].running_var)


def test_update_target_moves_encoder_and_projector_only():
    torch.manual_seed(0)
    model = BYOL(ModelConfig(backbone="resnet-tiny", image_size=32, proj_hidden=32, proj_dim=8))
    with torch.no_grad():
        for p in model.online_parameters():
            p.add_(torch.randn_like(p))
    enc = [(t.clone(), o.clone()) for t, o in zip(model.target_encoder.parameters(), model.online_encoder.parameters())]
    proj = [(t.clone(), o.clone()) for t, o in zip(model.target_projector.parameters(),
                                                   model.online_projector.parameters())]
    predictor = [p.clone() for p in model.predictor.parameters()]
    model.update_target(0.9)
    for (t0, o), t in zip(enc + proj, [*model.target_encoder.parameters(), *model.target_projector.parameters()]):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * o, atol=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(model.predictor.parameters(), predictor))
    model.update_target(0.0)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    assert torch.allclose(model.target(x), model.online(x)[1], atol=1e-5)  # tau 0: the target is the online net


def test_mlp_is_linear_batchnorm_relu_linear():
    torch.manual_seed(0)
    mlp = MLP(8, 32, 4).eval()
    with torch.no_grad():
        bn = mlp.net[1]
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        x = torch.randn(5, 8)
        h = mlp.net[0](x)
        h = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        expect = mlp.net[3](torch.relu(h))
        assert torch.allclose(mlp(x), expect, atol=1e-5)
    assert [type(m) for m in mlp.net] == [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.ReLU, torch.nn.Linear]
    assert mlp.net[0].out_features == 32 and mlp.net[3].in_features == 32


@pytest.mark.parametrize("name", ["resnet-tiny", "resnet18"])
def test_backbone_rows_are_independent_in_eval_mode(name):
    """A pooled representation per image: in eval mode one image's y does not depend on the rest of the batch."""
    torch.manual_seed(0)
    net, _ = build_backbone(name, 32)
    net.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        together, alone = net(x), torch.cat([net(x[i:i + 1]) for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-4)
    assert (together >= 0).all()  # global average pooling of ReLU outputs


def test_small_inputs_get_the_cifar_stem():
    small, _ = build_backbone("resnet-tiny", 64)
    large, _ = build_backbone("resnet-tiny", 96)
    assert small.stem[0].kernel_size == (3, 3) and small.stem[0].stride == (1, 1) and len(small.stem) == 3
    assert large.stem[0].kernel_size == (7, 7) and isinstance(large.stem[-1], torch.nn.MaxPool2d)
    r18, _ = build_backbone("resnet18", 32)
    assert r18.conv1.kernel_size == (3, 3) and isinstance(r18.maxpool, torch.nn.Identity)
