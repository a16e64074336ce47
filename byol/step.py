"""One BYOL training step (Grill et al. 2020, algorithm 1) and the fallback from torch.compile to eager.

Public API
    Online(model)                the online network f, g, q of a BYOL as one module: x -> (p, z). It is what
                                 DistributedDataParallel wraps and what the optimiser steps
    TrainStep(...)(x, lr, tau)   forward both views at once, the symmetric loss, backward, optimiser, EMA;
                                 returns (loss, z). A non-finite loss skips the update (see __call__).
                                 small=...: multi-crop's small views join the loss (online network only)
    TrainStep.snapshot()/restore(state)   the model and optimiser state, e.g. the last one known finite

Both views go through the networks in one batch (2B images), so BatchNorm statistics span both views as in
the paper's implementation. Under torchrun the loss is averaged over the processes before the finiteness
check, so every process takes the same decision.
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from byol.loss import byol_loss, regression_loss
from byol.model import BYOL

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Online(nn.Module):
    """The online network of `model` as one module, x: 2B,3,S,S -> (p, z): 2B,proj_dim each.

    It shares the modules of `model` (no copy): stepping its parameters steps the model's. The forward is
    BYOL.online's: q(g(f(x))) and g(f(x)).
    """

    def __init__(self, model: BYOL) -> None:
        super().__init__()
        self.encoder, self.projector, self.predictor = model.online_encoder, model.online_projector, model.predictor

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projector(self.encoder(x))
        return self.predictor(z), z


class TrainStep:
    """One optimiser step of BYOL; call it as step(x, lr, tau) -> (loss, z).

    model: the BYOL pair; online: the module that runs its online network (Online(model), or that wrapped
    in DistributedDataParallel); optimizer: over online's parameters; amp: returns the autocast context of
    the run; loss_fn(p1, p2, z1', z2') -> the symmetric loss (byol.loss.byol_loss); distributed: average the
    loss over the processes of the default group. compile: run the online and target forwards through
    torch.compile. Compiling happens at the first call, so only a failure there falls back to eager: the
    step then tells on_compile_failure(message), sets `compiled` False and goes on eagerly; later errors are
    raised as they are.
    """

    def __init__(self, model: BYOL, online: nn.Module, optimizer: torch.optim.Optimizer,
                 amp: Callable[[], AbstractContextManager[Any]], loss_fn: LossFn = byol_loss, compile: bool = False,
                 distributed: bool = False, on_compile_failure: Callable[[str], None] | None = None) -> None:
        self.model, self.online, self.optimizer, self.amp = model, online, optimizer, amp
        self.loss_fn, self.distributed, self.on_compile_failure = loss_fn, distributed, on_compile_failure
        self.compiled = compile  # whether the forwards run compiled (False after a failed compile)
        self._compile_tried = False  # the first call compiles: only its failure means "no compile"
        self._forward_online: Callable[..., Any] = online
        self._forward_target: Callable[..., Any] = model.target
        if compile:
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" on CPUs
            # static shapes: progressive resizing (byol.batches) compiles once per view side instead of switching
            # to slower shape-generic kernels at its second side; a fixed side compiles once, as before
            self._forward_online = torch.compile(online, dynamic=False)
            self._forward_target = torch.compile(model.target, dynamic=False)

    def __call__(self, x: torch.Tensor, lr: float, tau: float, check_finite: bool = True,
                 small: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One step on x: 2B,3,S,S (the first B views, then the second B); returns (loss, z).

        loss: the 0-d symmetric loss (averaged over processes); z: 2B,proj_dim online projections. With
        check_finite and a non-finite loss, nothing is updated (no backward, no optimiser step, no EMA).
        small: multi-crop's M small views (MB,3,s,s, view after view) or None. Each goes through the online
        network only and its prediction regresses the target projections of both full views; the loss is
        then the mean over all 2 + 2M (online view, target view) pairs, times 2: the two-view loss's scale.
        """
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        p, z, zt = self.forward(x)
        p1, p2 = p.float().chunk(2)
        zt1, zt2 = zt.float().chunk(2)
        loss = self.loss_fn(p1, p2, zt1, zt2)
        if small is not None:
            with self.amp():
                ps, _ = self._forward_online(small)  # MB, proj_dim
            m = ps.shape[0] // p1.shape[0]
            for pm in ps.float().chunk(m):
                loss = loss + regression_loss(pm, zt1) + regression_loss(pm, zt2)
            loss = loss * (2 / (2 + 2 * m))
        stat = loss.detach().reshape(1)
        if self.distributed:  # every process takes the same decision on a non-finite loss
            stat = stat.clone()
            dist.all_reduce(stat)
            stat /= dist.get_world_size()
        if check_finite and not torch.isfinite(stat).all():
            return stat[0], z
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.model.update_target(tau)
        return stat[0], z

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(p, z) of the online network and z' of the target (no gradient), under the run's autocast."""
        try:
            with self.amp():
                p, z = self._forward_online(x)  # 2B, proj_dim each
                out = p, z, self._forward_target(x)  # 2B, proj_dim, no gradient
            self._compile_tried = True
            return out
        except Exception as e:  # noqa: BLE001 (no C++ compiler, unsupported platform, ...)
            if not self.compiled or self._compile_tried:
                raise
            msg = (f"torch.compile failed ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}); "
                   f"training without it (compile=off hides this)")
            if self.on_compile_failure is not None:
                self.on_compile_failure(msg)
            else:
                print(f"warning: {msg}", file=sys.stderr)
            self.compiled, self._forward_online, self._forward_target = False, self.online, self.model.target
            return self.forward(x)

    def snapshot(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """A deep copy of (model state, optimizer state)."""
        return copy.deepcopy((self.model.state_dict(), self.optimizer.state_dict()))

    def restore(self, state: tuple[dict[str, Any], dict[str, Any]]) -> None:
        """Load what snapshot() returned: the model and optimiser continue from there."""
        self.model.load_state_dict(state[0])
        self.optimizer.load_state_dict(state[1])

    def weights_finite(self) -> bool:
        """Whether every model parameter is finite."""
        return all(torch.isfinite(p).all() for p in self.model.parameters())
