"""byol.train and `byol-search pretrain`: tiny runs on generated folders (CPU, seconds each)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from imagegen import make_shapes

import byol.train as train_mod
from app.cli import main
from byol.augment import small_views, two_views
from byol.checkpoint import load_checkpoint, load_encoder
from byol.cpu import GemmGradConv2d, ThreadTuner, use_gemm_weight_grads
from byol.loss import byol_loss
from byol.model import ModelConfig
from byol.train import (
    Parts,
    TrainConfig,
    TrainingDiverged,
    TrainingInterrupted,
    parse_duration,
    preview,
    train,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these steps are tiny, and a second thread only adds synchronisation."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(folder, out, **kw) -> TrainConfig:
    """A config small enough for a test: narrow heads, small batch, fp32 (exact on any CPU)."""
    model = ModelConfig(backbone="resnet-tiny", image_size=32, proj_hidden=64, proj_dim=32)
    kw = {"batch_size": 8, "steps": 4, "log_every": 1, "precision": "fp32", "progress": False, "workers": 0,
          "threads": 1, **kw}
    return TrainConfig(folder=str(folder), out=str(out), model=model, **kw)


def records(run_dir: Path, kind: str | None = None) -> list[dict]:
    recs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in recs if kind is None or r["kind"] == kind]


def test_tiny_run_writes_the_run_folder(shapes_folder, tmp_path):
    out = tmp_path / "run"
    path = train(tiny(shapes_folder, out, precision="auto"))
    assert path == out / "checkpoint.pt"
    for name in ("checkpoint.pt", "log.jsonl", "curves.png", "bad_files.jsonl"):
        assert (out / name).is_file(), name
    tr = records(out, "train")
    assert [r["step"] for r in tr] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and 0 <= r["loss"] <= 8 for r in tr)
    assert all(r.keys() >= {"lr", "tau", "collapse_std", "img_per_s", "elapsed", "epoch"} for r in tr)
    ckpt = load_checkpoint(path)  # weights_only=True
    assert ckpt["step"] == 4 and ckpt["config"]["model"]["proj_hidden"] == 64
    assert ckpt["preprocess"]["size"] == 32 and ckpt["extra"]["plan"]["total_steps"] == 4
    encoder, pre, info = load_encoder(path)
    assert info["dim"] == 256 and pre.size == 32
    assert encoder(torch.randn(2, 3, 32, 32)).shape == (2, 256)


def _params(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_resume_is_exact(shapes_folder, tmp_path):
    straight = train(tiny(shapes_folder, tmp_path / "a", steps=4))
    cfg = tiny(shapes_folder, tmp_path / "b", steps=4, stop_at=2)
    assert load_checkpoint(train(cfg))["step"] == 2
    cfg.stop_at, cfg.resume = 0, True
    resumed = train(cfg)
    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=0), k
    assert [r["step"] for r in records(tmp_path / "b", "train")] == [1, 2, 3, 4]


def test_a_checkpoint_whose_plan_an_older_version_wrote_resumes_exactly(shapes_folder, tmp_path):
    from byol.checkpoint import save_checkpoint

    straight = train(tiny(shapes_folder, tmp_path / "a", steps=4))
    cfg = tiny(shapes_folder, tmp_path / "b", steps=4, stop_at=2)
    path = train(cfg)
    ckpt = load_checkpoint(path)
    # the plan as written before budget re-plans, progressive resizing and compiling
    old = ("total_steps", "batch_size", "step_seconds", "budget", "images", "world_size", "device", "precision")
    ckpt["extra"]["plan"] = {k: ckpt["extra"]["plan"][k] for k in old}
    save_checkpoint(path, ckpt)
    cfg.stop_at, cfg.resume = 0, True
    resumed = train(cfg)
    a, b = _params(straight), _params(resumed)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=0), k
    plan = load_checkpoint(resumed)["extra"]["plan"]
    assert plan["total_steps"] == plan["schedule_total"] == 4 and plan["replans"] == []


def test_nan_loss_is_skipped_once_and_stops_when_repeated(shapes_folder, tmp_path):
    calls = {"n": 0}

    def nan_on_second(*args):
        calls["n"] += 1
        loss = byol_loss(*args)
        return loss * float("nan") if calls["n"] == 2 else loss

    out = train(tiny(shapes_folder, tmp_path / "nan"), Parts(loss_fn=nan_on_second))
    skips = records(tmp_path / "nan", "skip")
    assert [s["step"] for s in skips] == [2]
    assert all(torch.isfinite(v.float()).all() for v in _params(out).values())

    with pytest.raises(TrainingDiverged, match="not finite for 3 steps"):
        train(tiny(shapes_folder, tmp_path / "nan2", steps=6), Parts(loss_fn=lambda *a: byol_loss(*a) * float("nan")))


def test_three_image_folder_trains(tmp_path, capsys):
    folder = tmp_path / "three"
    make_shapes(folder, per_class=1)
    train(tiny(folder, tmp_path / "run", batch_size=256, steps=3))
    assert "training with batch 3" in capsys.readouterr().err
    assert records(tmp_path / "run", "plan")[0]["batch_size"] == 3
    assert len(records(tmp_path / "run", "train")) == 3


def test_hazard_folder_reports_bad_files(hazard_folder, tmp_path):
    folder, expect = hazard_folder
    out = tmp_path / "run"
    train(tiny(folder, out, steps=2))
    bad = [json.loads(line) for line in (out / "bad_files.jsonl").read_text().splitlines()]
    bad_names = {Path(b["path"]).name for b in bad}
    assert bad_names == {name for name, ok in expect.items() if not ok}
    assert all(b["reason"] for b in bad)
    assert records(out, "plan")[0]["images"] == sum(expect.values())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_saves_and_resume_finishes(shapes_folder, tmp_path, sig):
    calls = {"n": 0}
    before = signal.getsignal(sig)

    def interrupt_on_second(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), sig)  # the step in progress finishes, then the run saves
        return two_views(*args)

    cfg = tiny(shapes_folder, tmp_path / "run", steps=5)
    with pytest.raises(TrainingInterrupted, match="step 2 of 5"):
        train(cfg, Parts(views_fn=interrupt_on_second))
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 2
    assert signal.getsignal(sig) == before  # the run gives the signal back
    cfg.resume = True
    assert load_checkpoint(train(cfg))["step"] == 5


class FakeClock:
    """A run's clock (Parts.clock) for byol.train and its planner: every reading advances `tick` seconds, so
    a budget run plans and re-plans the same way however busy the machine is."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_budget_plans_the_steps(shapes_folder, tmp_path):
    clock = FakeClock(tick=0.05)
    out = tmp_path / "run"
    train(tiny(shapes_folder, out, steps=0, budget=4.0, log_every=100), Parts(clock=clock))
    plan = records(out, "plan")[0]
    assert plan["total_steps"] >= 1 and plan["step_seconds"] == pytest.approx(clock.tick)  # one reading a step
    # the run ends where it was planned to, or where the last re-plan moved the end (the speed drifted)
    total = ([plan] + records(out, "replan"))[-1]["total_steps"]
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == total == ckpt["extra"]["plan"]["total_steps"]
    assert records(out, "end")[0]["step"] == total


