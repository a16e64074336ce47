"""CPU tuning for training: a faster convolution weight gradient on small maps, and the thread count.

Public API
    GemmGradConv2d                 nn.Conv2d whose weight gradient is one GEMM (conv_weight_grad)
    conv_weight_grad(x, g, k, stride, pad) -> dW
    use_gemm_weight_grads(encoder, image_size) -> int   switches the eligible convolutions; returns how many
    cpu_has_amx() -> bool          whether the CPU has AMX bf16 tiles (where GemmGradConv2d pays off)
    cpu_thread_candidates() -> [n] the intra-op thread counts the tuner tries
    ThreadTuner                    times real steps at each candidate count and keeps the fastest

byol.train uses them; the training maths does not depend on them (a fixed thread count is bitwise
reproducible, the tuner may switch counts, which changes float rounding).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from byol.fileio import core_count


# ----------------------------------------------------------------------------------------------------------
# kernel: convolution weight gradients on small feature maps as one GEMM
# ----------------------------------------------------------------------------------------------------------
def conv_weight_grad(x: torch.Tensor, g: torch.Tensor, k: int, stride: int, pad: int) -> torch.Tensor:
    """dL/dW of a k x k convolution (groups 1, dilation 1) as ONE matrix product.

    x: N,C,H,W input; g: N,O,Ho,Wo output gradient -> O,C,k,k. The k*k shifted (strided) views of the
    padded input are stacked into an N*Ho*Wo x k*k*C matrix; dW = g^T (O x N*Ho*Wo) @ that matrix.
    """
    n, c = x.shape[:2]
    o, ho, wo = g.shape[1:]
    xh = F.pad(x.permute(0, 2, 3, 1), (0, 0, pad, pad, pad, pad))  # N, H+2p, W+2p, C
    sh, sw = stride * (ho - 1) + 1, stride * (wo - 1) + 1
    cols = torch.stack([xh[:, i : i + sh : stride, j : j + sw : stride, :] for i in range(k) for j in range(k)], dim=3)
    cols = cols.reshape(n * ho * wo, k * k * c)  # N*Ho*Wo, k*k*C
    gm = g.permute(0, 2, 3, 1).reshape(n * ho * wo, o)  # N*Ho*Wo, O
    return (gm.t() @ cols).view(o, k, k, c).permute(0, 3, 1, 2)  # O, C, k, k


class _GemmGradConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, stride: int, pad: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.pad = stride, pad
        return F.conv2d(x, weight, None, stride, pad)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        x, w = ctx.saved_tensors
        s, p = ctx.stride, ctx.pad
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(
                g, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            gw = conv_weight_grad(x, g, w.shape[-1], s, p).to(w.dtype)
        return gx, gw, None, None


class GemmGradConv2d(nn.Conv2d):
    """nn.Conv2d whose weight gradient is `conv_weight_grad` (same parameters, same state_dict).

    On CPUs, oneDNN's bf16 backward-weights kernel crawls on feature maps of 8x8 and smaller (10-25
    GFLOP/s measured on 2 cores of a CPU with AMX, against 60-100 for this GEMM): in a CIFAR ResNet that is
    stages 3 and 4. The input gradient and the forward stay oneDNN's. Autocast casts as for nn.Conv2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if torch.is_autocast_enabled("cpu"):
            dt = torch.get_autocast_dtype("cpu")
            x, w = x.to(dt), w.to(dt)
        with torch.autocast("cpu", enabled=False):
            out: torch.Tensor = _GemmGradConvFn.apply(x, w, self.stride[0], self.padding[0])
            return out


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles for bf16 (Linux /proc/cpuinfo flags; False when they cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


def use_gemm_weight_grads(encoder: nn.Module, image_size: int, max_side: int = 8) -> int:
    """Switch the encoder's eligible convolutions with outputs of at most max_side^2 to GemmGradConv2d.

    Eligible: square kernel, equal strides and paddings, no bias, groups and dilation 1. Returns how many.
    """
    sides: dict[nn.Conv2d, int] = {}
    hooks = [m.register_forward_hook(lambda mod, i, out: sides.__setitem__(mod, out.shape[-1]))
             for m in encoder.modules() if type(m) is nn.Conv2d]
    was = encoder.training
    encoder.eval()
    with torch.no_grad():
        encoder(torch.zeros(1, 3, image_size, image_size))
    encoder.train(was)
    for h in hooks:
        h.remove()
    n = 0
    for m, side in sides.items():
        k, st, pd = m.kernel_size, m.stride, m.padding
        if (side <= max_side and m.bias is None and m.groups == 1 and m.dilation == (1, 1) and k[0] == k[1]
                and st[0] == st[1] and isinstance(pd, tuple) and pd[0] == pd[1] and m.padding_mode == "zeros"):
            m.__class__ = GemmGradConv2d
            n += 1
    return n


# ----------------------------------------------------------------------------------------------------------
# threads: the intra-op thread count whose steps are fastest
# ----------------------------------------------------------------------------------------------------------
def cpu_thread_candidates() -> list[int]:
    """Thread counts the auto ThreadTuner tries: all usable cores, half of them and one (largest first)."""
    cores = core_count()
    return sorted({cores, max(1, cores // 2), 1}, reverse=True)


class ThreadTuner:
    """Chooses the CPU intra-op thread count whose steps are fastest, by timing real steps.

    Each candidate runs two steps (the first at a new count sets up kernels and is not timed; step 0 runs
    at the first candidate); afterwards the fastest (median of its last 5 steps) runs, and every `recheck`
    steps each other candidate gets one step to show it is now faster (the load of a shared machine
    changes). One candidate: a fixed count, nothing timed.
    """

    def __init__(self, candidates: list[int], recheck: int = 100) -> None:
        self.candidates, self.recheck = candidates, recheck
        self.times: dict[int, list[float]] = {c: [] for c in candidates}
        self.seen: set[int] = set()  # the first step at a count sets up kernels for it: not timed
        self.n = 0  # steps recorded
        self.current = candidates[0]  # the count set by the last next()
        # the first candidate's first step is step 0 (warm-up), so it needs one probe less
        self.probes = [c for c in candidates for _ in range(2)][1:] if len(candidates) > 1 else []

    @property
    def settled(self) -> bool:
        """Every candidate has had its probe steps (until the next re-check)."""
        return not self.probes

    def best(self) -> int:
        """The candidate with the fastest median of its last 5 timed steps (the first while none is timed)."""
        timed = [c for c in self.candidates if self.times[c]]
        return min(timed, key=lambda c: float(np.median(self.times[c][-5:]))) if timed else self.candidates[0]

    def step_seconds(self) -> float | None:
        """Median step time of the best candidate."""
        t = self.times[self.best()]
        return float(np.median(t[-5:])) if t else None

    def next(self) -> int:
        """The thread count for the coming step (and sets it)."""
        if self.n == 0 or len(self.candidates) == 1:
            c = self.candidates[0]
        elif self.probes:
            c = self.probes.pop(0)
        elif self.n % self.recheck == 0:
            self.probes = [x for x in self.candidates if x != self.best()]
            c = self.probes.pop(0)
        else:
            c = self.best()
        if torch.get_num_threads() != c:
            torch.set_num_threads(c)
        self.current = c
        return c

    def record(self, seconds: float) -> None:
        """The duration of the step just run at `current` threads (its first step at a count is not kept)."""
        if self.current in self.seen and len(self.candidates) > 1:
            self.times[self.current].append(seconds)
        self.seen.add(self.current)
        self.n += 1
