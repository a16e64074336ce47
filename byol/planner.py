"""The time-budget planner: the run's plan, how many steps fit in a budget, and moving the end when the
speed drifts.

Public API
    Plan                                          what a run was planned to do, and how re-plans moved its end
    Plan.replan(done, fit) -> bool                moves the end to `fit` when it drifted enough
    Plan.to_dict() / Plan.from_dict(d)            as stored in the checkpoint and logged (older forms read too)
    time_steps(run_step, tuner, budget) -> s      seconds per training step, from timed throwaway steps
    steps_in(time_left, step_seconds, ...) -> n   the steps (and evaluations) that fit in the time left
    replan_due(done, start, total, log_every)     whether the loop measures the speed again after `done`
    side_costs(sides, first, last) -> {side: s}   seconds per step at each view side (progressive resizing)
    fit_steps(done, start, total, ...) -> (n, s)  where the run must end to finish within the budget

byol.train stores the plan in the checkpoint ("plan" in extra, as Plan.to_dict()) and logs it; the
schedules (byol.optim.schedules, byol.batches.side_schedule) read its schedule_total and replans.

Why margins: the planned steps use 97% of the time left (the final checkpoint and plot come after the
budget; step times wobble), a re-plan 98% of it (measured on real steps, so it knows more). A re-plan
needs a drift of more than 10% of the steps left (and 2 steps) so that noise of a step or so is ignored.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from byol.cpu import ThreadTuner
from byol.optim import virtual_step

PLAN_STEPS, PLAN_WARMUP = 3, 1  # at least PLAN_WARMUP + 1 timed steps, at most PLAN_STEPS + thread probes
PLAN_SHARE = 0.15  # timing stops once it has taken this share of the budget (past the warm-up)
PLAN_MARGIN, REPLAN_MARGIN = 0.97, 0.98  # share of the time left the steps may use (module docstring)
DEFAULT_EVALS = 5  # kNN evaluations per run when eval_every is 0


@dataclass
class Plan:
    """What a run was planned to do, and where budget re-plans moved its end. The first three fields are
    what the loop and the schedules read; the rest are facts about the run, kept with it."""

    total_steps: int  # where the run ends (moved by re-plans)
    schedule_total: int = 0  # the steps the lr and tau schedules were planned for; 0 = total_steps
    # one [step, virtual step, new total] per re-plan (byol.optim.virtual_step reads them)
    replans: list[list[float]] = field(default_factory=list)
    batch_size: int = 0  # images per step over all processes
    view_sides: list[int] = field(default_factory=list)  # the views' sides stage by stage (progressive resizing)
    side_seconds: dict[str, float] | None = None  # timed seconds per step at each view side (budget runs)
    step_seconds: float | None = None  # timed seconds per step (budget runs); None when steps were given
    budget: float = 0.0  # the wall-clock budget in seconds; 0 = steps were given
    images: int = 0  # images in the cache
    world_size: int = 1  # processes
    device: str = "cpu"
    precision: str = "fp32"  # fp32 or bf16
    compiled: bool = False  # the forwards were compiled when the plan was made

    def __post_init__(self) -> None:
        if not self.schedule_total:
            self.schedule_total = self.total_steps

    def to_dict(self) -> dict[str, Any]:
        """The plan as the checkpoint stores it and the log's "plan" record holds it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        """A stored plan, also as older versions wrote it: without schedule_total and replans (made before
        budget re-plans), without view sides or compile facts; keys this version does not know are dropped."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def replan(self, done: int, fit: int) -> bool:
        """Move the end from total_steps to `fit` after step `done`, when they differ by 2 steps and 10% of
        the steps left; the rest of the schedules is then stretched or squeezed to end at `fit` (a
        [done, virtual step, fit] entry in replans). Returns whether the plan changed."""
        if abs(fit - self.total_steps) < max(2.0, 0.1 * (self.total_steps - done)):  # noise of a step or so
            return False
        v0 = virtual_step(done, self.schedule_total, self.replans)
        self.replans.append([done, v0, fit])
        self.total_steps = fit
        return True