@pytest.mark.parametrize("minutes, saved", [(1.0, [1, 2, 3, 4]), (0.0, [4])])
def test_checkpoints_also_follow_the_clock(shapes_folder, tmp_path, minutes, saved):
    # every clock reading advances 100 s: with checkpoint_minutes=1 each step is "a minute later" and saves,
    # though checkpoint_every is far away; 0 saves by steps only (here: at the end)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    steps: list[int] = []
    written: set[tuple[int, float]] = set()

    def seen() -> None:  # a checkpoint written since the last look: each save holds a later elapsed time
        if ckpt.is_file():
            c = load_checkpoint(ckpt)
            if (c["step"], c["extra"]["elapsed"]) not in written:
                written.add((c["step"], c["extra"]["elapsed"]))
                steps.append(c["step"])

    def views_after_saves(*args):  # each step starts by reading its views: what was saved after the last
        seen()
        return two_views(*args)

    train(tiny(shapes_folder, tmp_path / "run", steps=4, checkpoint_every=500, checkpoint_minutes=minutes),
          Parts(views_fn=views_after_saves, clock=FakeClock(tick=100.0)))
    seen()  # the final checkpoint
    assert steps == saved


def test_compile_auto_only_for_runs_that_pay_it_back():
    want = train_mod._want_compile
    assert not want(TrainConfig(steps=4)) and want(TrainConfig(steps=train_mod.COMPILE_MIN_STEPS))
    assert not want(TrainConfig(budget=60.0)) and want(TrainConfig(budget=train_mod.COMPILE_MIN_BUDGET))
    assert want(TrainConfig(steps=4, compile="on")) and not want(TrainConfig(budget=3600.0, compile="off"))
    with pytest.raises(ValueError, match="compile"):
        want(TrainConfig(steps=4, compile="yes"))


