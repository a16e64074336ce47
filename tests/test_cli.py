"""app/cli.py and app/flags.py: pretraining flags made from TrainConfig, and errors mapped once in main()."""

from __future__ import annotations

import dataclasses

import pytest

from app import cli, flags
from app.cli import UsageError, build_parser, main
from byol.model import BACKBONES, ModelConfig
from byol.optim import OPTIMIZERS
from byol.train import TrainConfig, TrainingDiverged, TrainingInterrupted


def _pretrain_parser():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["pretrain"]


def test_every_config_field_is_a_flag_unless_listed():
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"model"}
    names |= {f"model.{f.name}" for f in dataclasses.fields(ModelConfig)}
    assert {f.name for f in flags.pretrain_fields()} == names - set(flags.NOT_FLAGS)
    assert set(flags.NOT_FLAGS) <= names | {"augment"}  # nothing listed that is gone
    options = {o for a in _pretrain_parser()._actions for o in a.option_strings}
    for flag in ("--out", "--budget", "--steps", "--resume", "--preview", "--eval-folder", "--eval-every", "--hf",
                 "--hf-split", "--backbone", "--image-size", "--crop-size", "--proj-hidden", "--init",
                 "--batch-size", "--optimizer", "--base-lr", "--warmup", "--weight-decay", "--base-tau", "--device",
                 "--precision", "--no-channels-last", "--compile", "--threads", "--workers", "--cache-dir", "--seed",
                 "--log-every", "--checkpoint-every", "--no-progress"):
        assert flag in options  # every flag users have today


def test_defaults_and_help_come_from_the_dataclass():
    fields = {f.name: f for f in flags.pretrain_fields()}
    defaults = TrainConfig()
    for name, f in fields.items():
        owner = defaults.model if name.startswith("model.") else defaults
        assert f.default == getattr(owner, name.split(".")[-1]), name  # the literal read from the source
    assert fields["log_every"].comment.startswith("steps between log lines")
    assert "paper: 4096" in fields["model.proj_hidden"].comment
    actions = {a.dest: a for a in _pretrain_parser()._actions}
    assert actions["backbone"].choices == BACKBONES and actions["optimizer"].choices == OPTIMIZERS
    assert "(default 10)" in actions["log_every"].help and "(default 256)" in actions["batch_size"].help
    assert "0.625" in actions["crop_size"].help  # a constant a comment names is shown by its value


def test_flags_given_reach_the_config_and_the_others_keep_its_defaults():
    args = _pretrain_parser().parse_args(["photos", "--out", "r", "--backbone", "resnet18", "--image-size", "64",
                                          "--base-lr", "0.5", "--no-progress", "--no-channels-last"])
    cfg = TrainConfig(folder="photos")
    flags.config_from_args(args, cfg)
    assert (cfg.model.backbone, cfg.model.image_size, cfg.base_lr) == ("resnet18", 64, 0.5)
    assert cfg.progress is False and cfg.channels_last is False and cfg.out == "r"
    assert (cfg.batch_size, cfg.seed, cfg.model.proj_hidden, cfg.resume) == (256, 0, 4096, False)


@pytest.mark.parametrize(("error", "status", "text"), [
    (UsageError("--k must be positive"), 2, "error: --k must be positive"),
    (FileNotFoundError("no such file: x"), 2, "error: no such file: x"),
    (TrainingDiverged("the loss was not finite"), 1, "error: the loss was not finite"),
    (TrainingInterrupted("interrupted at step 3 of 9"), 130,
     "interrupted at step 3 of 9 (byol-search pretrain --out r --resume)"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_errors_are_mapped_once_in_main(monkeypatch, capsys, error, status, text):
    def fail(args):
        raise error

    monkeypatch.setattr(cli, "_run_pretrain", fail)
    assert main(["pretrain", "photos", "--out", "r"]) == status
    assert text in capsys.readouterr().err


def test_an_unexpected_error_is_not_hidden(monkeypatch):
    monkeypatch.setattr(cli, "_run_pretrain", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["pretrain", "photos", "--out", "r"])


def test_a_reader_that_stops_early_ends_the_command_quietly():
    """`byol-search search ... | head -1`: when the reader closes the pipe, the command stops with the status
    a shell gives such a tool (141) and no 'Broken pipe' error or traceback."""
    import subprocess
    import sys

    code = ("import app.cli as c\n"
            "c._run_pretrain = lambda args: [print('photo', i) for i in range(10**6)] and 0\n"
            "raise SystemExit(c.main(['pretrain', 'photos', '--out', 'r']))\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"photo 0\n"
    p.stdout.close()  # what `head -1` does after its line
    _, err = p.communicate(timeout=120)
    assert p.returncode == 141 and err == b""


def test_user_mistakes_before_any_work(tmp_path, capsys):
    assert main(["pretrain", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["pretrain", str(tmp_path), "--out", str(tmp_path / "r"), "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err
    assert main(["pretrain", str(tmp_path), "--out", str(tmp_path / "r"), "--steps", "3", "--budget", "1m"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["run", str(tmp_path), "--budget", "soon"]) == 2
    assert "error: --budget:" in capsys.readouterr().err