def time_steps(run_step: Callable[[int], object], tuner: ThreadTuner, budget: float,
               clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per step: runs run_step(0), run_step(1), ... (each must finish its work before returning).

    Each step first lets the tuner set its thread count; the step after the warm-up and the thread probes
    ends the timing, or the first past the warm-up once timing has taken PLAN_SHARE of the budget. The
    result is the tuner's best median, or the median of the steps after the first (untimed: allocator and
    kernel set-up) when the tuner has a single candidate. The caller restores whatever the steps changed.
    """
    times: list[float] = []
    t_start = clock()
    for i in range(PLAN_STEPS + len(tuner.probes)):
        tuner.next()
        ts = clock()
        run_step(i)
        times.append(clock() - ts)
        tuner.record(times[-1])
        if i >= PLAN_WARMUP and (tuner.settled or clock() - t_start > PLAN_SHARE * budget):
            break
    return tuner.step_seconds() or float(np.median(times[1:] or times))


def steps_in(time_left: float, step_seconds: float, eval_seconds: float = 0.0, eval_every: int = 0,
             evaluating: bool = False) -> int:
    """The steps that fit in time_left seconds, with PLAN_MARGIN kept back.

    evaluating: a kNN evaluation of eval_seconds runs every eval_every steps, or DEFAULT_EVALS times in
    all when eval_every is 0. May be 0 or negative: then not even one step fits.
    """
    left = time_left * PLAN_MARGIN
    if evaluating and eval_every:
        return int(left / (step_seconds + eval_seconds / eval_every))
    return int((left - (DEFAULT_EVALS * eval_seconds if evaluating else 0)) / step_seconds)


def side_costs(sides: Sequence[int], first: float, last: float) -> dict[int, float]:
    """Seconds per step at each view side of progressive resizing, from the step times timed at the first
    (smallest) and the last (largest) side: linear in the pixels of a view, as the convolutions' work is,
    through both measurements (the fixed part, e.g. the optimiser step, stays in the intercept)."""
    a, b = sides[0] ** 2, sides[-1] ** 2
    if b == a:
        return {s: last for s in sides}
    return {s: max(1e-9, first + (last - first) * (s * s - a) / (b - a)) for s in sides}


def replan_due(done: int, start: int, total: int, log_every: int) -> bool:
    """Measure the speed again after step `done`: every log_every steps (at most 10 times per run), once
    the steps taken in this call (from `start`) are enough to time: 3, and 5% of the run."""
    check = max(1, min(log_every, total // 10))
    return done % check == 0 and done - start >= max(3, total // 20)


def fit_steps(done: int, start: int, total: int, train_seconds: float, time_left: float,
              eval_seconds: float = 0.0, eval_every: int = 1, evaluating: bool = False,
              weights: Sequence[float] | None = None) -> tuple[int, float]:
    """(where the run must end, seconds per step): the steps after `done` at the speed measured since
    `start` (train_seconds over done - start steps) that fit in time_left, keeping REPLAN_MARGIN back and
    eval_seconds for each evaluation still due every eval_every steps before the current `total`. At least
    one more step.

    weights: the relative cost of each step 0..total-1 (progressive resizing: later steps see larger views);
    the speed is then measured per unit of cost and the steps left cost what the current plan says they do.
    The seconds per step returned are those of a step of weight 1."""
    per_step = train_seconds / (done - start)
    future = 1.0
    if weights is not None:
        per_step = train_seconds / max(1e-9, float(sum(weights[start:done])))
        future = float(np.mean(weights[done:total])) if total > done else float(weights[-1])
    evals_left = math.ceil((total - done) / eval_every) if evaluating else 0
    left = time_left * REPLAN_MARGIN - evals_left * eval_seconds
    return done + max(1, int(left / (per_step * future))), per_step