def test_failed_compile_falls_back_to_eager(shapes_folder, tmp_path, monkeypatch, capsys):
    eager = train(tiny(shapes_folder, tmp_path / "eager", steps=3, compile="off"))

    def broken_compile(fn, *a, **kw):
        def run(*args, **kwargs):
            raise RuntimeError("no C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    fallback = train(tiny(shapes_folder, tmp_path / "fallback", steps=3, compile="on"))
    assert "torch.compile failed (RuntimeError: no C++ compiler found)" in capsys.readouterr().err
    assert records(tmp_path / "fallback", "end")[0]["compiled"] is False
    assert "torch.compile failed" in records(tmp_path / "fallback", "warning")[0]["message"]
    a, b = _params(eager), _params(fallback)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same run as eager, step for step


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="torch.compile needs a C++ compiler")
def test_compiled_run_matches_eager(shapes_folder, tmp_path):
    eager = train(tiny(shapes_folder, tmp_path / "eager", steps=2, compile="off"))
    compiled = train(tiny(shapes_folder, tmp_path / "compiled", steps=2, compile="on"))
    assert records(tmp_path / "compiled", "end")[0]["compiled"] is True
    la = [r["loss"] for r in records(tmp_path / "eager", "train")]
    lb = [r["loss"] for r in records(tmp_path / "compiled", "train")]
    assert lb == pytest.approx(la, abs=1e-4)
    a, b = _params(eager), _params(compiled)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-3) for k in a)


def test_crop_size_trains_smaller_views_at_the_same_image_size(shapes_folder, tmp_path):
    seen = []
    spy = Parts(views_fn=lambda x, cfg, gen: seen.append(cfg.image_size) or two_views(x, cfg, gen))
    path = train(tiny(shapes_folder, tmp_path / "run", steps=2, crop_size=24), spy)
    assert seen == [24, 24]
    ckpt = load_checkpoint(path)
    assert ckpt["preprocess"]["size"] == 32 and ckpt["config"]["crop_size"] == 24
    encoder, pre, _ = load_encoder(path)
    assert pre.size == 32 and encoder(torch.randn(2, 3, 32, 32)).shape == (2, 256)


def test_preview_leaves_the_callers_config_alone(shapes_folder, tmp_path):
    cfg = tiny(shapes_folder, tmp_path / "run")
    assert cfg.augment.image_size == 32 and cfg.view_size == 20
    assert preview(cfg, pairs=2) == tmp_path / "run" / "preview.png"
    assert (tmp_path / "run" / "preview.png").is_file()
    assert cfg.augment.image_size == 32  # the views were made at 20 px on a copy


