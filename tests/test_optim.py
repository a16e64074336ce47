"""byol.optim: the cosine schedules of lr and tau, LARS and its exclusions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from byol.optim import (
    LARS,
    build_optimizer,
    cosine_lr,
    cosine_tau,
    param_groups,
    scaled_lr,
    schedules,
    virtual_step,
)


def test_cosine_lr_warmup_then_decay():
    total, warm, base = 100, 10, 2.0
    lrs = [cosine_lr(s, total, base, warm) for s in range(total)]
    assert lrs[0] == pytest.approx(base / warm)
    assert lrs[warm - 1] == pytest.approx(base)  # warm-up reaches the peak
    assert lrs[warm] == pytest.approx(base)  # the cosine starts at the peak
    assert all(a < b for a, b in zip(lrs[:warm], lrs[1:warm]))  # rising during warm-up
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1 :]))  # non-increasing after
    assert 0 < lrs[-1] < 0.01 * base
    assert cosine_lr(total, total, base, warm) == pytest.approx(0.0, abs=1e-12)
    assert cosine_lr(warm + (total - warm) // 2, total, base, warm) == pytest.approx(base / 2)


def test_cosine_tau_endpoints_and_monotonic():
    total = 50
    taus = [cosine_tau(s, total, 0.996) for s in range(total + 1)]
    assert taus[0] == pytest.approx(0.996)
    assert taus[-1] == pytest.approx(1.0)
    assert taus[total // 2] == pytest.approx(1 - 0.004 / 2)
    assert all(a <= b for a, b in zip(taus, taus[1:]))
    k = 17  # the paper's formula, section 3.3
    assert taus[k] == pytest.approx(1 - (1 - 0.996) * (math.cos(math.pi * k / total) + 1) / 2)


def test_linear_scaling_rule():
    assert scaled_lr(0.2, 4096) == pytest.approx(3.2)
    assert scaled_lr(1.0, 256) == 1.0


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))


def test_param_groups_exclude_bias_and_batchnorm():
    net = _net()
    adapt, plain = param_groups(net, 1.5e-6)
    assert {id(p) for p in adapt["params"]} == {id(net[0].weight), id(net[3].weight)}
    assert {id(p) for p in plain["params"]} == {id(net[1].weight), id(net[1].bias), id(net[3].bias)}
    assert adapt["weight_decay"] == 1.5e-6 and plain["weight_decay"] == 0.0
    assert adapt["lars_adapt"] and not plain["lars_adapt"]


def test_lars_step_matches_the_formula():
    net = _net()
    opt = LARS(param_groups(net, 0.1), lr=0.5, momentum=0.9, trust_coefficient=1e-3)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    net(torch.randn(4, 3, 8, 8)).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    opt.step()
    for name, p in net.named_parameters():
        w, g = before[name], grads[name]
        if p.ndim > 1:  # decayed and adapted
            u = g + 0.1 * w
            u = u * 1e-3 * w.norm() / u.norm()
        else:  # bias / BatchNorm: plain momentum SGD, no decay
            u = g
        assert torch.allclose(p, w - 0.5 * u, atol=1e-7), name


def test_lars_decays_weights_but_not_excluded_parameters():
    net = _net()
    opt = LARS(param_groups(net, 0.5), lr=1.0)
    conv_w, bn_w = net[0].weight.detach().clone(), net[1].weight.detach().clone()
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(net[1].weight, bn_w)  # zero gradient: an excluded parameter does not move
    # a weight with zero gradient shrinks by weight decay; the trust ratio makes the step eta * w
    assert torch.allclose(net[0].weight, conv_w * (1 - 1e-3), atol=1e-7)


def test_adamw_option_and_unknown_name():
    net = _net()
    opt = build_optimizer("adamw", net, 1e-3, 1e-4)
    assert isinstance(opt, torch.optim.AdamW)
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 1e-4]
    with pytest.raises(ValueError, match="lars"):
        build_optimizer("sgd", net, 0.1, 0.0)


def test_replanned_schedules_stay_continuous_and_complete():
    plan = {"schedule_total": 100, "replans": []}
    lrs, taus = schedules(100, plan, 1.0, 0.1, 0.99)
    assert virtual_step(37, 100, []) == 37
    # at step 40 the machine turns out slower: only 70 steps fit instead of 100
    plan["replans"].append([40, virtual_step(40, 100, []), 70])
    lrs2, taus2 = schedules(70, plan, 1.0, 0.1, 0.99)
    assert lrs2[:41] == lrs[:41] and taus2[:41] == taus[:41]  # the past is unchanged
    assert virtual_step(70, 100, plan["replans"]) == pytest.approx(100)  # ends where the plan ended
    assert all(a >= b for a, b in zip(lrs2[10:], lrs2[11:]))  # still a decay, no jump up
    assert lrs2[-1] < 0.02 and taus2[-1] > 0.9999
