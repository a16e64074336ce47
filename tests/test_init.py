"""byol.init and `--init`: where a pretraining run starts. Nothing here touches the network."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from checkpoints import make_checkpoint
from test_train import tiny

import byol.init as init_mod
from app.cli import main
from byol.checkpoint import load_checkpoint, load_encoder
from byol.init import InitError, apply_state, export_base, resolve_init, start_from
from byol.model import BYOL, ModelConfig, build_backbone
from byol.train import train


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """torch's download cache in a private folder, and every download refused: tests never go online."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def refuse(*a, **k):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def _model(image_size: int = 32, backbone: str = "resnet-tiny", seed: int = 1) -> BYOL:
    torch.manual_seed(seed)
    return BYOL(ModelConfig(backbone=backbone, image_size=image_size, proj_hidden=64, proj_dim=32))


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_none_is_random_weights():
    init = resolve_init("none", "resnet-tiny", 32)
    assert init.state is None and init.info == {"kind": "none"}
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert start_from(m, init) == {"kind": "none"}
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_checkpoint_path_starts_online_and_target_encoders_with_fresh_heads(tmp_path):
    ckpt = make_checkpoint(tmp_path / "earlier.pt", seed=7)
    earlier = load_checkpoint(ckpt)["model"]
    m = _model()
    info = start_from(m, resolve_init(str(ckpt), "resnet-tiny", 32))
    enc = m.online_encoder.state_dict()
    assert all(torch.equal(enc[k], earlier[f"online_encoder.{k}"]) for k in enc)
    assert _same(m.online_encoder, m.target_encoder)
    # the projector is not taken from the file: its weights stay the fresh ones
    w = m.online_projector.net[0].weight
    assert not torch.equal(w, earlier["online_projector.net.0.weight"])
    assert info["kind"] == "path" and info["loaded"] == info["of"] and len(info["sha256"]) == 64


def test_torchvision_state_dict_loads_and_skips_the_classifier(tmp_path):
    net = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    m = _model(image_size=128, backbone="resnet18")
    info = start_from(m, resolve_init(str(path), "resnet18", 128))
    assert torch.equal(m.online_encoder.conv1.weight, net.conv1.weight)
    assert torch.equal(m.target_encoder.layer4[1].bn2.running_var, net.layer4[1].bn2.running_var)
    assert info["skipped"] == [] and info["loaded"] == info["of"]


def test_small_image_stem_is_reported_not_silently_mixed(tmp_path):
    """ImageNet's 7x7 stem does not fit the 3x3 stem of a <=64 px encoder: skipped, and said so."""
    net = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    m = _model(image_size=32, backbone="resnet18")
    fresh_conv1 = m.online_encoder.conv1.weight.clone()
    info = start_from(m, resolve_init(str(path), "resnet18", 32))
    assert info["skipped"] == ["conv1.weight"]
    assert torch.equal(m.online_encoder.conv1.weight, fresh_conv1)
    assert torch.equal(m.online_encoder.layer1[0].conv1.weight, net.layer1[0].conv1.weight)


