"""The time-budget planner: how many steps fit in a budget, and moving the end when the speed drifts.

Public API
    time_steps(run_step, tuner, budget) -> s      seconds per training step, from timed throwaway steps
    steps_in(time_left, step_seconds, ...) -> n   the steps (and evaluations) that fit in the time left
    replan_due(done, start, total, log_every)     whether the loop measures the speed again after `done`
    side_costs(sides, first, last) -> {side: s}   seconds per step at each view side (progressive resizing)
    fit_steps(done, start, total, ...) -> (n, s)  where the run must end to finish within the budget
    replan(plan, done, fit) -> bool               moves the plan's end to `fit` when it drifted enough

A plan is the dict byol.train stores in the checkpoint ("plan" in extra) and logs: total_steps (where the
run ends), schedule_total (the steps the lr and tau schedules were planned for) and replans, a list of
[step, virtual step, new total] read by byol.optim.virtual_step, plus facts about the run.

Why margins: the planned steps use 97% of the time left (the final checkpoint and plot come after the
budget; step times wobble), a re-plan 98% of it (measured on real steps, so it knows more). A re-plan
needs a drift of more than 10% of the steps left (and 2 steps) so that noise of a step or so is ignored.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from byol.cpu import ThreadTuner
from byol.optim import virtual_step

PLAN_STEPS, PLAN_WARMUP = 3, 1  # at least PLAN_WARMUP + 1 timed steps, at most PLAN_STEPS + thread probes
PLAN_SHARE = 0.15  # timing stops once it has taken this share of the budget (past the warm-up)
PLAN_MARGIN, REPLAN_MARGIN = 0.97, 0.98  # share of the time left the steps may use (module docstring)
DEFAULT_EVALS = 5  # kNN evaluations per run when eval_every is 0


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


def replan(plan: dict[str, Any], done: int, fit: int) -> bool:
    """Move the plan's end from plan["total_steps"] to `fit` after step `done`, when they differ by 2 steps
    and 10% of the steps left; the rest of the schedules is then stretched or squeezed to end at `fit`
    (a [done, virtual step, fit] entry in plan["replans"]). Returns whether the plan changed."""
    total = int(plan["total_steps"])
    if abs(fit - total) < max(2.0, 0.1 * (total - done)):  # noise of a step or so
        return False
    v0 = virtual_step(done, int(plan["schedule_total"]), plan["replans"])
    plan["replans"].append([done, v0, fit])
    plan["total_steps"] = fit
    return True