def test_default_views_are_five_eighths_of_the_image_size():
    assert TrainConfig().view_size == 20 and TrainConfig(crop_size=32).view_size == 32
    assert TrainConfig(model=ModelConfig(image_size=128)).view_size == 80
    # a checkpoint's config from before crop_size keeps training on views of the size it stored
    old = {"model": {"image_size": 64}, "augment": {"image_size": 64}, "steps": 4}
    assert TrainConfig.from_dict(old).view_size == 64


def test_thread_tuner_keeps_the_faster_count():
    tuner = ThreadTuner([2, 1], recheck=10)
    speed = {2: 3.0, 1: 1.0}  # a busy machine: one thread is faster
    used = []
    for _ in range(30):
        used.append(tuner.next())
        tuner.record(speed[tuner.current])
    assert tuner.settled and tuner.best() == 1
    assert used[:4] == [2, 2, 1, 1]  # warm-up, then two steps per candidate (warm-up counts for the first)
    assert used[4:10] == [1] * 6 and used[10] == 2  # the re-check at step 10 tries the other count
    assert ThreadTuner([3]).next() == 3 and ThreadTuner([3]).settled


@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (1, 2)])
def test_gemm_weight_grad_conv_matches_conv2d(k, stride):
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(8, 16, k, stride, k // 2, bias=False)
    ours = torch.nn.Conv2d(8, 16, k, stride, k // 2, bias=False)
    ours.load_state_dict(ref.state_dict())
    ours.__class__ = GemmGradConv2d
    x1 = torch.randn(4, 8, 8, 8, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = ref(x1), ours(x2)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    assert torch.allclose(y1, y2, atol=1e-6)
    assert torch.allclose(ref.weight.grad, ours.weight.grad, atol=1e-4)
    assert torch.allclose(x1.grad, x2.grad, atol=1e-5)


def test_gemm_weight_grads_switch_only_small_maps():
    from byol.model import build_backbone

    net, _ = build_backbone("resnet-tiny", 32)
    assert use_gemm_weight_grads(net, 32) == 6  # stages 3 and 4 (8x8, 4x4): 2 convs + a shortcut each
    assert isinstance(net.layers[3].conv1, GemmGradConv2d) and type(net.stem[0]) is torch.nn.Conv2d
    assert set(net.state_dict()) == set(build_backbone("resnet-tiny", 32)[0].state_dict())


def test_kNN_monitor_logs_evaluations(labelled_folder, tmp_path):
    out = tmp_path / "run"
    train(tiny(labelled_folder / "train", out, steps=2, eval_folder=str(labelled_folder), eval_every=1))
    evals = records(out, "eval")
    assert [e["step"] for e in evals] == [0, 1, 2]
    assert all(0.0 <= e["knn_top1"] <= 1.0 for e in evals)


@pytest.mark.parametrize(
    "text,seconds", [("90s", 90), ("20m", 1200), ("1.5h", 5400), ("1h30m", 5400), (" 2 m ", 120)]
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["20", "abc", "5x", "-3m", "", "20m junk"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="90s, 20m"):
        parse_duration(text)


def test_zero_budget_is_rejected():
    with pytest.raises(ValueError, match="more than 0"):
        parse_duration("0m")


def _cli(*args) -> list[str]:
    return ["pretrain", *map(str, args), "--proj-hidden", "64", "--batch-size", "8", "--precision", "fp32",
            "--no-progress", "--workers", "0", "--threads", "1"]


def test_cli_pretrain_preview_and_errors(shapes_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_cli(shapes_folder, "--out", out, "--steps", "2")) == 0
    assert (out / "checkpoint.pt").is_file() and (out / "curves.png").is_file()
    assert main(_cli(shapes_folder, "--out", out, "--preview")) == 0
    assert (out / "preview.png").is_file()
    capsys.readouterr()

    assert main(_cli(tmp_path / "missing", "--out", out, "--steps", "2")) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(_cli(shapes_folder, "--out", out, "--budget", "20")) == 2
    assert "90s, 20m" in capsys.readouterr().err
    assert main(_cli("--out", tmp_path / "empty-run", "--resume")) == 2
    assert "no checkpoint" in capsys.readouterr().err
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert main(_cli(empty, "--out", tmp_path / "r2", "--steps", "2")) == 2
    assert "no image files" in capsys.readouterr().err


def test_ddp_two_processes_gloo(shapes_folder, tmp_path):
    """Two CPU processes (gloo) with torchrun's environment: each trains on its own shard, rank 0 writes.

    The processes are started directly with the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT), which saves the launcher's own start-up. Rank 0 binds MASTER_PORT itself, so a port
    that another program takes first makes it fail with "address already in use": the pair is then started
    again on another port (the kernel hands out ephemeral ports in turn, so a second clash is unlikely).
    """
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "app.cli", *_cli(shapes_folder, "--out", out, "--steps", "2", "--log-every", "1")]
    for _attempt in range(3):
        port = _unused_port()
        procs = []
        for rank in range(2):
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "RANK": str(rank),
                   "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(port)}
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        results = [p.communicate(timeout=120) for p in procs]
        clash = any("address already in use" in err.lower() for _, err in results)
        if not clash:
            break
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 2 and ckpt["extra"]["plan"]["world_size"] == 2
    assert records(out, "plan")[0]["batch_size"] == 8  # global batch: 4 per process
    assert len(records(out, "train")) == 2  # only rank 0 logs


def _unused_port() -> int:
    """A port no one listens on now (rank 0 binds it later; see the DDP test for a clash)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_progressive_resizing_grows_the_views_stage_by_stage(shapes_folder, tmp_path):
    seen = []
    spy = Parts(views_fn=lambda x, cfg, gen: seen.append(cfg.image_size) or two_views(x, cfg, gen))
    path = train(tiny(shapes_folder, tmp_path / "run", steps=6, crop_size=24, view_start=16, view_stages=3), spy)
    assert seen == [16, 16, 20, 20, 24, 24]
    ckpt = load_checkpoint(path)
    assert ckpt["preprocess"]["size"] == 32 and ckpt["extra"]["plan"]["view_sides"] == [16, 20, 24]
    with pytest.raises(ValueError, match="view_start"):
        train(tiny(shapes_folder, tmp_path / "bad", crop_size=24, view_start=28))


def test_progressive_budget_run_times_both_ends(shapes_folder, tmp_path):
    out = tmp_path / "run"
    train(tiny(shapes_folder, out, steps=0, budget=4.0, log_every=100, crop_size=24, view_start=16,
               view_stages=2))
    plan = records(out, "plan")[0]
    costs = plan["side_seconds"]
    assert set(costs) == {"16", "24"} and all(c > 0 for c in costs.values())
    assert plan["step_seconds"] == pytest.approx((costs["16"] + costs["24"]) / 2)
    assert load_checkpoint(out / "checkpoint.pt")["step"] == ([plan] + records(out, "replan"))[-1]["total_steps"]


def test_multi_crop_trains_small_views_beside_the_two(shapes_folder, tmp_path):
    seen = []

    def spy(*args):
        small = small_views(*args)
        seen.append(tuple(small.shape))
        return small

    path = train(tiny(shapes_folder, tmp_path / "run", steps=2, small_crops=2), Parts(small_views_fn=spy))
    assert seen == [(16, 3, 12, 12)] * 2  # 2 small views x batch 8, 12 px beside 20 px views
    ckpt = load_checkpoint(path)
    assert ckpt["config"]["small_crops"] == 2 and ckpt["preprocess"]["size"] == 32
    assert all(math.isfinite(r["loss"]) for r in records(tmp_path / "run", "train"))
    with pytest.raises(ValueError, match="small_crops"):
        train(tiny(shapes_folder, tmp_path / "bad", small_crops=1, small_crop_size=24))
