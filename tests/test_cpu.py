"""byol.cpu: the GEMM weight gradient, AMX detection, thread candidates and the thread tuner."""

from __future__ import annotations

import os

import pytest
import torch

from byol import cpu
from byol.cpu import (
    GemmGradConv2d,
    ThreadTuner,
    conv_weight_grad,
    cpu_thread_candidates,
    use_gemm_weight_grads,
)
from byol.model import build_backbone


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("n,c,o,side,k,stride,pad", [(2, 3, 5, 7, 3, 1, 1), (3, 4, 6, 8, 3, 2, 1),
                                                      (2, 4, 6, 8, 1, 2, 0), (1, 2, 3, 5, 3, 1, 0)])
def test_conv_weight_grad_matches_torch(n, c, o, side, k, stride, pad):
    torch.manual_seed(0)
    x = torch.randn(n, c, side, side, dtype=torch.float64)
    w = torch.randn(o, c, k, k, dtype=torch.float64)
    g = torch.randn_like(torch.nn.functional.conv2d(x, w, None, stride, pad))
    ref = torch.nn.grad.conv2d_weight(x, w.shape, g, stride, pad)
    assert torch.allclose(conv_weight_grad(x, g, k, stride, pad), ref, atol=1e-10)


def test_gemm_grad_conv_under_cpu_autocast_matches_conv2d_within_bf16():
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(8, 16, 3, 1, 1, bias=False)
    ours = torch.nn.Conv2d(8, 16, 3, 1, 1, bias=False)
    ours.load_state_dict(ref.state_dict())
    ours.__class__ = GemmGradConv2d
    x = torch.randn(4, 8, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y1, y2 = ref(x), ours(x)
    assert y2.dtype == y1.dtype == torch.bfloat16
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    assert ours.weight.grad.dtype == torch.float32
    scale = ref.weight.grad.abs().max()
    assert (ours.weight.grad - ref.weight.grad).abs().max() <= 0.02 * scale


def test_gemm_weight_grads_keep_the_forward_and_can_switch_nothing():
    torch.manual_seed(0)
    net, _ = build_backbone("resnet-tiny", 32)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    before = net(x)
    assert use_gemm_weight_grads(net, 32, max_side=0) == 0
    assert not any(isinstance(m, GemmGradConv2d) for m in net.modules())
    assert use_gemm_weight_grads(net, 32) > 0
    assert torch.allclose(net(x), before, atol=1e-6)
    net.train()
    use_gemm_weight_grads(net, 32)  # its probe forward runs in eval mode, then restores the mode
    assert net.training


def test_cpu_has_amx_agrees_with_the_cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    assert cpu.cpu_has_amx() is ("amx_bf16" in flags)


@pytest.mark.parametrize("cores,expect", [(8, [8, 4, 1]), (2, [2, 1]), (1, [1]), (3, [3, 1])])
def test_thread_candidates_are_all_half_and_one_core(monkeypatch, cores, expect):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert cpu_thread_candidates() == expect


def test_one_candidate_is_fixed_and_times_nothing():
    tuner = ThreadTuner([1])
    for _ in range(5):
        assert tuner.next() == 1 and torch.get_num_threads() == 1
        tuner.record(1.0)
    assert tuner.settled and tuner.step_seconds() is None and tuner.times == {1: []}


def test_the_first_step_at_each_count_is_not_timed_and_the_best_median_wins():
    tuner = ThreadTuner([2, 1], recheck=1000)
    assert tuner.step_seconds() is None and tuner.best() == 2  # nothing timed yet: the first candidate
    seconds = {2: [9.0, 2.0], 1: [9.0, 3.0]}
    for _ in range(4):
        t = tuner.next()
        tuner.record(seconds[t].pop(0))
    assert tuner.times == {2: [2.0], 1: [3.0]}  # the 9 s set-up steps are not kept
    assert tuner.best() == 2 and tuner.step_seconds() == 2.0
    assert tuner.next() == 2  # settled: the faster count runs
