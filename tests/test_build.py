"""Building and updating an index from a folder, and the index/search/duplicates commands."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
import pytest
from checkpoints import exported_encoder
from PIL import Image

from app.cli import main
from index.build import build_index
from index.embed import Embedder
from index.store import EncoderMismatch, Store, StoreError


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, shapes_folder):
    return exported_encoder(tmp_path_factory, check_folder=shapes_folder)


class CountingEmbedder(Embedder):
    """Counts the photos that go through the model."""

    embedded = 0

    def embed_array(self, x, batch_size=64):
        self.embedded += len(x)
        return super().embed_array(x, batch_size)


def quiet(*a, **k):
    pass


def test_build_then_update_incrementally(encoder, fresh_shapes, tmp_path):
    folder, index_dir = fresh_shapes, tmp_path / "idx"
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    emb = CountingEmbedder(encoder[1])
    s = build_index(folder, encoder[1], index_dir, batch_size=4, embedder=emb, log=quiet)
    n = len(list(folder.rglob("*.*"))) - 1
    assert (s["added"], s["bad"], s["count"]) == (n, 1, n) and emb.embedded == n
    assert s["bad_files"][0]["path"].endswith("broken.jpg") and s["bad_files"][0]["reason"]
    assert json.loads((index_dir / "bad_files.jsonl").read_text().splitlines()[0])["path"].endswith("broken.jpg")
    with Store.open(index_dir) as st:
        ids_by_path = {r["path"]: r["id"] for r in st.rows(st.all_ids())}
        assert all(st.thumbs.path(i).is_file() for i in ids_by_path.values())
        r = st.rows([ids_by_path[str(folder / "circle" / "circle_001.jpg")]])[0]
        assert (r["width"], r["height"]) == (80, 80) and len(r["sha256"]) == 64 and r["size"] > 0
    # the manifest says where the encoder came from: its checkpoint and where that training started
    enc = json.loads((index_dir / "manifest.json").read_text())["encoder"]
    assert enc["checkpoint_sha256"] == emb.checkpoint_sha256 and enc["init"] == {"kind": "none"}

    # nothing changed: nothing is embedded (or decoded: the bad file is remembered)
    emb.embedded = 0
    s = build_index(folder, encoder[1], index_dir, embedder=emb, log=quiet)
    assert emb.embedded == 0 and (s["unchanged"], s["added"], s["bad"]) == (n, 0, 1)

    # change the folder: edit, touch, move, delete, add
    edited, touched = folder / "circle" / "circle_001.jpg", folder / "square" / "square_001.jpg"
    Image.new("RGB", (70, 50), "purple").save(edited)
    os.utime(touched, ns=(1, 1))
    moved_from, moved_to = folder / "triangle" / "triangle_000.png", folder / "moved" / "renamed.png"
    moved_to.parent.mkdir()
    shutil.move(moved_from, moved_to)
    (folder / "square" / "square_002.jpg").unlink()
    Image.new("RGB", (40, 90), "orange").save(folder / "new.jpg")
    emb.embedded = 0
    s = build_index(folder, encoder[1], index_dir, embedder=emb, log=quiet)
    assert emb.embedded == 2  # the edited photo and the new one, nothing else
    assert (s["updated"], s["touched"], s["moved"], s["removed"], s["added"]) == (1, 1, 1, 1, 1)
    assert s["unchanged"] == n - 4 and s["count"] == n
    with Store.open(index_dir) as st:
        now = {r["path"]: r for r in st.rows(st.all_ids())}
        assert now[str(edited)]["id"] == ids_by_path[str(edited)]  # an edited photo keeps its id
        assert (now[str(edited)]["width"], now[str(edited)]["height"]) == (70, 50)
        assert now[str(moved_to)]["id"] == ids_by_path[str(moved_from)]  # a moved photo keeps its id
        assert now[str(touched)]["mtime_ns"] == 1
        assert str(folder / "square" / "square_002.jpg") not in now
        assert len(now) == st.count
        ids = st.all_ids()
        assert (st.search(st.get_vectors(ids), 1)[1][:, 0] == ids).all()
        assert not st.thumbs.path(ids_by_path[str(folder / "square" / "square_002.jpg")]).exists()


def test_long_saves_are_made_less_often(encoder, fresh_shapes, tmp_path, monkeypatch):
    """A save that takes long (a big in-memory index, a new base on disk) is followed by at least SAVE_RATIO
    times its duration of embedding before the next: saves every 2 photos would otherwise dominate the run."""
    import time

    from index import build

    saves = []
    real = Store.save

    def slow(self):
        saves.append(time.perf_counter())
        time.sleep(0.2)
        return real(self)

    monkeypatch.setattr(Store, "save", slow)
    monkeypatch.setattr(build, "LONG_SAVE_S", 0.1)
    monkeypatch.setattr(build, "SPACED_FROM", 0)  # as a store of millions
    s = build_index(fresh_shapes, encoder[1], tmp_path / "idx", batch_size=2, save_every=2, log=quiet)
    photos = s["count"]
    assert photos >= 8 and 1 <= len(saves) < photos // 2  # the last save, and few along the way
    gaps = np.diff(saves[:-1])  # between periodic saves (the last one follows the loop at once)
    assert (gaps >= build.SAVE_RATIO * 0.2).all()
    with Store.open(tmp_path / "idx") as st:
        assert st.count == photos  # nothing is lost by saving less often

    # ...unless the unsaved vectors outgrow the memory limit: then every save_every photos, however slow
    saves.clear()
    t = build_index(fresh_shapes, encoder[1], tmp_path / "small", batch_size=2, save_every=2, log=quiet,
                    memory_limit=1)
    assert t["index_type"] == "ondisk" and len(saves) >= photos // 2

def test_periodic_saves_and_other_encoder_refused(encoder, fresh_shapes, tmp_path):
    s = build_index(fresh_shapes, encoder[1], tmp_path / "idx", batch_size=2, save_every=4, log=quiet)
    assert s["generation"] >= 3  # saved along the way, so an interrupted run would resume
    other = tmp_path / "other.onnx"
    proto = onnx.load(str(encoder[1]))
    proto.doc_string += " (another export)"  # same weights and metadata, another file: another encoder
    onnx.save(proto, other)
    with pytest.raises(EncoderMismatch, match="--rebuild"):
        build_index(fresh_shapes, other, tmp_path / "idx", log=quiet)
    with Store.open(tmp_path / "idx") as st:
        before = {r["path"]: r["id"] for r in st.rows(st.all_ids())}
    s = build_index(fresh_shapes, other, tmp_path / "idx", rebuild=True, log=quiet)
    assert s["added"] == len(before)
    with Store.open(tmp_path / "idx", model_sha256=Embedder(other).sha256) as st:
        assert {r["path"]: r["id"] for r in st.rows(st.all_ids())} == before  # ids (and labels) survive


def test_cli_index_search_duplicates(encoder, shapes_folder, tmp_path, capsys):
    folder = tmp_path / "photos"
    shutil.copytree(shapes_folder, folder)
    shutil.copy(folder / "circle" / "circle_001.jpg", folder / "copy_of_circle_001.jpg")
    big = Image.open(folder / "square" / "square_001.jpg").resize((640, 480))
    big.save(folder / "big.jpg", quality=90)  # decoded in draft mode, at a reduced scale
    out = tmp_path / "idx"
    assert main(["index", str(folder), "--model", str(encoder[1]), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["added"] == summary["count"] == 20
    assert main(["index", str(folder), "--model", str(encoder[1]), "--out", str(out)]) == 0
    assert "20 unchanged" in capsys.readouterr().out
    # a query decodes a file exactly as indexing did: an indexed photo finds itself at cosine 1
    assert main(["search", str(out), str(folder / "big.jpg"), "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["cosine"] >= 0.99999

    query = folder / "circle" / "circle_001.jpg"
    assert main(["search", str(out), str(query), "-k", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in res] == [1, 2, 3] and res[0]["cosine"] > 0.9999
    assert {res[0]["path"], res[1]["path"]} == {str(query), str(folder / "copy_of_circle_001.jpg")}
    assert main(["search", str(out), str(query), "-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].split()[0] == "1" and lines[0].split()[-1].endswith(".jpg")

    assert main(["duplicates", str(out), "--threshold", "0.99999", "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert any({r["path"] for r in g} >= {str(query), str(folder / "copy_of_circle_001.jpg")} for g in groups)
    assert main(["duplicates", str(out)]) == 0
    assert "groups" in capsys.readouterr().out

    # user mistakes: exit code 2, a message, no traceback
    (tmp_path / "bad.jpg").write_bytes(b"x")
    for argv in (["search", str(out), str(tmp_path / "bad.jpg")], ["search", str(tmp_path / "none"), str(query)],
                 ["index", str(tmp_path / "nofolder"), "--model", str(encoder[1]), "--out", str(out)],
                 ["index", str(folder), "--model", str(tmp_path / "none.onnx"), "--out", str(out)],
                 ["duplicates", str(out), "--threshold", "2"], ["search", str(out), str(query), "-k", "0"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err


def test_ids_are_numpy_friendly(encoder, fresh_shapes, tmp_path):
    build_index(fresh_shapes, encoder[1], tmp_path / "idx", log=quiet)
    with Store.open(tmp_path / "idx") as st:
        ids = st.all_ids()
        assert ids.dtype == np.int64 and st.get_vectors(ids).shape == (len(ids), st.dim)


# ---------------------------------------------------------------- odd names, rebuilds, our own folders (issue 11)
def strict_stdout(monkeypatch):
    """stdout as a terminal's: UTF-8, and printing a lone surrogate raises (pytest's capture would not)."""
    import io
    import sys

    buf = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(buf, encoding="utf-8", errors="strict"))
    return lambda: (sys.stdout.flush(), buf.getvalue().decode())[1]


def test_names_that_are_not_utf8_are_indexed_and_reported(encoder, fresh_shapes, tmp_path, monkeypatch):
    """A photo named with the bytes caf\\xe9.jpg is indexed; a bad one is reported; reruns and printing work."""
    cafe = fresh_shapes / os.fsdecode(b"caf\xe9.jpg")
    shutil.copy(fresh_shapes / "circle" / "circle_001.jpg", cafe)
    (fresh_shapes / os.fsdecode(b"bad\xff.jpg")).write_bytes(b"not a photo")
    out = strict_stdout(monkeypatch)
    argv = ["index", str(fresh_shapes), "--model", str(encoder[1]), "--out", str(tmp_path / "idx")]
    assert main(argv) == 0 and main(argv) == 0
    text = out()
    assert "bad\\xff.jpg" in text and "0 added" in text.splitlines()[-2]
    with Store.open(tmp_path / "idx") as st:
        assert str(cafe) in {r["path"] for r in st.rows(st.all_ids())}
    line = json.loads((tmp_path / "idx" / "bad_files.jsonl").read_text())
    assert line["path"].endswith("bad\\xff.jpg")


def test_rebuilding_one_folder_keeps_the_other_folders_of_the_index(encoder, fresh_shapes, tmp_path):
    """`index A --rebuild` on an index that also holds folder B keeps B's photos and their ids."""
    a, b = fresh_shapes / "circle", fresh_shapes / "square"
    build_index(a, encoder[1], tmp_path / "idx", log=quiet)
    build_index(b, encoder[1], tmp_path / "idx", log=quiet)
    with Store.open(tmp_path / "idx") as st:
        before = {r["path"]: r["id"] for r in st.rows(st.all_ids())}
    other = tmp_path / "other.onnx"
    proto = onnx.load(str(encoder[1]))
    proto.doc_string += " (another export)"
    onnx.save(proto, other)
    build_index(a, other, tmp_path / "idx", rebuild=True, log=quiet)
    with Store.open(tmp_path / "idx", model_sha256=Embedder(other).sha256) as st:
        assert {r["path"]: r["id"] for r in st.rows(st.all_ids())} == before
    s = build_index(b, other, tmp_path / "idx", log=quiet)
    assert s["unchanged"] == len([p for p in before if p.startswith(str(b))])


