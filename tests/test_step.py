"""byol.step: the online network as one module, one training step, snapshots, and the compile fallback."""

from __future__ import annotations

import contextlib

import pytest
import torch

from byol.loss import byol_loss, regression_loss
from byol.model import BYOL, ModelConfig
from byol.optim import build_optimizer
from byol.step import Online, TrainStep


def tiny_model() -> BYOL:
    torch.manual_seed(0)
    return BYOL(ModelConfig(backbone="resnet-tiny", image_size=32, proj_hidden=32, proj_dim=16))


def make_step(model: BYOL, **kw) -> TrainStep:
    online = Online(model)
    optimizer = build_optimizer("lars", online, 0.1, 1.5e-6)
    return TrainStep(model, online, optimizer, contextlib.nullcontext, **kw)


def views() -> torch.Tensor:
    return torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))  # 2 x 4 views


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_online_shares_the_models_modules_and_computes_byol_online():
    model = tiny_model()
    online = Online(model)
    assert [id(p) for p in online.parameters()] == [id(p) for p in model.online_parameters()]
    model.eval()
    x = views()
    p, z = online(x)
    p_ref, z_ref = model.online(x)
    assert torch.equal(p, p_ref) and torch.equal(z, z_ref)


def test_a_step_updates_online_and_moves_the_target_by_ema():
    model = tiny_model()
    step = make_step(model)
    target_before, online_before = params(model.target_encoder), params(model.online_encoder)
    loss, z = step(views(), lr=0.1, tau=0.5)
    assert loss.ndim == 0 and torch.isfinite(loss) and 0 <= loss.item() <= 8 and z.shape == (8, 16)
    online_after, target_after = params(model.online_encoder), params(model.target_encoder)
    name = "stem.0.weight"
    assert not torch.equal(online_after[name], online_before[name])
    expect = 0.5 * target_before[name] + 0.5 * online_after[name]  # xi <- tau xi + (1 - tau) theta
    assert torch.allclose(target_after[name], expect, atol=1e-6)


def test_tau_one_leaves_the_target_weights_alone_and_lr_zero_the_online_ones():
    model = tiny_model()
    step = make_step(model)
    online_w = model.online_projector.net[0].weight.detach().clone()
    target_w = model.target_projector.net[0].weight.detach().clone()
    step(views(), lr=0.0, tau=1.0)
    assert torch.equal(model.online_projector.net[0].weight, online_w)
    assert torch.equal(model.target_projector.net[0].weight, target_w)


def test_a_non_finite_loss_updates_nothing_unless_told_not_to_check():
    model = tiny_model()
    step = make_step(model, loss_fn=lambda *a: byol_loss(*a) * float("nan"))
    before = params(model)
    loss, _ = step(views(), lr=0.1, tau=0.9)
    assert not torch.isfinite(loss)
    after = params(model)
    # only BatchNorm's running statistics moved (the forward ran); no weight did
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k and "num_batches" not in k)
    assert step.weights_finite()
    step(views(), lr=0.1, tau=0.9, check_finite=False)
    assert not step.weights_finite()


def test_snapshot_and_restore_round_trip():
    model = tiny_model()
    step = make_step(model)
    step(views(), lr=0.1, tau=0.9)
    saved, before = step.snapshot(), params(model)
    step(views(), lr=0.1, tau=0.9)
    assert not torch.equal(params(model)["online_encoder.stem.0.weight"], before["online_encoder.stem.0.weight"])
    step.restore(saved)
    after = params(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_failed_first_compile_falls_back_to_eager_once(monkeypatch):
    def broken_compile(fn, *a, **kw):
        def run(*args, **kwargs):
            raise RuntimeError("no C++ compiler found\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    eager_model, model = tiny_model(), tiny_model()
    messages = []
    step = make_step(model, compile=True, on_compile_failure=messages.append)
    assert step.compiled
    loss, _ = step(views(), lr=0.1, tau=0.9)
    eager_loss, _ = make_step(eager_model)(views(), lr=0.1, tau=0.9)
    assert messages == ["torch.compile failed (RuntimeError: no C++ compiler found); training without it "
                        "(compile=off hides this)"]
    assert not step.compiled and torch.equal(loss, eager_loss)
    a, b = params(eager_model), params(model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_errors_after_a_working_first_call_are_raised(monkeypatch):
    calls = {"n": 0}

    def flaky_compile(fn, *a, **kw):
        def run(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] > 2:  # the online and the target forward of the first step work
                raise RuntimeError("out of memory")
            return fn(*args, **kwargs)
        return run

    monkeypatch.setattr(torch, "compile", flaky_compile)
    messages = []
    step = make_step(tiny_model(), compile=True, on_compile_failure=messages.append)
    step(views(), lr=0.1, tau=0.9)
    with pytest.raises(RuntimeError, match="out of memory"):
        step(views(), lr=0.1, tau=0.9)
    assert messages == [] and step.compiled


def test_small_views_join_the_loss_as_the_mean_over_view_pairs():
    model = tiny_model()
    x = views()
    small = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(2))  # 2 small views x 4 images
    online = Online(model)
    with torch.no_grad():  # train-mode forwards, as the step runs them (BatchNorm on batch statistics)
        p, _ = online(x)
        zt = model.target(x)
        ps, _ = online(small)
    p1, p2 = p.chunk(2)
    z1, z2 = zt.chunk(2)
    pairs = [regression_loss(p1, z2), regression_loss(p2, z1)]
    pairs += [regression_loss(pm, zt_) for pm in ps.chunk(2) for zt_ in (z1, z2)]
    expect = 2 * torch.stack(pairs).mean()  # 6 pairs, on the two-view loss's scale
    loss, _ = make_step(model)(x, lr=0.1, tau=0.99, small=small)
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)
    # and the small views move the online weights differently from the two views alone
    a, b = tiny_model(), tiny_model()
    make_step(a)(x, lr=0.1, tau=0.99)
    make_step(b)(x, lr=0.1, tau=0.99, small=small)
    assert not torch.equal(a.online_encoder.stem[0].weight, b.online_encoder.stem[0].weight)
