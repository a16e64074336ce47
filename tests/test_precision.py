"""byol.precision: one meaning of 'auto' for training and evaluation."""

from __future__ import annotations

import pytest
import torch

from byol import evaluate
from byol.precision import autocast_dtype, resolve_precision


@pytest.fixture
def hardware(monkeypatch):
    """Set what the CUDA GPU and the CPU say about bfloat16."""
    def set_(cuda: bool, cpu: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda)
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: cpu, raising=False)
    return set_


@pytest.mark.parametrize("cuda,cpu", [(True, True), (True, False), (False, True), (False, False)])
def test_auto_follows_the_device(hardware, cuda, cpu):
    hardware(cuda, cpu)
    assert resolve_precision("auto", "cuda") == ("bf16" if cuda else "fp32")
    assert resolve_precision("auto", torch.device("cuda", 0)) == ("bf16" if cuda else "fp32")
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu else "fp32")
    assert autocast_dtype("auto", "cuda") == (torch.bfloat16 if cuda else None)
    assert autocast_dtype("auto", "cpu") == (torch.bfloat16 if cpu else None)


def test_explicit_choices_are_kept(hardware):
    hardware(False, False)
    for device in ("cpu", "cuda"):
        assert resolve_precision("bf16", device) == "bf16" and autocast_dtype("bf16", device) is torch.bfloat16
        assert resolve_precision("fp32", device) == "fp32" and autocast_dtype("fp32", device) is None


def test_unknown_precision_names_the_choices():
    with pytest.raises(ValueError, match="choose auto, fp32 or bf16"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="choose auto, fp32 or bf16"):
        autocast_dtype("half", "cpu")


def test_a_torch_without_onednn_means_fp32(monkeypatch):
    def missing() -> bool:
        raise RuntimeError("no mkldnn")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", missing, raising=False)
    assert resolve_precision("auto", "cpu") == "fp32"


def test_training_and_evaluation_use_the_same_rule(hardware):
    from byol.train import TrainConfig, _choose_precision

    hardware(False, True)
    assert evaluate.resolve_precision is resolve_precision
    for p in ("auto", "fp32", "bf16"):
        for device in ("cpu", "cuda"):
            want = autocast_dtype(p, device)
            assert _choose_precision(TrainConfig(precision=p), torch.device(device)) == want
            assert (evaluate.resolve_precision(p, device) == "bf16") == (want is torch.bfloat16)