def test_rebuild_repairs_an_index_whose_vectors_are_gone(encoder, fresh_shapes, tmp_path):
    build_index(fresh_shapes, encoder[1], tmp_path / "idx", log=quiet)
    with Store.open(tmp_path / "idx") as st:
        before = {r["path"]: r["id"] for r in st.rows(st.all_ids())}
    for p in (tmp_path / "idx").glob("vectors.*.faiss"):
        p.unlink()
    with pytest.raises(StoreError, match="--rebuild"):
        build_index(fresh_shapes, encoder[1], tmp_path / "idx", log=quiet)
    build_index(fresh_shapes, encoder[1], tmp_path / "idx", rebuild=True, log=quiet)
    with Store.open(tmp_path / "idx") as st:
        assert {r["path"]: r["id"] for r in st.rows(st.all_ids())} == before


def test_an_index_inside_the_photo_folder_is_not_indexed(encoder, fresh_shapes, tmp_path):
    """`cd ~/Pictures && byol-search index . --out idx`: the thumbnails are not photos; a rerun settles."""
    s = build_index(fresh_shapes, encoder[1], fresh_shapes / "idx", log=quiet)
    n = s["count"]
    s = build_index(fresh_shapes, encoder[1], fresh_shapes / "idx", log=quiet)
    assert (s["added"], s["unchanged"], s["count"]) == (0, n, n)


