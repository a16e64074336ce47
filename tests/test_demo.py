"""app/pipeline.py: the one-command pipeline's skip/resume logic (stages replaced by fast fakes); app/demo.py:
the built-in example photos."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from imagegen import make_shapes
from PIL import Image

from app import demo as example
from app.cli import main
from app.demo import DEMO_CLASSES, make_example_photos
from app.pipeline import RunConfig, run


@pytest.fixture
def fake_stages(monkeypatch):
    """Replace pretraining, export and indexing by instant fakes that record how they were called."""
    import byol.export
    import byol.train
    import index.build
    from byol.preprocess import Preprocess
    from index.store import Store

    calls: list[tuple] = []

    def train(cfg):
        ckpt = Path(cfg.out) / "checkpoint.pt"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        ckpt.write_bytes(os.urandom(64))  # every training run gives a different checkpoint
        calls.append(("train", cfg.resume, cfg.budget))
        return ckpt

    def export_onnx(ckpt, out, **kw):
        Path(out).write_bytes(hashlib.sha256(Path(ckpt).read_bytes()).digest())
        calls.append(("export",))

    def build_index(folder, model, index_dir, rebuild=False, log=print, **kw):
        sha = hashlib.sha256(Path(model).read_bytes()).hexdigest()
        if not Store.exists(index_dir):
            Store.create(index_dir, 4, sha, model, Preprocess().to_dict()).close()
        elif rebuild:  # re-embedded in place with the new encoder, as build_index does
            with Store.open(index_dir, writable=True) as s:
                s.reset(4, sha, model, Preprocess().to_dict())
                s.save()
        calls.append(("index", rebuild))
        return {"count": 0, "added": 0, "updated": 0, "removed": 0, "bad": 0}

    monkeypatch.setattr(byol.train, "train", train)
    monkeypatch.setattr(byol.export, "export_onnx", export_onnx)
    monkeypatch.setattr(index.build, "build_index", build_index)
    return calls


def test_stages_skip_rerun_and_resume(tmp_path, fake_stages):
    folder = tmp_path / "photos"
    make_shapes(folder, per_class=2)
    cfg = RunConfig(folder=str(folder), out=str(tmp_path / "work"), budget=30)
    quiet = {"log": lambda *a, **k: None}

    first = run(cfg, **quiet)
    assert (first["pretrain"], first["export"], first["index"]) == ("done", "done", "done")
    assert fake_stages == [("train", False, 30), ("export",), ("index", False)]

    fake_stages.clear()
    again = run(cfg, **quiet)
    assert (again["pretrain"], again["export"], again["index"]) == ("skipped", "skipped", "skipped")
    assert fake_stages == []

    # a new photo: pretrain again, export the new checkpoint, re-embed the index in place
    Image.new("RGB", (40, 30), (9, 9, 9)).save(folder / "new.png")
    fake_stages.clear()
    run(cfg, **quiet)
    assert fake_stages == [("train", False, 30), ("export",), ("index", True)]

    # a pretraining interrupted last time (checkpoint written, not marked done) is resumed
    state_path = tmp_path / "work" / "run.json"
    state = json.loads(state_path.read_text())
    state["pretrain"]["done"] = False
    state_path.write_text(json.dumps(state))
    fake_stages.clear()
    assert run(cfg, **quiet)["pretrain"] == "resumed"
    assert fake_stages[0] == ("train", True, 30)

    # other settings: a fresh run
    fake_stages.clear()
    run(RunConfig(folder=str(folder), out=str(tmp_path / "work"), budget=45), **quiet)
    assert fake_stages[0] == ("train", False, 45)


def test_a_new_encoder_never_replaces_the_file_the_index_uses(tmp_path, fake_stages, monkeypatch):
    """A page serving the index keeps a matching encoder file across `run`: a new encoder goes to a new file,
    the index switches to it when re-embedded, and only then do encoder.onnx and the old file change."""
    import index.build
    from index.store import Store

    folder = tmp_path / "photos"
    make_shapes(folder, per_class=2)
    work = tmp_path / "work"
    cfg = RunConfig(folder=str(folder), out=str(work), budget=30)
    quiet = {"log": lambda *a, **k: None}

    def index_encoder() -> tuple[Path, str]:
        with Store.open(work / "index") as s:
            return Path(s.model_path), s.model_sha256

    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    out = run(cfg, **quiet)
    first, first_sha = index_encoder()
    assert first.parent == work / "encoders" and sha(first) == first_sha
    assert Path(out["model"]) == work / "encoder.onnx" and sha(work / "encoder.onnx") == first_sha

    # a new photo: a new encoder is exported, and indexing is interrupted before it saves
    Image.new("RGB", (40, 30), (9, 9, 9)).save(folder / "new.png")
    build = index.build.build_index
    monkeypatch.setattr(index.build, "build_index", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        run(cfg, **quiet)
    assert index_encoder() == (first, first_sha) and sha(first) == first_sha  # what the page loads still matches
    assert sha(work / "encoder.onnx") == first_sha

    monkeypatch.setattr(index.build, "build_index", build)
    run(cfg, **quiet)
    second, second_sha = index_encoder()
    assert second_sha != first_sha and sha(second) == second_sha and sha(work / "encoder.onnx") == second_sha
    assert sorted(p.name for p in (work / "encoders").iterdir()) == [second.name]  # the old one is gone


def test_run_refuses_an_unsafe_host_before_training(tmp_path, fake_stages, capsys):
    make_shapes(tmp_path / "photos", per_class=2)
    assert main(["run", str(tmp_path / "photos"), "--out", str(tmp_path / "w"), "--host", "0.0.0.0"]) == 2
    assert "--auth" in capsys.readouterr().err and fake_stages == []
    assert main(["run", str(tmp_path / "photos"), "--budget", "soon"]) == 2


def test_run_no_serve_prints_where_things_are(tmp_path, fake_stages, capsys):
    make_shapes(tmp_path / "photos", per_class=2)
    assert main(["run", str(tmp_path / "photos"), "--out", str(tmp_path / "w"), "--no-serve", "--budget", "30s"]) == 0
    out = capsys.readouterr().out
    assert f"byol-search serve {tmp_path / 'w' / 'index'}" in out and "pretrain done" in out


def test_example_photos(tmp_path, monkeypatch):
    folder = make_example_photos(tmp_path / "ex", per_class=2)
    files = sorted(folder.rglob("*.jpg"))
    assert len(files) == 2 * len(DEMO_CLASSES) and {f.parent.name for f in files} == set(DEMO_CLASSES)
    mtimes = [f.stat().st_mtime_ns for f in files]
    make_example_photos(tmp_path / "ex", per_class=2)  # already there: not redrawn
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    # the kinds differ visibly: mean colours of two kinds are far apart
    mean = {k: np.mean([np.asarray(Image.open(f), np.float32).mean((0, 1)) for f in files if f.parent.name == k], 0)
            for k in ("sunset", "ocean")}
    assert np.abs(mean["sunset"] - mean["ocean"]).max() > 40
    with pytest.raises(ValueError, match="unknown example kind"):
        example.example_photo("unicorn", np.random.default_rng(0))
