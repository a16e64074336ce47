"""LARS and the cosine schedules of lr and tau (Grill et al. 2020, section 3.3 and appendix C).

The paper trains with LARS (You et al. 2017) at lr = 0.2 x batch/256, weight decay 1.5e-6, momentum 0.9,
trust coefficient 1e-3, "excluding the biases and batch normalization parameters from both LARS adaptation
and weight decay"; the lr warms up linearly and then follows a cosine decay to 0 (no restarts); the target
decay rate tau rises from 0.996 to 1 as 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.optim.optimizer import ParamsT

OPTIMIZERS = ("lars", "adamw")


def cosine_lr(step: float, total: int, base_lr: float, warmup: int) -> float:
    """Learning rate at 0-based `step` of `total`: linear warm-up over `warmup` steps, then cosine to 0.

    Warm-up reaches base_lr at step warmup - 1 (step 0 already moves: lr = base_lr / warmup); the cosine
    then starts at base_lr and would reach 0 at step == total (the last step taken, total - 1, is just above).
    """
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def cosine_tau(step: float, total: int, base_tau: float = 0.996) -> float:
    """Target decay rate at `step` of `total` (paper section 3.3): base_tau at 0, rising to 1 at total."""
    return 1.0 - (1.0 - base_tau) * (math.cos(math.pi * min(step, total) / max(1, total)) + 1.0) / 2.0


def virtual_step(step: int, schedule_total: int, replans: Sequence[Sequence[float]]) -> float:
    """Where `step` falls on the schedules planned for `schedule_total` steps, after budget re-plans.

    A re-plan [s0, v0, new_total] at step s0 (then at virtual step v0) stretches or squeezes the rest of
    the schedules so they still end at schedule_total when the run ends at new_total: lr and tau stay
    continuous and both complete within the budget. Without re-plans the virtual step is the step.
    """
    v = float(step)
    for s0, v0, new_total in replans:
        if step >= s0:
            v = v0 + (step - s0) * (schedule_total - v0) / max(1, new_total - s0)
    return v


def schedules(total: int, plan: dict[str, Any], lr_peak: float, warmup_fraction: float,
              base_tau: float) -> tuple[list[float], list[float]]:
    """Per-step lr and tau for steps 0..total-1: cosine_lr and cosine_tau at the virtual steps.

    plan: {"schedule_total": steps the schedules were planned for, "replans": [[s0, v0, new_total], ...]}
    (byol.train's plan; without re-plans, the plain schedules over `total` steps).
    """
    t = int(plan.get("schedule_total", total))
    warmup = max(1, round(warmup_fraction * t))
    v = [virtual_step(s, t, plan.get("replans", [])) for s in range(total)]
    return [cosine_lr(x, t, lr_peak, warmup) for x in v], [cosine_tau(x, t, base_tau) for x in v]


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The paper's linear scaling rule: lr = base_lr x batch_size / 256."""
    return base_lr * batch_size / 256


def excluded(name: str, param: torch.Tensor) -> bool:
    """Biases and BatchNorm weights/biases (all 1-d parameters) skip weight decay and LARS adaptation."""
    return param.ndim <= 1


def param_groups(model: nn.Module | Iterable[tuple[str, torch.Tensor]], weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: conv/linear weights (decay + adaptation) and biases/BatchNorm (neither), trainable only."""
    named = model.named_parameters() if isinstance(model, nn.Module) else model
    adapt: list[torch.Tensor] = []
    plain: list[torch.Tensor] = []
    for name, p in named:
        if p.requires_grad:
            (plain if excluded(name, p) else adapt).append(p)
    return [
        {"params": adapt, "weight_decay": weight_decay, "lars_adapt": True},
        {"params": plain, "weight_decay": 0.0, "lars_adapt": False},
    ]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) with SGD momentum, as BYOL uses it.

    Per parameter tensor w with gradient g, in a group with lars_adapt:
        u = g + weight_decay * w
        u = u * trust_coefficient * ||w|| / ||u||      (when both norms are > 0)
    then, for every parameter, v = momentum * v + u and w = w - lr * v. Groups with lars_adapt=False
    (biases, BatchNorm; see `param_groups`) use plain momentum SGD without weight decay.
    The trust ratio 1e-3 and weight decay 1.5e-6 are the paper's (appendix C).
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 1.5e-6,
        trust_coefficient: float = 1e-3,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, lars_adapt=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["lars_adapt"]:
                wd = group["weight_decay"]
                updates = torch._foreach_add(grads, params, alpha=wd) if wd else [g.clone() for g in grads]
                w_norm = torch._foreach_norm(params)
                u_norm = torch._foreach_norm(updates)
                one = torch.ones((), device=params[0].device)
                ratios = [
                    torch.where((wn > 0) & (un > 0), group["trust_coefficient"] * wn / un, one)
                    for wn, un in zip(w_norm, u_norm)
                ]
                torch._foreach_mul_(updates, ratios)
            else:
                updates = grads
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, updates)
            torch._foreach_add_(params, bufs, alpha=-group["lr"])
        return loss


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """LARS (the paper's) or AdamW over `model`'s trainable parameters; both exclude biases/BN from decay."""
    groups = param_groups(model, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        for g in groups:
            g.pop("lars_adapt")
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