def test_cli_memory_limit_puts_the_index_on_disk_and_search_and_duplicates_use_it(encoder, shapes_folder, tmp_path,
                                                                                    capsys):
    folder = tmp_path / "photos"
    shutil.copytree(shapes_folder, folder)
    shutil.copy(folder / "circle" / "circle_001.jpg", folder / "copy_of_circle_001.jpg")
    out, query = tmp_path / "idx", folder / "circle" / "circle_001.jpg"
    argv = ["index", str(folder), "--model", str(encoder[1]), "--out", str(out)]
    assert main(argv + ["--memory-limit", "1K", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["index_type"] == "ondisk" and summary["count"] == 19
    assert json.loads((out / "manifest.json").read_text())["memory_limit"] == 1024
    assert main(["search", str(out), str(query), "-k", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert {r["path"] for r in res} == {str(query), str(folder / "copy_of_circle_001.jpg")}
    assert res[0]["cosine"] > 0.999  # re-ranked from float16 vectors
    assert main(["duplicates", str(out), "--threshold", "0.999", "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert any({r["path"] for r in g} >= {str(query), str(folder / "copy_of_circle_001.jpg")} for g in groups)
    (folder / "square" / "square_001.jpg").unlink()  # an update on disk: the removed photo never comes back
    assert main(argv + ["--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["removed"], summary["count"], summary["index_type"]) == (1, 18, "ondisk")
    assert main(["search", str(out), str(folder / "square" / "square_002.jpg"), "-k", "18", "--json"]) == 0
    assert not any(r["path"].endswith("square_001.jpg") for r in json.loads(capsys.readouterr().out))
    assert main(argv + ["--memory-limit", "4G"]) == 0  # a limit the index fits: back in memory
    assert "(exact search)" in capsys.readouterr().out
    for bad in ("lots", "-1G", "0"):
        assert main(argv + [f"--memory-limit={bad}"]) == 2
        assert "--memory-limit" in capsys.readouterr().err