def test_a_file_for_another_backbone_is_refused(tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.pt")
    with pytest.raises(InitError, match="resnet-tiny encoder; add --backbone resnet-tiny"):
        resolve_init(str(ckpt), "resnet18", 32)
    other, _ = build_backbone("resnet-small", 32)
    torch.save(other.state_dict(), tmp_path / "small.pth")
    with pytest.raises(InitError, match="tensors match"):
        start_from(_model(), resolve_init(str(tmp_path / "small.pth"), "resnet-tiny", 32))


@pytest.mark.parametrize("content", [b"not a torch file", None])
def test_bad_paths_are_clear_errors(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InitError, match="bad.pt"):
        resolve_init(str(path), "resnet-tiny", 32)


def test_imagenet_offline_without_cache_says_what_to_do():
    with pytest.raises(InitError, match=r"could not download .*resnet18-.*\.pth.*copy that file to"):
        resolve_init("imagenet", "resnet18", 224)
    with pytest.raises(InitError, match="not resnet-tiny"):
        resolve_init("imagenet", "resnet-tiny", 32)


def test_imagenet_loads_from_torch_cache_offline(tmp_path):
    """A file already in torch's cache (downloaded once on an online machine) is used without the network."""
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    net = torchvision.models.resnet18(weights=None)
    torch.save(net.state_dict(), cached)
    m = _model(image_size=224, backbone="resnet18")
    info = start_from(m, resolve_init("imagenet", "resnet18", 224))
    assert info["kind"] == "imagenet" and info["loaded"] == info["of"]
    assert torch.equal(m.online_encoder.layer3[0].conv2.weight, net.layer3[0].conv2.weight)


def test_export_base_round_trip_and_card(tmp_path, monkeypatch):
    ckpt = make_checkpoint(tmp_path / "run" / "checkpoint.pt", seed=3)
    card = export_base(ckpt, tmp_path / "weights", {"data": "generated", "command": "test",
                                                    "continues": {"sha256": "ab12", "steps": 7}})
    pt = tmp_path / "weights" / "base-resnet-tiny.pt"
    assert pt.stat().st_size == card["bytes"] < 20 * 2**20
    assert json.loads((tmp_path / "weights" / "base-resnet-tiny.json").read_text())["sha256"] == card["sha256"]
    text = (tmp_path / "weights" / "base-resnet-tiny.md").read_text()
    assert "generated" in text and "- **continues**: sha256: ab12; steps: 7" in text
    monkeypatch.setattr(init_mod, "BASE_DIR", tmp_path / "weights")
    m = _model()
    info = start_from(m, resolve_init("base", "resnet-tiny", 32))
    assert info["kind"] == "base" and info["sha256"] == card["sha256"]
    enc, _, _ = load_encoder(ckpt)
    assert _same(enc, m.online_encoder.eval())
    with pytest.raises(InitError, match="no base encoder is shipped for resnet18"):
        resolve_init("base", "resnet18", 32)
    with pytest.raises(InitError, match="--image-size 64 or less"):
        resolve_init("base", "resnet-tiny", 128)


def test_shipped_base_loads_offline():
    """The base shipped in the package loads with no network, fits its size limit and matches its card."""
    card = init_mod.base_card("resnet-tiny")
    if card is None:
        pytest.skip("no base encoder shipped in this tree")
    path = init_mod.base_path("resnet-tiny")
    assert path.stat().st_size <= 20 * 2**20
    info = start_from(_model(), resolve_init("base", "resnet-tiny", 32))
    assert info["sha256"] == card["sha256"] and info["loaded"] == info["of"]


def test_apply_state_casts_dtype():
    enc, _ = build_backbone("resnet-tiny", 32)
    half = {k: v.half() if v.is_floating_point() else v for k, v in enc.state_dict().items()}
    fresh, _ = build_backbone("resnet-tiny", 32)
    report = apply_state(fresh, half, "half.pt")
    assert report["loaded"] == report["of"] and fresh.stem[0].weight.dtype == torch.float32


def test_train_records_the_init_and_continues_from_it(shapes_folder, tmp_path):
    first = train(tiny(shapes_folder, tmp_path / "a", steps=2))
    second = train(tiny(shapes_folder, tmp_path / "b", steps=1, init=str(first), base_lr=0.0))
    ck = load_checkpoint(second)
    assert ck["config"]["init"] == str(first)
    assert ck["extra"]["init"]["kind"] == "path" and ck["extra"]["init"]["loaded"] > 0
    # lr 0: the encoder's weights are exactly the init's (BatchNorm statistics move with the data)
    a, b = load_checkpoint(first)["model"], ck["model"]
    w = "online_encoder.layers.3.conv2.weight"
    assert torch.equal(a[w], b[w])
    _, _, info = load_encoder(second)
    assert info["init"]["kind"] == "path"


def test_cli_init_error_is_a_message(shapes_folder, tmp_path, capsys):
    code = main(["pretrain", str(shapes_folder), "--out", str(tmp_path / "r"), "--steps", "1",
                 "--init", str(tmp_path / "missing.pt"), "--no-progress"])
    assert code == 2
    assert "missing.pt: no such file" in capsys.readouterr().err


def test_auto_takes_the_base_when_it_fits(tmp_path, monkeypatch):
    monkeypatch.setattr(init_mod, "BASE_DIR", tmp_path / "weights")
    assert resolve_init("auto", "resnet-tiny", 32).info["kind"] == "none"  # nothing shipped
    export_base(make_checkpoint(tmp_path / "c.pt"), tmp_path / "weights", {"data": "generated"})
    assert resolve_init("auto", "resnet-tiny", 32).info["kind"] == "base"
    assert resolve_init("auto", "resnet-tiny", 128).info["kind"] == "none"  # the other stem
    assert resolve_init("auto", "resnet18", 32).info["kind"] == "none"
