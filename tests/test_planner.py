"""byol.planner: timing throwaway steps, the steps that fit a budget, and re-plans when the speed drifts."""

from __future__ import annotations

import pytest
import torch

from byol import planner
from byol.cpu import ThreadTuner
from byol.optim import schedules
from byol.planner import Plan


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class FakeClock:
    """A clock that only moves when a step runs: step i takes durations(i, threads) seconds."""

    def __init__(self, durations):
        self.now, self.durations, self.ran = 0.0, durations, []

    def __call__(self) -> float:
        return self.now

    def run_step(self, i: int) -> None:
        self.ran.append((i, torch.get_num_threads()))
        self.now += self.durations(i, torch.get_num_threads())


def test_one_thread_count_times_two_steps_and_skips_the_first():
    clock = FakeClock(lambda i, t: 5.0 if i == 0 else 2.0)  # the first step sets up kernels: slow
    seconds = planner.time_steps(clock.run_step, ThreadTuner([1]), budget=1000.0, clock=clock)
    assert [i for i, _ in clock.ran] == [0, 1]  # PLAN_WARMUP + 1 steps, then nothing more to learn
    assert seconds == 2.0


def test_thread_probes_run_and_the_faster_count_sets_the_step_time():
    clock = FakeClock(lambda i, t: {2: 3.0, 1: 1.0}[t])
    seconds = planner.time_steps(clock.run_step, ThreadTuner([2, 1]), budget=1000.0, clock=clock)
    assert [t for _, t in clock.ran] == [2, 2, 1, 1]  # each count: one set-up step, one timed
    assert seconds == 1.0


def test_timing_stops_at_its_share_of_the_budget():
    clock = FakeClock(lambda i, t: 10.0)
    planner.time_steps(clock.run_step, ThreadTuner([2, 1]), budget=100.0, clock=clock)
    assert len(clock.ran) == planner.PLAN_WARMUP + 1  # 20 s > 15% of 100 s once past the warm-up


def test_steps_in_keeps_a_margin_and_time_for_evaluations():
    assert planner.steps_in(100.0, 1.0) == 97
    assert planner.steps_in(100.0, 1.0, eval_seconds=10.0, eval_every=10, evaluating=True) == 48  # 97 / (1 + 1)
    # eval_every 0: the default five evaluations whatever the length
    assert planner.steps_in(100.0, 1.0, eval_seconds=10.0, evaluating=True) == 47
    assert planner.steps_in(100.0, 1.0, eval_seconds=10.0, eval_every=10, evaluating=False) == 97
    assert planner.steps_in(0.5, 1.0) < 1


def test_replan_is_due_every_log_every_steps_once_enough_were_timed():
    due = [d for d in range(1, 201) if planner.replan_due(d, 0, 200, log_every=10)]
    assert due == list(range(10, 201, 10))  # 10 >= max(3, 200 // 20)
    # at most 10 checks per run, and never before 3 steps of this call
    assert [d for d in range(1, 31) if planner.replan_due(d, 0, 30, log_every=100)] == list(range(3, 31, 3))
    assert not planner.replan_due(12, 10, 100, log_every=1)  # a resumed call: 2 steps timed so far


def test_fit_steps_from_the_measured_speed():
    fit, per_step = planner.fit_steps(10, 0, 100, train_seconds=20.0, time_left=100.0)
    assert per_step == 2.0 and fit == 10 + 49  # 98 s left at 2 s a step
    # evaluations still due before the current end take their time off
    fit, _ = planner.fit_steps(10, 0, 100, 20.0, 100.0, eval_seconds=4.0, eval_every=30, evaluating=True)
    assert fit == 10 + int((98 - 3 * 4.0) / 2.0)
    assert planner.fit_steps(10, 0, 100, 20.0, time_left=0.0)[0] == 11  # always at least one more step


def test_replan_ignores_noise_and_moves_the_end_otherwise():
    plan = Plan(total_steps=100)
    assert not plan.replan(50, 104)  # within 10% of the 50 steps left
    assert plan == Plan(total_steps=100, schedule_total=100, replans=[])
    assert plan.replan(50, 150)
    assert plan.total_steps == 150 and plan.replans == [[50, 50.0, 150]] and plan.schedule_total == 100


def test_a_replanned_schedule_is_continuous_and_completes_at_the_new_end():
    plan = Plan(total_steps=100)
    before_lr, before_tau = schedules(100, plan.to_dict(), 1.0, 0.05, 0.98)
    plan.replan(40, 70)  # slower than planned: the run must end at 70
    lrs, taus = schedules(70, plan.to_dict(), 1.0, 0.05, 0.98)
    assert lrs[:41] == pytest.approx(before_lr[:41]) and taus[:41] == pytest.approx(before_tau[:41])
    assert lrs[-1] == pytest.approx(before_lr[-1], abs=0.01) and taus[-1] == pytest.approx(before_tau[-1], abs=1e-3)
    assert all(a >= b for a, b in zip(lrs[40:], lrs[41:]))  # still decaying


def test_side_costs_are_linear_in_pixels_through_both_timed_sides():
    costs = planner.side_costs([16, 20, 24], first=1.0, last=2.0)
    assert costs[16] == 1.0 and costs[24] == 2.0
    assert costs[20] == pytest.approx(1.0 + (400 - 256) / (576 - 256))
    assert planner.side_costs([20], first=3.0, last=3.0) == {20: 3.0}


def test_fit_steps_with_weights_prices_the_steps_left_at_their_sides():
    # 10 steps of weight 0.5 took 5 s: 1 s per unit of cost. The 10 steps left weigh 1 each under the plan.
    weights = [0.5] * 10 + [1.0] * 10
    fit, per_unit = planner.fit_steps(10, 0, 20, 5.0, time_left=10.0 / planner.REPLAN_MARGIN, weights=weights)
    assert per_unit == pytest.approx(1.0)
    assert fit == 20  # 10 s left buy 10 steps of weight 1
    # without weights the same measurement would have promised twice as many
    assert planner.fit_steps(10, 0, 20, 5.0, time_left=10.0 / planner.REPLAN_MARGIN)[0] == 30


def test_a_plan_round_trips_and_reads_the_forms_older_versions_stored():
    plan = Plan(total_steps=80, batch_size=256, view_sides=[16, 20], side_seconds={"16": 0.5, "20": 0.7},
                step_seconds=0.6, budget=60.0, images=1000, world_size=2, device="cuda:0", precision="bf16",
                compiled=True)
    plan.replan(10, 40)
    assert Plan.from_dict(plan.to_dict()) == plan
    # the keys a checkpoint holds, in the order the log's "plan" record has always had them
    assert list(plan.to_dict()) == ["total_steps", "schedule_total", "replans", "batch_size", "view_sides",
                                    "side_seconds", "step_seconds", "budget", "images", "world_size", "device",
                                    "precision", "compiled"]
    # before re-plans (no schedule_total, no replans), before progressive resizing and compiling
    old = {"total_steps": 500, "batch_size": 256, "step_seconds": None, "budget": 0.0, "images": 50000,
           "world_size": 1, "device": "cpu", "precision": "fp32", "retired": "a key no longer written"}
    p = Plan.from_dict(old)
    assert (p.total_steps, p.schedule_total, p.replans, p.batch_size, p.images) == (500, 500, [], 256, 50000)
    assert schedules(500, p.to_dict(), 1.0, 0.05, 0.98) == schedules(500, old, 1.0, 0.05, 0.98)
